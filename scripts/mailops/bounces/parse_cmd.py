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
limit (1 MiB) of each file is read: the report parts come first in a bounce.  From 64
files on, they are read on every core this process may use (at most 4, forked
workers), and printed in the order given, as one process would.

Exit codes: 0 when every file was read, 66 when some file could not be read (the others
are still printed), 78 for a broken settings file.  The classifier itself never fails
on a message.

Settings (table ``[bounces]``, shared with ``bounces ingest``; flags override)::

    verp_prefixes = ["bounces"]   # local parts of VERP return paths: bounces+TOKEN@domain
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from typing import Any, BinaryIO, TextIO

from mailops import config, exitcodes
from mailops.bounceparse import MAX_INPUT, Report, parse_message
from mailops.forkwork import default_jobs, fork_to_file
from mailops.text import clean


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
    files: list[str] = list(args.files)
    jobs = min(default_jobs(), len(files) // MIN_FILES)
    if jobs < 2 or "-" in files:
        return _parse_files(files, args, prefixes, sys.stdout, sys.stderr)[0]
    return _parse_forked(files, args, prefixes, jobs)


# Below this many files per worker a batch is read here alone: a fork costs a few
# milliseconds, a message about half of one.
MIN_FILES = 32


def _parse_files(
    files: list[str],
    args: argparse.Namespace,
    prefixes: tuple[str, ...],
    out: TextIO,
    err: TextIO,
) -> tuple[int, bool]:
    """Classify ``files`` in order, their lines to ``out`` (flushed after each message),
    the unreadable ones named on ``err``.  Returns the exit status and whether ``out``'s
    reader is still there."""
    status = exitcodes.OK
    for path in files:
        name = _display_name(path)
        try:
            raw = _read(path)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            err.write(f"mailops bounces parse: {name}: cannot read ({reason})\n")
            err.flush()
            status = exitcodes.NOINPUT
            continue
        report = parse_message(raw, envelope_to=args.envelope_to, verp_prefixes=prefixes)
        lines = [
            (json.dumps(row, ensure_ascii=False) if args.json else text_line(row)) + "\n"
            for row in rows(name, report)
        ]
        try:
            out.write("".join(lines))  # one write a message: stdout may be unbuffered
            out.flush()
        except BrokenPipeError:  # the reader (head, less) went away: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            return status, False
    return status, True


Worker = tuple[int, BinaryIO]


def _parse_forked(
    files: list[str], args: argparse.Namespace, prefixes: tuple[str, ...], jobs: int
) -> int:
    """Classify ``files`` on ``jobs`` cores with the output of one process reading them
    in order.  The files are cut into ``jobs`` runs; this process reads the first and
    prints it as it goes, a forked child reads each later run into a temporary file,
    and this process prints those after it, in order.  A child that fails has its run
    read again here, so nothing is printed twice or lost.  (A fork shares the imported
    modules and compiled patterns with this process; a process started afresh would
    import them again.)"""
    bounds = [len(files) * n // jobs for n in range(jobs + 1)]
    runs = [files[bounds[n] : bounds[n + 1]] for n in range(jobs)]
    sys.stdout.flush()
    sys.stderr.flush()
    workers: list[Worker | None] = []
    for run in runs[1:]:
        try:
            workers.append(_fork_run(run, args, prefixes))
        except OSError:  # no fork: that run is read here
            workers.append(None)
    status, reading = _parse_files(runs[0], args, prefixes, sys.stdout, sys.stderr)
    for n, (run, worker) in enumerate(zip(runs[1:], workers, strict=True)):
        if not reading:
            _reap(workers[n:])
            break
        result = _collect(worker) if worker is not None else None
        if result is None:  # the child failed (or never started): read its run here
            code, reading = _parse_files(run, args, prefixes, sys.stdout, sys.stderr)
        else:
            code, text, problems = result
            sys.stderr.write(problems)
            sys.stderr.flush()
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except BrokenPipeError:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                reading = False
        status = max(status, code)
    return status


def _fork_run(files: list[str], args: argparse.Namespace, prefixes: tuple[str, ...]) -> Worker:
    """Classify ``files`` in a child; its pid and the file its output goes to."""

    def work(out: BinaryIO) -> None:
        text, problems = io.StringIO(), io.StringIO()
        status, _ = _parse_files(files, args, prefixes, text, problems)
        handed = [status, text.getvalue(), problems.getvalue()]
        out.write(json.dumps(handed, ensure_ascii=False).encode("utf-8", "surrogatepass"))

    return fork_to_file(work, "mailops bounces parse: a worker failed ({exc})")


def _collect(worker: Worker) -> tuple[int, str, str] | None:
    """What a child handed back once it exited, or None when it failed."""
    pid, out = worker
    with out:
        try:
            _, wait_status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        if os.waitstatus_to_exitcode(wait_status) != 0:
            return None
        out.seek(0)
        try:
            code, text, problems = json.loads(out.read().decode("utf-8", "surrogatepass"))
        except (ValueError, UnicodeError):
            return None
        return int(code), str(text), str(problems)


def _reap(workers: list[Worker | None]) -> None:
    """Stop children whose output nobody will read."""
    for worker in workers:
        if worker is None:
            continue
        pid, out = worker
        out.close()
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
