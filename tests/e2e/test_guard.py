"""Issue 21's first "done when" in the lab, with the scheduled guard: complaints about
gamma's mail, arriving as ARF reports at fbl@, push gamma's complaint rate over its pause
level; the guard's cron job on the monitor mails one readable alert to the ops address
(and gamma's contact) and pauses gamma, whose next message is held while beta's is
delivered; /metrics carries every tenant's rates.

gamma is the guard's own lab tenant (inventories/lab/group_vars/all/tenants.yml): a low
minimum volume of its own (its ``limits.min_delivered``) lets the scheduled job judge it
from this check's few messages, while alpha and beta keep the default minimum, so the
other checks' complaints and bounces never pause them (docs/guard.md).  The check never
runs the guard: it waits for what cron's job (every minute in the lab) did.

Re-runs on the same lab: gamma's old deliveries stay in the guard's 24-hour window, but
its complaints are deleted from the store when the check ends (and before it starts), so
the next run's complaints make a new crossing.  The complaints are always about
recipients that one sending address delivered: the guard judges each address too, and
complaints at two addresses could cross in two runs of the job, hence two alerts.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.labhosts import (
    INVENTORY,
    headers,
    inventory,
    letters,
    mail_domain,
    sh,
    swaks,
    wait_for_maildir,
    wait_for_value,
)

pytestmark = [pytest.mark.serial]

HOSTS = inventory()
DOMAIN = mail_domain()
MAILOPS = "/opt/mailops/bin/mailops"
BULK = ("mail1", "mail2")
TENANT = "gamma"
GUARD_CRON = "/etc/cron.d/mailops-guard"
NODE_STATE = "/var/lib/mailops/tenants.json"  # [tenants_sync] state on the bulk nodes
RCPT_BOX = "carol@outlook.test"  # inbox takes carol+anything@ into carol's Maildir
# One run of the job after something it must see: cron's minute, the run itself (it
# fetches both nodes' logs) and a margin.
GUARD_PERIOD = 60 + 45
COMPLAINTS = 2


def _tenant(name: str) -> dict[str, Any]:
    data = yaml.safe_load((INVENTORY / "group_vars/all/tenants.yml").read_text())
    entries: dict[str, dict[str, Any]] = {t["name"]: t for t in data["mail_tenants"]}
    return entries[name]


GAMMA = _tenant(TENANT)
GAMMA_DOMAIN = str(GAMMA["domains"][0])
LIMITS: dict[str, float] = dict(GAMMA.get("limits") or {})
SENT = int(LIMITS["min_delivered"])  # exactly the minimum volume: judged from this run on
PAUSE_LEVEL = float(LIMITS.get("complaint_pause", 0.005))
CONTACT = str(GAMMA["contact"])
OPS = f"ops@{DOMAIN}"  # mailops__ops_address (group_vars/all/mailops.yml)


def maildir(address: str) -> str:
    """inbox's Maildir of an address (an +extension lands in the base mailbox)."""
    local, _, domain = address.partition("@")
    return f"/srv/inbox/{local.split('+', 1)[0]}@{domain}/new"


def psql(sql: str) -> str:
    res = sh("monitor", f"runuser -u postgres -- psql -d mailops -At -c {shlex.quote(sql)}")
    assert res.rc == 0, res.out + res.err
    return res.out


def forget_complaints() -> None:
    """gamma's complaints out of the store: its rate falls to 0 and the job records that
    silently, so a later complaint is a new crossing.  (No ``guard forget``: with the
    complaints still counted by a run that read them just before, a forgotten level would
    make that run pause gamma again.)"""
    psql(f"DELETE FROM complaints WHERE tenant = '{TENANT}'")  # noqa: S608 - a constant


def guard_output() -> str:
    """Where the scheduled job writes its gauges, from cron's own line for it."""
    cron = sh("monitor", f"cat {GUARD_CRON}").out
    line = next((ln for ln in cron.splitlines() if " guard " in ln and ln[:1] != "#"), "")
    assert line.split()[:1] == ["*"], f"the guard's job must run every minute in the lab: {cron}"
    found = re.search(r"--prometheus-output (\S+)", line)
    assert found, line
    return found.group(1)


def gauges(path: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in sh("monitor", f"cat {path}").out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def level(g: dict[str, float]) -> float:
    return g.get(f'mailops_guard_level{{tenant="{TENANT}",metric="complaint"}}', -1)


def app1_sends(sender: str, rcpt: str, subject: str) -> None:
    body = (
        f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\n"
        f"Message-ID: <{letters(16)}@{sender.split('@')[1]}>\n\nHello from {sender}.\n"
    )
    res = sh("app1", f"/usr/sbin/sendmail -f {sender} {rcpt} <<'EOF'\n{body}EOF")
    assert res.rc == 0, res.out + res.err


def arrival_address(msg: str) -> str:
    """The address inbox took the message from: its own (topmost) Received: header."""
    received = [v for n, v in headers(msg) if n.lower() == "received"]
    found = re.search(r"\[(\d+\.\d+\.\d+\.\d+)\]", received[0] if received else "")
    assert found, received
    return found.group(1)


def arf(token: str, address: str, source_ip: str) -> str:
    sender = f"news@{GAMMA_DOMAIN}"
    return (
        f"From: <fbl-reports@outlook.test>\nTo: <fbl@{DOMAIN}>\nSubject: complaint\n"
        f"Message-ID: <{token}.fbl@outlook.test>\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=feedback-report;"
        f' boundary="b{token}"\n\n'
        f"--b{token}\nContent-Type: text/plain\n\nThis is an abuse report.\n\n"
        f"--b{token}\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nUser-Agent: LabFBL/1.0\nVersion: 1\n"
        f"Original-Mail-From: <{sender}>\nOriginal-Rcpt-To: <{address}>\n"
        f"Source-IP: {source_ip}\nReported-Domain: {GAMMA_DOMAIN}\n\n"
        f"--b{token}\nContent-Type: message/rfc822\n\n"
        f"From: News <{sender}>\nTo: {address}\nSubject: news\n"
        f"Message-ID: <{token}.news@{GAMMA_DOMAIN}>\n\nHello.\n\n--b{token}--\n"
    )


def complain(address: str, source_ip: str) -> None:
    """An outside feedback loop reports ``address``'s complaint to the MX's fbl@."""
    token = letters(10)
    path = f"/tmp/guard-{token}.eml"
    sh("inbox", f"cat > {path} <<'EOF'\n{arf(token, address, source_ip)}EOF")
    res = swaks(
        "inbox",
        f"--server {HOSTS['mx1']['ip']} --ehlo inbox.outside.test "
        f"--from fbl-reports@outlook.test --to fbl@{DOMAIN} --data {path}",
    )
    assert "Ok: queued" in res.out, res.out


def alerts(address: str) -> set[str]:
    """The guard's alerts about gamma in ``address``'s Maildir (file names)."""
    res = sh(
        "inbox",
        f"grep -l -F '[mailops guard] {TENANT}:' {maildir(address)}/* 2>/dev/null",
    )
    return {p for p in res.out.split() if p}


def node_paused(node: str) -> bool:
    res = sh(node, f"cat {NODE_STATE}")
    try:
        state = json.loads(res.out)["tenants"][TENANT]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(state.get("paused"))


def queued(tag: str) -> list[str]:
    """Where a message whose headers carry ``tag`` waits: node:queue:id, on the bulk nodes
    (held or deferred) or on app1 (deferred at submission)."""
    found = []
    for host in (*BULK, "app1"):
        for line in sh(host, "postqueue -j").out.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            qid = entry["queue_id"]
            if tag in sh(host, f"postcat -hq {qid}").out:
                found.append(f"{host}:{entry.get('queue_name')}:{qid}")
    return found


def bounced_anywhere(tag: str) -> list[str]:
    hits = []
    for host in (*BULK, "app1"):
        res = sh(host, f"grep -F 'status=bounced' /var/log/mail.log | grep -c -F '{tag}'")
        if res.out.strip() not in ("", "0"):
            hits.append(f"{host}: {res.out.strip()}")
    return hits


@pytest.fixture
def gamma_clean() -> Iterator[None]:
    """gamma active and without complaints before the check, and so again after it,
    whatever happens: resume releases the mail held meanwhile (it is delivered to
    carol+...@, a mailbox that exists)."""
    sh("monitor", f"{MAILOPS} tenants resume {TENANT}")
    forget_complaints()
    try:
        yield
    finally:
        sh("monitor", f"{MAILOPS} tenants resume {TENANT}")
        forget_complaints()


def test_complaints_pause_gamma_once_and_beta_keeps_delivering(
    gamma_clean: None, evidence: list[str]
) -> None:
    started = time.monotonic()
    settings = sh("monitor", "cat /etc/mailops/mailops.toml").out
    assert f"[tenants.{TENANT}]" in settings, f"the lab has no tenant {TENANT}: converge it"
    prom = guard_output()
    # cron's job has seen gamma without complaints (after a previous run: the fall recorded)
    wait_for_value(
        f"the guard's job to see {TENANT} clean ({prom})",
        lambda: gauges(prom),
        lambda g: (
            level(g) == 0 and g.get(f'mailops_guard_complaints{{tenant="{TENANT}"}}', -1) == 0
        ),
        timeout=GUARD_PERIOD * 2,
        every=5,
    )

    tag = letters(10)
    rcpts = [f"carol+guard{tag}{i}@outlook.test" for i in range(SENT)]
    for i, r in enumerate(rcpts):
        app1_sends(f"news@{GAMMA_DOMAIN}", r, f"guard {TENANT} {tag} {i}")
    by_address: dict[str, list[str]] = {}
    for i, r in enumerate(rcpts):
        msg = wait_for_maildir(RCPT_BOX, f"guard {TENANT} {tag} {i}", timeout=120)
        by_address.setdefault(arrival_address(msg), []).append(r)
    # complaints about mail of one sending address only (the module's docstring says why)
    source_ip, victims = max(by_address.items(), key=lambda kv: len(kv[1]))
    victims = victims[:COMPLAINTS]
    ops_before, contact_before = alerts(OPS), alerts(CONTACT)
    for r in victims:
        complain(r, source_ip)
    evidence.append(f"{SENT} delivered from {sorted(by_address)}; {len(victims)} ARF at fbl@")

    # cron's guard: one alert to ops and the contact, gamma paused
    new = wait_for_value(
        f"the guard's alert in {OPS}'s mailbox",
        lambda: alerts(OPS) - ops_before,
        bool,
        timeout=GUARD_PERIOD + 60,  # the complaints reach the store through mx1's pipe
        every=3,
    )
    seen_at = time.monotonic()
    assert len(new) == 1, new
    mail = sh("inbox", f"cat {next(iter(new))}").out
    head = dict((n.lower(), v) for n, v in headers(mail))
    assert head["subject"].startswith(f"[mailops guard] {TENANT}: PAUSED: complaint rate"), head
    assert "text/plain" in head.get("content-type", ""), head
    assert head.get("content-transfer-encoding") == "8bit", head
    body = mail.split("\n\n", 1)[1]
    assert "What crossed:" in body and "complaint rate" in body, body
    crossed = re.search(r"complaint rate: ([\d.]+)% \((\d+) complaints / (\d+) delivered\)", body)
    assert crossed, body
    rate, complained, delivered = float(crossed[1]) / 100, int(crossed[2]), int(crossed[3])
    assert complained >= 1 and delivered >= SENT and rate >= PAUSE_LEVEL, crossed[0]
    assert f"pause at {100 * PAUSE_LEVEL:.2f}%" in body, body
    assert re.search(r"Top complaining recipient domains:\n  outlook\.test: \d", body), body
    assert f"mailops tenants resume {TENANT}" in body, body
    assert not body.lstrip().startswith(("{", "[")), "raw JSON is no alert"
    evidence.append(f"alert: {head['subject'][:100]}")
    contact_mail = wait_for_value(
        f"the same alert at {TENANT}'s contact {CONTACT}",
        lambda: alerts(CONTACT) - contact_before,
        bool,
        timeout=60,
    )
    assert len(contact_mail) == 1, contact_mail
    assert head["message-id"] in sh("inbox", f"cat {next(iter(contact_mail))}").out

    listed = sh("monitor", f"{MAILOPS} tenants list --json").out
    row = next(r for r in json.loads(listed) if r["name"] == TENANT)
    assert row["state"] == "paused" and row["by"] == "guard", row
    assert "complaint rate" in row["reason"], row

    # paused: within the sync's minute both nodes hold gamma's new mail; then its next
    # message waits (held or deferred, never delivered nor bounced) and beta's arrives
    wait_for_value(
        f"{TENANT}'s pause in both bulk nodes' state",
        lambda: [n for n in BULK if node_paused(n)],
        lambda ns: len(ns) == len(BULK),
        timeout=90,
    )
    after = f"carol+guard{tag}after@outlook.test"
    app1_sends(f"news@{GAMMA_DOMAIN}", after, f"after {TENANT} {tag}")
    app1_sends("news@beta.test", after, f"after beta {tag}")
    wait_for_maildir(RCPT_BOX, f"after beta {tag}", timeout=90)
    waiting = wait_for_value(
        f"{TENANT}'s next message held or deferred",
        lambda: queued(f"after {TENANT} {tag}"),
        bool,
        timeout=60,
    )
    got = sh("inbox", f"grep -l -r -F 'after {TENANT} {tag}' {maildir(RCPT_BOX)}/").out
    assert not got.strip(), f"{TENANT}'s message was delivered while paused"
    assert not bounced_anywhere(tag), bounced_anywhere(tag)
    evidence.append(f"{TENANT} waits as {waiting}; beta delivered")

    # no storm: a run of the job that started after the one that alerted, and no second
    # alert (the gauges with gamma at the pause level are that run's or a later one's)
    stamp = "mailops_guard_timestamp_seconds"
    g = wait_for_value(
        f"the job's gauges with {TENANT} at the pause level",
        lambda: gauges(prom),
        lambda g: level(g) == 2,
        timeout=GUARD_PERIOD,
        every=3,
    )
    wait_for_value(
        "a later run of the guard's job",
        lambda: gauges(prom).get(stamp, 0),
        lambda t: t > g[stamp],
        timeout=GUARD_PERIOD,
        every=3,
    )
    time.sleep(5)  # a mail of that run would be in the mailbox by now
    assert alerts(OPS) - ops_before == new, alerts(OPS) - ops_before
    assert len(alerts(CONTACT) - contact_before) == 1
    evidence.append(f"still one alert {time.monotonic() - seen_at:.0f} s later")

    # /metrics: every tenant's rates, gamma's at the pause level
    metrics = sh(
        "monitor",
        "python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
        '"http://127.0.0.1/metrics", timeout=10).read().decode())\'',
    ).out
    for t in ("alpha", "beta", TENANT):
        for name in ("complaint_rate", "bounce_rate"):
            assert re.search(rf'^mailops_guard_{name}{{tenant="{t}"}} \S+$', metrics, re.M), (
                f"no {name} of {t} on /metrics"
            )
    shown = re.search(rf'^mailops_guard_complaint_rate{{tenant="{TENANT}"}} (\S+)$', metrics, re.M)
    assert shown and float(shown[1]) >= PAUSE_LEVEL, shown
    assert re.search(
        rf'^mailops_guard_level{{tenant="{TENANT}",metric="complaint"}} 2$', metrics, re.M
    ), "gamma's level on /metrics"
    evidence.append(f"/metrics: {TENANT} {float(shown[1]):.2%}; {time.monotonic() - started:.0f} s")
