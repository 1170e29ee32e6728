"""The queue_monitor role: nginx serves the queue sizes and metrics to the allowed
addresses, the collector's settings are private and its cron job is in place, and a
collection run asks the node over SSH and publishes what it answered."""

from __future__ import annotations

import json
from typing import Any

NODE = "molecule-queue_monitor-node"  # the second container, asked over SSH
GET = "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], \
timeout=10).read().decode())' %s"


def test_nginx_listens(host: Any) -> None:
    assert host.process.filter(comm="nginx"), "nginx is not running"
    assert host.socket("tcp://0.0.0.0:80").is_listening


def test_collector_settings_and_job(host: Any) -> None:
    settings = host.file("/etc/mailops/queue-monitor.toml")
    assert (settings.user, settings.group, settings.mode) == ("root", "mailops-queues", 0o640)
    assert f"{NODE}=" in settings.content_string
    key = host.file("/var/lib/mailops-queues/.ssh/id_ed25519")
    assert (key.user, key.mode) == ("mailops-queues", 0o600)
    assert "queues collect" in host.file("/etc/cron.d/mailops-queues").content_string
    assert host.process.filter(comm="cron"), "cron is not running"


def test_collection_is_served(host: Any) -> None:
    command = host.file("/etc/cron.d/mailops-queues").content_string.split("mailops-queues ", 1)
    job = command[1].split(">", 1)[0].strip()
    host.run_expect([0], "runuser -u mailops-queues -- sh -c %s", job)
    page = json.loads(host.check_output(GET, "http://127.0.0.1/mailqueues/"))
    assert page["hosts"][NODE]["method"] == "files", page
    assert set(page["mailqueues"][NODE]) == {"activemailqueue", "deferredmailqueue"}
    metrics = host.check_output(GET, "http://127.0.0.1/metrics")
    assert f'mailops_queue_collect_up{{host="{NODE}"}} 1' in metrics, metrics
