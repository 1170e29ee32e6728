"""saslblock's incremental run over 1,000,000 new log lines: target under 2 s.

The log comes from bench/loggen.py (shared with the report benchmark): a day of a busy
MX's mixed traffic, most of it ordinary session and delivery lines, with a small share
of SASL failures: guessers' bursts (some with addresses in their user names), people
mistyping, and "Connection lost to authentication server".

A first run over a short earlier log makes the state file, as cron would have; then
1,000,000 lines are appended and the next run is timed as cron starts it: a new
``python -m mailops saslblock`` process, interpreter start-up, reading the new lines,
writing the access table (text only: ``--no-postmap``, Postfix is not needed here) and
the state.  The answers are checked: every guesser and nobody else is blocked, and no
address that appears only inside a user name.

The peer is ``grep -c 'authentication failed'`` over the same whole file: the shell
one-liners these blockers replace start from it, and it only counts.  ``ratio`` is
ours/peer time (informational: grep neither parses nor keeps state); ``met`` is ours
under the 2 s target.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from benchlib import Result, measure
from loggen import LogStats, write_log

ROOT = Path(__file__).resolve().parent.parent
NEW_LINES = 1_000_000
TARGET_SECONDS = 2.0


def run(workdir: Path) -> list[Result]:
    log = workdir / "mail.log"
    table = workdir / "access_dynamic"
    state = workdir / "saslblock.json"
    now = time.time()
    try:
        earlier = write_log(log, 2_000, now - 23.5 * 3600, now - 23 * 3600, seed=7)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "MAILOPS_CONFIG": "/dev/null"}
        cmd = [sys.executable, "-m", "mailops", "saslblock", "--log", str(log)]
        cmd += ["--map", str(table), "--state", str(state), "--no-postmap"]
        measure(cmd, env)
        offset_before = log.stat().st_size
        stats = write_log(log, NEW_LINES, now - 23 * 3600, now - 60, seed=8, append=True)
        with open(log, "rb") as fh:  # as on a live MX, the new lines are in the page cache
            while fh.read(1 << 24):
                pass
        ours = measure(cmd, env)
        blocked = {
            line.split()[0]
            for line in table.read_text().splitlines()
            if line and not line.startswith("#")
        }
        # A guesser's burst may straddle the two logs: judge on both together.
        both = LogStats(
            times={
                ip: earlier.times.get(ip, []) + stats.times.get(ip, [])
                for ip in earlier.times.keys() | stats.times.keys()
            }
        )
        expected = both.finish().guessers
        if blocked != expected or not stats.guessers:
            missed, wrong = sorted(expected - blocked), sorted(blocked - expected)
            raise RuntimeError(f"blocked the wrong clients: missed {missed[:5]}, wrong {wrong[:5]}")
        if blocked & ((stats.injected | earlier.injected) - expected):
            raise RuntimeError("blocked an address taken from a user name")
        newly = {line.split()[1].rstrip(":") for line in ours.stdout.decode().splitlines()}
        if newly != stats.guessers - earlier.guessers:
            raise RuntimeError("output is not one line per newly blocked client")
        read = int(json.loads(state.read_text())["log"]["offset"])
        if read != log.stat().st_size or read <= offset_before:
            raise RuntimeError("the run did not read exactly to the end of the log")
        peer = measure(["grep", "-c", "authentication failed", str(log)])
        if int(peer.stdout) != stats.auth_failed_lines + earlier.auth_failed_lines:
            raise RuntimeError("grep counted a different number of failure lines")
    finally:
        for p in (log, table, state, state.with_name(state.name + ".lock")):
            p.unlink(missing_ok=True)
    size_mib = (read - offset_before) / 2**20
    return [
        Result(
            name="saslblock incremental, 1M new lines",
            unit="seconds",
            ours=round(ours.seconds, 3),
            peer=round(peer.seconds, 3),
            peer_name="grep -c",
            ratio=round(ours.seconds / peer.seconds, 2),
            target=TARGET_SECONDS,
            met=ours.seconds < TARGET_SECONDS,
            notes=(
                f"{NEW_LINES} new lines ({size_mib:.0f} MiB), "
                f"{sum(stats.failures.values())} failures counted, "
                f"{sum(stats.server_faults.values())} server-side not counted, "
                f"{len(newly)} newly blocked; process start included; peak RSS "
                f"{ours.max_rss_kib // 1024} MiB; grep only counts lines"
            ),
        )
    ]
