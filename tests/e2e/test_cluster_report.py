"""Issue 19 (Trust) in the lab: the monitor mails one report for the whole cluster.

The report is the monitor's cron job (user mailops-queues; in the lab every two minutes
over today's lines, inventories/lab/group_vars/mail_monitor/cluster_report.yml): it
fetches each node's log lines of the day over SSH (the node's forced command) and mails
``mailops report --logs-from`` over them to the ops address, delivered to the inbox
host.  This check never runs the job: it waits for the mail of a run that cron started
after the check began, so a job cron does not run fails it.

What the mail must show: each of mx1, mail1 and mail2 as a source with as many lines as
that node's log held of the day (between the counts before and after the run, the nodes
logging meanwhile), and totals that are the sum of the nodes' own reports of the day
(between their sums before and after).
"""

from __future__ import annotations

import email
import json
import math
import re
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime

import pytest
import yaml

from tests.e2e.labhosts import INVENTORY, mail_domain, sh

NODES = ("mx1", "mail1", "mail2")
DOMAIN = mail_domain()
MAILBOX = f"/srv/inbox/ops@{DOMAIN}/new"
LOG_DIR = "/var/lib/mailops-queues/cluster-logs"
PY = "/opt/mailops/bin/python"
MAILOPS = "/opt/mailops/bin/mailops"
TOTALS = ("delivered", "deferred", "bounced", "rejected")
_SUBJECT = re.compile(
    r"Postfix log summary for (?P<day>.+?) on monitor(?:\.\S+)?: (?P<delivered>\d+) delivered, "
    r"(?P<deferred>\d+) deferred, (?P<bounced>\d+) bounced, (?P<rejected>\d+) rejected"
)


def period() -> int:
    """The job's period in seconds, from the lab's schedule ("*/N" minutes)."""
    data = yaml.safe_load((INVENTORY / "group_vars/mail_monitor/cluster_report.yml").read_text())
    minute = str(data["queue_monitor__cluster_report_minute"])
    assert minute.startswith("*/"), f"the lab's schedule is not every few minutes: {minute}"
    return int(minute[2:]) * 60


def day_lines(node: str) -> int:
    """How many lines of today the node's log (with its rotated files) holds now."""
    res = sh(node, f"{PY} -m mailops.report.lines --day today | wc -l", timeout=120)
    assert res.rc == 0, f"{node}: {res.err}"
    return int(res.out.strip())


def node_totals(node: str) -> dict[str, int]:
    """The node's own report of its lines of today, the subject's totals."""
    res = sh(
        node,
        f"f=$(mktemp) && {PY} -m mailops.report.lines --day today >$f && "
        f"{MAILOPS} --config /dev/null report --log $f --day all --format json; "
        "rc=$?; rm -f $f; exit $rc",
        timeout=180,
    )
    assert res.rc == 0, f"{node}: {res.err}"
    totals = json.loads(res.out)["totals"]
    return {k: int(totals[k]) for k in TOTALS}


def cluster_counts() -> tuple[dict[str, int], dict[str, int]]:
    lines = {n: day_lines(n) for n in NODES}
    sums = dict.fromkeys(TOTALS, 0)
    for n in NODES:
        for k, v in node_totals(n).items():
            sums[k] += v
    return lines, sums


def mailbox() -> set[str]:
    """The messages in the ops mailbox; none while no mail has reached it yet (on a fresh
    lab inbox makes the directory with the first message)."""
    res = sh("inbox", f"if [ -d {MAILBOX} ]; then ls -1 {MAILBOX}; fi")
    assert res.rc == 0, res.err
    return set(res.out.split())


def report_mail_after(seen: set[str], not_before: float, timeout: float) -> EmailMessage:
    """The first new message in the ops mailbox that is the monitor's cluster report and
    was made at or after ``not_before`` (its Date)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in sorted(mailbox() - seen):
            seen.add(name)
            raw = sh("inbox", f"cat {MAILBOX}/{name}").out
            msg = email.message_from_string(raw, policy=default_policy)
            assert isinstance(msg, EmailMessage)
            if not _SUBJECT.match(str(msg["Subject"] or "")):
                continue
            if parsedate_to_datetime(str(msg["Date"])).timestamp() >= not_before:
                return msg
        time.sleep(5)
    raise AssertionError(
        f"no cluster report made after {datetime.fromtimestamp(not_before, UTC):%H:%M:%S} "
        f"reached {MAILBOX} within {timeout:.0f} s: does cron run the monitor's job?"
    )


def sources(msg: EmailMessage) -> dict[str, int]:
    """node -> lines, from the Sources section of the report's text part."""
    body = msg.get_body(("plain",))
    assert body is not None, "the report has no text part"
    text = body.get_content()
    section = text.split("\nSources\n", 1)[1]
    found: dict[str, int] = {}
    for m in re.finditer(r"^ +([\d,]+)  (\S+)$", section, re.M):
        path = m.group(2)
        assert path.startswith(LOG_DIR + "/") and path.endswith(".log"), path
        found[path[len(LOG_DIR) + 1 : -len(".log")]] = int(m.group(1).replace(",", ""))
    return found


@pytest.mark.long_wait
@pytest.mark.slow
def test_the_monitor_mails_one_report_of_every_node(evidence: list[str]) -> None:
    every = period()
    lines_before, sums_before = cluster_counts()
    seen = mailbox()
    # cron starts the job at the top of a minute that the period divides: the first run
    # wholly after the counts above starts at the next such minute
    start = math.ceil(time.time() / every) * every
    # a run takes seconds; the MX greylists the monitor's first report (10 s, then the
    # null client's 20 s retry), hence the margin
    msg = report_mail_after(seen, start, timeout=start - time.time() + every + 120)
    lines_after, sums_after = cluster_counts()

    got = sources(msg)
    evidence.append(f"{msg['Subject']}; sources {got}")
    assert sorted(got) == sorted(NODES), f"the report's sources are {sorted(got)}"
    for node in NODES:
        assert lines_before[node] <= got[node] <= lines_after[node], (
            f"{node}: the report read {got[node]} lines, its log held "
            f"{lines_before[node]} before the run and {lines_after[node]} after"
        )
    figures = _SUBJECT.match(str(msg["Subject"]))
    assert figures is not None
    for k in TOTALS:
        assert sums_before[k] <= int(figures[k]) <= sums_after[k], (
            f"{k}: the cluster report says {figures[k]}, the nodes' own reports add up to "
            f"{sums_before[k]} before the run and {sums_after[k]} after"
        )
    assert sum(got.values()) > 0
