from __future__ import annotations

from pathlib import Path

import pytest

from mailops import config, exitcodes


def test_missing_default_file_is_empty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MAILOPS_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert config.load() == {}


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"absent\.toml: settings file not found"):
        config.load(str(tmp_path / "absent.toml"))


def test_env_variable_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[saslblock]\nthreshold = 7\n")
    monkeypatch.setenv("MAILOPS_CONFIG", str(path))
    assert config.section(config.load(), "saslblock") == {"threshold": 7}


def test_malformed_toml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[bounces\n")
    with pytest.raises(config.ConfigError, match=r"bad\.toml: not valid TOML"):
        config.load(str(path))


def test_section_must_be_a_table() -> None:
    with pytest.raises(config.ConfigError, match=r"\[report\] must be a table"):
        config.section({"report": 3}, "report")


def test_config_check_names_the_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    from mailops import cli

    good = tmp_path / "good.toml"
    good.write_text('[store]\nurl = "sqlite:////tmp/x.db"\n')
    assert cli.main(["--config", str(good), "config", "check"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("store = 3\n")
    assert cli.main(["--config", str(bad), "config", "check"]) == exitcodes.CONFIG
    broken = tmp_path / "broken.toml"
    broken.write_text("[store\n")
    assert cli.main(["--config", str(broken), "config", "check"]) == exitcodes.CONFIG
