"""Issue 22 in the lab: DMARC aggregate and TLS-RPT reports mailed to dmarc@ and tlsrpt@.

inbox (the outside world) mails mx1 a DMARC report as a gzip attachment, with one record
from a planned address (mail1) and one from an address outside the plan, and a TLS-RPT
report (gzip JSON, multipart/report) with two certificate-expired failures.  mx1's
pipes store them in the monitor's PostgreSQL store; a second copy of the DMARC report
adds nothing.  The monitor's cron jobs (never run here) then show the outside source:
the figures job on /metrics (every minute in the lab), the cluster report in the mail it
sends to ops@ (every two minutes).  Every run uses its own report ids and its own
outside address, so a rerun never reads an earlier run's figures.
"""

from __future__ import annotations

import email
import gzip
import json
import random
import re
import subprocess
import time
import tomllib
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.e2e.labhosts import (
    INVENTORY,
    ROOT,
    inventory,
    letters,
    mail_domain,
    sh,
    swaks,
    wait_for,
)
from tests.support import reports as R

HOSTS = inventory()
DOMAIN = mail_domain()
MX = HOSTS["mx1"]["ip"]
MAILOPS = "/opt/mailops/bin/mailops"
OPS_BOX = f"/srv/inbox/ops@{DOMAIN}/new"


def send(path_tag: str, data: bytes, sender: str, to: str) -> str:
    """Mail ``data`` from inbox to mx1; the queue id mx1 gave it."""
    path = f"/tmp/{path_tag}.eml"
    text = data.decode("ascii")
    assert "\nEOF\n" not in text
    sh("inbox", f"cat > {path} <<'EOF'\n{text}EOF")
    res = swaks(
        "inbox",
        f"--server {MX} --ehlo inbox.outside.test --from {sender} --to {to} --data {path}",
    )
    m = re.search(r"250 2\.0\.0 Ok: queued as (\w+)", res.out)
    assert m, res.out
    return m.group(1)


def delivered_to_pipe(queue_id: str, service: str) -> bool:
    """mx1's log says the message went through the pipe (the pipe exited 0)."""
    res = sh("mx1", f"grep -F '{queue_id}: ' /var/log/mail.log | grep -F 'status=sent'")
    return f"via {service} service" in res.out or f"relay={service}" in res.out


def stored() -> list[dict[str, Any]]:
    res = sh("monitor", f"{MAILOPS} dmarc stored --hours 2", timeout=60)
    assert res.rc == 0, res.err
    return [json.loads(line) for line in res.out.splitlines() if line.strip()]


def metrics() -> str:
    return sh(
        "monitor",
        "python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
        '"http://127.0.0.1/metrics", timeout=10).read().decode())\'',
    ).out


def ops_mail_after(not_before: float, needle: str, timeout: float) -> EmailMessage:
    """The first cluster report in ops@'s mailbox made at or after ``not_before`` whose
    text part holds ``needle``."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        names = sh("inbox", f"ls -1 {OPS_BOX} 2>/dev/null").out.split()
        for name in sorted(set(names) - seen):
            seen.add(name)
            raw = sh("inbox", f"cat {OPS_BOX}/{name}").out
            msg = email.message_from_string(raw, policy=default_policy)
            assert isinstance(msg, EmailMessage)
            if not str(msg["Subject"] or "").startswith("Postfix log summary"):
                continue
            if parsedate_to_datetime(str(msg["Date"])).timestamp() < not_before:
                continue
            body = msg.get_body(("plain",))
            if body is not None and needle in body.get_content():
                return msg
        time.sleep(5)
    raise AssertionError(f"no cluster report naming {needle} reached {OPS_BOX} in {timeout:.0f} s")


@pytest.mark.long_wait
def test_reports_are_stored_once_and_the_outside_source_is_named(evidence: list[str]) -> None:
    run = letters(10)
    outside = f"192.0.2.{random.randrange(2, 250)}"
    now = int(time.time())
    meta = R.Meta(
        org_name="outlook.test",
        report_id=f"lab-{run}",
        domain=DOMAIN,
        begin=now - 86400,
        end=now,
        email="dmarcreport@outlook.test",
    )
    records = [
        R.Rec(HOSTS["mail1"]["ip"], 5, dkim_results=[(DOMAIN, "mail", "pass")]),
        R.Rec(outside, 3, disposition="quarantine", dkim="fail", spf="fail",
              spf_results=[(DOMAIN, "fail")]),
    ]  # fmt: skip
    xml = R.dmarc_xml(meta, records, "microsoft")
    dmarc_mail = R.report_mail(
        gzip.compress(xml),
        f"outlook.test!{DOMAIN}!{meta.begin}!{meta.end}.xml.gz",
        "application/gzip",
        to=f"dmarc@{DOMAIN}",
        sender="dmarcreport@outlook.test",
        subject=f"Report Domain: {DOMAIN} Submitter: outlook.test Report-ID: <lab-{run}>",
    )
    tls = R.tlsrpt_json(
        "outlook.test",
        f"lab-tls-{run}",
        [("sts", DOMAIN, 40, 2, {"certificate-expired": 2})],
        begin=now - 86400,
    )
    tls_mail = R.report_mail(
        gzip.compress(tls),
        f"outlook.test!{DOMAIN}!{now - 86400}!{now}!lab-tls-{run}.json.gz",
        "application/tlsrpt+gzip",
        to=f"tlsrpt@{DOMAIN}",
        sender="tlsrpt-noreply@outlook.test",
        subject=f"Report Domain: {DOMAIN} Submitter: outlook.test Report-ID: <lab-tls-{run}>",
        tlsrpt=True,
    )
    start = time.time()
    first = send(f"dmarc-{run}", dmarc_mail, "dmarcreport@outlook.test", f"dmarc@{DOMAIN}")
    send(f"tlsrpt-{run}", tls_mail, "tlsrpt-noreply@outlook.test", f"tlsrpt@{DOMAIN}")

    def mine() -> list[dict[str, Any]]:
        return [r for r in stored() if r["report_id"] in (f"lab-{run}", f"lab-tls-{run}")]

    took = wait_for("both reports stored", lambda: len(mine()) == 3, 90, every=2)
    evidence.append(f"stored in {took:.0f} s")
    rows = mine()
    dmarc = sorted((r for r in rows if r["kind"] == "dmarc"), key=lambda r: r["record"])
    assert [(r["source_ip"], r["messages"], r["dkim"], r["spf"]) for r in dmarc] == [
        (HOSTS["mail1"]["ip"], 5, "pass", "pass"),
        (outside, 3, "fail", "fail"),
    ]
    [policy] = [r for r in rows if r["kind"] == "tlsrpt"]
    assert (policy["successful"], policy["failed"], policy["failures"]) == (
        40,
        2,
        {"certificate-expired": 2},
    )
    wait_for("the pipe delivered", lambda: delivered_to_pipe(first, "mailops_dmarc"), 30)

    # The same report mailed again is counted once.
    again = send(f"dmarc2-{run}", dmarc_mail, "dmarcreport@outlook.test", f"dmarc@{DOMAIN}")
    wait_for("the second copy went through the pipe",
             lambda: delivered_to_pipe(again, "mailops_dmarc"), 90, every=2)  # fmt: skip
    assert len(mine()) == 3
    evidence.append("a second copy added nothing")

    # /metrics, from the figures job cron runs every minute on the monitor
    line = (
        f'mailops_dmarc_outside_messages{{domain="{DOMAIN}",source="{outside}",'
        f'result="fail",window="24h"}} 3'
    )
    took = wait_for("the outside source on /metrics", lambda: line in metrics().splitlines(),
                    150, every=5)  # fmt: skip
    text = metrics()
    m = re.search(
        rf'^mailops_tlsrpt_failures{{domain="{re.escape(DOMAIN)}",type="certificate-expired",'
        r'window="24h"} (\d+)$',
        text,
        re.M,
    )
    assert m and int(m.group(1)) >= 2, "no certificate-expired failures on /metrics"
    evidence.append(f"/metrics names {outside} after {took:.0f} s")

    # The cluster report cron mails to ops@ names it, in its DMARC section.
    msg = ops_mail_after(start, outside, timeout=240)
    body = msg.get_body(("plain",))
    assert body is not None
    section = body.get_content().split("DMARC and TLS Reports Received", 1)[1]
    assert re.search(rf"^\s+{re.escape(outside)}\s+3 messages, 0 passed, 3 failed; reported by "
                     r".*outlook\.test", section, re.M), section  # fmt: skip
    evidence.append(f"the cluster report of {msg['Date']} names {outside}")


def test_a_report_that_cannot_be_read_is_kept_for_a_person(evidence: list[str]) -> None:
    run = letters(10)
    mail = R.report_mail(
        b"\x1f\x8b\x08\x00 this is not gzip " + run.encode(),
        f"broken-{run}.xml.gz",
        "application/gzip",
        to=f"dmarc@{DOMAIN}",
        sender="dmarcreport@outlook.test",
        subject=f"Report Domain: {DOMAIN} broken {run}",
    )
    qid = send(f"broken-{run}", mail, "dmarcreport@outlook.test", f"dmarc@{DOMAIN}")
    wait_for("the pipe took it", lambda: delivered_to_pipe(qid, "mailops_dmarc"), 90, every=2)

    listing = sh("monitor", f"{MAILOPS} dmarc quarantine").out
    line = next((x for x in listing.splitlines() if f"broken {run}" in x), "")
    assert line.startswith("#") and "gzip" in line, listing[-2000:]
    shown = sh("monitor", f"{MAILOPS} dmarc quarantine --show {line.split()[0][1:]}")
    assert shown.rc == 0 and f"broken {run}" in shown.out
    evidence.append(line[:160])


def test_the_planned_sources_are_the_addresses_spf_publishes(evidence: list[str]) -> None:
    """The role writes [reports] planned_sources from the inventory itself; they must be
    exactly the addresses `mailops dns plan` publishes in the SPF of every domain."""
    plan = subprocess.run(
        [str(ROOT / ".venv/bin/mailops"), "--config", "/dev/null", "dns", "plan",
         "--inventory", str(INVENTORY), "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    spf: set[str] = set()
    for record in json.loads(plan):
        for value in record["values"]:
            if record["type"] == "TXT" and "v=spf1" in value:
                spf |= set(re.findall(r"\bip[46]:(\S+?)\"?(?=\s|$)", value))
    settings = tomllib.loads(sh("monitor", "cat /etc/mailops/mailops.toml").out)
    planned = set(settings["reports"]["planned_sources"])
    assert spf and planned == spf, (sorted(planned), sorted(spf))
    evidence.append(f"{len(planned)} planned addresses = SPF's")
