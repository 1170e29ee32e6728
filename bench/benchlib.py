"""Shared helpers for the benchmarks: one result shape, time and peak memory of a run."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Result:
    """One row of bench/results.json.

    ``ratio`` is ours/peer for rates (higher is better) or as documented per benchmark;
    ``target`` is the ratio or figure to reach and ``met`` whether it was reached.
    """

    name: str
    unit: str
    ours: float
    peer: float | None
    peer_name: str | None
    ratio: float | None
    target: float | str
    met: bool
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Run:
    seconds: float
    max_rss_kib: int
    stdout: bytes


# The watcher: a bare interpreter (no site, no imports beyond os, sys and time) that
# forks the command, waits for it and writes its wall time and peak RSS to a file.
# Linux carries the peak RSS of the process that forked a child, as it was before the
# child's exec, into the child's ru_maxrss; the benchmark runner itself holds tens of
# MiB (the lab helpers, YAML), which would become every child's floor.  The watcher is
# a few MiB, below anything measured here.
_WATCHER = """\
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write(f"{sys.argv[2]}: {exc.strerror}\\n")
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    out.write(f"{seconds} {usage.ru_maxrss}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a command to completion; return wall time, its own peak RSS and its stdout.

    Both figures come from a small watcher process that forks the command and reads
    wait4()'s rusage for that one child (and its waited-for descendants): runs do not
    pollute each other's figures, and the runner's own memory is not counted in them.
    """
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as figures:
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _WATCHER, figures.name, *cmd],
            stdout=out,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
        seconds, max_rss_kib = figures.read().split()
        out.seek(0)
        return Run(seconds=float(seconds), max_rss_kib=int(max_rss_kib), stdout=out.read())


def best_of(rounds: int, cmds: list[tuple[list[str], dict[str, str] | None]]) -> list[Run]:
    """Run each command ``rounds`` times, taking turns, and keep each one's fastest run.

    Taking turns spreads a noisy neighbour over every command alike; the fastest of a
    few runs is the figure least disturbed by the rest of the machine.  The peak memory
    kept is the largest any run of that command had, so memory is never flattered.
    """
    if rounds < 1:
        raise ValueError(f"best_of needs at least one round, got {rounds}")
    best = [measure(cmd, env) for cmd, env in cmds]
    for _ in range(rounds - 1):
        for i, (cmd, env) in enumerate(cmds):
            run = measure(cmd, env)
            fastest = min(best[i], run, key=lambda r: r.seconds)
            peak = max(best[i].max_rss_kib, run.max_rss_kib)
            best[i] = Run(seconds=fastest.seconds, max_rss_kib=peak, stdout=fastest.stdout)
    return best


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def peak_pss(cmd: list[str], env: dict[str, str] | None = None, every: float = 0.002) -> int:
    """Run a command to completion and return the peak, over samples taken every
    ``every`` seconds, of the summed proportional set size (Pss, KiB) of it and every
    process it started: the memory a tool of several processes takes, each shared page
    counted once over all the processes that share it.  (A single process's peak RSS from
    wait4() would leave out a forked worker; summing RSS would count the pages a fork
    shares with its parent twice.)  The sampling costs time: use ``measure`` for that."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, env=env)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, sum(_pss_kib(p) for p in _tree(proc.pid)))
            time.sleep(every)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    return peak
