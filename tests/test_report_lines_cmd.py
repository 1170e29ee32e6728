"""python -m mailops.report.lines: one day's lines of a node's log, for the monitor."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailops import exitcodes
from mailops.report import build, lines

DAY = dt.date(2024, 11, 23)

# Lines of three days in a current log and two rotated siblings (one gzip), in the two
# timestamp forms the report reads; "Nov  3" has the classic padding.
ROTATED_2 = (
    "Nov 22 23:59:59 mx1 postfix/smtpd[1]: A1: client=a.example[192.0.2.1]\n"
    "Nov 23 00:00:01 mx1 postfix/smtpd[1]: A2: client=a.example[192.0.2.1]\n"
)
ROTATED_1 = (
    "Nov 23 10:00:00 mx1 postfix/qmgr[2]: A2: from=<a@a.example>, size=100, nrcpt=1\n"
    "2024-11-23T11:00:00+00:00 mx1 postfix/smtp[3]: A2: to=<b@b.example>, relay=r[192.0.2.9]"
    ":25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (ok)\n"
)
CURRENT = (
    "Nov 23 23:59:59 mx1 postfix/qmgr[2]: A2: removed\n"
    "Nov 24 00:00:00 mx1 postfix/smtpd[1]: A3: client=a.example[192.0.2.1]\n"
    "Nov 233 is no day\n"
    "Nov 23 00:00:02 mx1 postfix/smtpd[1]: A4: client=c.example[192.0.2.3]"  # no newline
)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    (tmp_path / "mail.log.2.gz").write_bytes(gzip.compress(ROTATED_2.encode()))
    (tmp_path / "mail.log.1").write_text(ROTATED_1)
    path.write_text(CURRENT)
    return path


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, bytes]:
    out = io.BytesIO()
    saved = dict(os.environ)
    try:
        os.environ.update(env or {})
        rc = lines.main(argv, out=out)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return rc, out.getvalue()


def test_prints_the_days_lines_of_the_log_and_its_rotations_in_order(log: Path) -> None:
    rc, out = run(["--log", str(log), "--day", "2024-11-23"])
    assert rc == exitcodes.OK
    assert out.decode().splitlines() == [
        ROTATED_2.splitlines()[1],
        *ROTATED_1.splitlines(),
        CURRENT.splitlines()[0],
        CURRENT.splitlines()[3],
    ]
    assert out.endswith(b"\n")


def test_without_rotated_reads_the_named_file_only(log: Path) -> None:
    rc, out = run(["--log", str(log), "--no-rotated", "--day", "2024-11-24"])
    assert rc == exitcodes.OK
    assert out.decode().splitlines() == [CURRENT.splitlines()[1]]


def test_single_digit_days_in_every_form(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(
        "Nov  3 01:00:00 h postfix/pickup[1]: B1: uid=0 from=<root>\n"
        "Nov 3 02:00:00 h postfix/pickup[1]: B2: uid=0 from=<root>\n"
        "Nov 13 03:00:00 h postfix/pickup[1]: B3: uid=0 from=<root>\n"
        "Nov 03 04:00:00 h postfix/pickup[1]: B4: uid=0 from=<root>\n"  # postlogd's form
        "Nov 30 05:00:00 h postfix/pickup[1]: B5: uid=0 from=<root>\n"
    )
    rc, out = run(["--log", str(log), "--day", "2024-11-03"])
    assert rc == exitcodes.OK
    assert [ln.split()[5] for ln in out.decode().splitlines()] == ["B1:", "B2:", "B4:"]


def test_the_report_over_the_lines_equals_the_report_over_the_files(log: Path) -> None:
    """What the monitor counts from a node's lines is what the node counts itself."""
    paths = list(build.iter_paths([str(log)], True, DAY))
    whole, _ = build.tally_files(paths, DAY, "postfix", 5000)
    copy = log.parent / "copy.log"
    with copy.open("wb") as fh:
        lines.stream(paths, DAY, fh)
    part, _ = build.tally_files([copy], DAY, "postfix", 5000)
    a = build.report(whole, [], DAY)["totals"]
    b = build.report(part, [], DAY)["totals"]
    assert a == b
    assert (a["received"], a["delivered"], a["bytes_delivered"]) == (2, 1, 100)


@pytest.mark.parametrize("command", ["today", "yesterday", "2024-11-23"])
def test_ssh_may_choose_the_day(log: Path, command: str) -> None:
    rc, out = run(["--log", str(log), "--from-ssh"], {"SSH_ORIGINAL_COMMAND": command})
    assert rc == exitcodes.OK
    if command == "2024-11-23":
        assert len(out.splitlines()) == 5


@pytest.mark.parametrize(
    "command",
    [
        "",
        "all",
        "2024-11-23 --log /etc/shadow",
        "--log=/etc/shadow",
        "2024-13-01",
        "2024-11-23\n",
        "yesterday;id",
        "../../etc/shadow",
        "Today",
    ],
)
def test_ssh_may_choose_nothing_else(log: Path, command: str) -> None:
    rc, out = run(["--log", str(log), "--from-ssh"], {"SSH_ORIGINAL_COMMAND": command})
    assert (rc, out) == (exitcodes.USAGE, b"")


def test_no_ssh_command_is_refused(log: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"}
    proc = subprocess.run(
        [sys.executable, "-m", "mailops.report.lines", "--log", str(log), "--from-ssh"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert proc.returncode == exitcodes.USAGE
    assert proc.stdout == b""
    assert b"refused" in proc.stderr


def test_a_missing_log_is_named(tmp_path: Path) -> None:
    rc, out = run(["--log", str(tmp_path / "nope.log"), "--day", "today"])
    assert (rc, out) == (exitcodes.NOINPUT, b"")
