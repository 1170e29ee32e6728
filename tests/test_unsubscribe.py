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


TENANTS = """
[tenants.alpha]
domains = ["alpha.test"]
logins = ["alpha"]

[tenants.beta]
domains = ["beta.test"]
logins = ["beta"]
"""


@pytest.fixture
def tenant_cfg(cfg: Path) -> Path:
    cfg.write_text(cfg.read_text() + TENANTS)
    return cfg


def scopes(cfg: Path) -> list[tuple[str, str, str]]:
    """(table, tenant, address) of every unsubscribe row and suppression."""
    with Store.open(url(cfg)) as s:
        rows = [("unsubscribes", r["tenant"], r["address"]) for r in s.rows("unsubscribes")]
        rows += [("suppressions", e.tenant, e.address) for e in s.suppressions(tenant=None)]
    return sorted(rows)


def test_unsubscribe_plus_tenant_is_that_tenants_only(
    tenant_cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--sender", "reader@example.com", "--recipient", "Unsubscribe+Alpha@company.test"]
    assert run(tenant_cfg, request(), monkeypatch, *argv) == exitcodes.OK
    assert "reader@example.com unsubscribed from tenant alpha" in capsys.readouterr().err
    assert scopes(tenant_cfg) == [
        ("suppressions", "alpha", "reader@example.com"),
        ("unsubscribes", "alpha", "reader@example.com"),
    ]
    with Store.open(url(tenant_cfg)) as s:
        assert s.get("reader@example.com") is None  # beta and mail of no tenant still go
    # The Postfix map (global entries only) does not carry it.
    check = ["--config", str(tenant_cfg), "suppression", "check", "reader@example.com"]
    assert cli.main(check) == exitcodes.FAIL
    assert cli.main([*check, "--tenant", "alpha"]) == exitcodes.OK


def test_the_recipient_from_the_environment(
    tenant_cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIGINAL_RECIPIENT", "unsubscribe+beta+nl42@company.test")
    assert run(tenant_cfg, request(), monkeypatch, "--sender", "r@example.com") == 0
    assert ("unsubscribes", "beta", "r@example.com") in scopes(tenant_cfg)


def test_without_the_envelope_recipient_the_to_header_names_the_tenant(
    tenant_cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORIGINAL_RECIPIENT", raising=False)
    data = request().replace(
        b"To: unsubscribe@company.test", b"To: Unsub <unsubscribe+beta@company.test>"
    )
    assert run(tenant_cfg, data, monkeypatch, "--sender", "r@example.com") == 0
    assert ("suppressions", "beta", "r@example.com") in scopes(tenant_cfg)
    # The envelope recipient, when known, wins.
    argv = ["--sender", "s@example.com", "--recipient", "unsubscribe+alpha@company.test"]
    assert run(tenant_cfg, data, monkeypatch, *argv) == 0
    assert ("suppressions", "alpha", "s@example.com") in scopes(tenant_cfg)


@pytest.mark.parametrize(
    "recipient",
    ["unsubscribe+gamma@company.test", "unsubscribe@company.test", "unsubscribe+@company.test", ""],
)
def test_no_known_tenant_is_a_global_unsubscribe(
    tenant_cfg: Path, monkeypatch: pytest.MonkeyPatch, recipient: str
) -> None:
    monkeypatch.delenv("ORIGINAL_RECIPIENT", raising=False)
    argv = ["--sender", "r@example.com", "--recipient", recipient]
    assert run(tenant_cfg, request(), monkeypatch, *argv) == 0
    assert scopes(tenant_cfg) == [
        ("suppressions", "", "r@example.com"),
        ("unsubscribes", "", "r@example.com"),
    ]


def test_an_unsubscribe_from_each_tenant_is_two_requests(
    tenant_cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("alpha", "beta"):
        argv = ["--sender", "r@example.com", "--recipient", f"unsubscribe+{name}@company.test"]
        assert run(tenant_cfg, request(Message_ID=f"<{name}@x>"), monkeypatch, *argv) == 0
    assert [t for table, t, _ in scopes(tenant_cfg) if table == "suppressions"] == [
        "alpha",
        "beta",
    ]


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


def test_unsubscribe_plus_token_names_the_recipient_and_the_tenant(
    tenant_cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mailto of the one-click header: the token decides, not the sender."""
    from mailops.unsub.token import Sealer

    key = "p" * 48
    keys = tenant_cfg.parent / "keys"
    keys.write_text(key + "\n")
    tenant_cfg.write_text(
        tenant_cfg.read_text() + f'\n[unsubscribe]\nkey_file = "{keys}"\nmax_age_days = 30\n'
    )
    good = Sealer([key], 86400).make("beta", "reader@example.com")
    # Postfix may hand the local part over in another case: the token does not mind.
    argv = [
        "--sender",
        "Other@Example.com",
        "--recipient",
        f"unsubscribe+{good.upper()}@company.test",
    ]
    assert run(tenant_cfg, request(), monkeypatch, *argv) == exitcodes.OK
    assert run(tenant_cfg, request(), monkeypatch, *argv) == exitcodes.OK  # replay: one row
    assert scopes(tenant_cfg) == [
        ("suppressions", "beta", "reader@example.com"),
        ("unsubscribes", "beta", "reader@example.com"),
    ]
    forged = Sealer(["q" * 48], 86400).make("alpha", "victim@example.com")
    argv = ["--sender", "x@example.com", "--recipient", f"unsubscribe+{forged}@company.test"]
    assert run(tenant_cfg, request(), monkeypatch, *argv) == exitcodes.OK
    assert "forged or altered" in capsys.readouterr().err
    assert len(scopes(tenant_cfg)) == 2
