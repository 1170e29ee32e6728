"""Read one TLS-RPT report (RFC 8460 section 4, JSON) into
:class:`mailops.dmarc.model.TlsReport`.

Required, or the report is refused with a message that says what is wrong:
``organization-name``, ``report-id``, ``date-range`` with ``start-datetime`` and
``end-datetime`` (RFC 3339), and ``policies``, a list whose entries each have
``policy`` (with ``policy-type`` and ``policy-domain``) and ``summary`` (with both
session counts, integers >= 0).  ``failure-details`` is optional; each entry's
``result-type`` and ``failed-session-count`` are summed per type.  Keys the RFC does not
name are ignored (reporters add their own), and a missing ``contact-info`` is fine.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mailops.dmarc.model import TlsPolicy, TlsReport
from mailops.dmarc.unpack import UnpackError

MAX_COUNT = 10**12


class ReportError(UnpackError):
    """The document is not a TLS-RPT report this reader accepts."""


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ReportError(f"{where}: {key!r} is missing or not a non-empty string")
    return " ".join(value.split())


def _count(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ReportError(f"{where}: {key!r} must be an integer >= 0, got {str(value)[:40]!r}")
    return value


def _time(value: Any, what: str) -> int:
    if not isinstance(value, str):
        raise ReportError(f"date-range: {what!r} is missing or not a string")
    text = value.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
    except ValueError:
        raise ReportError(f"date-range: {what} {text[:40]!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def parse(data: bytes) -> TlsReport:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReportError(f"not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ReportError("not a JSON object")
    org = _str(doc, "organization-name", "report")
    report_id = _str(doc, "report-id", "report")
    dates = doc.get("date-range")
    if not isinstance(dates, dict):
        raise ReportError("report: 'date-range' is missing or not an object")
    begin = _time(dates.get("start-datetime"), "start-datetime")
    end = _time(dates.get("end-datetime"), "end-datetime")
    raw = doc.get("policies")
    if not isinstance(raw, list):
        raise ReportError("report: 'policies' is missing or not a list")
    policies = tuple(_policy(p, i) for i, p in enumerate(raw))
    contact = doc.get("contact-info")
    return TlsReport(
        organization_name=org,
        report_id=report_id,
        begin=begin,
        end=end,
        policies=policies,
        contact_info=contact if isinstance(contact, str) else "",
    )


def _policy(entry: Any, index: int) -> TlsPolicy:
    where = f"policies[{index}]"
    if not isinstance(entry, dict):
        raise ReportError(f"{where}: not an object")
    policy = entry.get("policy")
    summary = entry.get("summary")
    if not isinstance(policy, dict):
        raise ReportError(f"{where}: 'policy' is missing or not an object")
    if not isinstance(summary, dict):
        raise ReportError(f"{where}: 'summary' is missing or not an object")
    failures: dict[str, int] = {}
    details = entry.get("failure-details", [])
    if not isinstance(details, list):
        raise ReportError(f"{where}: 'failure-details' is not a list")
    for n, d in enumerate(details):
        at = f"{where}.failure-details[{n}]"
        if not isinstance(d, dict):
            raise ReportError(f"{at}: not an object")
        kind = _str(d, "result-type", at).lower()
        failures[kind] = failures.get(kind, 0) + _count(d, "failed-session-count", at)
    mx = policy.get("mx-host", [])
    hosts = tuple(
        str(h.get("hostname", "")) if isinstance(h, dict) else str(h)
        for h in (mx if isinstance(mx, list) else [mx])
    )
    return TlsPolicy(
        index=index,
        policy_type=_str(policy, "policy-type", f"{where}.policy").lower(),
        policy_domain=_str(policy, "policy-domain", f"{where}.policy").lower().rstrip("."),
        successful=_count(summary, "total-successful-session-count", f"{where}.summary"),
        failed=_count(summary, "total-failure-session-count", f"{where}.summary"),
        failures=failures,
        mx_hosts=hosts,
    )
