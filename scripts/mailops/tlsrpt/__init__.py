"""``mailops tlsrpt``: SMTP TLS reports (RFC 8460) sent to tlsrpt@.

Usage::

    mailops tlsrpt parse FILE... [--json]    read reports: JSON, .gz, .zip or report mails
    mailops tlsrpt ingest [--sender A] [--envelope-to A]
                                             the Postfix pipe on tlsrpt@ (exit 0 or 75)

``parse --json`` writes one line per policy: file, organization_name, report_id,
policy_domain, policy_type, total_successful_session_count,
total_failure_session_count.  The figures (failures by result type) are in
``mailops dmarc figures``; docs/dmarc.md has the rest.
"""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    from mailops.dmarc.commands import register_common

    parser = subparsers.add_parser(
        "tlsrpt",
        help="SMTP TLS reports (RFC 8460): parse, the tlsrpt@ pipe",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
    )
    sub = parser.add_subparsers(dest="tlsrpt_command", metavar="ACTION")
    sub.required = True
    register_common(sub, "tlsrpt")
