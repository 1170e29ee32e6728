"""mailops bounces parse: output lines, formats, unreadable files; the bounces package."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mailops.bounces as bounces_pkg
from mailops import bounceparse, cli, exitcodes
from mailops.bounces import parse_cmd

DATA = Path(__file__).resolve().parent / "data" / "bounces"
SAMPLES = sorted(DATA.glob("*.eml"))


@pytest.fixture(autouse=True)
def no_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_CONFIG", "/dev/null")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["bounces", "parse", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lines_match_the_expected_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--json", *map(str, SAMPLES)], capsys)
    assert (code, err) == (exitcodes.OK, "")
    lines = [json.loads(line) for line in out.splitlines()]
    want: list[dict[str, Any]] = []
    for sample in SAMPLES:
        exp = json.loads(sample.with_suffix(".expected.json").read_text())
        links = {k: exp[k] for k in ("detector", "original_message_id", "x_message_id")}
        links["verp_token"] = exp["verp_token"]
        base = {"file": str(sample), "kind": exp["kind"], **links}
        if not exp["recipients"]:
            nulls = ("recipient", "status", "reason", "hard", "diagnostic", "action")
            want.append({**base, **dict.fromkeys(nulls)})
        for r in exp["recipients"]:
            want.append(
                {
                    **base,
                    "recipient": r["address"],
                    "status": r["status"],
                    "reason": r["reason"],
                    "hard": r["hard"],
                    "diagnostic": r["diagnostic"],
                    "action": r["action"],
                }
            )
    assert lines == want


def test_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([str(DATA / "postfix_dsn.eml"), str(DATA / "not_a_bounce.eml")], capsys)
    assert code == exitcodes.OK
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[:7] for r in rows] == [
        [str(DATA / "postfix_dsn.eml"), "bounce", "rfc3464", "nobody@gmail.test", "5.1.1",
         "userunknown", "hard"],
        [str(DATA / "postfix_dsn.eml"), "bounce", "rfc3464", "carol@example.net", "5.7.1",
         "blocked", "soft"],
        [str(DATA / "not_a_bounce.eml"), "other", "none", "-", "-", "-", "-"],
    ]  # fmt: skip
    assert rows[0][7].startswith("550 5.1.1 <nobody@gmail.test>")


def test_unreadable_files_are_reported_and_the_rest_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.eml"
    code, out, err = run(["--json", str(missing), str(tmp_path), str(DATA / "qmail.eml")], capsys)
    assert code == exitcodes.NOINPUT
    assert f"{missing}: cannot read (No such file or directory)" in err
    assert f"{tmp_path}: cannot read" in err
    assert "Traceback" not in err
    assert [json.loads(line)["recipient"] for line in out.splitlines()] == [
        "karl@example.net",
        "laura@example.org",
    ]


def test_stdin_and_envelope_to(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (DATA / "yahoo.eml").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code, out, _ = run(["--json", "--envelope-to", "bounces+env1@company.test", "-"], capsys)
    row = json.loads(out)
    assert (code, row["file"], row["recipient"], row["verp_token"]) == (
        0,
        "-",
        "rupert@yahoo.test",
        "env1",
    )


def test_file_names_with_control_characters_stay_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "a\nb.eml"
    odd.write_bytes((DATA / "not_a_bounce.eml").read_bytes())
    code, out, _ = run([str(odd)], capsys)
    assert code == 0 and len(out.splitlines()) == 1
    assert out.startswith(f"{tmp_path}/a b.eml\tother")


def test_bounces_registers_parse_and_skips_only_a_missing_subcommand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bounces_pkg, "SUBCOMMANDS", ("parse_cmd", "not_written_yet"))
    parser = argparse.ArgumentParser()
    bounces_pkg.register(parser.add_subparsers())
    args = parser.parse_args(["bounces", "parse", "x.eml"])
    assert args.files == ["x.eml"]

    def broken(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError):
        bounces_pkg.register(argparse.ArgumentParser().add_subparsers())


def test_bounces_is_a_listed_tool() -> None:
    assert "bounces" in cli.TOOLS


def test_verp_prefixes_from_settings_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "b.eml"
    sample.write_bytes((DATA / "qmail.eml").read_bytes().replace(b"bounces+", b"rp+"))
    settings = tmp_path / "mailops.toml"
    settings.write_text('[bounces]\nverp_prefixes = ["rp"]\nmax_message_bytes = 1024\n')

    def token(argv: list[str]) -> str:
        assert cli.main(argv) == 0
        return str(json.loads(capsys.readouterr().out.splitlines()[0])["verp_token"])

    parse = ["bounces", "parse", "--json"]
    assert token([*parse, str(sample)]) == ""
    assert token(["--config", str(settings), *parse, str(sample)]) == "0a0b0c"
    assert token([*parse, "--verp-prefix", "x", "--verp-prefix", "rp", str(sample)]) == "0a0b0c"


@pytest.mark.parametrize("value", ['"bounces"', "[]", '["a@b"]', '["bounces+"]', "[1]"])
def test_bad_verp_prefixes_are_a_configuration_error(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "mailops.toml"
    settings.write_text(f"[bounces]\nverp_prefixes = {value}\n")
    code = cli.main(["--config", str(settings), "bounces", "parse", str(DATA / "qmail.eml")])
    assert code == exitcodes.CONFIG
    assert "verp_prefixes" in capsys.readouterr().err


def test_bounces_parse_imports_only_its_own_subcommand() -> None:
    """`mailops bounces parse` does not pay for ingest's store and pipe imports."""
    code = (
        "import sys; from mailops import cli; "
        "cli.build_parser('bounces', ['bounces', 'parse', 'x.eml']); "
        "print('mailops.bounces.ingest' in sys.modules, 'mailops.bounces.parse_cmd' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    ("argv", "modules"),
    [
        (["bounces", "parse", "x.eml"], ("parse_cmd",)),
        (["--config", "c.toml", "bounces", "ingest"], ("ingest",)),
        (["bounces", "from-log", "-v"], ("fromlog",)),
        (["bounces", "--help"], ("parse_cmd", "ingest", "fromlog")),
        (["bounces"], ("parse_cmd", "ingest", "fromlog")),
        (None, ("parse_cmd", "ingest", "fromlog")),
    ],
)
def test_bounces_wanted_subcommands(argv: list[str] | None, modules: tuple[str, ...]) -> None:
    assert bounces_pkg.wanted(argv) == modules


def _batch(tmp_path: Path) -> list[str]:
    """Twelve files, one of them missing, in an order that mixes the samples."""
    files = [str(p) for p in (SAMPLES * 2)[:11]]
    files.insert(8, str(tmp_path / "missing.eml"))
    return files


def test_a_forked_batch_prints_what_one_process_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _batch(tmp_path)
    monkeypatch.setattr(parse_cmd, "default_jobs", lambda: 1)
    alone = run(["--json", *files], capsys)
    forks: list[int] = []
    real_fork = os.fork

    def counted_fork() -> int:
        pid: int = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted_fork)
    monkeypatch.setattr(parse_cmd, "MIN_FILES", 3)
    monkeypatch.setattr(parse_cmd, "default_jobs", lambda: 3)
    forked = run(["--json", *files], capsys)
    assert len(forks) == 2
    assert forked == alone
    assert alone[0] == exitcodes.NOINPUT and "missing.eml: cannot read" in alone[2]
    assert len(alone[1].splitlines()) >= 11


def test_the_run_of_a_failed_worker_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _batch(tmp_path)
    monkeypatch.setattr(parse_cmd, "default_jobs", lambda: 1)
    alone = run([*files], capsys)
    parent = os.getpid()
    real_parse = bounceparse.parse_message

    def parse_here_only(raw: bytes, **kwargs: Any) -> Any:
        if os.getpid() != parent:
            raise RuntimeError("a worker that breaks")
        return real_parse(raw, **kwargs)

    monkeypatch.setattr(parse_cmd, "parse_message", parse_here_only)
    monkeypatch.setattr(parse_cmd, "MIN_FILES", 3)
    monkeypatch.setattr(parse_cmd, "default_jobs", lambda: 2)
    assert run([*files], capsys) == alone
