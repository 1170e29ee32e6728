"""mailops tenants pause|resume|list: the store's tenant_state, written by the operator.

Runs against SQLite and against a throwaway PostgreSQL cluster on 127.0.0.1 (skipped,
with the reason, when PostgreSQL is not installed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mailops import cli, exitcodes
from mailops.store import Store
from mailops.tenants import cli as tenants_cli
from tests.pgcluster import backend_url

TENANTS = """
[tenants.alpha]
domains = ["alpha.test"]
logins = ["alpha"]
pool = "alpha"

[tenants.beta]
domains = ["beta.test", "news.beta.test"]
logins = ["beta"]
pool = "shared"
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


def write_cfg(path: Path, url: str, tenants: str = TENANTS) -> Path:
    path.write_text(f'[store]\nurl = "{url}"\ntimeout = 2\n{tenants}')
    return path


@pytest.fixture
def cfg(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUDO_USER", "ops")
    return write_cfg(tmp_path / "mailops.toml", url)


def run(cfg: Path, *argv: str) -> int:
    return cli.main(["--config", str(cfg), "tenants", *argv])


def listed(cfg: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    assert run(cfg, "list", "--json") == exitcodes.OK
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_pause_then_resume(cfg: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "pause", "alpha", "--reason", "complaint rate\n 0.4%") == exitcodes.OK
    assert capsys.readouterr().out == "alpha paused (was active); reason: complaint rate 0.4%\n"
    with Store.open(url) as s:
        state = s.tenant_states()["alpha"]
    assert (state.paused, state.reason, state.changed_by) == (True, "complaint rate 0.4%", "ops")

    rows = listed(cfg, capsys)
    assert rows["alpha"]["state"] == "paused" and rows["beta"]["state"] == "active"
    assert rows["alpha"]["by"] == "ops" and str(rows["alpha"]["since"]).endswith("Z")
    assert (rows["beta"]["domains"], rows["beta"]["pool"]) == (
        ["beta.test", "news.beta.test"],
        "shared",
    )
    assert (rows["beta"]["since"], rows["beta"]["reason"]) == (None, "")

    assert run(cfg, "resume", "alpha") == exitcodes.OK
    out = capsys.readouterr().out
    assert out.startswith("alpha resumed (was paused since ") and "by ops: complaint" in out
    assert listed(cfg, capsys)["alpha"]["state"] == "active"


def test_a_second_pause_changes_nothing(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "pause", "beta", "--reason", "first") == exitcodes.OK
    assert run(cfg, "pause", "beta", "--reason", "second") == exitcodes.OK
    assert "beta already paused since" in capsys.readouterr().out
    assert listed(cfg, capsys)["beta"]["reason"] == "first"
    assert run(cfg, "resume", "alpha") == exitcodes.OK
    assert capsys.readouterr().out == "alpha already active\n"


def test_text_list(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(cfg, "pause", "beta")
    capsys.readouterr()
    assert run(cfg, "list") == exitcodes.OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TENANT", "STATE", "SINCE", "BY", "POOL", "DOMAINS", "REASON"]
    assert lines[1].split() == ["alpha", "active", "-", "-", "alpha", "alpha.test", "-"]
    assert lines[2].split()[:2] == ["beta", "paused"]
    assert lines[2].split()[3:] == ["ops", "shared", "beta.test,news.beta.test", "-"]


def test_unknown_tenant_is_refused_and_nothing_written(
    cfg: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(cfg, "pause", "gamma") == exitcodes.USAGE
    assert capsys.readouterr().err == (
        "mailops tenants: 'gamma' is not a tenant (configured: alpha, beta)\n"
    )
    assert run(cfg, "resume", "Alpha") == exitcodes.USAGE
    with Store.open(url) as s:
        assert s.tenant_states() == {}


def test_no_tenants_configured_is_a_settings_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path / "bare.toml", f"sqlite:///{tmp_path}/m.db", tenants="")
    assert run(cfg, "pause", "alpha") == exitcodes.CONFIG
    assert run(cfg, "list") == exitcodes.CONFIG
    assert "no tenants in" in capsys.readouterr().err


def test_a_broken_tenants_table_is_a_settings_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(
        tmp_path / "bad.toml",
        f"sqlite:///{tmp_path}/m.db",
        '[tenants.Alpha]\ndomains = ["a.test"]\n',
    )
    assert run(cfg, "list") == exitcodes.CONFIG
    assert "configuration error: [tenants.Alpha]" in capsys.readouterr().err


def test_dead_store_one_line_and_75(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_cfg(tmp_path / "dead.toml", f"sqlite:///{tmp_path}/no/such/dir/m.db")
    for argv in (["pause", "alpha"], ["resume", "alpha"], ["list"]):
        assert run(cfg, *argv) == exitcodes.TEMPFAIL
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mailops tenants: "), err


def test_changed_by_without_sudo_is_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("LOGNAME", "carol")
    url = f"sqlite:///{tmp_path}/m.db"
    assert run(write_cfg(tmp_path / "c.toml", url), "pause", "alpha") == exitcodes.OK
    with Store.open(url) as s:
        assert s.tenant_states()["alpha"].changed_by == "carol"


def test_a_missing_part_is_left_out_a_broken_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        tenants_cli, "MODULES", ("mailops.tenants.admin", "mailops.tenants.not_written_yet")
    )
    parser = argparse.ArgumentParser()
    tenants_cli.register(parser.add_subparsers())
    args = parser.parse_args(["tenants", "list"])
    assert args.func.__name__ == "cmd_list"
    monkeypatch.setattr(tenants_cli, "MODULES", ("mailops.no_such_package.admin",))
    with pytest.raises(ModuleNotFoundError):
        tenants_cli.register(argparse.ArgumentParser().add_subparsers())
