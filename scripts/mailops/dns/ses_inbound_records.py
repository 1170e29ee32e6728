"""The MX records that hand the mail domain's mail to Amazon SES's receiving endpoint,
for the inbound bridge (playbooks/ses_inbound.yml, docs/ses_inbound.md, docs/dns.md).

Inventory data (``dns_ses_inbound``, read from the first MX host like every other
``dns_*`` setting; absent or empty: SES receives nothing)::

    dns_ses_inbound:
      mode: backup               # primary | backup | failover
      region: us-east-1          # default: ses_region, then aws_region
      failover_region: eu-west-1 # failover only: a second SES region
      preference: 20             # SES's MX preference (default: by mode)

SES's receiving host in region R is ``inbound-smtp.R.amazonaws.com``.  The modes, with
the mail_mx hosts at their ``dns_mx_priority`` (10 by default):

- ``primary``: SES takes the mail first (preference 5 by default, below every MX host's),
  the cluster's MX hosts are the fallback, and the bridge relays to them;
- ``backup``: the MX hosts first; SES (preference: the highest MX host's + 10) takes
  the mail while they do not answer, and the bridge relays it once they are back;
- ``failover``: as backup, then SES in ``failover_region`` (SES's preference + 10), so
  that receiving survives the loss of the MX hosts and of one SES region.

The preferences the operator chooses are kept, and refused when they contradict the
mode (a backup SES at or below an MX host's preference is a primary).  ``check``
compares the live MX with the plan (rows ``ses-inbound-mx``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

MODES = ("primary", "backup", "failover")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
PRIMARY_PREFERENCE = 5  # below the MX hosts' default 10
STEP = 10  # between the last MX host and SES, and between SES's two regions


class SesInboundError(Exception):
    """dns_ses_inbound is wrong; the message names the key and says how to fix it."""


def receiving_host(region: str) -> str:
    return f"inbound-smtp.{region}.amazonaws.com"


@dataclass(frozen=True)
class SesInbound:
    mode: str
    region: str
    failover_region: str = ""
    preference: int | None = None  # None: the mode's default

    @property
    def regions(self) -> tuple[str, ...]:
        return (self.region, self.failover_region) if self.failover_region else (self.region,)

    @property
    def hosts(self) -> list[str]:
        return [receiving_host(r) for r in self.regions]

    def mx(self, own: list[int]) -> list[tuple[int, str]]:
        """SES's MX entries (preference, host) next to MX hosts at preferences ``own``;
        SesInboundError when the preferences contradict the mode."""
        first = self.preference
        if self.mode == "primary":
            if first is None:
                first = PRIMARY_PREFERENCE
            if own and first >= min(own):
                raise SesInboundError(
                    f"dns_ses_inbound: mode primary needs SES's preference ({first}) below "
                    f"every MX host's (lowest {min(own)}): lower dns_ses_inbound.preference "
                    "or raise dns_mx_priority"
                )
        else:
            if first is None:
                first = (max(own) if own else 0) + STEP
            if own and first <= max(own):
                raise SesInboundError(
                    f"dns_ses_inbound: mode {self.mode} needs SES's preference ({first}) above "
                    f"every MX host's (highest {max(own)}), or SES takes the mail first: "
                    "use mode primary, or raise dns_ses_inbound.preference"
                )
        out = [(first, receiving_host(self.region))]
        if self.failover_region:
            out.append((first + STEP, receiving_host(self.failover_region)))
        if out[-1][0] > 65535:
            raise SesInboundError(f"dns_ses_inbound.preference: {first} leaves no room (65535)")
        return out


def _region(value: Any, what: str) -> str:
    region = str(value or "").strip()
    if not _REGION.match(region):
        raise SesInboundError(
            f"dns_ses_inbound.{what}: {value!r} is not an AWS region"
            + (" (set it, or ses_region/aws_region)" if what == "region" else "")
        )
    return region


def from_inventory(value: Any, default_region: Any) -> SesInbound | None:
    """dns_ses_inbound as data; None when SES receives nothing (absent, empty, false)."""
    if not value:
        return None
    if not isinstance(value, dict):
        raise SesInboundError(
            "dns_ses_inbound: must be a mapping (mode, region, failover_region, preference)"
        )
    unknown = set(value) - {"mode", "region", "failover_region", "preference"}
    if unknown:
        raise SesInboundError(f"dns_ses_inbound: unknown keys {', '.join(sorted(unknown))}")
    mode = str(value.get("mode") or "backup")
    if mode not in MODES:
        raise SesInboundError(f"dns_ses_inbound.mode: {mode!r} is not one of {', '.join(MODES)}")
    region = _region(value.get("region") or default_region, "region")
    failover = value.get("failover_region") or ""
    if mode == "failover":
        failover = _region(failover, "failover_region")
        if failover == region:
            raise SesInboundError(
                f"dns_ses_inbound.failover_region: {failover} is region already; name a second one"
            )
    elif failover:
        raise SesInboundError(
            f"dns_ses_inbound.failover_region: only with mode failover (mode is {mode})"
        )
    raw = value.get("preference")
    preference: int | None = None
    if raw is not None and raw != "":
        if isinstance(raw, bool) or not str(raw).isdigit() or int(raw) > 65535:
            raise SesInboundError(f"dns_ses_inbound.preference: {raw!r} is not 0-65535")
        preference = int(raw)
    return SesInbound(mode, region, str(failover), preference)


def merged(inbound: SesInbound, own: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The whole MX record set: the MX hosts' entries and SES's, by preference."""
    return sorted([*own, *inbound.mx([p for p, _ in own])])


# --- dns check ----------------------------------------------------------------------


class _Dns(Protocol):
    def query(self, name: str, rdtype: str) -> Any: ...


Status = Literal["pass", "warn", "fail"]
Row = tuple[str, Status, str, str, str]


def check(d: _Dns, domain: str, mode: str, planned: list[tuple[int, str]]) -> list[Row]:
    """(check, status, subject, evidence, fix): each SES receiving host of the plan
    (``SesInbound.mx``: preference, host) in the live MX of domain at its planned
    preference (the order decides who takes the mail first)."""
    fix = "publish the MX record from `mailops dns plan` (dns_ses_inbound)"
    a = d.query(domain, "MX")
    if a.status == "error":
        return [("ses-inbound-mx", "warn", domain, f"MX lookup failed: {a.error}", "check again")]
    live: dict[str, list[int]] = {}
    if a.status == "ok":
        for v in a.values:
            number, _, name = str(v).partition(" ")
            live.setdefault(name.strip().lower().rstrip("."), []).append(int(number))
    rows: list[Row] = []
    for pref, host in planned:
        seen = live.get(host, [])
        subject = f"{domain} MX {host}"
        if pref in seen:
            rows.append(("ses-inbound-mx", "pass", subject, f"{pref} {host} ({mode})", ""))
        elif seen:
            got = ", ".join(str(p) for p in seen)
            rows.append(
                (
                    "ses-inbound-mx",
                    "fail",
                    subject,
                    f"preference {got}, planned {pref} ({mode}): SES would take the "
                    "mail in another order than planned",
                    fix,
                )
            )
        else:
            rows.append(
                (
                    "ses-inbound-mx",
                    "fail",
                    subject,
                    f"not in the MX record ({mode}: SES would receive nothing)",
                    fix,
                )
            )
    return rows
