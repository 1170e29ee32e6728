"""Issue 8 in the lab: every node's queue sizes, collected over SSH, served by the monitor.

The collection is the monitor's cron job (user mailops-queues, every minute).  These
checks never run it: they read what nginx serves and wait for the job cron started to
write the next collection, so a collector that cron does not run fails them.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.labhosts import (
    PREFIX,
    file_mtime,
    inventory,
    mail_domain,
    sh,
    start_again,
    token,
    wait_for_value,
)

HOSTS = inventory()
DOMAIN = mail_domain()
NODES = ("mx1", "mail1", "mail2")
TEMPFAIL_RCPT = "later@outlook.test"
JSON = "/var/lib/mailops-queues/www/mailqueues.json"
# The collector's cron period, and the bound on the page's age: cron starts the
# job in the first second of each minute, a collection of nodes that answer takes about
# a second, so a page older than this means cron did not run the collector.
PERIOD = 60
FRESH = 70
# The per-node timeout the role sets (queue_monitor__timeout): a stopped node makes
# the collection that long.
NODE_TIMEOUT = 10


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


def page() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fetch("/mailqueues/"))
    return data


def started(data: dict[str, Any]) -> float:
    """When the collection on the page started (its generated_at, whole seconds, UTC)."""
    when = datetime.strptime(data["generated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return when.timestamp()


def collected_after(moment: float, timeout: float = FRESH + NODE_TIMEOUT) -> dict[str, Any]:
    """The page of the first collection cron started after ``moment`` (time.time()).

    generated_at has whole seconds, so the collection must have started in a later
    second than ``moment``; cron starts the next one within PERIOD seconds.
    """
    return wait_for_value(
        f"a collection by cron started after {time.strftime('%H:%M:%S', time.gmtime(moment))}",
        page,
        lambda data: started(data) >= int(moment) + 1,
        timeout,
    )


def postqueue_counts(host: str) -> dict[str, int]:
    """What Postfix itself says: messages per queue, from postqueue -j."""
    out = sh(host, "postqueue -j").out
    counts = {"active": 0, "deferred": 0}
    for line in out.splitlines():
        q = json.loads(line)["queue_name"]
        counts[q] = counts.get(q, 0) + 1
    return counts


def test_the_page_is_not_older_than_the_collectors_period(evidence: list[str]) -> None:
    data = page()
    age = time.time() - started(data)
    assert age <= FRESH, (
        f"/mailqueues/ was collected {age:.0f} s ago ({data['generated_at']}), more than "
        f"{FRESH} s: cron did not run the collector (user mailops-queues) on the monitor"
    )
    owner = sh("monitor", f"stat -c %U {JSON}").out.strip()
    assert owner == "mailops-queues", f"{JSON} was written by {owner!r}"
    evidence.append(f"generated_at {data['generated_at']}: {age:.0f} s old, written by {owner}")


@pytest.mark.long_wait
def test_cron_collects_again_within_a_minute(evidence: list[str]) -> None:
    first = page()
    seen = time.time()
    later = collected_after(started(first), timeout=FRESH)
    took = time.time() - seen
    gap = started(later) - started(first)
    assert gap <= FRESH, f"collections {gap:.0f} s apart"
    # cron starts its jobs in the first second of a minute; the collection's time is read
    # after the interpreter started.  (The first page may be the role's own collection,
    # made once when the pages did not exist yet, at any second.)
    second = int(started(later)) % 60
    assert second <= 10, f"{later['generated_at']}: not started by cron at a minute's start"
    written = file_mtime("monitor", JSON)
    assert written is not None and written >= started(later), (written, later["generated_at"])
    evidence.append(
        f"generated_at {first['generated_at']} -> {later['generated_at']} ({gap:.0f} s apart), "
        f"seen {took:.0f} s after the first read"
    )


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


# Serial: other checks' mail would change the queues between two reads.  One wait for
# cron's next collection serves both: mail1's new deferred mail and every node's counts.
@pytest.mark.serial
def test_monitor_serves_every_node_with_postfix_s_own_counts(
    inbox_says_later: None, evidence: list[str]
) -> None:
    start = postqueue_counts("mail1")["deferred"]
    tag = token()
    sh(
        "mail1",
        f"for i in 1 2 3 4 5; do printf 'Subject: later {tag} '$i'\\n\\nx\\n'"
        f" | sendmail -f bounces@{DOMAIN} {TEMPFAIL_RCPT}; done",
    )
    deadline = time.monotonic() + 60
    while postqueue_counts("mail1")["deferred"] < start + 5 and time.monotonic() < deadline:
        time.sleep(1)
    before = {host: postqueue_counts(host) for host in NODES}
    assert before["mail1"]["deferred"] >= start + 5, before["mail1"]
    data = collected_after(time.time())
    after = {host: postqueue_counts(host) for host in NODES}
    assert set(NODES) <= set(data["mailqueues"]), data["mailqueues"].keys()
    for host in NODES:
        got = data["mailqueues"][host]
        assert "error" not in got, got
        for queue in ("active", "deferred"):
            low, high = sorted((before[host][queue], after[host][queue]))
            # Cron's collection read the queue between the two reads of postqueue -j.
            assert low <= int(got[f"{queue}mailqueue"]) <= high, (host, got, before, after)
    evidence.append(
        f"mail1 deferred: postqueue -j {before['mail1']['deferred']}, "
        f"monitor {data['mailqueues']['mail1']} (collected {data['generated_at']})"
    )
    metrics = fetch("/metrics")
    assert 'host="mail1"' in metrics, metrics[:500]
    evidence.append(next(m for m in metrics.splitlines() if "mail1" in m))


@pytest.mark.serial
def test_a_node_down_is_reported_and_the_others_still_are(evidence: list[str]) -> None:
    subprocess.run(
        ["podman", "stop", "-t", "2", f"{PREFIX}-mail2"], check=True, capture_output=True
    )
    try:
        # A stopped node never answers: cron's next collection waits the per-node
        # timeout for it, then writes the page with an error for it.
        data = collected_after(time.time(), timeout=FRESH + NODE_TIMEOUT + 10)
    finally:
        subprocess.run(["podman", "start", f"{PREFIX}-mail2"], check=True, capture_output=True)
        # The container's PID 1 is a sleep: start what the roles started.
        start_again("mail2")
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
