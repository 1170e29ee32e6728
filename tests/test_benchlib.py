"""The benchmarks' measuring helper: figures that belong to the command measured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import benchlib

ALLOC = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])"


def test_peak_is_the_commands_own_not_the_runners():
    # This process grows well above the command; Linux would carry that size into a
    # child forked straight from here.
    ballast = bytearray(200 << 20)
    ballast[::4096] = b"y" * len(ballast[::4096])
    small = benchlib.measure([sys.executable, "-S", "-c", "pass"])
    assert small.max_rss_kib < 100 * 1024, small
    big = benchlib.measure([sys.executable, "-S", "-c", ALLOC, "64"])
    assert big.max_rss_kib >= 64 * 1024
    assert big.max_rss_kib - small.max_rss_kib >= 60 * 1024
    del ballast


def test_failure_and_stdout(capfd):
    with pytest.raises(RuntimeError, match="exited 3"):
        benchlib.measure(["sh", "-c", "exit 3"])
    with pytest.raises(RuntimeError, match="exited 127"):
        benchlib.measure(["/nonexistent/command"])
    err = capfd.readouterr().err
    assert "/nonexistent/command: No such file or directory" in err
    run = benchlib.measure(["sh", "-c", "echo hello; sleep 0.2"])
    assert run.stdout == b"hello\n"
    assert run.seconds >= 0.2


def test_best_of_keeps_fastest_time_and_largest_peak(tmp_path):
    # the first run of the command is slow and big, the second fast and small: the
    # result is the fast run's time and output with the big run's peak
    flag = tmp_path / "second"
    script = (
        f"import time\nfrom pathlib import Path\nflag = Path({str(flag)!r})\n"
        "if flag.exists():\n"
        "    print('fast')\n"
        "else:\n"
        "    flag.touch(); b = bytearray(48 << 20); b[::4096] = b'x' * len(b[::4096])\n"
        "    time.sleep(2); print('slow')\n"
    )
    (run,) = benchlib.best_of(2, [([sys.executable, "-S", "-c", script], None)])
    assert run.stdout == b"fast\n"
    assert run.seconds < 2
    assert run.max_rss_kib >= 48 * 1024


def test_best_of_refuses_no_rounds():
    with pytest.raises(ValueError, match="at least one round"):
        benchlib.best_of(0, [(["true"], None)])
