"""The postgrey role: Postgrey answers Postfix's policy protocol on its socket in the
spool, greylists a new triplet with the role's text, and lets whitelisted recipients
and clients through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SOCKET = "/var/spool/postfix/postgrey/socket"


def test_postgrey_listens_on_its_socket(host: Any) -> None:
    # (its process name has spaces, which testinfra's process module cannot parse)
    assert host.run("pgrep -u postgrey").rc == 0, "postgrey is not running"
    directory = host.file("/var/spool/postfix/postgrey")
    assert (directory.user, directory.group, directory.mode) == ("postgrey", "postfix", 0o750)
    assert host.file(SOCKET).is_socket
    assert host.socket(f"unix://{SOCKET}").is_listening


def test_options_and_whitelists(host: Any) -> None:
    options = host.file("/etc/default/postgrey")
    assert (options.user, options.mode) == ("root", 0o644)
    assert "--delay=60 " in options.content_string
    assert f"--unix={SOCKET} " in options.content_string
    assert "192.0.2.77" in host.file("/etc/postgrey/whitelist_clients.local").content_string
    assert "postmaster@" in host.file("/etc/postgrey/whitelist_recipients.local").content_string


def test_new_triplet_is_greylisted(policy: Callable[..., str], token: str) -> None:
    answer = policy(SOCKET, client_address="192.0.2.10", client_name="unknown",
                    sender=f"{token}@sender.test", recipient="user@company.test")  # fmt: skip
    assert answer.startswith("action=DEFER_IF_PERMIT Greylisted, see"), answer


def test_whitelisted_recipient_and_client_pass(policy: Callable[..., str], token: str) -> None:
    for attributes in (
        {"client_address": "192.0.2.10", "recipient": "postmaster@company.test"},
        {"client_address": "192.0.2.77", "recipient": "user@company.test"},
    ):
        answer = policy(SOCKET, client_name="unknown", sender=f"{token}@sender.test",
                        **attributes)  # fmt: skip
        assert "DEFER" not in answer and "REJECT" not in answer, (attributes, answer)
