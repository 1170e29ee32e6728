"""One day's lines of this host's mail log, for the cluster report on the monitor.

Usage::

    python -m mailops.report.lines [--log FILE ...] [--no-rotated]
                                   (--day today|yesterday|YYYY-MM-DD | --from-ssh)

Prints, unchanged and in order, every line of FILE (default ``/var/log/mail.log``) and
of its rotated siblings that belongs to the day: the files the report itself reads
(``FILE.1``, ``FILE.2.gz``, ``FILE-YYYYMMDD[.gz]``, those last written before the day
left out, gzip found by content) and the day's test the report applies (pflogsumm's
``-d``: ``Nov 23``/``Nov  3`` or ``2024-11-23``, then the hour), also taking the
zero-padded ``Nov 03`` of Postfix's own ``maillog_file``.  The monitor copies
these lines of every node into one file per node and runs ``mailops report
--logs-from DIR`` over them.

``--from-ssh`` is for an authorized_keys forced command: the day is then the whole of
``SSH_ORIGINAL_COMMAND``, which must be exactly ``today``, ``yesterday`` or a date
``YYYY-MM-DD``; anything else (an empty command, a second word, a path, ``all``) is
refused with exit code 2 before any file is opened.

Exit codes: 0 done (also when no line of the day was found); 2 bad arguments or a
refused day; 66 a log cannot be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from mailops import exitcodes
from mailops.report import build
from mailops.report.tally import CHUNK, DaySpec

DEFAULT_LOG = "/var/log/mail.log"
# what a forced command lets the caller choose: the day, and nothing else
_REQUEST = re.compile(r"(?:today|yesterday|\d{4}-\d\d-\d\d)\Z")


class Refused(ValueError):
    """The day asked for over SSH is not one this command gives out."""


def requested_day(command: str | None, today: dt.date | None = None) -> dt.date:
    """The day an SSH client asked for (``SSH_ORIGINAL_COMMAND``), checked strictly."""
    text = command if command is not None else ""
    if not _REQUEST.match(text):
        raise Refused(f"expected today, yesterday or YYYY-MM-DD, not {text[:40]!r}")
    try:
        day = build.parse_day(text, today)
    except ValueError:
        raise Refused(f"not a date: {text!r}") from None
    assert day is not None  # "all" never matches _REQUEST
    return day


def day_pattern(day: dt.date) -> re.Pattern[bytes]:
    """Lines of ``day``: the timestamps the report's own day test takes (the zero-padded
    ``Dec 07`` that Postfix's own ``maillog_file`` writes among them)."""
    spec = DaySpec(day.year, day.month, day.day)
    classic = b"|".join(re.escape(d) for d in spec.classic)
    return re.compile(rb"(?:(?:" + classic + rb") \d\d|" + re.escape(spec.iso) + rb"[T ]\d\d)")


def _lines(fh: BinaryIO) -> Iterable[bytes]:
    """The lines of an open log, each with its newline (one added to a last line
    without one), read in blocks."""
    rest = b""
    while True:
        block = fh.read(CHUNK)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n") + 1
        rest = block[cut:]
        if cut:
            yield from block[:cut].splitlines(keepends=True)
    if rest:
        yield rest + b"\n"


def stream(paths: Sequence[Path], day: dt.date, out: BinaryIO) -> int:
    """Write the lines of ``day`` in ``paths`` to ``out``; the number written."""
    wanted = day_pattern(day)
    written = 0
    for path in paths:
        fh = build.open_log(path)
        try:
            for line in _lines(fh):
                if wanted.match(line):
                    out.write(line)
                    written += 1
        finally:
            fh.close()
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mailops.report.lines",
        description="Print one day's lines of the mail log (and of its rotated files).",
    )
    p.add_argument("--log", action="append", metavar="FILE", help=f"default {DEFAULT_LOG}")
    p.add_argument(
        "--rotated",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also read FILE.1, FILE.2.gz ... that may hold lines of the day (default)",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", help="today, yesterday or YYYY-MM-DD")
    which.add_argument(
        "--from-ssh",
        action="store_true",
        help="take the day from SSH_ORIGINAL_COMMAND (an authorized_keys forced command)",
    )
    return p


def main(argv: Sequence[str] | None = None, out: BinaryIO | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.from_ssh:
            day = requested_day(os.environ.get("SSH_ORIGINAL_COMMAND"))
        else:
            day = requested_day(args.day)
    except Refused as exc:
        print(f"mailops report lines: refused: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    logs = args.log or [DEFAULT_LOG]
    sink = out if out is not None else sys.stdout.buffer
    try:
        stream(list(build.iter_paths(logs, args.rotated, day)), day, sink)
    except build.LogError as exc:
        print(f"mailops report lines: {exc}", file=sys.stderr)
        return exitcodes.NOINPUT
    sink.flush()
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
