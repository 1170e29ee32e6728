"""Records: the data model of a DNS plan and its three renderings (zone, json, route53).

A ``Record`` is one RRset (or one member of a weighted set): an absolute owner name,
type, TTL and the RDATA values in presentation format, the zone it belongs in, and for
Route53 weighted routing a weight and a set identifier.  TXT values are kept as their
text and rendered as one or more quoted character-strings of at most 255 bytes each.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TXT_STRING_MAX = 255  # RFC 1035 3.3: a character-string is one length byte + data


@dataclass(frozen=True)
class Record:
    name: str  # absolute, lower case, no trailing dot
    type: str
    ttl: int
    values: tuple[str, ...]  # presentation format (TXT already quoted and split)
    zone: str
    weight: int | None = None
    set_id: str | None = None
    comment: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "ttl": self.ttl,
            "values": list(self.values),
            "zone": self.zone,
        }
        if self.weight is not None:
            out["weight"] = self.weight
            out["set_id"] = self.set_id
        return out


def split_txt(text: str) -> list[bytes]:
    """Cut a TXT value into character-strings of at most 255 bytes.

    SPF (RFC 7208 3.3) and DKIM (RFC 6376 3.6.2.2) readers join the strings with
    nothing in between, so the cut may fall anywhere.
    """
    data = text.encode("utf-8")
    if not data:
        return [b""]
    return [data[i : i + TXT_STRING_MAX] for i in range(0, len(data), TXT_STRING_MAX)]


def quote_string(data: bytes) -> str:
    """One character-string in master-file syntax: quoted, with \\ \" and \\DDD escapes."""
    out = []
    for byte in data:
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def txt_value(text: str) -> str:
    """A TXT RDATA in presentation format: ``"first 255 bytes" "rest"``."""
    return " ".join(quote_string(part) for part in split_txt(text))


def unquote_txt(rdata: str) -> str:
    """Join the character-strings of a presentation-format TXT RDATA (inverse of txt_value)."""
    out = bytearray()
    i = 0
    n = len(rdata)
    while i < n:
        if rdata[i].isspace():
            i += 1
            continue
        if rdata[i] != '"':
            raise ValueError(f"TXT value is not a quoted string: {rdata!r}")
        i += 1
        while i < n and rdata[i] != '"':
            if rdata[i] == "\\" and i + 1 < n:
                if rdata[i + 1 : i + 4].isdigit() and len(rdata[i + 1 : i + 4]) == 3:
                    out.append(int(rdata[i + 1 : i + 4]))
                    i += 4
                    continue
                out.extend(rdata[i + 1].encode())
                i += 2
                continue
            out.extend(rdata[i].encode())
            i += 1
        if i >= n:
            raise ValueError(f"unterminated string in TXT value: {rdata!r}")
        i += 1
    return out.decode("utf-8", "replace")


def relative(name: str, zone: str) -> str:
    """Owner name relative to $ORIGIN zone (``@`` for the apex)."""
    if name == zone:
        return "@"
    if name.endswith("." + zone):
        return name[: -(len(zone) + 1)]
    return name + "."


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def select(records: Iterable[Record], zone: str | None) -> list[Record]:
    """Only the records that live in ``zone`` (every record when zone is None)."""
    if zone is None:
        return list(records)
    z = zone.lower().rstrip(".")
    return [r for r in records if in_zone(r.name, z)]


def render_zone(records: list[Record], header: str, zone: str | None = None) -> str:
    """RFC 1035 master-file fragment: a $ORIGIN block per zone, no SOA or NS.

    Meant to follow a zone's SOA and NS records (the DNS server owns those).  A
    weighted set has no master-file form: every member with a weight above 0 is one
    record of the set (resolvers rotate them evenly) and the weight is a comment; a
    member of weight 0 (no traffic) is written commented out.
    """
    lines = [f"; {line}" if line else ";" for line in header.splitlines()]
    zones: list[str] = []
    for r in records:
        z = zone.lower().rstrip(".") if zone else r.zone
        if z not in zones:
            zones.append(z)
    for z in zones:
        block = [r for r in records if (zone.lower().rstrip(".") if zone else r.zone) == z]
        if not block:
            continue
        lines.append("")
        lines.append(f"$ORIGIN {z}.")
        width = max(len(relative(r.name, z)) for r in block)
        weighted_all_zero = _weights_all_zero(block)
        for r in block:
            owner = relative(r.name, z).ljust(width)
            note = f" ; {r.comment}" if r.comment else ""
            for value in r.values:
                line = f"{owner} {r.ttl} IN {r.type:5} {value}"
                if r.weight is not None:
                    weight_note = f" ; {r.set_id}, weight {r.weight}"
                    if r.weight == 0 and not weighted_all_zero.get((r.name, r.type), False):
                        lines.append(f"; {line}{weight_note} (no traffic)")
                        continue
                    line += weight_note
                lines.append(line + note)
    return "\n".join(lines) + "\n"


def _weights_all_zero(block: list[Record]) -> dict[tuple[str, str], bool]:
    """Route53 spreads evenly when every weight of a set is 0: keep all of them then."""
    out: dict[tuple[str, str], bool] = {}
    for r in block:
        if r.weight is None:
            continue
        key = (r.name, r.type)
        out[key] = out.get(key, True) and r.weight == 0
    return out


def render_json(records: list[Record]) -> str:
    return json.dumps([r.as_json() for r in records], indent=1) + "\n"


def route53(records: list[Record]) -> list[dict[str, Any]]:
    """Arguments for amazon.aws.route53, one dict per record (PTR left out).

    Reverse DNS of an Elastic IP is not a Route53 record: it is an attribute of the
    address, set through EC2 (the json and zone formats list the values).
    """
    out: list[dict[str, Any]] = []
    for r in records:
        if r.type == "PTR":
            continue
        item: dict[str, Any] = {
            "zone": r.zone,
            "record": r.name,
            "type": r.type,
            "ttl": r.ttl,
            "value": list(r.values),
        }
        if r.weight is not None:
            item["identifier"] = r.set_id
            item["weight"] = r.weight
        out.append(item)
    return out


def render_route53(records: list[Record]) -> str:
    return json.dumps(route53(records), indent=1) + "\n"
