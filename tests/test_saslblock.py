"""mailops saslblock: counting SASL failures, blocking, expiry, rotation, the access table."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.config import ConfigError
from mailops.maillog.stamps import stamp_time
from mailops.saslblock import DEFAULTS, run, settings
from mailops.saslblock.blocks import canonical, parse_network
from mailops.saslblock.logscan import CHUNK, Scanner

NOW = 1_795_400_000.0  # a fixed "now" (November 2026); log lines are written around it
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
ATTACKER = "203.0.113.9"


def stamp(t: float, style: str = "syslog") -> str:
    lt = time.localtime(t)
    if style == "iso":
        frac = f"{t % 1:.6f}"[1:]
        off = time.strftime("%z", lt)
        return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + frac + off[:3] + ":" + off[3:]
    pad = f"{lt.tm_mday:>2}" if style == "syslog" else f"{lt.tm_mday:02d}"  # postlogd: %d
    return f"{MONTHS[lt.tm_mon - 1]} {pad} {time.strftime('%H:%M:%S', lt)}"


def fail(
    t: float,
    ip: str = ATTACKER,
    *,
    mech: str = "LOGIN",
    prog: str = "postfix/smtpd",
    reason: str = "UGFzc3dvcmQ6",
    host: str = "unknown",
    style: str = "syslog",
) -> str:
    return (
        f"{stamp(t, style)} mx1 {prog}[4242]: warning: {host}[{ip}]: "
        f"SASL {mech} authentication failed: {reason}\n"
    )


def noise(t: float, n: int = 1) -> str:
    return "".join(
        f"{stamp(t)} mx1 postfix/smtpd[4242]: connect from unknown[198.51.100.{i % 250}]\n"
        for i in range(n)
    )


def write(path: Path, text: str, mode: str = "a") -> None:
    with open(path, mode) as fh:
        fh.write(text)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    s = dict(DEFAULTS)
    s.update(
        log=str(tmp_path / "mail.log"),
        map=str(tmp_path / "access_dynamic"),
        state=str(tmp_path / "state" / "saslblock.json"),
        postmap=False,
        allow=[],
        mynetworks=[],
    )
    Path(s["log"]).touch()
    return s


def once(
    s: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    now: float = NOW,
    unblock: list[str] | None = None,
    **overrides: Any,
) -> tuple[int, list[str]]:
    rc = run({**s, **overrides}, unblock or [], now=now)
    out = capsys.readouterr().out
    return rc, out.splitlines()


def blocked(s: dict[str, Any]) -> list[str]:
    lines = Path(s["map"]).read_text().splitlines()
    return [ln.split()[0] for ln in lines if ln and not ln.startswith("#")]


# --- threshold and window -------------------------------------------------------------


def test_blocks_after_threshold_failures_within_the_window(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, noise(NOW - 300, 50) + "".join(fail(NOW - 300 + i * 10) for i in range(4)))
    rc, out = once(env, capsys)
    assert rc == 0 and out == []
    assert blocked(env) == []
    write(log, fail(NOW - 200))
    rc, out = once(env, capsys)
    assert rc == 0
    assert len(out) == 1 and out[0].startswith(f"blocked {ATTACKER}: 5 SASL failures in 100 s")
    assert blocked(env) == [ATTACKER]
    text = Path(env["map"]).read_text()
    assert text.startswith("# Written by mailops saslblock")
    assert f"\n{ATTACKER} REJECT {DEFAULTS['reject_text']}\n" in text


def test_failures_spread_wider_than_the_window_do_not_block(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # One failure every 160 s: 5 in a row span 4 * 160 = 640 s, more than 600 s.
    write(Path(env["log"]), "".join(fail(NOW - 3000 + i * 160) for i in range(10)))
    rc, out = once(env, capsys)
    assert (rc, out, blocked(env)) == (0, [], [])
    rc, out = once(env, capsys, window=640)
    assert blocked(env) == [] and out == []  # already read: nothing counted twice
    # The same spacing blocks when the window is 640 s.
    write(Path(env["log"]), "".join(fail(NOW - 1000 + i * 160) for i in range(5)))
    rc, out = once(env, capsys, window=640)
    assert blocked(env) == [ATTACKER]


def test_threshold_one_blocks_on_the_first_failure(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    write(Path(env["log"]), fail(NOW - 5, "198.51.100.200"))
    _, out = once(env, capsys, threshold=1)
    assert blocked(env) == ["198.51.100.200"]
    assert out[0].startswith("blocked 198.51.100.200: 1 SASL failures")


def test_counts_carry_over_between_runs(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    for i in range(5):
        write(log, fail(NOW - 100 + i) + noise(NOW - 100 + i, 3))
        rc, out = once(env, capsys)
        assert rc == 0
        assert bool(out) == (i == 4), (i, out)
    assert blocked(env) == [ATTACKER]


def test_an_old_burst_does_not_block_today(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 3 * 86400 + i) for i in range(20)))
    rc, out = once(env, capsys)
    assert (rc, out, blocked(env)) == (0, [], [])
    state = json.loads(Path(env["state"]).read_text())
    assert state["failures"] == {} and state["blocks"] == {}


# --- expiry, allow-list, unblock -------------------------------------------------------


def test_blocks_expire(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 60 + i) for i in range(5)))
    once(env, capsys)
    assert blocked(env) == [ATTACKER]
    rc, out = once(env, capsys, now=NOW + 3600)
    assert (rc, out, blocked(env)) == (0, [], [ATTACKER])
    rc, out = once(env, capsys, now=NOW + 86400)
    assert (rc, out) == (0, [f"expired {ATTACKER}"])
    assert blocked(env) == []
    assert once(env, capsys, now=NOW + 86500) == (0, [])


def test_short_expire(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 60 + i) for i in range(5)))
    once(env, capsys, expire=100)
    assert blocked(env) == [ATTACKER]
    assert once(env, capsys, now=NOW + 50, expire=100) == (0, [f"expired {ATTACKER}"])


def test_allow_mynetworks_and_loopback_are_never_blocked(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = []
    for ip in ("192.0.2.10", "2001:db8:1::5", "127.0.0.1", "::1", "198.51.100.30", ATTACKER):
        lines += [fail(NOW - 30 + i, ip) for i in range(6)]
    write(Path(env["log"]), "".join(lines))
    rc, out = once(
        env,
        capsys,
        allow=["192.0.2.0/24", "198.51.100.30"],
        mynetworks=["127.0.0.0/8", "[2001:db8:1::]/48"],
    )
    assert rc == 0
    assert blocked(env) == [ATTACKER]
    assert [o.split()[1].rstrip(":") for o in out] == [ATTACKER]


def test_adding_an_address_to_allow_lifts_its_block(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 30 + i) for i in range(5)))
    once(env, capsys)
    _, out = once(env, capsys, allow=["203.0.113.0/24"])
    assert out == [f"unblocked {ATTACKER} (protected network)"]
    assert blocked(env) == []


def test_unblock_lifts_a_block_and_forgets_its_failures(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, "".join(fail(NOW - 30 + i) for i in range(5)))
    once(env, capsys)
    rc, out = once(env, capsys, unblock=[ATTACKER])
    assert (rc, out, blocked(env)) == (0, [f"unblocked {ATTACKER} (on request)"], [])
    write(log, fail(NOW - 10))  # one more failure: not 6 in a row, since they were forgotten
    assert once(env, capsys) == (0, [])
    assert blocked(env) == []


# --- what counts -----------------------------------------------------------------------


def test_an_address_in_the_user_name_is_never_blocked(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    victim = "203.0.113.7"
    fake = f"Nov 23 10:00:01 mx1 postfix/smtpd[1]: warning: unknown[{victim}]: SASL LOGIN"
    reasons = [
        f"authentication failure, sasl_username=x[{victim}]",
        f"authentication failure, sasl_username=unknown[{victim}]: SASL LOGIN authentication"
        " failed: x",
        f"authentication failure, sasl_username={fake} authentication failed: x",
    ]
    lines = [
        fail(NOW - 60 + i, "198.51.100.67", mech="PLAIN", reason=reasons[i % 3]) for i in range(9)
    ]
    write(Path(env["log"]), "".join(lines))
    rc, _ = once(env, capsys)
    assert rc == 0
    assert blocked(env) == ["198.51.100.67"]
    assert victim not in Path(env["map"]).read_text()
    assert victim not in Path(env["state"]).read_text()


def test_lines_from_other_programs_do_not_count(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = []
    for i in range(6):
        t = NOW - 60 + i
        lines.append(fail(t, "192.0.2.1", prog="postfix/cleanup"))
        lines.append(fail(t, "192.0.2.2", prog="dovecot"))
        lines.append(fail(t, "192.0.2.3", prog="evil/postfix/smtpd"))
        lines.append(f"{stamp(t)} mx1 postfix/smtpd[1]: info: unknown[192.0.2.4]: SASL LOGIN "
                     "authentication failed: x\n")  # fmt: skip
        lines.append("garbage " + fail(t, "192.0.2.5"))
    write(Path(env["log"]), "".join(lines))
    assert once(env, capsys) == (0, [])
    assert blocked(env) == []


def test_connection_lost_to_the_auth_server_does_not_count(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    lost = "Connection lost to authentication server"
    write(Path(env["log"]), "".join(fail(NOW - 60 + i, reason=lost) for i in range(10)))
    assert once(env, capsys) == (0, [])
    assert blocked(env) == []
    write(Path(env["log"]), "".join(fail(NOW - 30 + i) for i in range(5)))
    assert once(env, capsys)[1][0].startswith(f"blocked {ATTACKER}")


@pytest.mark.parametrize(
    "prog",
    ["postfix/smtpd", "postfix/submission/smtpd", "postfix/smtps/smtpd", "postfix-out/smtpd"],
)
@pytest.mark.parametrize("style", ["syslog", "postlogd", "iso"])
def test_every_smtpd_name_and_time_stamp_style(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], prog: str, style: str
) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 60 + i, prog=prog, style=style) for i in range(5)))
    once(env, capsys)
    assert blocked(env) == [ATTACKER]
    state = json.loads(Path(env["state"]).read_text())
    assert state["failures"][ATTACKER][0] == pytest.approx(NOW - 60, abs=1)


def test_ipv6_is_written_as_access_tables_want_it(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [fail(NOW - 60 + i, "2001:DB8:0:0:0:0:0:9", host="h.example") for i in range(3)]
    lines += [fail(NOW - 50 + i, "2001:db8::9") for i in range(2)]
    lines += [fail(NOW - 40 + i, "::ffff:192.0.2.77") for i in range(5)]
    lines += [fail(NOW - 30 + i, "2001:db8::zz") for i in range(5)]  # not an address
    write(Path(env["log"]), "".join(lines))
    rc, _ = once(env, capsys)
    assert rc == 0
    assert blocked(env) == ["192.0.2.77", "2001:db8::9"]
    assert "[" not in "".join(
        ln for ln in Path(env["map"]).read_text().splitlines()[3:] if "#" not in ln
    )


def test_canonical_addresses_and_networks() -> None:
    assert canonical("2001:0DB8:0000::0001") == ("2001:db8::1", canonical("2001:db8::1")[1])  # type: ignore[index]
    assert canonical("2001:db8:0:1:1:1:1:1")[0] == "2001:db8:0:1:1:1:1:1"  # type: ignore[index]
    assert canonical("::ffff:10.1.2.3")[0] == "10.1.2.3"  # type: ignore[index]
    assert canonical("fe80::1%eth0") is None
    assert canonical("1.2.3") is None
    assert str(parse_network("[::1]/128")) == "::1/128"
    assert str(parse_network("192.0.2.9/24")) == "192.0.2.0/24"
    with pytest.raises(ValueError):
        parse_network("hash:/etc/postfix/network_table")


def test_stamp_time_forms() -> None:
    now = time.mktime((2026, 1, 2, 12, 0, 0, 0, 0, -1))
    assert stamp_time(b"Jan  2 11:00:00", now) == now - 3600
    assert stamp_time(b"Jan 02 11:00:00.250", now) == now - 3600 + 0.25
    # A December line read on 2 January belongs to last year.
    dec = stamp_time(b"Dec 31 23:00:00", now)
    assert dec is not None and now - 2 * 86400 < dec < now
    assert stamp_time(b"2026-01-02T11:00:00+00:00", now) == 1767351600.0
    assert stamp_time(b"2026-01-02T11:00:00.5Z", now) == 1767351600.5
    assert stamp_time(b"Foo  2 11:00:00", now) is None


# --- reading the log: incremental, rotation, truncation, gzip ---------------------------


def test_a_partial_last_line_waits_for_its_newline(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, "".join(fail(NOW - 60 + i) for i in range(4)))
    last = fail(NOW - 50)
    write(log, last[:40])
    assert once(env, capsys) == (0, [])
    write(log, last[40:])
    assert once(env, capsys)[1][0].startswith(f"blocked {ATTACKER}: 5")


def test_rotation_by_rename_finishes_the_old_file_then_reads_the_new(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, "".join(fail(NOW - 60 + i) for i in range(2)))
    once(env, capsys)
    write(log, fail(NOW - 55))  # written after our run, before rotation
    log.rename(log.with_name("mail.log.1"))
    write(log, fail(NOW - 50) + noise(NOW - 50, 5), "w")
    assert once(env, capsys) == (0, [])
    state = json.loads(Path(env["state"]).read_text())
    assert len(state["failures"][ATTACKER]) == 4  # 2 + the old file's tail + 1, none twice
    assert state["log"]["ino"] == log.stat().st_ino
    write(log, fail(NOW - 40))
    assert once(env, capsys)[1][0].startswith(f"blocked {ATTACKER}: 5")


def test_rotation_with_compression_finds_the_old_file_by_its_first_bytes(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, noise(NOW - 70, 3) + "".join(fail(NOW - 60 + i) for i in range(2)))
    once(env, capsys)
    write(log, fail(NOW - 55) + fail(NOW - 54))
    with open(log, "rb") as src, gzip.open(log.with_name("mail.log.1.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    log.unlink()
    write(log, fail(NOW - 50), "w")
    rc, out = once(env, capsys)
    assert rc == 0 and out[0].startswith(f"blocked {ATTACKER}: 5")
    state = json.loads(Path(env["state"]).read_text())
    assert state["failures"][ATTACKER] == [NOW - 60, NOW - 59, NOW - 55, NOW - 54, NOW - 50]


def test_a_stale_rotated_file_is_not_read_again(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    old = log.with_name("mail.log.1")
    write(old, "".join(fail(NOW - 90 + i) for i in range(4)), "w")  # yesterday's, not ours
    write(log, fail(NOW - 60))
    once(env, capsys)
    log.rename(log.with_name("mail.log.2"))  # our file went somewhere we do not look
    write(log, fail(NOW - 50), "w")
    rc, out = once(env, capsys)
    assert (rc, out) == (0, [])
    state = json.loads(Path(env["state"]).read_text())
    assert state["failures"][ATTACKER] == [NOW - 60, NOW - 50]


def test_missing_rotated_file_is_reported_on_stderr(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, fail(NOW - 60))
    once(env, capsys)
    write(log, fail(NOW - 59))
    log.unlink()
    write(log, fail(NOW - 50), "w")
    rc = run(env, [], now=NOW)
    captured = capsys.readouterr()
    assert rc == 0 and captured.out == ""
    assert "rotated or truncated" in captured.err and "byte" in captured.err


def test_truncation_in_place_reads_the_copy_then_from_the_start(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, "".join(fail(NOW - 60 + i) for i in range(2)) + noise(NOW - 60, 20))
    once(env, capsys)
    write(log, fail(NOW - 55))
    shutil.copyfile(log, log.with_name("mail.log.1"))  # logrotate copytruncate
    ino = log.stat().st_ino
    with open(log, "r+") as fh:
        fh.truncate(0)
    write(log, fail(NOW - 50))
    assert log.stat().st_ino == ino
    once(env, capsys)
    state = json.loads(Path(env["state"]).read_text())
    assert state["failures"][ATTACKER] == [NOW - 60, NOW - 59, NOW - 55, NOW - 50]
    assert state["log"]["offset"] == log.stat().st_size


def test_truncated_and_rewritten_past_the_offset_is_detected(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, fail(NOW - 60, "192.0.2.1"))
    once(env, capsys)
    with open(log, "w") as fh:  # same inode, new content longer than our offset
        fh.write(fail(NOW - 50) + fail(NOW - 49) + fail(NOW - 48))
    once(env, capsys)
    state = json.loads(Path(env["state"]).read_text())
    assert state["failures"][ATTACKER] == [NOW - 50, NOW - 49, NOW - 48]


def test_a_gzipped_log_is_read_whole_and_only_once(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    gz = Path(env["log"]).with_name("old.log.gz")
    body = noise(NOW - 70, 100) + "".join(fail(NOW - 60 + i) for i in range(5))
    with gzip.open(gz, "wt") as fh:
        fh.write(body.rstrip("\n"))  # even without a final newline
    rc, out = once(env, capsys, log=str(gz))
    assert rc == 0 and out[0].startswith(f"blocked {ATTACKER}: 5")
    assert json.loads(Path(env["state"]).read_text())["log"]["offset"] == len(body) - 1
    assert once(env, capsys, log=str(gz)) == (0, [])


def test_long_lines_and_block_boundaries(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    # Failure lines straddle the 1 MiB read blocks; a 3 MiB junk line is skipped.
    pad = noise(NOW - 100, 1)
    head = pad * ((CHUNK - 100) // len(pad))
    head += "z" * (CHUNK - 30 - len(head) - 1) + "\n"  # the next line starts 30 bytes
    text = head + fail(NOW - 60) + "x" * (3 * CHUNK) + "\n" + fail(NOW - 59)
    text += pad * ((6 * CHUNK - len(text)) // len(pad))
    text += "".join(fail(NOW - 58 + i) for i in range(3))
    write(log, text)
    seen: list[bytes] = []
    scanner = Scanner(lambda addr, ts: seen.append(addr))
    assert text.index(fail(NOW - 60)) == CHUNK - 30
    with open(log, "rb") as fh:
        assert scanner.feed(fh, final=False) == len(text.encode())
    assert seen == [ATTACKER.encode()] * 5 and scanner.long_lines == 1
    assert once(env, capsys)[1][0].startswith(f"blocked {ATTACKER}: 5")


# --- the access table: atomic, only on change, postmap ----------------------------------


def test_no_rewrite_when_nothing_changes(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = Path(env["log"])
    write(log, "".join(fail(NOW - 60 + i) for i in range(5)))
    once(env, capsys)
    before = Path(env["map"]).stat()
    write(log, noise(NOW - 10, 100) + fail(NOW - 5, "192.0.2.50"))
    assert once(env, capsys) == (0, [])
    after = Path(env["map"]).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_failed_replace_leaves_the_old_table_and_state(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Path(env["log"])
    write(log, "".join(fail(NOW - 60 + i, "192.0.2.1") for i in range(5)))
    once(env, capsys)
    old_map = Path(env["map"]).read_text()
    old_state = Path(env["state"]).read_text()
    write(log, "".join(fail(NOW - 30 + i) for i in range(5)))
    real_replace = Path.replace

    def crash(self: Path, target: Any) -> Path:
        if Path(target).name == "access_dynamic":
            raise OSError(28, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", crash)
    rc = run(env, [], now=NOW)
    captured = capsys.readouterr()
    assert rc == exitcodes.CANTCREAT and captured.out == ""
    assert "previous table stays in force" in captured.err
    assert Path(env["map"]).read_text() == old_map
    assert Path(env["state"]).read_text() == old_state
    assert [p.name for p in Path(env["map"]).parent.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(Path, "replace", real_replace)
    rc, out = once(env, capsys)  # the same lines are read again, and now block
    assert rc == 0 and out[0].startswith(f"blocked {ATTACKER}: 5")
    assert blocked(env) == ["192.0.2.1", ATTACKER]


def fake_postmap(tmp_path: Path, body: str) -> str:
    script = tmp_path / "bin" / "postmap"
    script.parent.mkdir(exist_ok=True)
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_postmap_output_is_renamed_into_place_with_the_text(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Stands in for postmap: TYPE:FILE -> FILE.db holding a copy of FILE.
    cmd = fake_postmap(tmp_path, 'f="${1#*:}"; cp "$f" "$f.db"; echo "$1" >> "$0.calls"\n')
    write(Path(env["log"]), "".join(fail(NOW - 60 + i) for i in range(5)))
    rc, _ = once(env, capsys, postmap=True, postmap_command=cmd)
    assert rc == 0
    db = Path(env["map"] + ".db")
    assert db.read_text() == Path(env["map"]).read_text()
    calls = Path(cmd + ".calls").read_text().split()
    assert len(calls) == 1 and calls[0].startswith(f"hash:{tmp_path}/.access_dynamic.")
    once(env, capsys, postmap=True, postmap_command=cmd)
    assert len(Path(cmd + ".calls").read_text().split()) == 1  # unchanged: not run again
    db.unlink()  # the index went missing: rebuilt although the text is the same
    once(env, capsys, postmap=True, postmap_command=cmd)
    assert db.exists() and len(Path(cmd + ".calls").read_text().split()) == 2


def test_postmap_failure_keeps_the_previous_table(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = fake_postmap(tmp_path, 'f="${1#*:}"; cp "$f" "$f.db"\n')
    write(Path(env["log"]), "".join(fail(NOW - 60 + i, "192.0.2.1") for i in range(5)))
    once(env, capsys, postmap=True, postmap_command=good)
    old = (Path(env["map"]).read_text(), Path(env["map"] + ".db").read_text())
    bad = fake_postmap(
        tmp_path, 'f="${1#*:}"; echo partial > "$f.db"; echo "postmap: fatal: x" >&2; exit 1\n'
    )
    write(Path(env["log"]), "".join(fail(NOW - 30 + i) for i in range(5)))
    rc = run({**env, "postmap": True, "postmap_command": bad}, [], now=NOW)
    captured = capsys.readouterr()
    assert rc == exitcodes.CANTCREAT and "postmap: fatal: x" in captured.err
    assert (Path(env["map"]).read_text(), Path(env["map"] + ".db").read_text()) == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_postmap_is_a_clear_error(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 60 + i) for i in range(5)))
    rc = run({**env, "postmap": True, "postmap_command": "no-such-postmap-here"}, [], now=NOW)
    err = capsys.readouterr().err
    assert rc == exitcodes.CONFIG
    assert "no-such-postmap-here" in err and "--no-postmap" in err
    assert not Path(env["map"]).exists()


def test_stale_temporary_files_are_cleaned(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    stale = Path(env["map"]).with_name(".access_dynamic.abc123.tmp.db")
    stale.write_text("left by a crash")
    os.utime(stale, (NOW - 3600, time.time() - 3600))
    write(Path(env["log"]), "".join(fail(NOW - 60 + i) for i in range(5)))
    once(env, capsys)
    assert not stale.exists()


@pytest.mark.skipif(shutil.which("postmap") is None, reason="postmap (Postfix) not installed")
def test_real_postmap_answers_for_blocked_clients(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    clients = (ATTACKER, "2001:db8::9")
    write(Path(env["log"]), "".join(fail(NOW - 60 + i, ip) for ip in clients for i in range(5)))
    assert once(env, capsys, postmap=True)[0] == 0
    for key in clients:
        q = subprocess.run(
            ["postmap", "-q", key, f"hash:{env['map']}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert q.stdout.startswith("REJECT "), q


def test_map_and_state_modes(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    write(Path(env["log"]), "".join(fail(NOW - 60 + i) for i in range(5)))
    once(env, capsys)
    assert stat.S_IMODE(Path(env["map"]).stat().st_mode) == 0o644
    assert stat.S_IMODE(Path(env["state"]).stat().st_mode) == 0o600
    Path(env["map"]).chmod(0o640)
    write(Path(env["log"]), "".join(fail(NOW - 50 + i, "192.0.2.9") for i in range(5)))
    once(env, capsys)
    assert stat.S_IMODE(Path(env["map"]).stat().st_mode) == 0o640  # kept across rewrites


# --- errors, settings, the command line -------------------------------------------------


def test_unusable_state_is_a_clear_error(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    Path(env["state"]).parent.mkdir(parents=True)
    Path(env["state"]).write_text('{"version": 1, "blocks": {"not-an-ip": {}}}')
    rc = run(env, [], now=NOW)
    err = capsys.readouterr().err
    assert rc == exitcodes.DATAERR and "move it away" in err and "not-an-ip" in err


def test_missing_log_is_a_clear_error(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = run({**env, "log": env["log"] + ".nope"}, [], now=NOW)
    assert rc == exitcodes.NOINPUT
    assert "cannot open" in capsys.readouterr().err


def test_an_overlapping_run_waits_then_gives_up(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailops.saslblock as sb

    monkeypatch.setattr(sb, "LOCK_WAIT_SECONDS", 0.3)
    lock_path = Path(env["state"] + ".lock")
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        rc = run(env, [], now=NOW)
    assert rc == exitcodes.TEMPFAIL
    assert "lock" in capsys.readouterr().err


def test_settings_from_the_config_file_and_flags(tmp_path: Path) -> None:
    conf = tmp_path / "mailops.toml"
    conf.write_text(
        '[saslblock]\nlog = "/x/mail.log"\nthreshold = 3\nallow = ["192.0.2.0/24"]\n'
        'mynetworks = ["127.0.0.0/8", "[::1]/128"]\npostmap = true\n'
    )
    parser = cli.build_parser()
    args = parser.parse_args(["--config", str(conf), "saslblock", "--window", "60",
                              "--allow", "198.51.100.7", "--no-postmap"])  # fmt: skip
    s = settings(args)
    assert (s["log"], s["threshold"], s["window"], s["expire"]) == ("/x/mail.log", 3, 60, 86400)
    assert s["allow"] == ["192.0.2.0/24", "198.51.100.7"] and s["postmap"] is False
    conf.write_text("[saslblock]\nthreshhold = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'threshhold'"):
        settings(parser.parse_args(["--config", str(conf), "saslblock"]))
    conf.write_text('[saslblock]\nallow = ["not a net"]\n')
    with pytest.raises(ConfigError, match=r'allow: expected a list of networks.*\["not a net"\]'):
        run(settings(parser.parse_args(["--config", str(conf), "saslblock"])), [])
    conf.write_text("[saslblock]\nthreshold = 0\n")
    with pytest.raises(ConfigError, match="threshold"):
        settings(parser.parse_args(["--config", str(conf), "saslblock"]))


def test_the_command_line_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "mail.log"
    now = time.time()
    write(log, "".join(fail(now - 60 + i) for i in range(5)))
    conf = tmp_path / "mailops.toml"
    conf.write_text(
        f'[saslblock]\nlog = "{log}"\nmap = "{tmp_path}/access_dynamic"\n'
        f'state = "{tmp_path}/state.json"\npostmap = false\n'
    )
    monkeypatch.setenv("MAILOPS_CONFIG", str(conf))
    assert cli.main(["saslblock"]) == 0
    assert capsys.readouterr().out.startswith(f"blocked {ATTACKER}: 5 SASL failures in 4 s")
    assert cli.main(["saslblock"]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["saslblock", "--unblock", "nonsense"]) == exitcodes.USAGE
    assert cli.main(["saslblock", "--unblock", ATTACKER]) == 0
    assert capsys.readouterr().out == f"unblocked {ATTACKER} (on request)\n"
    with pytest.raises(SystemExit):
        cli.main(["saslblock", "--allow", "300.1.2.3/8"])
