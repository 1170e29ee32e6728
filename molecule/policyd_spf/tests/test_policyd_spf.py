"""The policyd_spf role: Postfix spawns policyd-spf on private/policyd-spf, main.cf asks
it with the role's timeout and default action, and it answers from DNS: Pass for the
domain's address, a 5.7.23 rejection for another."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SOCKET = "/var/spool/postfix/private/policyd-spf"


def test_postfix_listens_for_policyd_spf(host: Any) -> None:
    assert host.process.filter(comm="master"), "Postfix's master is not running"
    assert host.socket("unix://private/policyd-spf").is_listening
    master_cf = host.check_output("postconf -M policyd-spf/unix")
    assert "user=policyd-spf argv=/usr/bin/policyd-spf" in master_cf


def test_settings(host: Any) -> None:
    conf = host.file("/etc/postfix-policyd-spf-python/policyd-spf.conf")
    assert (conf.user, conf.mode) == ("root", 0o644)
    assert "Mail_From_reject = Fail" in conf.content_string
    restrictions = host.check_output("postconf -h smtpd_recipient_restrictions")
    assert "unix:private/policyd-spf" in restrictions
    assert "451 4.7.24" in restrictions and "timeout=30s" in restrictions


def test_pass_for_the_published_address(policy: Callable[..., str], token: str) -> None:
    answer = policy(SOCKET, client_address="192.0.2.10", client_name="unknown",
                    helo_name="client.spf.test", sender=f"{token}@spf.test",
                    recipient="user@company.test")  # fmt: skip
    assert answer.lower().startswith("action=prepend received-spf: pass"), answer


def test_fail_is_rejected(policy: Callable[..., str], token: str) -> None:
    answer = policy(SOCKET, client_address="192.0.2.99", client_name="unknown",
                    helo_name="client.spf.test", sender=f"{token}@spf.test",
                    recipient="user@company.test")  # fmt: skip
    assert answer.startswith("action=550 5.7.23"), answer
