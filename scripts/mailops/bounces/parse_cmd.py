"""``mailops bounces parse FILE... [--json]``: the bounce classifier over files.

One line per recipient of each message (a message with no recipient, such as one that
is not a bounce, gives one line whose recipient is null).  With ``--json`` each line is
a JSON object::

    {"file": "b.eml", "kind": "bounce", "recipient": "user@example.com",
     "status": "5.1.1", "reason": "userunknown", "hard": true,
     "diagnostic": "550 5.1.1 ...", "action": "failed", "detector": "rfc3464",
     "original_message_id": "<...>", "x_message_id": "...", "verp_token": "..."}

Without it, a tab-separated line: file, kind, detector, recipient, status, reason,
hard/soft, diagnostic.  ``-`` reads standard input.  At most the classifier's input
limit (1 MiB) of each file is read: the report parts come first in a bounce.

Exit codes: 0 when every file was read, 66 when some file could not be read (the others
are still printed), 78 for a broken settings file.  The classifier itself never fails
on a message.

Settings (table ``[bounces]``, shared with ``bounces ingest``; flags override)::

    verp_prefixes = ["bounces"]   # local parts of VERP return paths: bounces+TOKEN@domain
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from mailops import config, exitcodes
from mailops.bounceparse import MAX_INPUT, Report, parse_message
from mailops.bounceparse._text import clean


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "parse",
        help="classify bounce/feedback/auto-reply messages in files, one line per recipient",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="message files (- for stdin)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--envelope-to",
        default="",
        metavar="ADDR",
        help="envelope recipient of every message (for its VERP token)",
    )
    parser.add_argument(
        "--verp-prefix",
        action="append",
        metavar="LOCALPART",
        help="local part of VERP return paths (repeatable; default from [bounces], 'bounces')",
    )
    parser.set_defaults(func=cmd_parse)


def verp_prefixes(args: argparse.Namespace) -> tuple[str, ...]:
    """[bounces] verp_prefixes, overridden by --verp-prefix, checked by the settings reader
    that `mailops config check` runs."""
    data = config.load(getattr(args, "config", None))
    flags = {"verp_prefixes": args.verp_prefix}
    values = config.table(data, "bounces", flags, {"verp_prefixes": "--verp-prefix"})
    return tuple(values["verp_prefixes"])


def rows(name: str, report: Report) -> list[dict[str, Any]]:
    """The output objects of one message: one per recipient, or one with nulls."""
    common: dict[str, Any] = {"file": name, "kind": report.kind}
    links = {
        "detector": report.detector,
        "original_message_id": report.original_message_id,
        "x_message_id": report.x_message_id,
        "verp_token": report.verp_token,
    }
    if not report.recipients:
        empty = dict.fromkeys(("recipient", "status", "reason", "hard", "diagnostic", "action"))
        return [{**common, **empty, **links}]
    return [
        {
            **common,
            "recipient": r.address or None,
            "status": r.status,
            "reason": r.reason,
            "hard": r.hard,
            "diagnostic": r.diagnostic,
            "action": r.action,
            **links,
        }
        for r in report.recipients
    ]


def text_line(row: dict[str, Any]) -> str:
    hard = row["hard"]
    fields = [
        row["file"],
        row["kind"],
        row["detector"],
        row["recipient"] or "-",
        row["status"] or "-",
        row["reason"] or "-",
        "-" if hard is None else ("hard" if hard else "soft"),
        (row["diagnostic"] or "")[:200],
    ]
    return "\t".join(fields)


def _display_name(path: str) -> str:
    """The file name as given, as printable one-line text whatever its bytes."""
    return clean(os.fsencode(path).decode("utf-8", "replace"), 4096)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read(MAX_INPUT)
    with open(path, "rb") as fh:
        return fh.read(MAX_INPUT)


def cmd_parse(args: argparse.Namespace) -> int:
    prefixes = verp_prefixes(args)
    status = exitcodes.OK
    out = sys.stdout
    for path in args.files:
        name = _display_name(path)
        try:
            raw = _read(path)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            print(f"mailops bounces parse: {name}: cannot read ({reason})", file=sys.stderr)
            status = exitcodes.NOINPUT
            continue
        report = parse_message(raw, envelope_to=args.envelope_to, verp_prefixes=prefixes)
        try:
            for row in rows(name, report):
                line = json.dumps(row, ensure_ascii=False) if args.json else text_line(row)
                out.write(line + "\n")
            out.flush()
        except BrokenPipeError:  # the reader (head, less) went away: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            return status
    return status
