"""Shared helpers for the benchmarks: one result shape, time and peak memory of a run."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
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


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a command to completion; return wall time, its own peak RSS and its stdout.

    The peak comes from wait4()'s rusage for that one child (and its waited-for
    descendants), so runs do not pollute each other's figures.
    """
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
        out.seek(0)
        return Run(seconds=seconds, max_rss_kib=usage.ru_maxrss, stdout=out.read())
