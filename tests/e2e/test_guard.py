"""Issue 21's first "done when" in the lab: complaints about alpha's mail, arriving as ARF
reports at fbl@, push alpha's complaint rate over the pause level; the guard mails the
ops address one readable alert and pauses alpha, whose next message is held while beta's
is delivered; /metrics carries both tenants' rates.

The scheduled job keeps the default minimum volume in the lab (the other checks' few
complaints must not pause alpha under them: docs/guard.md), so this check runs the job's
own command line as the job's user, with a low minimum and a window that starts with
the check.  alpha is resumed, and its guard levels forgotten, whatever happens.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.e2e.labhosts import (
    INVENTORY,
    inventory,
    letters,
    mail_domain,
    sh,
    swaks,
    wait_for,
    wait_for_maildir,
    wait_for_value,
)

pytestmark = [pytest.mark.serial]

HOSTS = inventory()
DOMAIN = mail_domain()
MAILOPS = "/opt/mailops/bin/mailops"
USER = "mailops-queues"  # the collector, whose cron job runs the guard
OPS_BOX = f"/srv/inbox/ops@{DOMAIN}/new"
INBOX = "alice@gmail.test"
PAUSE_DEADLINE = 60 + 15  # tenants sync's minute, plus cron's start and a margin
SENT = 4
COMPLAINTS = 2


def monitor_now() -> float:
    return float(sh("monitor", "date +%s").out.strip())


def guard(since: float, *more: str) -> str:
    """The cron job's command (roles/queue_monitor), as its user, over the window from
    ``since`` (monitor time) to now, judging from 3 delivered recipients."""
    window = (monitor_now() - since) / 3600
    cmd = (
        f"runuser -u {USER} -- {MAILOPS} --config /etc/mailops/mailops.toml guard "
        f"--window {window:.6f} --logs-from /usr/local/sbin/mailops-node-logs "
        f"--min-delivered 3 {' '.join(more)}"
    )
    res = sh("monitor", cmd, timeout=180)
    assert res.rc == 0, res.out + res.err
    return res.out


def complaint_row(printed: str, tenant: str) -> tuple[float, int, int, str]:
    """(rate, complaints, delivered, level) of the tenant in ``--print``'s table."""
    for line in printed.splitlines():
        f = line.split()
        if f[:3] == [tenant, "-", "complaint"]:
            return float(f[3].rstrip("%")) / 100, int(f[4]), int(f[5]), f[6]
    raise AssertionError(f"no complaint row for {tenant} in:\n{printed}")


def app1_sends(sender: str, rcpt: str, subject: str) -> None:
    body = (
        f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\n"
        f"Message-ID: <{letters(16)}@{sender.split('@')[1]}>\n\nHello from {sender}.\n"
    )
    res = sh("app1", f"/usr/sbin/sendmail -f {sender} {rcpt} <<'EOF'\n{body}EOF")
    assert res.rc == 0, res.out + res.err


def arf(token: str, address: str) -> str:
    return (
        f"From: <fbl-reports@gmail.test>\nTo: <fbl@{DOMAIN}>\nSubject: complaint\n"
        f"Message-ID: <{token}.fbl@gmail.test>\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=feedback-report;"
        f' boundary="b{token}"\n\n'
        f"--b{token}\nContent-Type: text/plain\n\nThis is an abuse report.\n\n"
        f"--b{token}\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nUser-Agent: LabFBL/1.0\nVersion: 1\n"
        f"Original-Mail-From: <news@alpha.test>\nOriginal-Rcpt-To: <{address}>\n"
        "Reported-Domain: alpha.test\n\n"
        f"--b{token}\nContent-Type: message/rfc822\n\n"
        f"From: News <news@alpha.test>\nTo: {address}\nSubject: news\n"
        f"Message-ID: <{token}.news@alpha.test>\n\nHello.\n\n--b{token}--\n"
    )


def tell_mx(sender: str, rcpt: str, data: str) -> None:
    path = f"/tmp/guard-{letters(8)}.eml"
    sh("inbox", f"cat > {path} <<'EOF'\n{data}EOF")
    res = swaks(
        "inbox",
        f"--server {HOSTS['mx1']['ip']} --ehlo inbox.outside.test --from {sender} "
        f"--to {rcpt} --data {path}",
    )
    assert "Ok: queued" in res.out, res.out


def alerts() -> list[str]:
    res = sh("inbox", f"grep -l -F '[mailops guard] alpha: PAUSED' {OPS_BOX}/* 2>/dev/null")
    return sorted(res.out.split())


def held_alpha(tag: str) -> list[str]:
    """node:queue id of alpha's messages on hold whose headers carry ``tag``."""
    found = []
    for node in ("mail1", "mail2"):
        for line in sh(node, "postqueue -j").out.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("queue_name") == "hold" and entry.get("sender") == "news@alpha.test":
                qid = entry["queue_id"]
                if tag in sh(node, f"postcat -hq {qid}").out:
                    found.append(f"{node}:{qid}")
    return found


@pytest.fixture
def alpha_restored() -> Iterator[None]:
    sh("monitor", f"{MAILOPS} guard forget alpha")
    try:
        yield
    finally:
        sh("monitor", f"{MAILOPS} tenants resume alpha")
        sh("monitor", f"{MAILOPS} guard forget alpha")


def test_complaints_pause_alpha_once_and_beta_keeps_delivering(
    alpha_restored: None, evidence: list[str]
) -> None:
    assert (INVENTORY / "group_vars/mail_monitor/guard.yml").is_file()
    since = monitor_now() - 5
    tag = letters(10).lower()
    # inbox's alice takes address extensions: each message its own recipient, and a
    # complaint suppresses only that extended address, never alice herself
    rcpts = [f"alice+guard{tag}{i}@gmail.test" for i in range(SENT)]
    for i, r in enumerate(rcpts):
        app1_sends("news@alpha.test", r, f"guard alpha {tag} {i}")
        app1_sends("news@beta.test", r, f"guard beta {tag} {i}")
    for i in range(SENT):
        wait_for_maildir(INBOX, f"guard alpha {tag} {i}", timeout=120)
        wait_for_maildir(INBOX, f"guard beta {tag} {i}", timeout=120)
    # the window holds alpha's deliveries, and no complaint yet
    rate, complained, delivered, level = wait_for_value(
        "alpha's deliveries in the guard's window",
        lambda: complaint_row(guard(since, "--dry-run"), "alpha"),
        lambda row: row[2] >= SENT,
        timeout=120,
        every=10,
    )
    assert complained == 0 and level == "ok", (rate, complained, delivered, level)
    before = alerts()

    for r in rcpts[:COMPLAINTS]:
        tell_mx("fbl-reports@gmail.test", f"fbl@{DOMAIN}", arf(letters(10), r))
    rate, complained, delivered, level = wait_for_value(
        "the ARF complaints in the store",
        lambda: complaint_row(guard(since, "--dry-run"), "alpha"),
        lambda row: row[1] >= COMPLAINTS,
        timeout=180,
        every=10,
    )
    assert rate >= 0.005 and level == "pause", (rate, complained, delivered, level)
    evidence.append(f"alpha: {complained} complaints / {delivered} delivered = {rate:.2%}")

    guard(since)  # the job: alert and pause
    guard(since)  # and again: nothing new to say
    status = sh("monitor", f"{MAILOPS} tenants list").out
    assert re.search(r"^alpha\s+paused", status, re.M), status
    assert "guard" in status, status
    wait_for("the guard's alert in ops' mailbox", lambda: len(alerts()) > len(before), 120)
    time.sleep(15)  # a second alert would come by now
    new = [a for a in alerts() if a not in before]
    assert len(new) == 1, new
    mail = sh("inbox", f"cat {new[0]}").out
    assert "Content-Transfer-Encoding: 8bit" in mail and "What crossed:" in mail
    assert "complaint rate" in mail and "gmail.test: " in mail
    assert "mailops tenants resume alpha" in mail
    evidence.append("one alert: " + mail.split("Subject: ", 1)[1].split("\n", 1)[0][:120])

    # paused: alpha's next message is held, beta's is delivered
    time.sleep(PAUSE_DEADLINE)
    after = f"alice+guard{tag}after@gmail.test"
    app1_sends("news@alpha.test", after, f"after alpha {tag}")
    app1_sends("news@beta.test", after, f"after beta {tag}")
    wait_for_maildir(INBOX, f"after beta {tag}", timeout=90)
    held = wait_for_value(
        "alpha's message on hold on a bulk node",
        lambda: held_alpha(f"after alpha {tag}"),
        lambda ids: bool(ids),
        timeout=60,
    )
    got = sh("inbox", f"grep -l -r -F 'after alpha {tag}' /srv/inbox/{INBOX}/new/").out
    assert not got.strip(), "alpha's message was delivered while paused"
    for node in ("mail1", "mail2"):
        bounced = sh(node, f"grep -F 'status=bounced' /var/log/mail.log | grep -c -F '{tag}'")
        assert bounced.out.strip() in ("", "0"), f"{node} bounced: {bounced.out}"
    evidence.append(f"alpha held as {held}; beta delivered")

    # /metrics: both tenants' rates (the scheduled job's, over 24 hours)
    metrics = sh(
        "monitor",
        "python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
        '"http://127.0.0.1/metrics", timeout=10).read().decode())\'',
    ).out
    for t in ("alpha", "beta"):
        for name in ("complaint_rate", "bounce_rate"):
            assert re.search(rf'^mailops_guard_{name}{{tenant="{t}"}} \S+$', metrics, re.M), (
                f"no {name} of {t} on /metrics"
            )
