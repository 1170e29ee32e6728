"""What ``mailops dmarc`` and ``mailops tlsrpt`` share: reading report files and mails,
the ``parse`` command, and the Postfix pipe ``ingest``.

``parse FILE... [--json]``: every file is read on its own (raw XML/JSON, .gz, .zip or a
whole report mail); a file that cannot be read gets one line on stderr that names it and
says why, and the next file is still read.  Exit 0 when every file was read, 65
(EX_DATAERR) when one was malformed, 66 when one could not be opened.

``ingest`` (the pipe on dmarc@ or tlsrpt@, ``MAILOPS_PIPE=1``): reads one mail on stdin,
stores every report in it (a report mailed twice counts once), and keeps a mail that held
no report it could read, or one it could read only in part, in the store's quarantine
(``mailops dmarc quarantine``) with the reason: never dropped.  Exit 0 once stored or
kept, 75 when the store cannot be reached (Postfix keeps the mail and retries).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mailops import config, exitcodes
from mailops.dmarc.model import DmarcReport, TlsReport
from mailops.dmarc.unpack import DEFAULT_LIMIT, UnpackError, documents

Report = DmarcReport | TlsReport


def _parser(kind: str) -> tuple[str, Callable[[bytes], Report]]:
    """The document type a kind of report comes in, and its reader."""
    if kind == "dmarc":
        from mailops.dmarc.aggregate import parse as parse_dmarc

        return "xml", parse_dmarc
    from mailops.tlsrpt.parse import parse as parse_tls

    return "json", parse_tls


@dataclass
class Found:
    reports: list[tuple[str, Report]] = field(default_factory=list)  # (where, report)
    errors: list[str] = field(default_factory=list)


def read_reports(data: bytes, kind: str, limit: int = DEFAULT_LIMIT) -> Found:
    """Every report of ``kind`` ("dmarc" or "tlsrpt") in ``data``, and what could not be
    read (one line each)."""
    want, parse = _parser(kind)
    found = Found()
    try:
        docs = documents(data, limit)
    except UnpackError as exc:
        found.errors.append(str(exc))
        return found
    for doc in docs:
        if doc.kind != want:
            continue
        try:
            found.reports.append((doc.where, parse(doc.data)))
        except UnpackError as exc:
            found.errors.append(f"{doc.where}: {exc}" if doc.where else str(exc))
    if not found.reports and not found.errors:
        label = "DMARC aggregate (XML)" if kind == "dmarc" else "TLS-RPT (JSON)"
        found.errors.append(f"no {label} report found in it")
    return found


# --------------------------------------------------------------------------- parse


def cmd_parse(args: argparse.Namespace, kind: str) -> int:
    data = config.load(args.config)
    limit = int(config.table(data, "reports")["max_report_bytes"])
    status = exitcodes.OK
    for name in args.files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            print(f"mailops {kind} parse: {name}: {exc.strerror or exc}", file=sys.stderr)
            status = max(status, exitcodes.NOINPUT)
            continue
        found = read_reports(raw, kind, limit)
        for where, report in found.reports:
            for row in report.rows(name):
                if args.json:
                    print(json.dumps(row))
                else:
                    print(_text_row(kind, row, where))
        for error in found.errors:
            print(f"mailops {kind} parse: {name}: {error}", file=sys.stderr)
        if found.errors:
            status = max(status, exitcodes.DATAERR)
    sys.stdout.flush()
    return status


def _text_row(kind: str, row: dict[str, Any], where: str) -> str:
    if kind == "dmarc":
        return (
            f"{row['org_name']}  {row['report_id']}  {row['policy_domain']}  "
            f"{row['source_ip']}  {row['count']}  {row['disposition'] or '-'}  "
            f"dkim={row['dkim'] or '-'} spf={row['spf'] or '-'}  {row['header_from'] or '-'}"
        )
    return (
        f"{row['organization_name']}  {row['report_id']}  {row['policy_domain']}  "
        f"{row['policy_type']}  ok={row['total_successful_session_count']} "
        f"failed={row['total_failure_session_count']}"
    )


# --------------------------------------------------------------------------- ingest


def ingest(
    stream: BinaryIO,
    kind: str,
    *,
    config_path: str | None = None,
    sender: str = "",
    envelope_to: str = "",
    now: float | None = None,
) -> int:
    """Store the reports of one mail; keep it for a person when it is not all readable.

    Raises on failures that retrying can fix (the caller, run_pipe, turns them into 75).
    """
    from mailops.pipeio import header, headers, log, read_message
    from mailops.store import open_from_config, store_settings
    from mailops.tenants.model import load_tenants

    tool = f"{kind} ingest"
    data = config.load(config_path)
    values = config.table(data, "reports")
    store_settings(data)
    tenants = load_tenants(data)
    raw = read_message(stream, int(values["max_message_bytes"]))
    if raw.truncated:
        found = Found(errors=[f"larger than max_message_bytes ({len(raw.data)}); not read"])
    else:
        found = read_reports(raw.data, kind, int(values["max_report_bytes"]))
    added = known = 0
    kept = False
    with open_from_config(data) as store:
        for _, report in found.reports:
            if isinstance(report, DmarcReport):
                domains = [report.policy_domain]
            else:
                domains = [p.policy_domain for p in report.policies]
            owner = next((t.name for d in domains if (t := tenants.for_domain(d))), "")
            if isinstance(report, DmarcReport):
                a, k = store.record_dmarc(report, tenant=owner, raw_sha256=raw.sha256, now=now)
            else:
                a, k = store.record_tlsrpt(report, tenant=owner, raw_sha256=raw.sha256, now=now)
            added += a
            known += k
        if found.errors:
            kept = store.quarantine_report(
                kind,
                raw.data,
                raw_sha256=raw.sha256,
                raw_size=raw.size,
                error="; ".join(found.errors),
                sender=sender,
                envelope_to=envelope_to,
                subject=header(headers(raw.data), "Subject"),
                now=now,
            )
    unit = "records" if kind == "dmarc" else "policies"
    line = f"{len(found.reports)} reports, {added} new {unit}, {known} stored before"
    if found.errors:
        state = "kept in the quarantine" if kept else "already in the quarantine"
        log(tool, f"{line}; {state}: {'; '.join(found.errors)}", error=True)
    else:
        log(tool, f"{line}, sha256 {raw.sha256[:16]}")
    return exitcodes.OK


def cmd_ingest(args: argparse.Namespace, kind: str) -> int:
    from mailops.pipeio import run_pipe

    return run_pipe(
        f"{kind} ingest",
        lambda: ingest(
            sys.stdin.buffer,
            kind,
            config_path=args.config,
            sender=args.sender or "",
            envelope_to=args.envelope_to or "",
        ),
    )


def register_common(sub: Any, kind: str) -> None:
    """The ``parse`` and ``ingest`` subcommands of ``mailops KIND``."""
    label = "DMARC aggregate" if kind == "dmarc" else "TLS-RPT"
    p = sub.add_parser(
        "parse",
        help=f"read {label} reports (XML/JSON, .gz, .zip or whole report mails)",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object a line, per " + ("record" if kind == "dmarc" else "policy"),
    )
    p.set_defaults(func=lambda a: cmd_parse(a, kind))
    i = sub.add_parser(
        "ingest",
        help=f"Postfix pipe on {kind}@: store the {label} reports of one mail (exit 0 or 75)",
    )
    i.add_argument("--sender", metavar="ADDR", help="the envelope sender (${sender})")
    i.add_argument(
        "--envelope-to", dest="envelope_to", metavar="ADDR", help="${original_recipient}"
    )
    i.set_defaults(func=lambda a: cmd_ingest(a, kind))
