"""The queue_node role: sshd runs, the collector's keys are pinned to their commands and
to the collector's address, and logging in with the queue key gives the queue counts
as JSON whatever command the client asks for."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

KEY = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "queue-collector/id_ed25519")


@pytest.fixture
def collector(host: Any) -> Any:
    """ssh to the node on loopback as the collector, with its key."""
    key = base64.b64encode(KEY.read_bytes()).decode()
    host.run_expect([0], "install -d -m 700 /root/.ssh && echo %s | base64 -d > "
                    "/root/.ssh/collector && chmod 600 /root/.ssh/collector", key)  # fmt: skip

    def login(command: str) -> Any:
        return host.run("ssh -i /root/.ssh/collector -o BatchMode=yes -o ConnectTimeout=10 "
                        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                        "mailops-queues@127.0.0.1 %s", command)  # fmt: skip

    return login


def test_sshd_listens(host: Any) -> None:
    assert host.process.filter(comm="sshd"), "sshd is not running"
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_keys_and_sudo_are_pinned(host: Any) -> None:
    keys = host.file("/var/lib/mailops-queues/.ssh/authorized_keys")
    assert (keys.user, keys.mode) == ("root", 0o644)
    lines = [k for k in keys.content_string.splitlines() if k.strip() and not k.startswith("#")]
    assert len(lines) == 2
    assert all(line.startswith('from="127.0.0.1",restrict,command="') for line in lines)
    sudoers = host.file("/etc/sudoers.d/mailops-queues")
    assert (sudoers.user, sudoers.mode) == ("root", 0o440)
    assert "(postfix) NOPASSWD: /opt/mailops/bin/mailops" in sudoers.content_string


def test_queue_key_gives_the_counts_and_nothing_else(collector: Any) -> None:
    result = collector("id")
    assert result.rc == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["method"] == "files"
    assert set(counts["queues"]) >= {"incoming", "active", "deferred", "hold"}
    assert "uid=" not in result.stdout
