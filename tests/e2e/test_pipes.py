"""Issue 3's alias plumbing: bounces@, donotreply@, unsubscribe@ and fbl@ at the company
domain reach the mailops pipes on mx1 instead of Google Workspace."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.labhosts import inventory, letters, mail_domain, sh, swaks, token

HOSTS = inventory()
DOMAIN = mail_domain()


def delivery_line(needle: str, timeout: float = 60) -> str:
    """mx1's log line that says where the message with queue id `needle` went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("mx1", f"grep -F '{needle}: to=<' /var/log/mail.log | tail -1").out.strip()
        if out:
            return out
        time.sleep(1)
    raise AssertionError(f"no delivery line for {needle} in mx1's log")


@pytest.mark.parametrize(
    ("local_part", "service"),
    [
        ("bounces", "mailops_bounces"),
        ("bounces+t0k3n", "mailops_bounces"),
        ("fbl", "mailops_bounces"),
        ("donotreply", "mailops_autoreply"),
        ("unsubscribe", "mailops_unsubscribe"),
    ],
)
def test_address_is_piped_to_its_tool(local_part: str, service: str, evidence: list[str]) -> None:
    tag = token()
    res = swaks(
        "inbox",
        f"--server {HOSTS['mx1']['ip']} --ehlo inbox.outside.test --from {letters()}@outlook.test "
        f"--to {local_part}@{DOMAIN} --header 'Subject: pipe {tag}'",
    )
    queued = re.search(r"<-\s+250 2\.0\.0 Ok: queued as (\w+)", res.out)
    assert queued, res.out
    qid = queued.group(1)
    line = delivery_line(qid)
    assert f"relay={service}" in line, line
    evidence.append(line.split(": ", 1)[-1][:200])
