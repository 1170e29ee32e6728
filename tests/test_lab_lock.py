"""The lab lock: a second lab run waits for the first instead of tearing its hosts down."""

from __future__ import annotations

import shlex
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


def test_a_process_the_holder_started_goes_on_at_once(tmp_path: Path, monkeypatch) -> None:
    """A check run by `lab.py test` (which holds the lock for its whole run) may take the
    lock around what it breaks; it must not wait for its own parent.  A process that
    merely claims the holder's pid without descending from it still waits."""
    lock = tmp_path / "lab.lock"
    monkeypatch.setattr(lab, "LOCK_FILE", lock)
    child = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(lab.__file__).parent)!r})\n"
        "import lab, pathlib\n"
        f"lab.LOCK_FILE = pathlib.Path({str(lock)!r})\n"
        "with lab.lab_lock(wait=1):\n"
        "    print('inside', flush=True)\n"
    )
    with lab.lab_lock(wait=0):
        started = time.monotonic()
        inner = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=False
        )
        assert inner.returncode == 0 and inner.stdout.strip() == "inside", inner.stderr
        assert time.monotonic() - started < 1
        # A grandchild through a shell descends from the holder too.
        shell = subprocess.run(
            ["sh", "-c", f"{sys.executable} -c {shlex.quote(child)}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert shell.stdout.strip() == "inside", shell.stderr
        # Not a descendant: the variable names a live process that is not an ancestor
        # (a sibling), as a stale or copied environment would.
        sibling = subprocess.Popen(["sleep", "30"])
        try:
            env = dict(lab.os.environ, MAILOPS_LAB_LOCK_HOLDER=str(sibling.pid))
            stranger = subprocess.run(
                [sys.executable, "-c", child], env=env, capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
        finally:
            sibling.kill()
            sibling.wait()
        assert stranger.returncode != 0 and "still held" in stranger.stderr, stranger.stdout
    assert lab.os.environ.get("MAILOPS_LAB_LOCK_HOLDER") is None
