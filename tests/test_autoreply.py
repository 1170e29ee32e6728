"""mailops autoreply: one RFC 3834 reply per sender and period, never to machines or lists.

No real mail is sent: sendmail is a script that records its arguments and input.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import io
import sys
import tempfile
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailops import autoreply, cli, exitcodes
from mailops.store import Store

DAY = 86400


def write_config(tmp_path: Path, sendmail: Path, extra: str = "") -> Path:
    path = tmp_path / "mailops.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/mailops.db"\ntimeout = 1\n'
        f'[autoreply]\nsendmail = "{sendmail}"\ntext = "Nobody reads this mailbox."\n{extra}'
    )
    return path


def fake_sendmail(tmp_path: Path, exit_code: int = 0) -> Path:
    """Records each call as out/N.argv (one argument per line) and out/N.msg."""
    out = tmp_path / "sent"
    out.mkdir(exist_ok=True)
    script = tmp_path / "sendmail"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{out}" | wc -l)\n'
        f'printf "%s\\n" "$@" > "{out}/$n.argv"\n'
        f'cat > "{out}/$n.msg"\n'
        + (
            f'echo "sendmail: fatal: queue file write error" >&2; exit {exit_code}\n'
            if exit_code
            else ""
        )
    )
    script.chmod(0o755)
    return script


def sent(tmp_path: Path) -> list[tuple[list[str], EmailMessage]]:
    out = tmp_path / "sent"
    calls = []
    for argv in sorted(out.glob("*.argv")):
        raw = argv.with_suffix(".msg").read_bytes()
        msg = email.message_from_bytes(raw, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        calls.append((argv.read_text().splitlines(), msg))
    return calls


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, fake_sendmail(tmp_path))


def message(sender: str = "alice@example.com", **headers: str) -> bytes:
    lines = [
        f"From: Alice <{sender}>",
        "To: donotreply@company.test",
        "Subject: Question about my order",
        "Message-ID: <q1@example.com>",
        "References: <a@example.com> <b@example.com>",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\n".join(lines) + "\n\nHello?\n").encode()


def run(
    cfg: Path,
    data: bytes,
    monkeypatch: pytest.MonkeyPatch,
    sender: str = "alice@example.com",
    recipient: str = "donotreply@company.test",
) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    argv = ["--config", str(cfg), "autoreply", "--sender", sender]
    if recipient:
        argv += ["--recipient", recipient]
    return cli.main(argv)


def test_replies_once_as_rfc3834_asks(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(cfg, message(), monkeypatch) == exitcodes.OK
    ((argv, reply),) = sent(tmp_path)
    assert argv == ["-i", "-f", "<>", "--", "alice@example.com"]
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["From"] == "donotreply@company.test"
    assert reply["To"] == "alice@example.com"
    assert reply["Subject"] == "Auto: Question about my order"
    assert reply["In-Reply-To"] == "<q1@example.com>"
    assert reply["References"] == "<a@example.com> <b@example.com> <q1@example.com>"
    assert reply["Message-ID"].endswith("@company.test>")
    assert reply.get_content() == "Nobody reads this mailbox.\n"


def test_same_sender_only_once_per_period(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(cfg, message(), monkeypatch) == 0
    assert run(cfg, message(), monkeypatch) == 0
    assert run(cfg, message("bob@example.com"), monkeypatch, sender="bob@example.com") == 0
    assert [argv[-1] for argv, _ in sent(tmp_path)] == ["alice@example.com", "bob@example.com"]
    # After the period the sender gets a reply again.
    with Store.open(f"sqlite:///{tmp_path}/mailops.db") as s:
        s._db.execute("UPDATE autoreplies SET last_sent_at = last_sent_at - ?", (8 * DAY,))
    assert run(cfg, message(), monkeypatch) == 0
    assert len(sent(tmp_path)) == 3


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        ("", {}),
        ("MAILER-DAEMON", {}),
        ("mailer-daemon@mx.example.com", {}),
        ("noreply@shop.example", {}),
        ("no-reply+x@shop.example", {}),
        ("bounces@shop.example", {}),
        ("owner-announce@lists.example", {}),
        ("announce-request@lists.example", {}),
        ("alice@example.com", {"Auto_Submitted": "auto-generated"}),
        ("alice@example.com", {"Auto_Submitted": "auto-replied; owner-email=x"}),
        ("alice@example.com", {"Precedence": "bulk"}),
        ("alice@example.com", {"Precedence": "junk"}),
        ("alice@example.com", {"List_Id": "<announce.lists.example>"}),
        ("alice@example.com", {"List_Unsubscribe": "<mailto:u@lists.example>"}),
        ("alice@example.com", {"X_Autoreply": "yes"}),
        ("alice@example.com", {"X_Auto_Response_Suppress": "OOF, AutoReply"}),
        ("donotreply@company.test", {}),
        ("not an address", {}),
    ],
)
def test_never_replies_to_machines_lists_or_itself(
    cfg: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sender: str,
    headers: dict[str, str],
) -> None:
    assert run(cfg, message(sender or "x@example.com", **headers), monkeypatch, sender) == 0
    assert sent(tmp_path) == []
    assert "no reply to" in capsys.readouterr().err


def test_auto_submitted_no_is_a_person(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(cfg, message(Auto_Submitted="no"), monkeypatch) == 0
    assert len(sent(tmp_path)) == 1


def test_no_reply_to_a_suppressed_address(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(f"sqlite:///{tmp_path}/mailops.db") as s:
        s.suppress("alice@example.com", "userunknown")
    assert run(cfg, message(), monkeypatch) == 0
    assert sent(tmp_path) == []


def test_sendmail_failure_is_tempfail_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, fake_sendmail(tmp_path, exit_code=75))
    assert run(cfg, message(), monkeypatch) == exitcodes.TEMPFAIL
    err = capsys.readouterr().err
    assert "exited 75: sendmail: fatal: queue file write error" in err
    # The failed attempt did not use up the sender's reply.
    cfg = write_config(tmp_path, fake_sendmail(tmp_path))
    assert run(cfg, message(), monkeypatch) == exitcodes.OK
    assert len(sent(tmp_path)) == 2


def test_missing_sendmail_is_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, tmp_path / "no-such-sendmail")
    assert run(cfg, message(), monkeypatch) == exitcodes.TEMPFAIL


def test_store_down_is_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, fake_sendmail(tmp_path))
    cfg.write_text(cfg.read_text().replace(f"{tmp_path}/mailops.db", f"{tmp_path}/x/y.db"))
    assert run(cfg, message(), monkeypatch) == exitcodes.TEMPFAIL
    assert sent(tmp_path) == []


def test_without_a_from_address_it_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, fake_sendmail(tmp_path))
    assert run(cfg, message(), monkeypatch, recipient="") == exitcodes.TEMPFAIL
    assert "configuration error" in capsys.readouterr().err


def test_from_setting_and_text_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = tmp_path / "reply.txt"
    body.write_text("Grüße: write to help@company.test instead.\n")
    cfg = write_config(
        tmp_path,
        fake_sendmail(tmp_path),
        f'from = "Company <noreply-desk@company.test>"\ntext_file = "{body}"\n',
    )
    assert run(cfg, message(), monkeypatch, recipient="") == 0
    ((_, reply),) = sent(tmp_path)
    assert reply["From"].addresses[0].addr_spec == "noreply-desk@company.test"
    assert reply.get_content() == "Grüße: write to help@company.test instead.\n"


def test_injected_headers_stay_in_the_subject(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (
        b"From: alice@example.com\n"
        b"Subject: =?utf-8?q?hi=0D=0ABcc:_victim@example.com?=\n"
        b"Message-ID: <x@y> <evil>\r\n\r\nbody\n"
    )
    assert run(cfg, data, monkeypatch) == 0
    ((_, reply),) = sent(tmp_path)
    assert reply["Bcc"] is None
    assert "victim@example.com" in reply["Subject"]
    assert reply["In-Reply-To"] == "<x@y>"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=3000), sender=st.one_of(st.text(max_size=60), st.emails()))
def test_fuzz_never_a_traceback(data: bytes, sender: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cfg = write_config(tmp_path, fake_sendmail(tmp_path))
        err = io.StringIO()
        stdin = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(data))
        try:
            with contextlib.redirect_stderr(err):
                rc = autoreply.cmd_autoreply(
                    argparse.Namespace(
                        config=str(cfg),
                        sender=sender,
                        recipient="donotreply@company.test",
                        tenant=None,
                    )
                )
        finally:
            sys.stdin = stdin
        assert rc == exitcodes.OK, err.getvalue()
        assert "Traceback" not in err.getvalue()
        for _, reply in sent(tmp_path):
            assert reply["Auto-Submitted"] == "auto-replied"
