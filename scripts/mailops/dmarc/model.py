"""What a DMARC aggregate report and a TLS-RPT report are, once read.

Plain data, no parsing: :mod:`mailops.dmarc.aggregate` and :mod:`mailops.tlsrpt.parse`
make these, the store (:meth:`mailops.store.db.Store.record_dmarc`) keeps them, and the
figures (:mod:`mailops.dmarc.figures`) count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# `mailops dmarc parse --json`: one object per record with exactly these keys, in order.
DMARC_FIELDS: tuple[str, ...] = (
    "file",
    "org_name",
    "report_id",
    "policy_domain",
    "begin",
    "end",
    "source_ip",
    "count",
    "disposition",
    "dkim",
    "spf",
    "header_from",
)

# `mailops tlsrpt parse --json`: one object per policy.
TLSRPT_FIELDS: tuple[str, ...] = (
    "file",
    "organization_name",
    "report_id",
    "policy_domain",
    "policy_type",
    "total_successful_session_count",
    "total_failure_session_count",
)


@dataclass(frozen=True)
class AuthResult:
    """One <dkim> or <spf> of a record's <auth_results> (the raw, unaligned result)."""

    method: str  # "dkim" or "spf"
    domain: str
    result: str
    selector: str = ""  # dkim only
    scope: str = ""  # spf only: "mfrom" or "helo"


@dataclass(frozen=True)
class Record:
    """One <record>: ``count`` messages from ``source_ip`` that were evaluated alike."""

    index: int  # its place in the report, from 0 (part of the store's key)
    source_ip: str
    count: int
    disposition: str  # none, quarantine, reject (DMARCbis: also pass)
    dkim: str  # policy-evaluated: pass or fail ("" when the reporter left it out)
    spf: str
    header_from: str
    envelope_from: str = ""
    envelope_to: str = ""
    reasons: tuple[str, ...] = ()  # <reason><type> values (forwarded, local_policy, ...)
    auth: tuple[AuthResult, ...] = ()

    @property
    def passed(self) -> bool:
        """DMARC passes when either aligned identifier passed (RFC 7489 section 6.6.2)."""
        return self.dkim == "pass" or self.spf == "pass"


@dataclass(frozen=True)
class DmarcReport:
    org_name: str
    report_id: str
    policy_domain: str
    begin: int  # epoch seconds
    end: int
    records: tuple[Record, ...]
    version: str = ""  # <version> when given ("1.0", DMARCbis "2.0"), else ""
    email: str = ""
    policy: dict[str, str] = field(default_factory=dict)  # <policy_published> children

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.records)

    def rows(self, file: str) -> list[dict[str, Any]]:
        """The records as `mailops dmarc parse --json` writes them."""
        return [
            {
                "file": file,
                "org_name": self.org_name,
                "report_id": self.report_id,
                "policy_domain": self.policy_domain,
                "begin": self.begin,
                "end": self.end,
                "source_ip": r.source_ip,
                "count": r.count,
                "disposition": r.disposition,
                "dkim": r.dkim,
                "spf": r.spf,
                "header_from": r.header_from,
            }
            for r in self.records
        ]


@dataclass(frozen=True)
class TlsPolicy:
    """One entry of a TLS-RPT report's ``policies``."""

    index: int
    policy_type: str  # sts, tlsa, no-policy-found
    policy_domain: str
    successful: int
    failed: int
    # result-type -> failed sessions (the sum of its failure-details entries)
    failures: dict[str, int] = field(default_factory=dict)
    mx_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsReport:
    organization_name: str
    report_id: str
    begin: int
    end: int
    policies: tuple[TlsPolicy, ...]
    contact_info: str = ""

    def rows(self, file: str) -> list[dict[str, Any]]:
        """The policies as `mailops tlsrpt parse --json` writes them."""
        return [
            {
                "file": file,
                "organization_name": self.organization_name,
                "report_id": self.report_id,
                "policy_domain": p.policy_domain,
                "policy_type": p.policy_type,
                "total_successful_session_count": p.successful,
                "total_failure_session_count": p.failed,
            }
            for p in self.policies
        ]
