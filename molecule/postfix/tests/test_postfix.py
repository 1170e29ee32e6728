"""The postfix role on one host (profile "": a null client that delivers locally), with
a lookup table and an extra master.cf service: the configuration is clean, Postfix
answers SMTP and delivers a real message, and a sender in the table is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def test_configuration_is_clean(host: Any) -> None:
    result = host.run("postfix check")
    assert result.rc == 0 and not result.stderr.strip(), result.stderr
    main_cf = host.file("/etc/postfix/main.cf")
    assert main_cf.user == "root" and main_cf.mode == 0o644
    assert host.file("/etc/postfix/sender_access.db").exists


def test_master_runs_and_listens(host: Any) -> None:
    assert host.file("/var/spool/postfix/pid/master.pid").exists
    assert host.process.filter(comm="master"), "Postfix's master is not running"
    assert host.socket("tcp://0.0.0.0:25").is_listening


def test_banner_names_the_host_and_nothing_else(host: Any) -> None:
    banner = host.check_output("printf 'QUIT\\r\\n' | nc -w 5 127.0.0.1 25 | head -1")
    assert banner.rstrip() == "220 molecule-postfix.company.test ESMTP"


def test_sender_in_the_table_is_refused(swaks: Callable[..., str]) -> None:
    out = swaks("--from", "spammer@dodgy.test", "--to", "root@localhost", "--quit-after", "RCPT")
    assert "<** 554" in out and "sender refused by policy" in out, out


def test_message_is_delivered_to_the_mailbox(
    host: Any, swaks: Callable[..., str], token: str, wait_for: Callable[..., None]
) -> None:
    out = swaks("--from", "ops@company.test", "--to", "root@localhost",
                "--header", f"Subject: {token}")  # fmt: skip
    assert "250 2.0.0 Ok: queued" in out, out
    wait_for(lambda: host.run("grep -qF %s /var/mail/root", token).rc == 0, 30,
             f"{token} in /var/mail/root")  # fmt: skip
