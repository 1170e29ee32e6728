from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailops import cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_listed_tool_registers_a_subcommand() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices = sub.choices  # type: ignore[attr-defined]
    for name in cli.TOOLS:
        assert name in choices, f"mailops.{name} did not register the '{name}' subcommand"


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert "mailops 0.1.0" in capsys.readouterr().out


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailops", "--help"],
        env={"PYTHONPATH": str(ROOT / "scripts")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "usage: mailops" in proc.stdout


def test_in_a_pipe_a_bad_command_line_makes_postfix_retry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailops import cli, exitcodes

    monkeypatch.setenv("MAILOPS_PIPE", "1")
    assert cli.main(["no-such-tool"]) == exitcodes.TEMPFAIL
    assert "kept queued" in capsys.readouterr().err
    monkeypatch.delenv("MAILOPS_PIPE")
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-tool"])
    assert exc.value.code == 2


def test_in_a_pipe_a_broken_settings_file_makes_postfix_retry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mailops import cli, exitcodes

    bad = tmp_path / "bad.toml"
    bad.write_text("[store\n")
    monkeypatch.setenv("MAILOPS_PIPE", "1")
    assert cli.main(["--config", str(bad), "config", "check"]) == exitcodes.TEMPFAIL
    monkeypatch.delenv("MAILOPS_PIPE")
    assert cli.main(["--config", str(bad), "config", "check"]) == exitcodes.CONFIG


def test_only_the_tool_asked_for_is_imported() -> None:
    code = (
        "import sys; from mailops import cli; "
        "rc = cli.main(['--config', '/dev/null', 'config', 'check']); "
        "print(rc, 'mailops.report' in sys.modules, 'paramiko' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-3:] == ["0", "False", "False"], out


def test_help_still_lists_every_tool(capsys: pytest.CaptureFixture[str]) -> None:
    from mailops import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    usage = capsys.readouterr().out
    assert all(name in usage for name in cli.TOOLS), usage
