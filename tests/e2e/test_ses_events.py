"""Issue 23 in the lab: SES's notifications reach the store through the monitor's cron
job (`mailops ses events --once` against the aws host's moto, docs/ses.md).

The check puts an SES bounce notification, SNS-wrapped as SES's topic delivers it,
into the lab's event queue, and waits for cron's job (never runs it): the recipient is
suppressed in the store and refused by both bulk nodes, the queue is empty, and the
monitor's /metrics carries the SES gauges with the bounce counted.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
import yaml

from tests.e2e.labhosts import INVENTORY, inventory, letters, sh, submission_reply, wait_for

HOSTS = inventory()
MAILOPS = "/opt/mailops/bin/mailops"
_ALL = yaml.safe_load((INVENTORY / "group_vars/all/ses_events.yml").read_text())
_SES = yaml.safe_load((INVENTORY / "group_vars/all/ses.yml").read_text())
QUEUE = _ALL["lab_ses_events_queue"]
ACCOUNT = _ALL["lab_aws_account_id"]
REGION = _SES["ses_region"]
# The controller reaches moto at the aws container's lab address.
ENDPOINT = f"http://{HOSTS['aws']['ip']}:5000"
# Cron starts the job every minute, the store holds the suppression at once, and each
# bulk node's job copies it within its minute; the collector's /metrics is per minute too.
JOB_PERIOD = 60
SYNC_PERIOD = 60
MARGIN = 45


def sqs() -> Any:
    return boto3.client(
        "sqs",
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id="lab-moto-placeholder",
        aws_secret_access_key="lab-moto-placeholder",  # moto takes any key
    )


def bounce_notification(address: str) -> str:
    """A permanent bounce as SES's identity notification, in the SNS envelope."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    message_id = f"0102019{uuid.uuid4().hex}-000000"
    inner = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": now,
            "feedbackId": f"0102019{uuid.uuid4().hex}-000000",
            "reportingMTA": "dns; a1-2.smtp-out.eu-west-1.amazonses.com",
        },
        "mail": {
            "timestamp": now,
            "source": "news@company.test",
            "sourceArn": f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/company.test",
            "messageId": message_id,
            "destination": [address],
            "commonHeaders": {"from": ["News <news@company.test>"], "to": [address]},
        },
    }
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:mailops-lab-ses-events",
            "Message": json.dumps(inner),
            "Timestamp": now,
            "SignatureVersion": "1",
        }
    )


def metrics() -> str:
    return sh(
        "monitor",
        "python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
        '"http://127.0.0.1/metrics", timeout=10).read().decode())\'',
    ).out


def bounces_counted(text: str) -> float | None:
    m = re.search(r'^mailops_ses_events_total\{type="Bounce"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def queued(client: Any, url: str) -> int:
    attrs = client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.mark.long_wait
def test_ses_bounce_from_the_queue_is_suppressed_on_every_node(evidence: list[str]) -> None:
    client = sqs()
    url = client.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    address = f"ses-{letters()}@outlook.test"
    before = bounces_counted(metrics()) or 0.0
    assert sh("monitor", f"{MAILOPS} suppression check {address}").rc != 0
    client.send_message(QueueUrl=url, MessageBody=bounce_notification(address))
    sent = time.monotonic()

    wait_for(
        f"{address} suppressed in the store (cron's ses events job)",
        lambda: sh("monitor", f"{MAILOPS} suppression check {address}").rc == 0,
        JOB_PERIOD + MARGIN,
        every=2,
    )
    evidence.append(f"stored as suppressed {time.monotonic() - sent:.0f} s after queueing")
    listed = sh("monitor", f"{MAILOPS} suppression list | grep -i '{address}'").out
    assert "hard" in listed or "bounce" in listed, listed
    assert queued(client, url) == 0, "the job left the notification in the queue"

    wait_for(
        f"mail1 and mail2 refusing {address}",
        lambda: all(submission_reply(n, address).startswith("<** 550") for n in ("mail1", "mail2")),
        SYNC_PERIOD + MARGIN,
        every=3,
    )
    reply = submission_reply("mail2", address)
    assert "suppressed" in reply, reply
    evidence.append(f"both nodes refuse {time.monotonic() - sent:.0f} s after: {reply}")

    # /metrics: the collector includes the job's gauges at its next minute.
    wait_for(
        "the bounce counted on the monitor's /metrics",
        lambda: (bounces_counted(metrics()) or 0.0) >= before + 1,
        JOB_PERIOD + MARGIN,
        every=3,
    )
    text = metrics()
    for gauge in (
        "mailops_ses_oldest_message_age_seconds",
        'mailops_ses_queue_messages{queue="dead-letter"}',
        "mailops_ses_last_pass_success 1",
    ):
        assert gauge in text, f"{gauge} not on /metrics"
    evidence.append(f"/metrics: Bounce {before:.0f} -> {bounces_counted(text):.0f}")
