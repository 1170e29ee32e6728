"""``mailops report``: a daily summary of the Postfix log with pflogsumm's numbers.

Usage::

    mailops report [--log FILE ...] [--cluster] [--logs-from DIR]
                   [--rotated | --no-rotated]
                   [--day today|yesterday|YYYY-MM-DD|all] [--format text|json|html|mail]
                   [--mail-to ADDR ...] [--mail-from ADDR] [--year YYYY] [--top N]
                   [--syslog-name NAME] [--jobs N] [--part-size BYTES]
                   [--tenants-config FILE]

Reads Postfix's log (syslog's file or Postfix's own ``maillog_file``; classic or ISO
timestamps; plain or gzip, found by content), one stream in the order given, in
bounded memory, and prints the grand totals pflogsumm 1.1.5 prints, with its meanings
(see ``mailops.report.tally``), then traffic per hour and per day, per-destination
delivered/deferred/bounced with average and maximum delay, top bounce, deferral and
reject reasons, SASL authentication failures per client and per-sender-domain volume.

``--rotated`` also reads ``FILE.1``, ``FILE.2.gz``..., ``FILE-YYYYMMDD[.gz]`` (oldest
first), leaving out those last written before the day asked for.  ``--day`` keeps the
lines of one day as pflogsumm's ``-d`` does (classic timestamps have no year: ``Nov 23``
lines of any year count; ``--year`` names the year for the per-day table, which
otherwise follows pflogsumm: this year, or last year for a month still to come).  When
not one line of the day asked for counted, the report says so (a warning on stderr and
in every format) instead of printing zeros without a word.

When the settings name tenants (``[tenants.NAME]``; ``--tenants-config FILE`` reads them,
``[transport_classes]`` and ``[store]`` from another file, as the monitor's cluster
report does), every format gets a per-tenant section: one line per tenant with its
figures of the day, as ``mailops tenants status`` defines them (``mailops.report.tenants``;
the logs are read a second time for it, only then).

Formats: ``text`` (pflogsumm's layout with exact numbers, for grep), ``json`` (schema
``mailops.report/1``, docs/report.md), ``html`` (a standalone HTML page, its PNG charts
of hourly traffic and outcomes per destination inside it as ``data:`` URIs) and
``mail`` (a MIME message: text alternative plus the HTML, the charts as inline
``multipart/related`` parts referenced by ``cid:``, printed so it can be piped to
``sendmail -t`` or saved).  ``--mail-to ADDR`` (or ``--mail``, to the settings'
``mail_to``) sends the report through ``sendmail`` instead of printing it (``html`` and
``mail`` both send the MIME message); without either the report is printed, even where
the settings name recipients.

A large plain file (32 MiB or more) is counted by up to ``--jobs`` processes at once,
one part of the file each, with the same figures (``mailops.report.parallel``); the
default is one per core, at most 4.  ``--jobs 1`` reads with one process.
``--part-size BYTES`` lowers the 16 MiB a part must have, so that a test can have a
small log read in parts.

Several ``--log`` files are one stream, read in the order given, as pflogsumm reads
them: a queue id is one message wherever it appears.  For one report of the whole
cluster, run on the monitor host over a copy of every node's log, ``--cluster`` takes
each ``--log`` FILE (with its rotations, with ``--rotated``) as the log of another host:
each is counted apart, so the same queue id on two hosts is two messages, and the
figures are added up.  ``--logs-from DIR`` is ``--cluster`` with every log in DIR (a
file whose name is another's plus a rotation suffix goes with that one).

Exit codes: 0 done; 2 bad arguments; 66 a log cannot be read; 75 sendmail failed;
78 bad settings or no sendmail.

Settings (table ``[report]`` of the mailops settings file; flags override them)::

    logs = ["/var/log/mail.log"]
    rotated = false
    day = "yesterday"
    format = "text"
    mail_to = []                 # e.g. ["ops@company.com"], used by --mail
    mail_from = ""               # "" = mailops@<this host's FQDN>
    subject = ""                 # "" = "Postfix log summary for DAY on HOST: ..."
    sendmail = "/usr/sbin/sendmail"
    year = 0                     # 0 = pflogsumm's guess for yearless timestamps
    top = 20                     # rows per table
    syslog_name = "postfix"      # also count lines of this syslog_name (multi-instance)
    cap = 5000                   # entries kept per domain/reason table before pruning
    jobs = 0                     # processes for a large file; 0 = one per core (at most 4)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mailops import config, exitcodes
from mailops.config import ConfigError

# "mail" is also accepted where the settings reader does not list it yet: the flag is
# taken here, before the reader checks the rest
FORMATS: tuple[str, ...] = tuple(
    dict.fromkeys((*config.SCHEMA["report"]["format"].choices, "mail"))
)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the [report] table, then the flags that were given, all checked by
    the settings reader that `mailops config check` runs."""
    flags = {
        "logs": args.log,
        "rotated": args.rotated,
        "format": None if args.format == "mail" else args.format,
        "mail_to": args.mail_to,
        "mail_from": args.mail_from,
        "year": args.year,
        "top": args.top,
        "syslog_name": args.syslog_name,
        "jobs": args.jobs,
    }
    merged = config.table(config.load(getattr(args, "config", None)), "report", flags)
    if args.day is not None:  # checked by run(), which says what a --day may be
        merged["day"] = args.day
    if args.format == "mail":
        merged["format"] = "mail"
    if not merged["logs"]:
        raise ConfigError("[report] logs is empty and no --log was given")
    return merged


def _err(text: str) -> None:
    print(f"mailops report: {text}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from mailops.report import build

    s = settings(args)
    try:
        day = build.parse_day(s["day"])
    except ValueError as exc:
        _err(str(exc))
        return exitcodes.USAGE
    mail = bool(args.mail_to) or args.mail
    if mail and not s["mail_to"]:
        _err("--mail: no recipients ([report] mail_to is empty and no --mail-to)")
        return exitcodes.USAGE
    logs = list(s["logs"])
    cluster = bool(args.cluster)
    groups: list[list[Path]] = []
    try:
        if args.logs_from is not None:
            logs = build.host_logs(Path(args.logs_from))
            cluster = True
        if cluster:
            groups = [list(build.iter_paths([log], s["rotated"], day)) for log in logs]
            tally, sources = build.tally_cluster(
                groups,
                day,
                s["syslog_name"],
                s["cap"],
                jobs=s["jobs"] or None,
                min_part=args.part_size,
            )
        else:
            paths = list(build.iter_paths(logs, s["rotated"], day))
            groups = [paths]
            tally, sources = build.tally_files(
                paths,
                day,
                s["syslog_name"],
                s["cap"],
                jobs=s["jobs"] or None,
                min_part=args.part_size,
            )
    except build.LogError as exc:
        _err(str(exc))
        return exitcodes.NOINPUT
    warnings = [w for w in (build.nothing_of_the_day(tally, day),) if w]
    for w in warnings:
        _err(f"warning: {w}")
    rep = build.report(tally, sources, day, top=s["top"], year=s["year"] or None, warnings=warnings)
    del tally  # its sets are the bulk of the memory; the mail code loads after they go
    try:
        part = _tenants(args, groups, day, s["syslog_name"])
    except build.LogError as exc:
        _err(str(exc))
        return exitcodes.NOINPUT
    if part is not None:
        rep["tenants"] = part
    reports_part = _reports(args, day)
    if reports_part is not None:
        rep["dmarc"] = reports_part
    from mailops.report import render

    if not mail:
        if s["format"] == "json":
            out = render.as_json(rep)
        elif s["format"] == "text":
            out = render.as_text(rep)
        elif s["format"] == "html":
            out = render.page(rep)
        else:
            out = render.mail(rep, "mail", _mail_from(s), ["root"], s["subject"]).as_string()
        sys.stdout.write(out)
        return exitcodes.OK
    return send(rep, s)


def _tenants(
    args: argparse.Namespace, groups: list[list[Path]], day: Any, syslog_name: str
) -> dict[str, Any] | None:
    """The per-tenant section (mailops.report.tenants), when the settings (or
    ``--tenants-config``) name tenants; None otherwise."""
    source = getattr(args, "tenants_config", None) or getattr(args, "config", None)
    data = config.load(source)
    if not data.get("tenants"):
        return None
    from mailops.report import tenants

    return tenants.section(data, groups, day, syslog_name)


def _reports(args: argparse.Namespace, day: Any) -> dict[str, Any] | None:
    """The DMARC and TLS-RPT section (mailops.dmarc.figures), when the settings (or
    ``--tenants-config``) say ``[reports] in_report = true``; None otherwise."""
    source = getattr(args, "tenants_config", None) or getattr(args, "config", None)
    data = config.load(source)
    if not data.get("reports"):
        return None
    from mailops.dmarc import figures

    return figures.section(data, day)


def _mail_from(s: dict[str, Any]) -> str:
    return str(s["mail_from"]) or f"mailops@{socket.getfqdn()}"


def send(rep: dict[str, Any], s: dict[str, Any]) -> int:
    """Hand the report to sendmail(1); a clear error when there is none."""
    from mailops.report import render

    sendmail = str(s["sendmail"])
    if not (Path(sendmail).is_file() and os.access(sendmail, os.X_OK)):
        _err(
            f"cannot mail the report: {sendmail} is not an executable file "
            "(install Postfix or set [report] sendmail)"
        )
        return exitcodes.CONFIG
    msg = render.mail(rep, s["format"], _mail_from(s), list(s["mail_to"]), s["subject"])
    try:
        proc = subprocess.run(
            [sendmail, "-oi", "--", *s["mail_to"]],
            input=msg.as_bytes(),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _err(f"{sendmail} failed: {exc}")
        return exitcodes.TEMPFAIL
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()
        _err(f"{sendmail} exited {proc.returncode}: {detail}")
        return exitcodes.TEMPFAIL
    return exitcodes.OK


def _year(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a year such as 2024") from None
    if not 1970 <= value <= 9999:
        raise argparse.ArgumentTypeError("must be a year such as 2024")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="daily summary of the Postfix log (pflogsumm's totals, charts by mail)",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument(
        "--log",
        action="append",
        metavar="FILE",
        help="log to read (repeat: one stream, in order; default: [report] logs)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="each --log FILE is another host's: count each apart (a queue id per host) "
        "and add them up, one report for the cluster",
    )
    parser.add_argument(
        "--logs-from",
        metavar="DIR",
        help="--cluster over every log in DIR (e.g. the copies of each node's log on the "
        "monitor), instead of --log",
    )
    parser.add_argument(
        "--rotated",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also read FILE.1, FILE.2.gz ... that may hold lines of the day",
    )
    parser.add_argument("--day", help="today, yesterday, YYYY-MM-DD or all (default yesterday)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="text (pflogsumm's layout), json (docs/report.md), html (a standalone page "
        "with its charts) or mail (a MIME message, charts inline); default text",
    )
    parser.add_argument(
        "--mail-to",
        action="append",
        metavar="ADDR",
        help="mail the report to ADDR (repeat) through sendmail instead of printing it",
    )
    parser.add_argument(
        "--mail", action="store_true", help="mail the report to the settings' mail_to"
    )
    parser.add_argument(
        "--mail-from",
        metavar="ADDR",
        help="sender of the mailed report (default: [report] mail_from, else mailops@FQDN)",
    )
    parser.add_argument(
        "--tenants-config",
        metavar="FILE",
        help="read [tenants], [transport_classes] and [store] for the per-tenant section "
        "from FILE (default: the settings file)",
    )
    parser.add_argument("--year", type=_year, help="year of classic (yearless) timestamps")
    parser.add_argument("--top", type=_positive, metavar="N", help="rows per table (default 20)")
    parser.add_argument("--syslog-name", metavar="NAME", help="also count this Postfix syslog_name")
    parser.add_argument(
        "--jobs",
        type=_positive,
        metavar="N",
        help="processes for a plain file of 32 MiB or more (default one per core, at most 4)",
    )
    parser.add_argument(
        "--part-size",
        type=_positive,
        metavar="BYTES",
        help="smallest part of a file one process counts (default 16 MiB); a few KiB cuts "
        "even a small log into --jobs parts, to check the parallel reader on it",
    )
    parser.set_defaults(func=run)
