"""Bounce classification rate over the sample corpus: target at least 1,000 messages/s.

The 21 samples of tests/data/bounces (DSNs from Postfix, Sendmail, Office 365, Gmail
and SES; the plain notices of Postfix, Exim, Sendmail, qmail, Exchange, Gmail and Yahoo;
SES JSON notifications, ARF reports, auto-replies and a message that is not a bounce)
are copied to 6,300 files, and ``mailops bounces parse --json`` classifies them all in
one run: reading each file, parsing, every detector it takes, the JSON lines out, and
the interpreter's start-up.

There is no other classifier to compare with on this machine, so the peer is the floor
every Python classifier stands on: the standard library's email parser alone
(``BytesParser`` with the compat32 policy, which ours uses too) reading the same files
and doing nothing else.  ``ratio`` is ours/peer in messages per second: the share of the
parser-only rate that is left once the messages are actually classified.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from benchlib import Result, measure

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "bounces"
COPIES = 300
TARGET_RATE = 1000.0

PEER = """
import sys
from email.parser import BytesParser
from email.policy import compat32
parser = BytesParser(policy=compat32)
count = 0
for path in sys.argv[1:]:
    with open(path, "rb") as fh:
        parser.parsebytes(fh.read())
    count += 1
print(count)
"""


def corpus(workdir: Path) -> tuple[list[str], Counter[str], int]:
    """Copy the samples; return the file list, the expected reasons and line count."""
    files: list[str] = []
    reasons: Counter[str] = Counter()
    lines = 0
    samples = sorted(DATA.glob("*.eml"))
    for sample in samples:
        expected = json.loads(sample.with_suffix(".expected.json").read_text())
        for rcpt in expected["recipients"]:
            reasons[rcpt["reason"]] += COPIES
        lines += COPIES * max(1, len(expected["recipients"]))
    data = {s: s.read_bytes() for s in samples}
    for i in range(COPIES):
        folder = workdir / f"{i:03d}"
        folder.mkdir()
        for sample, raw in data.items():
            path = folder / sample.name
            path.write_bytes(raw)
            files.append(str(path))
    return files, reasons, lines


def run(workdir: Path) -> list[Result]:
    mail = workdir / "mail"
    mail.mkdir()
    try:
        files, want_reasons, want_lines = corpus(mail)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "MAILOPS_CONFIG": "/dev/null"}
        cmd = [sys.executable, "-m", "mailops", "bounces", "parse", "--json", *files]
        measure(cmd, env)  # warm the page cache and the bytecode cache; time the next
        ours = measure(cmd, env)
        rows = [json.loads(line) for line in ours.stdout.splitlines()]
        if len(rows) != want_lines:
            raise RuntimeError(f"{len(rows)} output lines, expected {want_lines}")
        got_reasons = Counter(r["reason"] for r in rows if r["reason"] is not None)
        if got_reasons != want_reasons:
            raise RuntimeError(f"reasons {dict(got_reasons)} differ from the samples'")
        peer_cmd = [sys.executable, "-c", PEER, *files]
        measure(peer_cmd)
        peer = measure(peer_cmd)
        if int(peer.stdout) != len(files):
            raise RuntimeError("the email.parser run read a different number of files")
    finally:
        shutil.rmtree(mail, ignore_errors=True)
    ours_rate = len(files) / ours.seconds
    peer_rate = len(files) / peer.seconds
    return [
        Result(
            name=f"bounces parse, {len(files)} messages",
            unit="messages/s",
            ours=round(ours_rate, 1),
            peer=round(peer_rate, 1),
            peer_name="email.parser only",
            ratio=round(ours_rate / peer_rate, 3),
            target=TARGET_RATE,
            met=ours_rate >= TARGET_RATE,
            notes=(
                f"{len(files) // COPIES} samples x {COPIES}, {want_lines} recipient lines "
                f"checked against the "
                f"expected reasons; {ours.seconds:.2f} s including start-up; peak RSS "
                f"{ours.max_rss_kib // 1024} MiB"
            ),
        )
    ]
