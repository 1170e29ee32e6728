"""Issue 24 in the lab: the SES inbound bridge, S3 -> SNS -> SQS -> monitor -> mx1 -> inbox.

The check does what SES does for a message it received (docs/ses_inbound.md): it stores
the raw message in the aws host's moto bucket and publishes the "Received" notification
on the topic the lab's inbound queue is subscribed to.  The monitor's daemon (`mailops
ses inbound`, started by its init script) relays it to mx1, which trusts the monitor as
the bridge, and mx1 hands it to inbox, Workspace's stand-in for company.test.  The
sender's domain (gmail.test) does not allow the monitor in its SPF and mx1 greylists
strangers: the message gets through only because mx1 trusts the bridge.

With mx1's Postfix stopped (serial), the message waits in the queue and is delivered
once Postfix is back (the lab's visibility timeout is 10 s, its redrive count 5).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.e2e.labhosts import (
    INVENTORY,
    headers,
    inventory,
    letters,
    mail_domain,
    sh,
    wait_for,
    wait_for_maildir,
)

HOSTS = inventory()
_LAB = yaml.safe_load((INVENTORY / "group_vars/all/ses_inbound.yml").read_text())
_SES = yaml.safe_load((INVENTORY / "group_vars/all/ses.yml").read_text())
BUCKET = _LAB["lab_ses_inbound_bucket"]
TOPIC = _LAB["lab_ses_inbound_topic"]
QUEUE = _LAB["lab_ses_inbound_queue"]
REGION = _SES["ses_region"]
ENDPOINT = f"http://{HOSTS['aws']['ip']}:5000" if "aws" in HOSTS else ""
DAEMON_LOG = "/var/log/mailops-ses-inbound.log"
GAUGES = "/var/lib/mailops-queues/ses_inbound.prom"
RECORDED = Path(__file__).resolve().parents[1] / "data" / "ses_inbound" / "received.json"

pytestmark = pytest.mark.skipif("aws" not in HOSTS, reason="the lab has no aws host")


def aws(service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id="lab-moto-placeholder",
        aws_secret_access_key="lab-moto-placeholder",  # moto takes any key
    )


def raw_message(tag: str, to: str) -> bytes:
    return (
        f"From: Carol <carol@gmail.test>\r\n"
        f"To: {to}\r\n"
        f"Subject: inbound bridge {tag}\r\n"
        f"Message-ID: <{tag}@gmail.test>\r\n"
        f"Date: Tue, 08 Dec 2026 00:30:00 +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n"
        f"\r\n"
        f"{tag}\r\n"
        f".\r\n"
        f"..two dots\r\n"
        f".one dot\r\n"
        f"end\r\n"
    ).encode()


def announce(tag: str, to: str, **receipt: Any) -> str:
    """What SES does with a message it received: store it in S3, then notify the topic."""
    key = f"inbound/{tag}"
    aws("s3").put_object(Bucket=BUCKET, Key=key, Body=raw_message(tag, to))
    note = json.loads(RECORDED.read_text())
    note["mail"].update(
        source="carol@gmail.test", messageId=f"lab{uuid.uuid4().hex}", destination=[to]
    )
    note["receipt"].update(recipients=[to], **receipt)
    note["receipt"]["action"].update(bucketName=BUCKET, objectKey=key)
    sns = aws("sns")
    arn = sns.create_topic(Name=TOPIC)["TopicArn"]  # the existing topic's ARN
    sns.publish(TopicArn=arn, Message=json.dumps(note))
    return key


def body_of(message: str) -> str:
    return message.replace("\r\n", "\n").split("\n\n", 1)[1]


def test_a_message_ses_received_reaches_bills_mailbox(evidence: list[str]) -> None:
    tag = f"sesin-{letters()}"
    to = f"bill@{mail_domain()}"
    key = announce(tag, to)
    msg = wait_for_maildir(to, tag, timeout=60)
    found = headers(msg)
    verdicts = [v for n, v in found if n == "X-Mailops-SES-Verdicts"]
    assert verdicts == ["spam=PASS; virus=PASS; spf=PASS; dkim=GRAY; dmarc=PASS"], found
    assert ("Subject", f"inbound bridge {tag}") in found
    assert ("Message-ID", f"<{tag}@gmail.test>") in found
    assert body_of(msg) == f"{tag}\n.\n..two dots\n.one dot\nend\n"
    received = [v for n, v in found if n == "Received"]
    monitor = HOSTS["monitor"]["ip"]
    assert any(f"[{monitor}]" in r and "mx1" in r for r in received), received
    log = sh("monitor", f"grep -F 's3://{BUCKET}/{key}' {DAEMON_LOG}").out
    assert "relayed to" in log, log
    gauges = sh("monitor", f"cat {GAUGES}").out
    relayed = [ln for ln in gauges.splitlines() if 'outcome="relayed"' in ln]
    assert relayed and float(relayed[0].split()[-1]) >= 1, gauges
    evidence += [f"inbox got {tag} via mx1 from the monitor", verdicts[0]]


def test_a_virus_is_not_relayed_but_kept_in_the_dead_letter_queue(evidence: list[str]) -> None:
    tag = f"sesvirus-{letters()}"
    to = f"bill@{mail_domain()}"
    key = announce(tag, to, virusVerdict={"status": "FAIL"})
    sqs = aws("sqs")
    dlq = sqs.get_queue_url(QueueName=QUEUE + "-dlq")["QueueUrl"]
    found: list[dict[str, Any]] = []

    def in_dlq() -> bool:
        got = sqs.receive_message(
            QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
            VisibilityTimeout=0, WaitTimeSeconds=1,
        )  # fmt: skip
        found[:] = [m for m in got.get("Messages", []) if key in m["Body"]]
        return bool(found)

    wait_for(f"{key} in the dead-letter queue", in_dlq, 60)
    attrs = found[0]["MessageAttributes"]
    assert attrs["mailops-outcome"]["StringValue"] == "virus"
    sqs.delete_message(QueueUrl=dlq, ReceiptHandle=found[0]["ReceiptHandle"])
    mailbox = sh("inbox", f"grep -rlF '{tag}' /srv/inbox/{to}/ 2>/dev/null").out
    assert mailbox == "", f"a virus was delivered: {mailbox}"
    evidence.append(f"{tag}: not relayed, in the DLQ as {attrs['mailops-reason']['StringValue']}")


@pytest.fixture
def mx1_postfix_stopped() -> Iterator[None]:
    sh("mx1", "postfix stop >/dev/null 2>&1")
    try:
        wait_for("mx1's Postfix to stop", lambda: sh("mx1", "pgrep -x master").rc != 0, 30, 0.5)
        yield
    finally:
        sh("mx1", "postfix start >/dev/null 2>&1")
        wait_for("mx1's Postfix to start", lambda: sh("mx1", "pgrep -x master").rc == 0, 30, 0.5)


@pytest.mark.serial
def test_with_mx1_stopped_the_message_waits_then_arrives(
    mx1_postfix_stopped: None, evidence: list[str]
) -> None:
    start = time.monotonic()
    tag = f"seswait-{letters()}"
    to = f"bill@{mail_domain()}"
    key = announce(tag, to)
    kept = f"grep -F 's3://{BUCKET}/{key}' {DAEMON_LOG} | grep -F 'kept for a retry'"
    wait_for("the daemon's failed try", lambda: sh("monitor", kept).rc == 0, 45)
    tried = sh("monitor", kept).out.splitlines()[0]
    assert "ConnectionRefusedError" in tried or "Errno" in tried, tried
    sqs = aws("sqs")
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert sum(int(v) for v in attrs.values()) >= 1  # waiting in the queue, not lost
    sh("mx1", "postfix start >/dev/null 2>&1")
    wait_for("mx1's Postfix to start", lambda: sh("mx1", "pgrep -x master").rc == 0, 30, 0.5)
    msg = wait_for_maildir(to, tag, timeout=60)
    assert body_of(msg).startswith(f"{tag}\n")
    evidence.append(
        f"{tag}: refused while mx1 was down, delivered after {time.monotonic() - start:.0f} s"
    )
