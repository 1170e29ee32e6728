"""mailops unsubscribe: whoever writes to unsubscribe@ is suppressed, machines are not."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailops import cli, exitcodes, unsubscribe
from mailops.store import Store


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "mailops.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/mailops.db"\ntimeout = 1\n')
    return path


def url(cfg: Path) -> str:
    return cfg.read_text().split('"')[1]


def request(sender: str = "Reader <Reader@Example.com>", **headers: str) -> bytes:
    lines = [f"From: {sender}", "To: unsubscribe@company.test", "Subject: unsubscribe"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\nplease stop\n").encode()


def run(cfg: Path, data: bytes, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return cli.main(["--config", str(cfg), "unsubscribe", *argv])


def test_envelope_sender_is_suppressed_once(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = request(Message_ID="<u1@example.com>")
    assert run(cfg, data, monkeypatch, "--sender", "reader@example.com") == exitcodes.OK
    assert run(cfg, data, monkeypatch, "--sender", "reader@example.com") == exitcodes.OK
    with Store.open(url(cfg)) as s:
        entry = s.get("reader@example.com")
        assert entry is not None and entry.reason == "unsubscribe" and entry.expires_at is None
        assert len(s.rows("unsubscribes")) == 1


def test_from_header_when_no_sender_is_given(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(cfg, request(), monkeypatch, "--recipient", "unsubscribe@company.test") == 0
    with Store.open(url(cfg)) as s:
        (row,) = s.rows("unsubscribes")
    assert (row["address"], row["envelope_to"], row["subject"]) == (
        "reader@example.com",
        "unsubscribe@company.test",
        "unsubscribe",
    )


@pytest.mark.parametrize(
    ("argv", "headers"),
    [
        (["--sender", "MAILER-DAEMON"], {}),
        (["--sender", ""], {}),
        (["--sender", "reader@example.com"], {"Auto_Submitted": "auto-replied"}),
        (["--sender", "reader@example.com"], {"Precedence": "bulk"}),
        (["--sender", "reader@example.com"], {"X_Autoreply": "yes"}),
        (["--sender", "not an address"], {}),
    ],
)
def test_machines_are_ignored(
    cfg: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    headers: dict[str, str],
) -> None:
    assert run(cfg, request(**headers), monkeypatch, *argv) == exitcodes.OK
    assert "ignored" in capsys.readouterr().err
    with Store.open(url(cfg)) as s:
        assert s.rows("unsubscribes") == [] and s.rows("suppressions") == []


def test_store_down_is_tempfail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/none/m.db"\n')
    assert run(cfg, request(), monkeypatch, "--sender", "r@example.com") == exitcodes.TEMPFAIL
    err = capsys.readouterr().err
    assert "kept queued" in err and "Traceback" not in err


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.binary(max_size=3000), sender=st.one_of(st.none(), st.text(max_size=60), st.emails())
)
def test_fuzz_stored_or_ignored_never_a_traceback(data: bytes, sender: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mailops.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:///{tmp}/mailops.db"\n')
        err = io.StringIO()
        stdin = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(data))
        try:
            with contextlib.redirect_stderr(err):
                rc = unsubscribe.cmd_unsubscribe(
                    argparse.Namespace(config=str(cfg), sender=sender, recipient="", tenant=None)
                )
        finally:
            sys.stdin = stdin
        assert rc == exitcodes.OK, err.getvalue()
        assert len(err.getvalue().splitlines()) == 1
        with Store.open(url(cfg)) as s:
            for row in s.rows("unsubscribes") + s.rows("suppressions"):
                assert all("\n" not in str(v) and "\r" not in str(v) for v in row.values())
