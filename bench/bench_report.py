"""mailops report against pflogsumm on the same 1,000,000-line log: speed and memory.

The log comes from bench/loggen.py (seed 1): a day of a busy MX and relay, in time
order.  Both tools read the whole file with no day filter, as a new process each, after
one read has put the file in the page cache: ``mailops report --day all --format json``
(interpreter start-up included; as many processes as the machine has cores, at most 4,
its default) and ``pflogsumm FILE`` (one process: Perl), five times each, taking turns,
with ``mailops report --jobs 1`` as a third for the notes; each one's fastest run is its
time (benchlib.measure).  Both grand totals must agree (pflogsumm rounds figures above
512k to k or m; ours are compared at its precision), and ours must be the same with one
process and with several, or the benchmark fails.

Memory is the peak of the summed proportional set size (Pss) of the tool's processes,
sampled every 2 ms (benchlib.peak_pss), the largest of two runs each: a page that a
forked worker shares with its parent counts once, not twice, and a worker is not left
out (wait4()'s peak RSS is of one process; those figures are in the notes too).

Results: lines per second (ratio ours/pflogsumm, target at least 5) and peak memory
(ratio ours/pflogsumm, target at most 0.25).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchlib import Result, best_of, measure, peak_pss
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
MEMORY_ROUNDS = 2
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
        ours_cmd = [*cmd, "--format", "json"]
        timed: list[tuple[list[str], dict[str, str] | None]] = [
            (ours_cmd, env),
            ([*ours_cmd, "--jobs", "1"], env),
        ]
        if pflogsumm is not None:
            timed.append(([pflogsumm, str(log)], None))
        runs = best_of(ROUNDS, timed)
        ours, one = runs[0], runs[1]
        mine = json.loads(ours.stdout)["totals"]
        if json.loads(one.stdout)["totals"] != mine:
            raise RuntimeError("one process and several counted different totals")
        ours_pss = max(peak_pss(ours_cmd, env) for _ in range(MEMORY_ROUNDS))
        alone = measure(
            [sys.executable, "-c", REPORT_ONLY, "--config", os.devnull, "report", "--log",
             str(log), "--day", "all", "--format", "json", "--jobs", "1"],
            env,
        )  # fmt: skip
        start = measure([sys.executable, "-m", "mailops", "--version"], env)
        if pflogsumm is None:
            peer = None
        else:
            peer = runs[2]
            peer_pss = max(peak_pss([pflogsumm, str(log)]) for _ in range(MEMORY_ROUNDS))
            theirs = grand_totals(peer.stdout.decode())
            wrong = {
                k: (in_units(mine[k]), theirs.get(k))
                for k in TOTALS
                if in_units(mine[k]) != theirs.get(k)
            }
            if wrong:
                raise RuntimeError(f"grand totals differ from pflogsumm's: {wrong}")
    finally:
        log.unlink(missing_ok=True)
    sys.path.insert(0, str(ROOT / "scripts"))
    from mailops.report.parallel import default_jobs

    rate = LINES / ours.seconds
    mib = ours_pss / 1024
    jobs = default_jobs()
    if peer is None:
        note = "pflogsumm not installed (Debian package pflogsumm): no comparison"
        return [
            Result("report 1M lines, throughput", "lines/s", round(rate), None, None, None,
                   SPEED_TARGET, False, note),
            Result("report 1M lines, peak memory", "MiB", round(mib, 1), None, None, None,
                   MEMORY_TARGET, False, note),
        ]  # fmt: skip
    peer_rate = LINES / peer.seconds
    peer_mib = peer_pss / 1024
    notes = (
        f"{ours.seconds:.2f} s ({jobs} processes) vs {peer.seconds:.2f} s, each the fastest "
        f"of {ROUNDS} runs taken in turns; all grand totals equal; process start included; "
        f"with --jobs 1 {one.seconds:.2f} s, {LINES / one.seconds:,.0f} lines/s "
        f"(ratio {peer.seconds / one.seconds:.2f})"
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
                f"peak summed Pss of all the tool's processes ({jobs} for ours), sampled every "
                f"2 ms, largest of {MEMORY_ROUNDS} runs; peak RSS from wait4(), of one process: "
                f"ours {ours.max_rss_kib / 1024:.1f} MiB, pflogsumm "
                f"{peer.max_rss_kib / 1024:.1f} MiB; with --jobs 1 {one.max_rss_kib / 1024:.1f}"
                f" MiB; mailops --version alone {start.max_rss_kib / 1024:.1f} MiB (the "
                f"interpreter and the CLI); the report module on its own, one process, "
                f"{alone.max_rss_kib / 1024:.1f} MiB"
            ),
        ),
    ]
