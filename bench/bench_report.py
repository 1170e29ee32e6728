"""mailops report against pflogsumm on the same 1,000,000-line log: speed and memory.

The log comes from bench/loggen.py (seed 1): a day of a busy MX and relay, in time
order.  Both tools read the whole file with no day filter, as a new process each, after
one read has put the file in the page cache: ``mailops report --day all --format json``
(interpreter start-up included) and ``pflogsumm FILE``, five times each, taking turns;
each tool's fastest run is its time and its largest peak its memory (benchlib.measure:
wait4() of a small watcher's child, so the runner's own memory is not counted).  Both
grand totals must agree (pflogsumm rounds figures above 512k to k or m; ours are
compared at its precision), or the benchmark fails.

Results: lines per second (ratio ours/pflogsumm, target at least 5) and peak resident
memory from wait4() (ratio ours/pflogsumm, target at most 0.25).  The memory note also
gives what ``mailops --version`` alone takes (the command imports every tool when it
starts) and the peak of the report code run without the other tools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchlib import Result, best_of, measure
from pflogsumm_text import grand_totals, in_units

ROOT = Path(__file__).resolve().parent.parent
# the report subcommand without the rest of the mailops command (for the memory note)
REPORT_ONLY = (
    "import argparse, sys\n"
    "from mailops.report import register\n"
    "p = argparse.ArgumentParser()\n"
    "p.add_argument('--config')\n"
    "register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args()\n"
    "sys.exit(a.func(a))\n"
)
LINES = 1_000_000
SPEED_TARGET = 5.0
ROUNDS = 5
MEMORY_TARGET = 0.25
TOTALS = (
    "received",
    "delivered",
    "forwarded",
    "deferred",
    "deferrals",
    "bounced",
    "rejected",
    "rejected_percent",
    "reject_warnings",
    "held",
    "discarded",
    "discarded_percent",
    "bytes_received",
    "bytes_delivered",
    "senders",
    "sending_hosts_domains",
    "recipients",
    "recipient_hosts_domains",
)


def run(workdir: Path) -> list[Result]:
    log = workdir / "mail.log"
    pflogsumm = shutil.which("pflogsumm")
    try:
        # written by a child, whose memory goes with it
        loggen = Path(__file__).with_name("loggen.py")
        subprocess.run(
            [sys.executable, str(loggen), "--lines", str(LINES), "--seed", "1", "--out", str(log)],
            check=True,
        )
        # the page cache, for both tools alike
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "MAILOPS_CONFIG": os.devnull}
        cmd = [sys.executable, "-m", "mailops", "report", "--log", str(log), "--day", "all"]
        timed: list[tuple[list[str], dict[str, str] | None]] = [([*cmd, "--format", "json"], env)]
        if pflogsumm is not None:
            timed.append(([pflogsumm, str(log)], None))
        runs = best_of(ROUNDS, timed)
        ours = runs[0]
        alone = measure(
            [sys.executable, "-c", REPORT_ONLY, "--config", os.devnull, "report", "--log",
             str(log), "--day", "all", "--format", "json"],
            env,
        )  # fmt: skip
        start = measure([sys.executable, "-m", "mailops", "--version"], env)
        if pflogsumm is None:
            peer = None
        else:
            peer = runs[1]
            theirs = grand_totals(peer.stdout.decode())
            mine = json.loads(ours.stdout)["totals"]
            wrong = {
                k: (in_units(mine[k]), theirs.get(k))
                for k in TOTALS
                if in_units(mine[k]) != theirs.get(k)
            }
            if wrong:
                raise RuntimeError(f"grand totals differ from pflogsumm's: {wrong}")
    finally:
        log.unlink(missing_ok=True)
    rate = LINES / ours.seconds
    mib = ours.max_rss_kib / 1024
    if peer is None:
        note = "pflogsumm not installed (Debian package pflogsumm): no comparison"
        return [
            Result("report 1M lines, throughput", "lines/s", round(rate), None, None, None,
                   SPEED_TARGET, False, note),
            Result("report 1M lines, peak memory", "MiB", round(mib, 1), None, None, None,
                   MEMORY_TARGET, False, note),
        ]  # fmt: skip
    peer_rate = LINES / peer.seconds
    peer_mib = peer.max_rss_kib / 1024
    notes = (
        f"{ours.seconds:.2f} s vs {peer.seconds:.2f} s, each the fastest of {ROUNDS} runs "
        "taken in turns; all grand totals equal; process start included"
    )
    return [
        Result(
            name="report 1M lines, throughput",
            unit="lines/s",
            ours=round(rate),
            peer=round(peer_rate),
            peer_name="pflogsumm",
            ratio=round(rate / peer_rate, 2),
            target=SPEED_TARGET,
            met=rate / peer_rate >= SPEED_TARGET,
            notes=notes,
        ),
        Result(
            name="report 1M lines, peak memory",
            unit="MiB",
            ours=round(mib, 1),
            peer=round(peer_mib, 1),
            peer_name="pflogsumm",
            ratio=round(mib / peer_mib, 3),
            target=MEMORY_TARGET,
            met=mib / peer_mib <= MEMORY_TARGET,
            notes=(
                f"peak RSS from wait4(), ratio ours/pflogsumm; mailops --version alone "
                f"{start.max_rss_kib / 1024:.1f} MiB (the interpreter and the CLI); the "
                f"report module on its own {alone.max_rss_kib / 1024:.1f} MiB "
                f"(ratio {alone.max_rss_kib / peer.max_rss_kib:.3f})"
            ),
        ),
    ]
