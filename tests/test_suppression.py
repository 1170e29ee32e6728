"""mailops suppression: the list commands, CSV export and import, the Postfix map and sync."""

from __future__ import annotations

import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailops import cli, exitcodes
from mailops.bounceparse.model import Recipient, Report
from mailops.store import RawInfo, Store
from mailops.suppression import deliveries, log_time, parse_time
from tests.pgcluster import backend_url

NOW = 1_700_000_000


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "mailops.toml"
    path.write_text(f'[store]\nurl = "{url}"\ntimeout = 5\n{extra}')
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, f"sqlite:///{tmp_path}/mailops.db")


def url_of(cfg: Path) -> str:
    return cfg.read_text().split('"')[1]


def run(cfg: Path, *argv: str) -> int:
    return cli.main(["--config", str(cfg), "suppression", *argv])


def fake_postmap(tmp_path: Path, fail: bool = False) -> Path:
    """A postmap that copies TYPE:file to file.db and logs its argv; or fails."""
    script = tmp_path / "postmap"
    body = 'echo "postmap: fatal: broken" >&2; exit 1' if fail else 'cp "${1#*:}" "${1#*:}.db"'
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/postmap.log"\n{body}\n')
    script.chmod(0o755)
    return script


# --------------------------------------------------------------------------- list commands


def test_add_list_check_remove(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "add", "A@Example.com", "b@example.com", "--reason", "legal") == 0
    capsys.readouterr()
    assert run(cfg, "list") == 0
    out = capsys.readouterr()
    assert "a@example.com  legal  manual" in out.out and "2 suppressed" in out.err
    assert run(cfg, "check", "a@example.com") == 0
    assert capsys.readouterr().out == (
        "a@example.com 550 5.1.1 <a@example.com>: recipient is suppressed (legal)\n"
    )
    assert run(cfg, "remove", "a@example.com", "nobody@example.com") == 0
    assert "removed 1 of 2" in capsys.readouterr().out
    assert run(cfg, "check", "a@example.com") == exitcodes.FAIL


def test_list_json_and_filters(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(cfg, "add", "x@example.com", "--reason", "legal", "--note", "ticket 42")
    run(cfg, "add", "y@example.com")
    run(cfg, "add", "z@example.com", "--tenant", "client1")
    capsys.readouterr()
    assert run(cfg, "list", "--json", "--reason", "legal") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["address"], r["note"], r["expires_at"]) for r in rows] == [
        ("x@example.com", "ticket 42", "")
    ]
    assert run(cfg, "list", "--json", "--all-tenants") == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_add_with_expiry(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "add", "t@example.com", "--expires-days", "2") == 0
    capsys.readouterr()
    run(cfg, "list", "--json")
    row = json.loads(capsys.readouterr().out)
    assert row["expires_at"].endswith("Z")


def test_add_refuses_bad_input(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "add", "good@example.com", "not an address") == exitcodes.USAGE
    assert "not an address that can be suppressed" in capsys.readouterr().err
    assert run(cfg, "add", "good@example.com", "--reason", "two words") == exitcodes.USAGE
    assert run(cfg, "check", "good@example.com") == exitcodes.FAIL  # nothing half-added


# --------------------------------------------------------------------------- CSV


def test_export_import_round_trip(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(cfg, "add", "a@example.com", "--reason", "userunknown", "--note", 'says "hi", bye')
    run(cfg, "add", "b@example.com", "--expires-days", "5")
    out = tmp_path / "list.csv"
    assert run(cfg, "export", "--output", str(out)) == 0
    text = out.read_text()
    assert text.splitlines()[0] == (
        "address,reason,source,created_at,updated_at,expires_at,note,tenant"
    )
    other = write_config(tmp_path / "other", f"sqlite:///{tmp_path}/other.db")
    capsys.readouterr()
    assert run(other, "import", str(out)) == 0
    assert "imported 2" in capsys.readouterr().out
    with Store.open(url_of(other)) as s:
        entries = {e.address: e for e in s.suppressions()}
    assert entries["a@example.com"].note == 'says "hi", bye'
    assert entries["a@example.com"].reason == "userunknown"
    assert entries["a@example.com"].source == "import"
    assert entries["b@example.com"].expires_at is not None


def test_import_plain_list_with_default_reason(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "list.txt"
    src.write_text("# old ESP export\none@example.com\nTwo@Example.com,complaint\n\n")
    assert run(cfg, "import", str(src), "--reason", "legacy") == 0
    with Store.open(url_of(cfg)) as s:
        reasons = {e.address: e.reason for e in s.suppressions()}
    assert reasons == {"one@example.com": "legacy", "two@example.com": "complaint"}


def test_import_bad_row_imports_nothing(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "list.csv"
    src.write_text("address,reason\nok@example.com,x\nbroken address,x\n")
    assert run(cfg, "import", str(src)) == exitcodes.DATAERR
    assert "line 3: not an address" in capsys.readouterr().err
    with Store.open(url_of(cfg)) as s:
        assert list(s.suppressions()) == []
    assert run(cfg, "import", str(src), "--skip-invalid") == 0
    assert "1 skipped" in capsys.readouterr().out
    with Store.open(url_of(cfg)) as s:
        assert [e.address for e in s.suppressions()] == ["ok@example.com"]


def test_import_never_shortens_a_permanent_entry(cfg: Path, tmp_path: Path) -> None:
    run(cfg, "add", "keep@example.com", "--reason", "complaint")
    src = tmp_path / "list.csv"
    src.write_text("address,reason,expires_at\nkeep@example.com,old,2099-01-01T00:00:00Z\n")
    assert run(cfg, "import", str(src)) == 0
    with Store.open(url_of(cfg)) as s:
        entry = s.get("keep@example.com")
    assert entry is not None and entry.reason == "complaint" and entry.expires_at is None


def test_import_missing_file(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "import", "/nonexistent/list.csv") == exitcodes.NOINPUT


# --------------------------------------------------------------------------- Postfix map


def test_export_postfix_map(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(cfg, "add", "b@example.com", "--reason", "userunknown")
    run(cfg, "add", "a@example.com", "--reason", "complaint")
    capsys.readouterr()
    assert run(cfg, "export", "--format", "postfix") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [
        "a@example.com 550 5.1.1 <a@example.com>: recipient is suppressed (complaint)",
        "b@example.com 550 5.1.1 <b@example.com>: recipient is suppressed (userunknown)",
    ]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sync_writes_only_when_changed(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path,
        backend_url(kind, tmp_path),
        f'[suppression]\npostmap = "{fake_postmap(tmp_path)}"\n',
    )
    target = tmp_path / "postfix" / "suppressed"
    target.parent.mkdir()
    run(cfg, "add", "a@example.com", "--reason", "userunknown")
    assert run(cfg, "sync", "--map", str(target), "--postmap", "-v") == 0
    assert "updated, 1 entries" in capsys.readouterr().out
    assert "a@example.com 550 5.1.1" in target.read_text()
    db = Path(f"{target}.db")
    assert db.read_text() == target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    before = (target.stat().st_mtime_ns, target.stat().st_ino, db.stat().st_ino)
    calls = (tmp_path / "postmap.log").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("hash:")

    assert run(cfg, "sync", "--map", str(target), "--postmap", "-v") == 0
    assert "unchanged" in capsys.readouterr().out
    assert (target.stat().st_mtime_ns, target.stat().st_ino, db.stat().st_ino) == before
    assert len((tmp_path / "postmap.log").read_text().splitlines()) == 1

    run(cfg, "add", "b@example.com")
    assert run(cfg, "sync", "--map", str(target), "--postmap") == 0
    assert "b@example.com" in db.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["suppressed", "suppressed.db"]


class FakeClock:
    """time.monotonic and time.sleep for the sync loop: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep: list[object] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds + 0.25  # a sync takes a little time too
        if self.on_sleep:
            self.on_sleep.pop(0)()  # type: ignore[operator]


def test_sync_every_keeps_the_map_in_step_for_the_minute(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("mailops.suppression.time.monotonic", clock.monotonic)
    monkeypatch.setattr("mailops.suppression.time.sleep", clock.sleep)
    target = tmp_path / "suppressed"
    run(cfg, "add", "a@example.com", "--reason", "userunknown")
    # an address suppressed between the first and the second sync of the minute
    clock.on_sleep.append(lambda: run(cfg, "add", "b@example.com", "--reason", "complaint"))
    capsys.readouterr()
    assert run(cfg, "sync", "--map", str(target), "--every", "20", "-v") == 0
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{target}: ")]
    # syncs at 0, 20 and 40 s; the one at 60 s is the next cron run's
    assert [line.split(": ", 1)[1] for line in out] == [
        "updated, 1 entries",
        "updated, 2 entries",
        "unchanged, 2 entries",
    ]
    assert len(clock.slept) == 2 and all(19 <= s <= 20 for s in clock.slept)
    assert "b@example.com 550" in target.read_text()


def test_sync_every_stops_at_the_first_failure(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("mailops.suppression.time.monotonic", clock.monotonic)
    monkeypatch.setattr("mailops.suppression.time.sleep", clock.sleep)
    target = tmp_path / "missing-dir" / "suppressed"
    assert run(cfg, "sync", "--map", str(target), "--every", "10") == exitcodes.CANTCREAT
    assert clock.slept == []


@pytest.mark.parametrize("every", ["0", "61", "-5"])
def test_sync_every_out_of_range(cfg: Path, tmp_path: Path, every: str) -> None:
    assert run(cfg, "sync", "--map", str(tmp_path / "s"), "--every", every) == exitcodes.USAGE


def test_sync_rebuilds_a_missing_index(cfg: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, url_of(cfg), f'[suppression]\npostmap = "{fake_postmap(tmp_path)}"\n'
    )
    target = tmp_path / "suppressed"
    run(cfg, "add", "a@example.com")
    run(cfg, "sync", "--map", str(target))  # text only
    assert not Path(f"{target}.db").exists()
    assert run(cfg, "sync", "--map", str(target), "--postmap") == 0
    assert Path(f"{target}.db").exists()


def test_sync_keeps_the_old_map_when_postmap_fails(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "suppressed"
    target.write_text("old\n")
    Path(f"{target}.db").write_text("old index\n")
    cfg = write_config(
        tmp_path,
        url_of(cfg),
        f'[suppression]\npostmap = "{fake_postmap(tmp_path, fail=True)}"\n',
    )
    run(cfg, "add", "a@example.com")
    assert run(cfg, "sync", "--map", str(target), "--postmap") == exitcodes.CANTCREAT
    assert "postmap: fatal: broken" in capsys.readouterr().err
    assert target.read_text() == "old\n"
    assert Path(f"{target}.db").read_text() == "old index\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".suppressed")) == []


def test_sync_into_a_missing_directory(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "sync", "--map", "/nonexistent/dir/suppressed") == exitcodes.CANTCREAT
    assert "cannot create a file in /nonexistent/dir" in capsys.readouterr().err


def test_sync_leaves_out_addresses_that_cannot_be_keys(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store.open(url_of(cfg)) as s:  # a row written by something else, bypassing checks
        s._db.execute(
            "INSERT INTO suppressions (tenant, address, reason, source, created_at, updated_at)"
            " VALUES ('', 'bad key@example.com', 'x', 'manual', 1, 1)"
        )
        s.suppress("good@example.com", "manual")
    target = tmp_path / "suppressed"
    assert run(cfg, "sync", "--map", str(target)) == 0
    assert "1 entries left out" in capsys.readouterr().err
    assert "bad key" not in target.read_text()
    assert "good@example.com" in target.read_text()


def test_store_down_is_tempfail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/missing/dir/m.db")
    assert run(cfg, "list") == exitcodes.TEMPFAIL
    assert run(cfg, "sync", "--map", str(tmp_path / "m")) == exitcodes.TEMPFAIL
    err = capsys.readouterr().err
    assert "cannot open store" in err and "Traceback" not in err


def test_unknown_setting_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db", "[suppression]\nsoft_treshold = 2\n")
    assert run(cfg, "list") == exitcodes.CONFIG
    assert "unknown key 'soft_treshold'" in capsys.readouterr().err


# --------------------------------------------------------------------------- deliveries

SMTP = "mail1 postfix/smtp[123]: 4ABC: to=<{}>, relay=mx.example.com[192.0.2.1]:25, "
LOG = [
    "Nov 14 22:13:20 " + SMTP.format("flaky@example.com") + "status=sent (250 ok)",
    "2023-11-14T22:13:25.123456+00:00 " + SMTP.format("other@example.com") + "status=sent (ok)",
    "Nov 14 22:13:30 " + SMTP.format("flaky@example.com") + "status=deferred (451 later)",
]


def test_deliveries_are_read_from_postfix_log_lines() -> None:
    found = list(deliveries(LOG, NOW))
    assert [a for a, _ in found] == ["flaky@example.com", "other@example.com"]
    # A classic syslog stamp has no year: the latest one not in the future.
    assert found[0][1] == int(datetime(2023, 11, 14, 22, 13, 20).timestamp())
    assert found[1][1] == parse_time("2023-11-14T22:13:25+00:00")
    assert log_time("Dec 31 23:59:59 x", NOW) == int(datetime(2022, 12, 31, 23, 59, 59).timestamp())
    assert log_time("garbage", NOW) is None


def test_delivered_clears_soft_history(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()

    def soft_bounce(i: int, at: float) -> None:
        report = Report(
            kind="bounce",
            detector="t",
            message_id=f"<{i}@x>",
            recipients=(Recipient("flaky@example.com", "4.2.2", "mailboxfull", False),),
        )
        with Store.open(url_of(cfg)) as s:
            s.record_report(report, RawInfo(sha256=str(i), size=1), now=at)

    soft_bounce(0, now - 3600)
    soft_bounce(1, now - 3500)
    soft_bounce(2, now - 10)  # after the delivery in the log: stays
    stamp = datetime.fromtimestamp(now - 60, UTC).isoformat()
    log = tmp_path / "mail.log"
    log.write_text(
        f"{stamp} mail1 postfix/smtp[1]: 4A: to=<flaky@example.com>, relay=x, status=sent (ok)\n"
        f"{stamp} mail1 postfix/smtp[1]: 4B: to=<unrelated@example.com>, status=sent (ok)\n"
    )
    assert run(cfg, "delivered", "--postfix-log", str(log), "-v") == 0
    assert "cleared 2 soft" in capsys.readouterr().out
    with Store.open(url_of(cfg)) as s:
        assert [r["cleared_at"] is None for r in s.rows("bounces")] == [False, False, True]
    assert run(cfg, "delivered") == exitcodes.USAGE


def test_prune(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Store.open(url_of(cfg)) as s:
        s.suppress("old@example.com", "x", source="soft", expires_at=NOW, now=NOW - 10)
    assert run(cfg, "prune", "-v") == 0
    assert "pruned 1" in capsys.readouterr().out


def test_map_is_readable_by_postfix_tools(cfg: Path, tmp_path: Path) -> None:
    """When Postfix's own postmap is installed, it must accept the map we write."""
    postmap = "/usr/sbin/postmap"
    if not os.access(postmap, os.X_OK):
        pytest.skip("Postfix's postmap is not installed here")
    run(cfg, "add", "a@example.com")
    target = tmp_path / "suppressed"
    cfg2 = write_config(tmp_path, url_of(cfg), f'[suppression]\npostmap = "{postmap}"\n')
    assert run(cfg2, "sync", "--map", str(target), "--postmap") == 0
