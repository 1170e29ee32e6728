"""Every record the inventory implies, as data (``Plan``), refusing records that break.

What is planned, for mail_domain D (variables in docs/dns.md):

- ``D MX`` -> every host of mail_mx (``dns_mx_priority``, default 10);
- ``A``/``AAAA`` for every host with public_ipv4/public_ipv6 whose name is under D;
- the cluster name (``dns_cluster_name``, default ``mail`` -> ``mail.D``): one A/AAAA per
  mail_bulk host, a weighted set when any bulk host sets ``dns_weight``;
- ``PTR`` for every host address (what the Elastic IP's reverse DNS must be set to);
- SPF on D: ``ip4:``/``ip6:`` for every sending address (mail_mx and mail_bulk), the
  ``dns_spf_includes``, then ``dns_spf_all``; at most 10 lookups;
- DKIM TXT for every selector in force (from the opendkim key directory);
- ``_dmarc.D``, ``_mta-sts.D`` (id from the policy text) and ``_smtp._tls.D``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

import dns.reversename

from mailops.dns import spf
from mailops.dns.dkim import DkimKey
from mailops.dns.inventory import Dmarc, Settings
from mailops.dns.records import Record, txt_value

DEFAULT_WEIGHT = 100  # a bulk host without dns_weight in a weighted set

_MECHANISM = re.compile(r"^[+\-~?]?(include|a|mx|ptr|exists|ip4|ip6)(?=$|[:/])", re.IGNORECASE)


class PlanError(Exception):
    """The inventory implies a record that must not be published; the message says why."""


@dataclass
class Plan:
    domain: str
    records: list[Record]
    spf_record: str
    spf_lookups: int
    mta_sts_policy: str | None
    mta_sts_id: str | None
    keys: list[DkimKey]
    notes: list[str] = field(default_factory=list)


def reverse_name(address: str) -> str:
    return dns.reversename.from_address(address).to_text(omit_final_dot=True).lower()


def reverse_zone(address: str) -> str:
    """The reverse zone a PTR goes in: the /24 (IPv4) or /64 (IPv6) around the address."""
    name = reverse_name(address)
    labels = name.split(".")
    if ipaddress.ip_address(address).version == 4:
        return ".".join(labels[1:])  # drop the last octet
    return ".".join(labels[16:])  # drop 16 nibbles: the /64


def spf_terms(s: Settings) -> list[str]:
    v4 = sorted({h.ipv4 for h in s.sending_hosts if h.ipv4}, key=lambda a: ipaddress.ip_address(a))
    v6 = sorted({h.ipv6 for h in s.sending_hosts if h.ipv6}, key=lambda a: ipaddress.ip_address(a))
    terms = [f"ip4:{a}" for a in v4] + [f"ip6:{a}" for a in v6]
    for entry in s.spf_includes:
        entry = entry.strip()
        terms.append(entry if _MECHANISM.match(entry) else f"include:{entry}")
    terms.append(s.spf_all)
    return terms


def build_spf(s: Settings) -> tuple[str, int]:
    text = "v=spf1 " + " ".join(spf_terms(s))
    try:
        record = spf.parse(text)
    except spf.SpfSyntaxError as exc:
        raise PlanError(f"SPF record would not parse ({exc}): check dns_spf_includes") from None
    if any(t.modifier and t.kind == "redirect" for t in record.terms):
        raise PlanError("dns_spf_includes: redirect= does not belong in a record with addresses")
    lookups = record.lookups
    if lookups > spf.MAX_LOOKUPS:
        costly = [t.text for t in record.terms if t.lookups]
        raise PlanError(
            f"SPF for {s.domain} would need {lookups} DNS lookups, over the limit of "
            f"{spf.MAX_LOOKUPS} (receivers answer permerror): {' '.join(costly)}; "
            "replace includes by ip4:/ip6: ranges or drop some"
        )
    return text, lookups


def dmarc_text(d: Dmarc) -> str:
    tags = [f"v=DMARC1; p={d.p}"]
    if d.sp:
        tags.append(f"sp={d.sp}")
    if d.pct is not None:
        tags.append(f"pct={d.pct}")
    if d.rua:
        tags.append("rua=" + ",".join(d.rua))
    if d.ruf:
        tags.append("ruf=" + ",".join(d.ruf))
    if d.fo:
        tags.append(f"fo={d.fo}")
    if d.adkim:
        tags.append(f"adkim={d.adkim}")
    if d.aspf:
        tags.append(f"aspf={d.aspf}")
    if d.ri is not None:
        tags.append(f"ri={d.ri}")
    return "; ".join(tags)


def mta_sts_policy(mode: str, mx_names: list[str], max_age: int) -> str:
    """The policy file (RFC 8461 3.2), lines ending in CRLF."""
    lines = ["version: STSv1", f"mode: {mode}"]
    lines += [f"mx: {name}" for name in mx_names]
    lines.append(f"max_age: {max_age}")
    return "".join(line + "\r\n" for line in lines)


def policy_id(policy: str) -> str:
    """A policy id that changes whenever the policy does (RFC 8461 3.1: 1-32 alphanumerics)."""
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:20]


def build(s: Settings, keys: list[DkimKey]) -> Plan:
    D = s.domain
    ttl = s.ttl
    notes = list(s.notes)
    records: list[Record] = []

    seen_addr: dict[str, str] = {}
    for h in s.hosts:
        for a in h.addresses:
            if a in seen_addr:
                raise PlanError(
                    f"{h.name} and {seen_addr[a]} both have address {a}: one address has one PTR"
                )
            seen_addr[a] = h.name

    mx = sorted(s.mx_hosts, key=lambda h: (h.mx_priority, h.fqdn))
    if mx:
        records.append(Record(D, "MX", ttl, tuple(f"{h.mx_priority} {h.fqdn}." for h in mx), D))
    else:
        notes.append(f"no host in mail_mx: no MX record planned for {D}")

    for h in sorted(s.hosts, key=lambda h: h.fqdn):
        if not (h.fqdn == D or h.fqdn.endswith("." + D)):
            notes.append(f"{h.name}: {h.fqdn} is outside {D}: its A/AAAA are not planned here")
            continue
        note = "" if h.fqdn.split(".")[0] == h.name.split(".")[0] else h.name
        if h.ipv4:
            records.append(Record(h.fqdn, "A", ttl, (h.ipv4,), D, comment=note))
        if h.ipv6:
            records.append(Record(h.fqdn, "AAAA", ttl, (h.ipv6,), D, comment=note))

    bulk = sorted(s.bulk_hosts, key=lambda h: h.fqdn)
    if s.cluster_name and bulk:
        cname = s.cluster_name.lower().rstrip(".")
        cluster = cname if cname == D or cname.endswith("." + D) else f"{cname}.{D}"
        weighted = any(h.weight is not None for h in bulk)
        for rtype, attr in (("A", "ipv4"), ("AAAA", "ipv6")):
            members = [(h, getattr(h, attr)) for h in bulk if getattr(h, attr)]
            if not members:
                continue
            if weighted:
                for h, addr in members:
                    w = DEFAULT_WEIGHT if h.weight is None else h.weight
                    records.append(Record(cluster, rtype, ttl, (addr,), D, weight=w, set_id=h.name))
            else:
                records.append(
                    Record(
                        cluster,
                        rtype,
                        ttl,
                        tuple(a for _, a in members),
                        D,
                        comment="round robin over mail_bulk",
                    )
                )

    ptrs = sorted(
        ((ipaddress.ip_address(a), h) for h in s.hosts for a in h.addresses),
        key=lambda pair: (pair[0].version, pair[0]),
    )
    for addr, h in ptrs:
        a = str(addr)
        records.append(Record(reverse_name(a), "PTR", ttl, (f"{h.fqdn}.",), reverse_zone(a)))

    spf_text, lookups = build_spf(s)
    records.append(Record(D, "TXT", ttl, (txt_value(spf_text),), D, comment="SPF"))

    for k in sorted(keys, key=lambda k: k.selector):
        records.append(Record(k.name, "TXT", ttl, (txt_value(k.txt),), D, comment="DKIM"))
    if not keys:
        notes.append(f"no DKIM selectors: no DKIM records planned for {D}")

    for uri in s.dmarc.rua + s.dmarc.ruf:
        target = uri.split("@", 1)[1].split("!", 1)[0].lower().rstrip(".")
        if not (target == D or target.endswith("." + D)):
            notes.append(
                f"DMARC reports go to {target}: it must publish {D}._report._dmarc.{target} "
                'TXT "v=DMARC1" or receivers will not send them'
            )
    records.append(
        Record(f"_dmarc.{D}", "TXT", ttl, (txt_value(dmarc_text(s.dmarc)),), D, comment="DMARC")
    )

    policy = pid = None
    if s.mta_sts_mode != "off":
        if not mx:
            raise PlanError("dns_mta_sts_mode is set but no host is in mail_mx")
        policy = mta_sts_policy(s.mta_sts_mode, [h.fqdn for h in mx], s.mta_sts_max_age)
        pid = policy_id(policy)
        records.append(
            Record(
                f"_mta-sts.{D}",
                "TXT",
                ttl,
                (txt_value(f"v=STSv1; id={pid}"),),
                D,
                comment="MTA-STS",
            )
        )
    if s.tlsrpt_rua:
        records.append(
            Record(
                f"_smtp._tls.{D}",
                "TXT",
                ttl,
                (txt_value("v=TLSRPTv1; rua=" + ",".join(s.tlsrpt_rua)),),
                D,
                comment="TLS-RPT",
            )
        )
    return Plan(
        domain=D,
        records=records,
        spf_record=spf_text,
        spf_lookups=lookups,
        mta_sts_policy=policy,
        mta_sts_id=pid,
        keys=list(keys),
        notes=notes,
    )
