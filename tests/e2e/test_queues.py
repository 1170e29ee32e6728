"""Issue 8 in the lab: every node's queue sizes, collected over SSH, served by the monitor."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.labhosts import PREFIX, inventory, mail_domain, sh, token

HOSTS = inventory()
DOMAIN = mail_domain()
NODES = ("mx1", "mail1", "mail2")
COLLECT = (
    "su -s /bin/sh mailops-queues -c "
    "'/opt/mailops/bin/mailops --config /etc/mailops/queue-monitor.toml queues collect'"
)
TEMPFAIL_RCPT = "later@outlook.test"


def fetch(path: str) -> str:
    """GET a page from the monitor's nginx, from inside the monitor."""
    res = sh(
        "monitor",
        "python3 -c 'import sys, urllib.request; "
        f'sys.stdout.write(urllib.request.urlopen("http://127.0.0.1{path}", timeout=10)'
        ".read().decode())'",
    )
    assert res.rc == 0, f"nginx did not serve {path}: {res.err}"
    return res.out


def collect(all_up: bool = True, extra: str = "") -> dict[str, Any]:
    """Run the collector as cron does (with `extra` options), then read nginx's page."""
    res = sh("monitor", COLLECT[:-1] + extra + "'", timeout=90)
    if all_up:
        assert res.rc == 0, res.err
    data: dict[str, Any] = json.loads(fetch("/mailqueues/"))
    return data


def postqueue_counts(host: str) -> dict[str, int]:
    """What Postfix itself says: messages per queue, from postqueue -j."""
    out = sh(host, "postqueue -j").out
    counts = {"active": 0, "deferred": 0}
    for line in out.splitlines():
        q = json.loads(line)["queue_name"]
        counts[q] = counts.get(q, 0) + 1
    return counts


@pytest.mark.serial  # other checks' mail would change the queues between two reads
def test_monitor_serves_every_node_with_postfix_s_own_counts(evidence: list[str]) -> None:
    data = collect()
    assert set(NODES) <= set(data["mailqueues"]), data["mailqueues"].keys()
    for host in NODES:
        want = postqueue_counts(host)
        got = data["mailqueues"][host]
        assert "error" not in got, got
        assert int(got["deferredmailqueue"]) == want["deferred"], (host, got, want)
        assert int(got["activemailqueue"]) == want["active"], (host, got, want)
    evidence.append(json.dumps(data["mailqueues"])[:300])
    metrics = fetch("/metrics")
    assert 'host="mail1"' in metrics, metrics[:500]
    evidence.append(next(m for m in metrics.splitlines() if "mail1" in m))


@pytest.fixture
def inbox_says_later() -> Iterator[None]:
    """Make inbox answer 451 for one recipient, as a throttling provider would."""
    sh("inbox", "cp -p /etc/postfix/main.cf /etc/postfix/main.cf.e2e-saved")
    before = sh("inbox", "postconf -h smtpd_recipient_restrictions").out.strip()
    rule = f"check_recipient_access inline:{{{{{TEMPFAIL_RCPT}=451 4.7.0 try later}}}}"
    sh("inbox", f"postconf -e 'smtpd_recipient_restrictions = {rule}, {before}' && postfix reload")
    yield
    # Put the file back byte for byte, so the next converge finds nothing to change.
    sh("inbox", "mv /etc/postfix/main.cf.e2e-saved /etc/postfix/main.cf && postfix reload")
    ids = sh(
        "mail1",
        "postqueue -j | python3 -c 'import json,sys\n"
        "for l in sys.stdin:\n m=json.loads(l)\n"
        f' if any(r["address"]=="{TEMPFAIL_RCPT}" for r in m["recipients"]):'
        ' print(m["queue_id"])\'',
    ).out.split()
    for qid in ids:
        sh("mail1", f"postsuper -d {qid} >/dev/null 2>&1")


@pytest.mark.serial
def test_deferred_queue_on_mail1_shows_up(inbox_says_later: None, evidence: list[str]) -> None:
    before = postqueue_counts("mail1")["deferred"]
    tag = token()
    sh(
        "mail1",
        f"for i in 1 2 3 4 5; do printf 'Subject: later {tag} '$i'\\n\\nx\\n'"
        f" | sendmail -f bounces@{DOMAIN} {TEMPFAIL_RCPT}; done",
    )
    deadline = time.monotonic() + 60
    while postqueue_counts("mail1")["deferred"] < before + 5 and time.monotonic() < deadline:
        time.sleep(1)
    want = postqueue_counts("mail1")
    assert want["deferred"] >= before + 5, want
    got = collect()["mailqueues"]["mail1"]
    assert int(got["deferredmailqueue"]) == want["deferred"], (got, want)
    evidence.append(f"mail1 deferred: postqueue -j {want['deferred']}, monitor {got}")


@pytest.mark.serial
def test_a_node_down_is_reported_and_the_others_still_are(evidence: list[str]) -> None:
    subprocess.run(
        ["podman", "stop", "-t", "2", f"{PREFIX}-mail2"], check=True, capture_output=True
    )
    try:
        # A stopped node never answers: each collection waits the per-host timeout
        # for it (10 s by default), so this one gives it 3.
        data = collect(all_up=False, extra=" --timeout 3")
    finally:
        subprocess.run(["podman", "start", f"{PREFIX}-mail2"], check=True, capture_output=True)
        # The container's PID 1 is a sleep: start what the roles started.
        sh("mail2", "service opendkim start; postfix start; service ssh start; service cron start")
    assert "error" in data["hosts"]["mail2"] or "error" in data["mailqueues"]["mail2"], data
    for host in ("mx1", "mail1"):
        assert "error" not in data["mailqueues"][host], data["mailqueues"][host]
    evidence.append(f"mail2 stopped: {json.dumps(data['mailqueues']['mail2'])[:200]}")


def test_the_collector_key_opens_no_shell(evidence: list[str]) -> None:
    ssh = (
        "su -s /bin/sh mailops-queues -c "
        # UpdateHostKeys=no: leave the role's known_hosts as it wrote it.
        "'ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no "
        "-o ConnectTimeout=10 {opts} mailops-queues@{host} {cmd}'"
    )
    asked = sh("monitor", ssh.format(opts="", host=HOSTS["mx1"]["ip"], cmd='"id; cat /etc/shadow"'))
    assert "uid=" not in asked.out and "root:" not in asked.out, asked.out
    assert json.loads(asked.out)["queues"], asked.out  # the forced command answered instead
    pty = sh("monitor", ssh.format(opts="-tt", host=HOSTS["mx1"]["ip"], cmd="/bin/sh"))
    assert "uid=" not in pty.out
    # A stdio forward through the node (what a tunnel would use) is refused.
    fwd = sh(
        "monitor",
        ssh.format(opts="-W 127.0.0.1:25", host=HOSTS["mx1"]["ip"], cmd="") + " </dev/null",
        timeout=30,
    )
    assert fwd.rc != 0 and "220" not in fwd.out, (fwd.out, fwd.err)
    evidence.append(f"asked for a shell, got the queue report; -W refused: {fwd.err.strip()[:80]}")
