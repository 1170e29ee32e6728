"""Issue 24 in the lab: a ``welcome`` event published to the pipeline's topic (the aws
host's moto) is sent once, through the cluster's own submission, into inbox.

The monitor's poller (``mailops ses pipeline``, roles/queue_monitor/tasks/ses_pipeline.yml)
long-polls the topic's queue, renders tests/data/ses/pipeline/templates/welcome and
submits it to mail1 on 587 with tenant beta's SASL login; mail1 signs it and delivers
it to inbox.  The same event published again is found sent in the store's ledger and
sends nothing: the poller says "duplicate" and the mailbox still holds one copy.
Nothing here runs the poller: the check watches what the running daemon does.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import yaml

from tests.e2e.labhosts import INVENTORY, inventory, letters, sh, wait_for, wait_for_maildir

HOSTS = inventory()
_ALL = yaml.safe_load((INVENTORY / "group_vars/all/ses_events.yml").read_text())
_SES = yaml.safe_load((INVENTORY / "group_vars/all/ses.yml").read_text())
_PIPE = yaml.safe_load((INVENTORY / "group_vars/all/ses_pipeline.yml").read_text())
ACCOUNT = _ALL["lab_aws_account_id"]
REGION = _SES["ses_region"]
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:{_PIPE['lab_ses_pipeline_queue']}"
ENDPOINT = f"http://{HOSTS['aws']['ip']}:5000"  # moto, at the aws container's address
LOG = "/var/log/mailops-ses-pipeline.log"
RECIPIENT = "alice@gmail.test"


def sns() -> Any:
    return boto3.client(
        "sns",
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id="lab-moto-placeholder",
        aws_secret_access_key="lab-moto-placeholder",  # moto takes any key
    )


def copies(token: str) -> int:
    res = sh("inbox", f"grep -l -r -F '{token}' /srv/inbox/{RECIPIENT}/new/ 2>/dev/null")
    return len(res.out.split())


def logged(needle: str) -> bool:
    return sh("monitor", f"grep -c -F '{needle}' {LOG}").out.strip() not in ("", "0")


def test_welcome_event_is_sent_once_through_the_cluster_submission(evidence: list[str]) -> None:
    token = letters()
    key = f"signup-{token}"
    event = {
        "template": "welcome",
        "to": RECIPIENT,
        "tenant": "beta",
        "data": {
            "name": f"Pat {token}",
            "product": "Beta Notes",
            "login_url": "https://app.beta.test/login",
            "tips": [],
        },
        "idempotency_key": key,
    }
    topic = sns()
    start = time.monotonic()
    topic.publish(TopicArn=TOPIC, Message=json.dumps(event))
    msg = wait_for_maildir(RECIPIENT, token, timeout=45)
    evidence.append(f"in inbox {time.monotonic() - start:.1f} s after publishing")
    head = msg.partition("\n\n")[0]
    assert f"Subject: Welcome to Beta Notes, Pat {token}!" in head
    assert "From: Beta <hello@beta.test>" in head
    assert "X-Mailops-Template: welcome" in head
    assert "DKIM-Signature:" in head and "d=beta.test" in head.replace("\n", " ")
    assert "Sign in at https://app.beta.test/login" in msg
    assert logged(f"sent: welcome to {RECIPIENT} ({key}) via cluster")

    # The replay: the poller finds the key sent and sends nothing.
    topic.publish(TopicArn=TOPIC, Message=json.dumps(event))
    wait_for(
        "the poller's word that the replay was sent before",
        lambda: logged(f"duplicate: {key} was sent before"),
        timeout=30,
    )
    assert copies(token) == 1
    evidence.append(f"replay refused as a duplicate; 1 copy in the mailbox, {copies(token)} now")
