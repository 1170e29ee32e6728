"""The lab lock: a second lab run waits for the first instead of tearing its hosts down."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import lab


def test_second_holder_times_out_while_first_holds(tmp_path: Path, monkeypatch) -> None:
    lock = tmp_path / "lab.lock"
    monkeypatch.setattr(lab, "LOCK_FILE", lock)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"fh = open({str(lock)!r}, 'a+'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
            "fh.write('pid test-holder\\n'); fh.flush()\n"
            "print('held', flush=True); time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with (
            pytest.raises(SystemExit, match="still held by pid test-holder"),
            lab.lab_lock(wait=1),
        ):
            pytest.fail("got the lock while another process held it")
        assert time.monotonic() - started >= 1
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone the lock is free at once, and records who holds it now.
    with lab.lab_lock(wait=0):
        assert f"pid {lab.os.getpid()}" in lock.read_text()
    assert lock.read_text() == ""
