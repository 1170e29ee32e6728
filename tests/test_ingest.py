"""mailops bounces ingest: Postfix's pipe contract (0 stored or ignored, 75 retry later).

The store going away (SQLite unwritable or locked, PostgreSQL stopped) must give 75 and
lose nothing: the same message delivered again after recovery is stored exactly once.
Random input never gives a traceback, and nothing stored carries CR or LF.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailops import cli, exitcodes
from mailops.bounceparse.model import Recipient, Report
from mailops.bounces import ingest as ingest_mod
from mailops.store import Store
from tests import pgcluster

ROOT = Path(__file__).resolve().parent.parent


def dsn(
    rcpt: str = "gone@gmail.test",
    *,
    status: str = "5.1.1",
    action: str = "failed",
    message_id: str = "<dsn-1@mx.gmail.test>",
    diagnostic: str = "smtp; 550 5.1.1 <gone@gmail.test>: Recipient address rejected: "
    "User unknown in virtual mailbox table",
    padding: int = 0,
) -> bytes:
    """An RFC 3464 report as Postfix writes them (with the pipe's Return-Path line)."""
    text = f"""\
Return-Path: <>
From: MAILER-DAEMON@mx.gmail.test (Mail Delivery System)
To: bounces@company.test
Subject: Undelivered Mail Returned to Sender
Message-ID: {message_id}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.gmail.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.gmail.test
Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.gmail.test
Diagnostic-Code: {diagnostic}

--BOUNDARY
Content-Type: text/rfc822-headers

Message-ID: <sent-1@company.test>
X-Message-ID: app-42
From: news@company.test
To: {rcpt}
Subject: hello

--BOUNDARY--
"""
    data = text.encode("utf-8", "surrogatepass")
    if padding:
        # A big attachment after the report part, as when the original is returned.
        data = data.replace(b"--BOUNDARY--", b"X" * padding + b"\n--BOUNDARY--")
    return data


def write_config(path: Path, url: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[store]\nurl = "{url}"\ntimeout = 1\n{extra}')
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "mailops.toml", f"sqlite:///{tmp_path}/db/mailops.db")


def url_of(cfg: Path) -> str:
    return cfg.read_text().split('"')[1]


@pytest.fixture(autouse=True)
def _store_dir(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir(exist_ok=True)


def pipe(cfg: Path, data: bytes, *argv: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the subcommand as Postfix would, in this process, through its argparse."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    ingest_mod.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--config", str(cfg), "ingest", *argv])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc: int = args.func(args)
    return rc


def rows(cfg: Path, table: str = "bounces") -> list[dict[str, Any]]:
    with Store.open(url_of(cfg)) as s:
        return s.rows(table)


# --------------------------------------------------------------------------- storing


def test_hard_bounce_is_stored_and_suppressed(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = pipe(cfg, dsn(), "--envelope-to", "bounces@company.test", monkeypatch=monkeypatch)
    assert rc == exitcodes.OK
    assert "suppressed gone@gmail.test" in capsys.readouterr().err
    (row,) = rows(cfg)
    assert (row["address"], row["status"], row["reason"], row["hard"]) == (
        "gone@gmail.test",
        "5.1.1",
        "userunknown",
        1,
    )
    assert row["original_message_id"] == "<sent-1@company.test>"
    assert row["envelope_to"] == "bounces@company.test"
    assert row["raw_size"] == len(dsn()) and row["truncated"] == 0
    with Store.open(url_of(cfg)) as s:
        entry = s.get("gone@gmail.test")
    assert entry is not None and entry.reason == "userunknown"


def test_same_bounce_twice_is_one_row(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == 0
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == 0
    # Resent by the remote MTA: new Received: line, same Message-ID.
    assert pipe(cfg, b"Received: from x by y;\n" + dsn(), monkeypatch=monkeypatch) == 0
    assert len(rows(cfg)) == 1


def test_other_and_autoreply_are_ignored(
    cfg: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keep = tmp_path / "unrecognized"
    keep.mkdir()
    write_config(cfg, url_of(cfg), f'[bounces]\nunrecognized_dir = "{keep}"\n')
    hello = b"From: someone@example.com\nSubject: hi\n\nJust saying hello.\n"
    assert pipe(cfg, hello, monkeypatch=monkeypatch) == 0
    assert "ignored other" in capsys.readouterr().err
    vacation = (
        b"From: boss@example.com\nAuto-Submitted: auto-replied\nSubject: Out of office\n\n"
        b"I am away until Monday.\n"
    )
    assert pipe(cfg, vacation, monkeypatch=monkeypatch) == 0
    assert "ignored autoreply" in capsys.readouterr().err
    assert rows(cfg) == []
    saved = list(keep.iterdir())
    assert len(saved) == 1 and saved[0].read_bytes() == hello


def test_oversized_message_is_stored_truncated(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(cfg, url_of(cfg), "[bounces]\nmax_message_bytes = 4096\n")
    big = dsn(padding=50_000)
    assert pipe(cfg, big, monkeypatch=monkeypatch) == 0
    (row,) = rows(cfg)
    assert row["truncated"] == 1 and row["raw_size"] == len(big)
    assert row["address"] == "gone@gmail.test"


def test_soft_bounces_reach_the_threshold(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(cfg, url_of(cfg), "[suppression]\nsoft_threshold = 2\n")
    for i in range(2):
        msg = dsn(
            "full@gmail.test",
            status="4.2.2",
            message_id=f"<soft-{i}@mx>",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
        )
        assert pipe(cfg, msg, monkeypatch=monkeypatch) == 0
    with Store.open(url_of(cfg)) as s:
        entry = s.get("full@gmail.test")
    assert entry is not None and entry.source == "soft" and entry.expires_at is not None


# --------------------------------------------------------------------------- tenants

TENANTS = """
[tenants.alpha]
domains = ["alpha.test"]
logins = ["alpha"]

[tenants.beta]
domains = ["beta.test"]
logins = ["beta"]
"""


def from_tenant(data: bytes, author: str, sender: str = "") -> bytes:
    """The DSN about a message From: ``author`` (and with that Return-Path, if given)."""
    line = f"From: {author}"
    if sender:
        line = f"Return-Path: <{sender}>\n{line}"
    return data.replace(b"From: news@company.test", line.encode())


def test_a_bounce_belongs_to_the_tenant_of_the_original_and_suppresses_globally(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(cfg, url_of(cfg), TENANTS)
    msg = from_tenant(dsn(), '"Alpha News" <News@Alpha.test>')
    assert pipe(cfg, msg, monkeypatch=monkeypatch) == exitcodes.OK
    assert "for tenant alpha" in capsys.readouterr().err
    assert [r["tenant"] for r in rows(cfg)] == ["alpha"]
    with Store.open(url_of(cfg)) as s:
        assert [(e.tenant, e.address) for e in s.suppressions(tenant=None)] == [
            ("", "gone@gmail.test")
        ]


def test_the_envelope_sender_wins_over_from_and_no_tenant_is_empty(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(cfg, url_of(cfg), TENANTS)
    both = from_tenant(dsn("a@gmail.test"), "news@alpha.test", "bounce@mail.beta.test")
    assert pipe(cfg, both, monkeypatch=monkeypatch) == 0
    vague = from_tenant(dsn("b@gmail.test", message_id="<dsn-2@x>"), "n@gamma.test")
    assert pipe(cfg, vague, monkeypatch=monkeypatch) == 0
    assert sorted((r["address"], r["tenant"]) for r in rows(cfg)) == [
        ("a@gmail.test", "beta"),
        ("b@gmail.test", ""),
    ]


def test_a_complaint_belongs_to_its_tenant_and_blocks_everybody(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(cfg, url_of(cfg), TENANTS)
    arf = (ROOT / "tests" / "data" / "bounces" / "arf_abuse.eml").read_bytes()
    arf = arf.replace(b"<news@company.test>", b"<news@beta.test>")
    assert pipe(cfg, arf, monkeypatch=monkeypatch) == 0
    assert [(r["address"], r["tenant"]) for r in rows(cfg, "complaints")] == [
        ("walter@example.net", "beta")
    ]
    with Store.open(url_of(cfg)) as s:
        entry = s.get("walter@example.net")
        assert entry is not None and entry.source == "complaint"
        assert s.complaint_origins() == {"walter@example.net": {"beta"}}


def test_a_report_stored_before_tenants_is_not_stored_again(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = from_tenant(dsn(), "news@alpha.test")
    assert pipe(cfg, msg, monkeypatch=monkeypatch) == 0  # no [tenants] yet: tenant ''
    write_config(cfg, url_of(cfg), TENANTS)
    assert pipe(cfg, msg, monkeypatch=monkeypatch) == 0
    assert [r["tenant"] for r in rows(cfg)] == [""]


def test_soft_bounces_of_two_tenants_count_together(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(cfg, url_of(cfg), "[suppression]\nsoft_threshold = 2\n" + TENANTS)
    for i, author in enumerate(("news@alpha.test", "news@beta.test")):
        msg = dsn(
            "full@gmail.test",
            status="4.2.2",
            message_id=f"<soft-{i}@mx>",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
        )
        assert pipe(cfg, from_tenant(msg, author), monkeypatch=monkeypatch) == 0
    assert sorted(r["tenant"] for r in rows(cfg)) == ["alpha", "beta"]
    with Store.open(url_of(cfg)) as s:
        entry = s.get("full@gmail.test")
    assert entry is not None and entry.source == "soft"


def test_a_broken_tenants_table_keeps_the_message_queued(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(cfg, url_of(cfg), '[tenants.alpha]\ndomains = "alpha.test"\n')
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
    assert "[tenants.alpha] domains" in capsys.readouterr().err
    assert not rows(cfg)


# --------------------------------------------------------------------------- failures


@contextlib.contextmanager
def unwritable(*paths: Path) -> Iterator[None]:
    """Make files and directories unwritable, even for root (chattr +i)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file unwritable")
    done: list[Path] = []
    try:
        for p in paths:
            proc = subprocess.run(["chattr", "+i", str(p)], capture_output=True, check=False)
            if proc.returncode != 0:
                pytest.skip(f"chattr +i not supported here: {proc.stderr.decode().strip()}")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=False)


def test_unwritable_sqlite_is_tempfail_and_nothing_is_lost(
    cfg: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Store.open(url_of(cfg)).close()  # the store exists, then its disk turns read-only
    db_dir = tmp_path / "db"
    with unwritable(db_dir / "mailops.db", db_dir):
        assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
    err = capsys.readouterr().err
    assert "store unavailable, message kept queued" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Postfix delivers it again once the store is back: stored once, and only once.
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.OK
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.OK
    assert len(rows(cfg)) == 1


def test_sqlite_that_cannot_be_created_is_tempfail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "c.toml", f"sqlite:///{tmp_path}/missing/mailops.db")
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
    assert "cannot open store" in capsys.readouterr().err


def test_locked_sqlite_is_tempfail(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store.open(url_of(cfg)).close()
    holder = sqlite3.connect(url_of(cfg)[len("sqlite:///") :], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.OK
    assert len(rows(cfg)) == 1


def test_stopped_postgresql_is_tempfail_then_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        cluster = pgcluster.Cluster.start()
    except pgcluster.Unavailable as exc:
        pytest.skip(f"PostgreSQL store tests skipped: {exc}")
    try:
        cfg = write_config(tmp_path / "pg.toml", cluster.new_database())
        assert pipe(cfg, dsn(message_id="<first@mx>"), monkeypatch=monkeypatch) == 0
        cluster.pause()
        assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
        err = capsys.readouterr().err
        assert "store unavailable" in err and "Traceback" not in err
        cluster.resume()
        assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.OK
        assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.OK
        assert len(rows(cfg)) == 2
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    "text",
    ["[store\nurl = 1", '[store]\nurl = "mysql://x/y"\n', "[store]\nurl = 5\n"],
)
def test_config_errors_keep_the_message_queued(
    tmp_path: Path,
    text: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text(text)
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
    err = capsys.readouterr().err
    assert "configuration error" in err and "kept queued" in err


def test_missing_config_file_is_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pipe(tmp_path / "nope.toml", dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL


def test_a_classifier_crash_is_tempfail(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(raw: bytes, envelope_to: str = "") -> Report:
        raise RecursionError("deep MIME")

    monkeypatch.setattr(ingest_mod, "_default_parser", lambda: broken)
    assert pipe(cfg, dsn(), monkeypatch=monkeypatch) == exitcodes.TEMPFAIL
    assert "unexpected RecursionError: deep MIME" in capsys.readouterr().err


def test_reports_from_a_parser_are_stored_as_given(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = Report(
        kind="feedback",
        detector="arf",
        feedback_type="abuse",
        message_id="<fbl@isp>",
        recipients=(Recipient("angry@example.com", "", "feedback", True),),
    )
    with io.BytesIO(b"anything") as fh:
        rc = ingest_mod.ingest(fh, config_path=str(cfg), parse=lambda raw, to: report)
    assert rc == 0
    assert [r["address"] for r in rows(cfg, "complaints")] == ["angry@example.com"]


def test_the_command_line_never_shows_a_traceback(cfg: Path, tmp_path: Path) -> None:
    if "bounces" not in cli.TOOLS:
        pytest.skip("the bounces command is not registered in mailops.cli yet")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    for data in (dsn(), b"\x00\xff" * 1000, b""):
        proc = subprocess.run(
            [sys.executable, "-m", "mailops", "--config", str(cfg), "bounces", "ingest"],
            input=data,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert b"Traceback" not in proc.stderr
    bad = write_config(tmp_path / "bad.toml", f"sqlite:///{tmp_path}/nodir/x.db")
    proc = subprocess.run(
        [sys.executable, "-m", "mailops", "--config", str(bad), "bounces", "ingest"],
        input=dsn(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == exitcodes.TEMPFAIL
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr


# --------------------------------------------------------------------------- fuzz

_FUZZ: list[Path] = []  # the fuzz run's directory, made on first use


def fuzz_config() -> Path:
    if not _FUZZ:
        _FUZZ.append(Path(tempfile.mkdtemp(prefix="mailops-fuzz-")))
    return write_config(_FUZZ[0] / "mailops.toml", f"sqlite:///{_FUZZ[0]}/mailops.db")


nasty_text = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.characters(categories=["Cs", "Cc", "Zl", "Zp"]),  # surrogates and controls
        st.sampled_from(["\r\n", "\r\n\tfolded", "\n\n", ";", "<", ">", "=?utf-8?b?w6k=?="]),
    ),
    max_size=8,
).map("".join)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "dsn", "mangled"]))
    if kind == "bytes":
        return draw(st.binary(max_size=4000))
    data = dsn(
        draw(nasty_text),
        status=draw(nasty_text),
        action=draw(st.sampled_from(["failed", "delayed", "delivered", ""]) | nasty_text),
        message_id=draw(nasty_text),
        diagnostic=draw(nasty_text),
    )
    if kind == "mangled":
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=300)) + data[cut:]
    return data


def _check_stored_fields(cfg: Path) -> None:
    with Store.open(url_of(cfg)) as s:
        for table in ("bounces", "complaints", "suppressions"):
            for row in s.rows(table):
                for name, value in row.items():
                    if isinstance(value, str):
                        assert "\r" not in value and "\n" not in value, (table, name, value)
                        assert "\x00" not in value, (table, name, value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=messages())
def test_fuzz_ingest_never_fails_on_input(data: bytes) -> None:
    cfg = fuzz_config()
    err = io.StringIO()
    with (
        contextlib.redirect_stderr(err),
        io.BytesIO(data) as fh,
    ):
        stdin = sys.stdin
        sys.stdin = io.TextIOWrapper(fh)
        try:
            rc = ingest_mod.cmd_ingest(
                argparse.Namespace(config=str(cfg), envelope_to="", tenant=None)
            )
        finally:
            sys.stdin = stdin
    # The store is healthy, so whatever the input, it is stored or ignored: never 75.
    assert rc == exitcodes.OK, err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert len(err.getvalue().splitlines()) == 1
    _check_stored_fields(cfg)


def teardown_module() -> None:
    for path in _FUZZ:
        shutil.rmtree(path, ignore_errors=True)
