"""``mailops dmarc``: DMARC aggregate reports (RFC 7489, DMARCbis) sent to dmarc@.

Usage::

    mailops dmarc parse FILE... [--json]     read reports: XML, .gz, .zip or report mails
    mailops dmarc ingest [--sender A] [--envelope-to A]
                                             the Postfix pipe on dmarc@ (exit 0 or 75)
    mailops dmarc figures [--hours N | --day D] [--format text|json|prometheus]
                          [--output FILE]    per domain: passed/failed, sources outside
                                             the plan, TLS failures by type
    mailops dmarc quarantine [--show ID]     report mails kept for a person
    mailops dmarc stored [--hours N]         the stored DMARC records and TLS-RPT
                                             policies received lately, as JSON lines

``parse --json`` writes one line per record: file, org_name, report_id, policy_domain,
begin, end (epoch seconds), source_ip, count, disposition, dkim, spf (policy-evaluated),
header_from.  The TLS-RPT side is ``mailops tlsrpt`` (:mod:`mailops.tlsrpt`); both store
into the same tables (store migration 6) and share :mod:`mailops.dmarc.commands`.
docs/dmarc.md has the formats, the pipes, the quarantine and the figures.

Settings: table ``[reports]`` (``max_message_bytes``, ``max_report_bytes``,
``planned_sources``, ``in_report``, ``top``) and ``[store]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailops import config, exitcodes


def cmd_figures(args: argparse.Namespace) -> int:
    from mailops.dmarc import figures
    from mailops.store import StoreError, open_from_config

    data = config.load(args.config)
    values = config.table(data, "reports")
    now = time.time()
    if args.day:
        from mailops.report.build import parse_day

        try:
            since, until = figures.day_bounds(parse_day(args.day))
        except ValueError as exc:
            print(f"mailops dmarc figures: {exc}", file=sys.stderr)
            return exitcodes.USAGE
    else:
        since, until = int(now - args.hours * 3600), 2**62
    planned = figures.planned_networks(values["planned_sources"])
    try:
        with open_from_config(data) as store:
            fig = figures.compute(store, since, until, planned, int(values["top"]))
    except StoreError as exc:
        print(f"mailops dmarc figures: {exc}", file=sys.stderr)
        return exitcodes.TEMPFAIL
    if args.format == "json":
        text = json.dumps(fig, indent=2) + "\n"
    elif args.format == "prometheus":
        text = figures.prometheus(fig, now, args.hours)
    else:
        text = "\n".join(figures.text_lines(fig)) + "\n"
    if not args.output:
        sys.stdout.write(text)
        return exitcodes.OK
    target = Path(args.output)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(target)
    except OSError as exc:
        print(f"mailops dmarc figures: cannot write {target}: {exc}", file=sys.stderr)
        return exitcodes.CANTCREAT
    return exitcodes.OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    from mailops.store import StoreError, open_from_config

    data = config.load(args.config)
    try:
        with open_from_config(data) as store:
            kept = store.quarantined_reports(with_message=args.show is not None)
    except StoreError as exc:
        print(f"mailops dmarc quarantine: {exc}", file=sys.stderr)
        return exitcodes.TEMPFAIL
    if args.show is not None:
        match = [q for q in kept if int(q["id"]) == args.show]
        if not match:
            print(f"mailops dmarc quarantine: no kept mail #{args.show}", file=sys.stderr)
            return exitcodes.NOINPUT
        sys.stdout.buffer.write(match[0]["message"])
        return exitcodes.OK
    for q in kept:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(q["received_at"])))
        subject = q["subject"] or "(no subject)"
        print(f"#{q['id']}  {when}  {q['kind']}  {q['sender'] or '-'}  {subject}: {q['error']}")
    return exitcodes.OK


def cmd_stored(args: argparse.Namespace) -> int:
    from mailops.store import StoreError, open_from_config

    data = config.load(args.config)
    since = int(time.time() - args.hours * 3600)
    try:
        with open_from_config(data) as store:
            dmarc = store.dmarc_records(since=since)
            tls = store.tlsrpt_policies(since=since)
    except StoreError as exc:
        print(f"mailops dmarc stored: {exc}", file=sys.stderr)
        return exitcodes.TEMPFAIL
    for kind, rows in (("dmarc", dmarc), ("tlsrpt", tls)):
        for row in rows:
            print(json.dumps({"kind": kind, **{k: v for k, v in row.items() if k != "id"}}))
    return exitcodes.OK


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of hours") from None
    if not 0 < value <= 24 * 366:
        raise argparse.ArgumentTypeError("must be > 0 and at most a year")
    return value


def register(subparsers: Any) -> None:
    from mailops.dmarc.commands import register_common

    parser = subparsers.add_parser(
        "dmarc",
        help="DMARC aggregate reports: parse, the dmarc@ pipe, figures, quarantine",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
    )
    sub = parser.add_subparsers(dest="dmarc_command", metavar="ACTION")
    sub.required = True
    register_common(sub, "dmarc")
    f = sub.add_parser(
        "figures", help="per domain: DMARC pass/fail, sources outside the plan, TLS failures"
    )
    when = f.add_mutually_exclusive_group()
    when.add_argument(
        "--hours", type=_hours, default=24.0, help="reports received in the last N hours (24)"
    )
    when.add_argument("--day", help="reports received on a day: today, yesterday, YYYY-MM-DD")
    f.add_argument("--format", choices=("text", "json", "prometheus"), default="text")
    f.add_argument("--output", metavar="FILE", help="write there (atomically) instead of stdout")
    f.set_defaults(func=cmd_figures)
    q = sub.add_parser("quarantine", help="list report mails kept for a person, or print one")
    q.add_argument("--show", type=int, metavar="ID", help="print kept mail ID as it arrived")
    q.set_defaults(func=cmd_quarantine)
    st = sub.add_parser("stored", help="stored records and policies received lately (JSON lines)")
    st.add_argument("--hours", type=_hours, default=24.0, help="received in the last N hours (24)")
    st.set_defaults(func=cmd_stored)
