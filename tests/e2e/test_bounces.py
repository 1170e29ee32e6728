"""Issue 6 in the lab: a real bounce and a feedback report flow to mx1's pipes, into the
store on the monitor, and within minutes every bulk node refuses the address."""

from __future__ import annotations

import time

import pytest

from tests.e2e.labhosts import ROOT, inventory, letters, mail_domain, sh, smtp_reply, swaks

HOSTS = inventory()
DOMAIN = mail_domain()
MX = HOSTS["mx1"]["ip"]
MAILOPS = "/opt/mailops/bin/mailops"
# The bound: from the bounce arriving at mx1 to every node refusing.
SUPPRESSION_DEADLINE = 300
# The nodes' suppression map follows the store through cron's job on each node (every
# minute, syncing every mailops__suppression_sync_every seconds within it): a stored
# address is in both maps within the job's period plus a margin.  The checks wait for
# that job and never run it.
SYNC_PERIOD = 60
SYNC_MARGIN = 30
SUPPRESSION_MAP = "/etc/postfix/suppressed"


def suppressed(address: str) -> bool:
    return sh("mx1", f"{MAILOPS} suppression check {address}").rc == 0


def wait_until(what: str, probe: object, timeout: float, every: float = 3) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def refused_by(node: str, address: str) -> str:
    res = swaks(
        "app1",
        f"--server {HOSTS[node]['ip']} --from bounces@{DOMAIN} --to {address} --quit-after RCPT",
    )
    return smtp_reply(res)


def in_every_map(address: str, evidence: list[str]) -> None:
    """Wait until the suppression map of mail1 and of mail2 holds ``address`` (just stored)."""

    def probe() -> bool:
        return all(
            sh(n, f"postmap -q '{address}' hash:{SUPPRESSION_MAP}").out.strip()
            for n in ("mail1", "mail2")
        )

    took = wait_until(
        f"{address} in the suppression map of mail1 and mail2 (cron's sync)",
        probe,
        SYNC_PERIOD + SYNC_MARGIN,
        every=2,
    )
    evidence.append(f"{took:.0f} s from the store to both nodes' maps")


def every_node_refuses(address: str, evidence: list[str]) -> None:
    def probe() -> bool:
        return all(refused_by(n, address).startswith("<** 550") for n in ("mail1", "mail2"))

    took = wait_until(f"mail1 and mail2 refusing {address}", probe, SUPPRESSION_DEADLINE)
    reply = refused_by("mail2", address)
    assert "suppressed" in reply, reply
    evidence.append(f"{took:.0f} s until both nodes refuse: {reply}")


@pytest.mark.long_wait
def test_hard_bounce_is_stored_and_every_node_refuses(evidence: list[str]) -> None:
    address = f"nosuch-{letters(8)}@gmail.test"
    res = swaks(
        "app1",
        f"--server {HOSTS['mail1']['ip']} --from bounces@{DOMAIN} --to {address} "
        "--header 'Subject: to an address that does not exist'",
    )
    assert "250 2.0.0 Ok: queued" in res.out, res.out
    wait_until(f"{address} stored as suppressed", lambda: suppressed(address), 120)
    listed = sh("mx1", f"{MAILOPS} suppression list | grep -i '{address}'").out
    assert "userunknown" in listed or "hard" in listed, listed
    evidence.append(listed.strip()[:160])
    in_every_map(address, evidence)
    every_node_refuses(address, evidence)


ARF = """From: <fbl-reports@outlook.test>
To: <fbl@{domain}>
Subject: complaint
Message-ID: <{token}.fbl@outlook.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b{token}"

--b{token}
Content-Type: text/plain

This is an abuse report for a message from 198.51.100.21.

--b{token}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: LabFBL/1.0
Version: 1
Original-Mail-From: <bounces@{domain}>
Original-Rcpt-To: <{address}>
Source-IP: 198.51.100.21
Reported-Domain: {domain}

--b{token}
Content-Type: message/rfc822

From: News <news@{domain}>
To: {address}
Subject: our news
Message-ID: <{token}.news@{domain}>

Hello.

--b{token}--
"""


@pytest.mark.long_wait
def test_feedback_report_suppresses_the_complainer(evidence: list[str]) -> None:
    token = letters(10)
    address = f"carol-{token}@outlook.test"
    body = ARF.format(domain=DOMAIN, token=token, address=address)
    path = f"/tmp/arf-{token}.eml"
    sh("inbox", f"cat > {path} <<'EOF'\n{body}EOF")
    res = swaks(
        "inbox",
        f"--server {MX} --ehlo inbox.outside.test --from fbl-reports@outlook.test "
        f"--to fbl@{DOMAIN} --data {path}",
    )
    assert "Ok: queued" in res.out, res.out
    wait_until(f"{address} suppressed after the complaint", lambda: suppressed(address), 120)
    listed = sh("mx1", f"{MAILOPS} suppression list | grep -i '{address}'").out
    assert "complaint" in listed or "feedback" in listed, listed
    evidence.append(listed.strip()[:160])
    in_every_map(address, evidence)
    every_node_refuses(address, evidence)


def _deliveries(address: str) -> list[str]:
    out = sh("mx1", f"grep -F 'relay=mailops_bounces' /var/log/mail.log | grep -F '<{address}>'")
    return out.out.splitlines()


@pytest.mark.serial
def test_store_down_keeps_the_bounce_queued_and_stores_it_once_back(
    evidence: list[str],
) -> None:
    token = letters(10)
    address = f"bounces+{token}@{DOMAIN}"
    # A bounce of its own (Message-Id) for each run, so an earlier run's rows don't count.
    bounce = (ROOT / "tests/data/bounces/postfix_dsn.eml").read_text()
    bounce = bounce.replace("Message-Id: <", f"Message-Id: <{token}.", 1)
    path = f"/tmp/dsn-{token}.eml"
    sh("inbox", f"cat > {path} <<'EOF'\n{bounce}EOF")
    sh("monitor", "service postgresql stop")
    try:
        for _ in range(2):  # the same bounce twice: one row
            res = swaks(
                "inbox",
                f"--server {MX} --ehlo inbox.outside.test --from '' --to {address} --data {path}",
            )
            assert "Ok: queued" in res.out, res.out
        wait_until(
            "both copies deferred by the pipe",
            lambda: sum("status=deferred" in ln for ln in _deliveries(address)) >= 2,
            60,
            every=1,
        )
        deferred = next(ln for ln in _deliveries(address) if "status=deferred" in ln)
        assert "(temporary failure" in deferred, deferred
        evidence.append(deferred.split("status=", 1)[1][:140])
    finally:
        sh("monitor", "service postgresql start")
    sh("mx1", "postqueue -f")
    wait_until(
        "both copies stored once the store is back",
        lambda: sum("status=sent" in ln for ln in _deliveries(address)) >= 2,
        90,
        every=1,
    )
    assert not any("status=bounced" in ln for ln in _deliveries(address))
    rows = sh(
        "monitor",
        'su postgres -c "psql -d mailops -tAc '  # noqa: S608 (a token of letters, made here)
        f'\\"select count(*) from bounces where verp_token = \'{token}\'\\""',
    ).out.strip()
    # The report names two recipients: one row each, not four.
    assert rows == "2", rows
    evidence.append(f"after restart: both copies delivered to the pipe, {rows} rows stored")
