"""Relaying through Amazon SES, against the lab's stand-in for its SMTP interface (issue 23).

The bulk nodes send one destination, carol+ses@outlook.test
(inventories/lab/group_vars/mail_bulk/ses.yml), to [email-smtp.<region>.amazonaws.com]:587:
the aws host's Postfix (roles/lab_aws), which wants STARTTLS and AUTH with the password
derived from the lab's secret key, and relays to inbox as SES would.  Each check sends
one message from app1 through mail1 and reads mail1's log for its queue id:

- it reaches carol's mailbox with the stand-in's Received: header (ESMTPSA: TLS and AUTH);
- while the stand-in throttles (ses-throttle on) it is deferred with SES's 454, never
  bounced, and delivered once the switch is off;
- while the stand-in holds another password for the key id it is deferred with 535,
  never bounced, and delivered once the password is right again.

The delivery after the cause is gone is asked for with `postqueue -i` (the queue's next
retry would come minutes later); what is checked is that the message is still there to
deliver, and then is delivered.
"""

from __future__ import annotations

import re

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
    wait_for,
    wait_for_maildir,
)

HOSTS = inventory()
REGION = yaml.safe_load((INVENTORY / "group_vars/all/ses.yml").read_text())["ses_region"]
SES_NAME = f"email-smtp.{REGION}.amazonaws.com"
ROUTED = "carol+ses@outlook.test"
MAILBOX = "carol@outlook.test"
NODE = "mail1"
SASL_USERS = "/etc/dovecot/sasl-users"
# SES's text; the stand-in's Postfix puts "<rcpt>: Recipient address rejected:" before it.
THROTTLED = "Throttling failure: Maximum sending rate exceeded."

pytestmark = pytest.mark.skipif("aws" not in HOSTS, reason="the lab has no aws host")


def send(tag: str) -> str:
    """Send one message for the SES route through mail1; its queue id there."""
    res = swaks(
        "app1",
        f"--server {HOSTS[NODE]['ip']} --from bounces@{mail_domain()} --to {ROUTED} "
        f"--header 'Subject: ses relay {tag}' --body 'ses relay check {tag}'",
    )
    found = re.search(r"queued as ([0-9A-Za-z]+)", res.out)
    assert found, f"mail1 did not queue the message:\n{res.out[-1500:]}"
    return found.group(1)


def log_of(qid: str) -> str:
    return sh(NODE, f"grep -F ' {qid}: ' /var/log/mail.log").out


def wait_deferred(qid: str, *reply: str) -> str:
    """Wait for mail1 to defer ``qid`` with a reply from the SES next hop holding every
    string of ``reply``; its log line.  Never a bounce, and the message still queued."""

    def line() -> str:
        for ln in log_of(qid).splitlines():
            if "status=deferred" in ln and all(r in ln for r in reply):
                return ln
        return ""

    wait_for(f"mail1 to defer {qid} with {reply}", lambda: bool(line()), 60)
    assert "status=bounced" not in log_of(qid), log_of(qid)
    assert qid in sh(NODE, "postqueue -p").out, f"{qid} is no longer queued on mail1"
    return line()


def retry_until_delivered(qid: str, tag: str) -> str:
    """Ask mail1 to retry ``qid`` until inbox has it; the message."""

    def delivered() -> bool:
        if "status=sent" in log_of(qid):
            return True
        sh(NODE, f"postqueue -i {qid}")
        return False

    wait_for(f"mail1 to deliver {qid} once the cause is gone", delivered, 90, every=5)
    return wait_for_maildir(MAILBOX, tag, timeout=60)


def through_ses(message: str) -> str:
    """The stand-in's Received: header of a message (AssertionError when absent)."""
    received = [v for n, v in headers(message) if n.lower() == "received"]
    ses = [r for r in received if f"by {SES_NAME}" in r]
    assert ses, f"no Received: header by {SES_NAME}: {received}"
    return ses[0]


def test_ses_route_reaches_inbox_through_the_stand_in(evidence: list[str]) -> None:
    tag = letters()
    qid = send(tag)
    message = wait_for_maildir(MAILBOX, tag, timeout=60)
    header = through_ses(message)
    assert "ESMTPSA" in header, header  # TLS and AUTH on the way in
    sent = next(ln for ln in log_of(qid).splitlines() if "status=sent" in ln)
    assert f"relay={SES_NAME}[{HOSTS['aws']['ip']}]:587" in sent, sent
    evidence += [sent.split(": ", 1)[-1][:160], header[:160]]


def test_throttling_defers_then_delivers(evidence: list[str]) -> None:
    tag = letters()
    assert sh("aws", "ses-throttle on").rc == 0
    try:
        qid = send(tag)
        line = wait_deferred(qid, "454 4.7.0 ", THROTTLED)
    finally:
        assert sh("aws", "ses-throttle off").rc == 0
    message = retry_until_delivered(qid, tag)
    through_ses(message)
    evidence += [line.split("status=", 1)[-1][:200], "delivered after ses-throttle off"]


def test_wrong_password_defers_then_delivers(evidence: list[str]) -> None:
    tag = letters()
    keep = sh("aws", f"cp -p {SASL_USERS} {SASL_USERS}.keep")
    assert keep.rc == 0, keep.err
    try:
        # The same key id, another password: what a wrong password looks like to SES.
        wrong = sh(
            "aws",
            f"user=$(cut -d: -f1 {SASL_USERS}.keep | grep -v '^#' | head -1); "
            f"hash=$(doveadm pw -s SHA512-CRYPT -p {letters(20)}); "
            f'printf \'%s:%s\\n\' "$user" "$hash" > {SASL_USERS}.new && '
            f"chown root:dovecot {SASL_USERS}.new && chmod 0640 {SASL_USERS}.new && "
            f"mv {SASL_USERS}.new {SASL_USERS}",
        )
        assert wrong.rc == 0, wrong.err
        qid = send(tag)
        line = wait_deferred(qid, "535 5.7.8 ", "authentication failed")
    finally:
        sh("aws", f"mv {SASL_USERS}.keep {SASL_USERS}")
    message = retry_until_delivered(qid, tag)
    through_ses(message)
    evidence += [line.split("status=", 1)[-1][:200], "delivered after the password was right again"]
