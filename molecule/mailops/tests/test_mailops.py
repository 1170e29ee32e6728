"""The mailops role behind Postfix: the tools are installed with private settings, a
bounce mailed to bounces@ goes through the pipe into the store, and cron's suppression
sync puts the address into Postfix's map, which then refuses it at RCPT."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

DSN = Path(__file__).resolve().parents[3] / "tests/data/bounces/postfix_dsn.eml"
HARD = "nobody@gmail.test"  # its hard-bounced recipient (postfix_dsn.expected.json)


def test_tools_and_settings(host: Any) -> None:
    assert host.file("/usr/local/bin/mailops").linked_to == "/opt/mailops/bin/mailops"
    settings = host.file("/etc/mailops/mailops.toml")
    assert (settings.user, settings.group, settings.mode) == ("root", "mailops", 0o640)
    state = host.file("/var/lib/mailops")
    assert (state.user, state.mode) == ("mailops", 0o750)
    assert host.run("mailops --config /etc/mailops/mailops.toml config check").rc == 0


def test_pipes_and_cron_job(host: Any) -> None:
    assert "bounces@company.test" in host.file("/etc/postfix/mailops_transport").content_string
    assert "pipe" in host.check_output("postconf -M mailops_bounces/unix")
    assert "suppression sync" in host.file("/etc/cron.d/mailops").content_string
    assert host.process.filter(comm="cron"), "cron is not running"


def test_bounce_is_stored_and_refused_after_the_sync(
    host: Any, swaks: Callable[..., str], wait_for: Callable[..., None]
) -> None:
    host.run("runuser -u mailops -- mailops suppression remove %s", HARD)
    wait_for(lambda: HARD not in host.file("/etc/postfix/suppressed").content_string, 90,
             f"{HARD} out of /etc/postfix/suppressed (cron's sync)")  # fmt: skip
    encoded = base64.b64encode(DSN.read_bytes()).decode()
    host.run_expect([0], "echo %s | base64 -d > /root/molecule-dsn.eml", encoded)
    out = swaks("--from", "", "--to", "bounces@company.test", "--data", "/root/molecule-dsn.eml")
    assert "250 2.0.0 Ok: queued" in out, out
    # as the pipe's user: a store file made by root would be closed to the pipe
    check = "runuser -u mailops -- mailops suppression check %s"
    wait_for(lambda: host.run(check, HARD).rc == 0, 60,
             f"{HARD} suppressed in the store by the bounce pipe")  # fmt: skip
    wait_for(lambda: HARD in host.file("/etc/postfix/suppressed").content_string, 90,
             f"{HARD} in /etc/postfix/suppressed (cron's sync)")  # fmt: skip
    refused = swaks("--from", "ops@company.test", "--to", HARD, "--quit-after", "RCPT")
    assert "<** 550" in refused, refused
