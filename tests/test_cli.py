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
