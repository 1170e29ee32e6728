"""The DNS records Amazon SES needs for a domain it sends for (docs/ses.md, docs/dns.md).

Inventory data (``dns_ses``, read from the first MX host like every other ``dns_*``
setting; absent or empty: nothing of SES is planned)::

    dns_ses:
      domain: company.test             # the SES identity (default: mail_domain)
      region: eu-west-1                # default: ses_region, then aws_region
      dkim_tokens: [tok1, tok2, tok3]  # Easy DKIM, as playbooks/ses.yml prints them
      mail_from_domain: bounce.company.test   # "" (default): SES's own amazonses.com
      verification_token: "..."       # optional: _amazonses.<domain> TXT

What it plans:

- ``<token>._domainkey.<domain> CNAME <token>.dkim.amazonses.com.`` for each token;
- with a custom MAIL FROM domain M: ``M MX 10 feedback-smtp.<region>.amazonses.com.``
  and ``M TXT "v=spf1 include:amazonses.com <dns_spf_all>"`` (SPF is checked on M);
- without one, ``include:amazonses.com`` in the SPF of the identity domain;
- ``_amazonses.<domain> TXT`` when the verification token is given.

``check`` compares the live answers with these records (rows ``ses-dkim``,
``ses-mail-from``, ``ses-spf``, ``ses-verification``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mailops.dns.records import Record, in_zone, txt_value

INCLUDE = "include:amazonses.com"
_TOKEN = re.compile(r"^[a-z0-9]{16,64}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class SesError(Exception):
    """dns_ses is wrong; the message names the key and says how to fix it."""


@dataclass(frozen=True)
class Ses:
    domain: str
    region: str
    dkim_tokens: tuple[str, ...]
    mail_from_domain: str = ""
    verification_token: str = ""

    @property
    def feedback_host(self) -> str:
        return f"feedback-smtp.{self.region}.amazonses.com"

    @property
    def spf_domain(self) -> str:
        """The domain whose SPF must include amazonses.com."""
        return self.mail_from_domain or self.domain


def _name(value: Any, what: str) -> str:
    name = str(value).strip().lower().rstrip(".")
    if not _NAME.match(name):
        raise SesError(f"dns_ses.{what}: {value!r} is not a domain name")
    return name


def from_inventory(value: Any, mail_domain: str, default_region: Any) -> Ses | None:
    """dns_ses as data; None when SES is not enabled (absent, empty, or false)."""
    if not value:
        return None
    if not isinstance(value, dict):
        raise SesError("dns_ses: must be a mapping (domain, region, dkim_tokens, ...)")
    unknown = set(value) - {
        "domain",
        "region",
        "dkim_tokens",
        "mail_from_domain",
        "verification_token",
    }
    if unknown:
        raise SesError(f"dns_ses: unknown keys {', '.join(sorted(unknown))}")
    domain = _name(value.get("domain") or mail_domain, "domain")
    region = str(value.get("region") or default_region or "")
    if not _REGION.match(region):
        raise SesError(
            f"dns_ses.region: {region!r} is not an AWS region (set it, or ses_region/aws_region)"
        )
    tokens = value.get("dkim_tokens") or []
    if not isinstance(tokens, list) or len(tokens) != 3:
        raise SesError(
            "dns_ses.dkim_tokens: the three Easy DKIM tokens playbooks/ses.yml prints "
            f"(dns_records), got {tokens!r}"
        )
    clean = tuple(str(t).strip().lower() for t in tokens)
    for t in clean:
        if not _TOKEN.match(t):
            raise SesError(f"dns_ses.dkim_tokens: {t!r} is not an Easy DKIM token")
    if len(set(clean)) != 3:
        raise SesError("dns_ses.dkim_tokens: the three tokens must differ")
    mail_from = value.get("mail_from_domain") or ""
    mail_from = _name(mail_from, "mail_from_domain") if mail_from else ""
    if mail_from and not (mail_from != domain and in_zone(mail_from, domain)):
        raise SesError(
            f"dns_ses.mail_from_domain: {mail_from} must be a subdomain of {domain} (SES's rule)"
        )
    verification = str(value.get("verification_token") or "").strip()
    return Ses(domain, region, clean, mail_from, verification)


def records(ses: Ses, zone: str, ttl: int, spf_all: str) -> list[Record]:
    """The records to publish in zone (the zone that holds the identity domain)."""
    out = [
        Record(
            f"{t}._domainkey.{ses.domain}",
            "CNAME",
            ttl,
            (f"{t}.dkim.amazonses.com.",),
            zone,
            comment="SES Easy DKIM",
        )
        for t in ses.dkim_tokens
    ]
    if ses.mail_from_domain:
        m = ses.mail_from_domain
        out.append(
            Record(m, "MX", ttl, (f"10 {ses.feedback_host}.",), zone, comment="SES MAIL FROM")
        )
        out.append(
            Record(
                m, "TXT", ttl, (txt_value(f"v=spf1 {INCLUDE} {spf_all}"),), zone, comment="SES SPF"
            )
        )
    if ses.verification_token:
        out.append(
            Record(
                f"_amazonses.{ses.domain}",
                "TXT",
                ttl,
                (txt_value(ses.verification_token),),
                zone,
                comment="SES verification",
            )
        )
    return out


# --- dns check ----------------------------------------------------------------------


class _Dns(Protocol):
    def query(self, name: str, rdtype: str) -> Any: ...


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


Status = Literal["pass", "warn", "fail"]
SesRow = tuple[str, Status, str, str, str]


def check(d: _Dns, ses: Ses, spf_planned: bool = True) -> list[SesRow]:
    """(check, status, subject, evidence, fix) for every SES record of the plan;
    spf_planned False: the plan adds no include (a tenant domain's SPF is its pool)."""
    fix = "publish the SES records from `mailops dns plan` (dns_ses)"
    rows: list[SesRow] = []
    for t in ses.dkim_tokens:
        name = f"{t}._domainkey.{ses.domain}"
        want = f"{t}.dkim.amazonses.com"
        a = d.query(name, "CNAME")
        got = [_norm(v) for v in a.values] if a.status == "ok" else []
        if want in got:
            rows.append(("ses-dkim", "pass", name, f"CNAME {want}", ""))
        elif a.status == "error":
            rows.append(("ses-dkim", "fail", name, f"lookup failed: {a.error}", fix))
        else:
            seen = ", ".join(got) or a.status
            rows.append(("ses-dkim", "fail", name, f"CNAME {seen}, not {want}", fix))
    if ses.mail_from_domain:
        m = ses.mail_from_domain
        a = d.query(m, "MX")
        hosts = [_norm(v.split()[-1]) for v in a.values] if a.status == "ok" else []
        if ses.feedback_host in hosts:
            rows.append(("ses-mail-from", "pass", m, f"MX {ses.feedback_host}", ""))
        else:
            seen = ", ".join(hosts) or a.status
            rows.append(
                (
                    "ses-mail-from",
                    "fail",
                    m,
                    f"MX {seen}, not {ses.feedback_host} (SES falls back to amazonses.com "
                    "or refuses to send)",
                    fix,
                )
            )
    spf_domain = ses.spf_domain
    if not spf_planned:
        return rows + _verification(d, ses)
    a = d.query(spf_domain, "TXT")
    spfs = [v for v in a.values if v.lower().startswith("v=spf1")] if a.status == "ok" else []
    if len(spfs) == 1 and INCLUDE in spfs[0].lower().split():
        rows.append(("ses-spf", "pass", spf_domain, spfs[0], ""))
    else:
        seen = "; ".join(spfs) or f"no SPF record ({a.status})"
        rows.append(
            ("ses-spf", "fail", spf_domain, f"{seen}: no {INCLUDE}", f"add {INCLUDE}; {fix}")
        )
    return rows + _verification(d, ses)


def _verification(d: _Dns, ses: Ses) -> list[SesRow]:
    fix = "publish the SES records from `mailops dns plan` (dns_ses)"
    rows: list[SesRow] = []
    if ses.verification_token:
        name = f"_amazonses.{ses.domain}"
        a = d.query(name, "TXT")
        if a.status == "ok" and ses.verification_token in a.values:
            rows.append(("ses-verification", "pass", name, ses.verification_token, ""))
        else:
            seen = ", ".join(a.values) or a.status
            rows.append(("ses-verification", "fail", name, f"TXT {seen}", fix))
    return rows
