"""playbooks/ses.yml and ses_teardown.yml against moto's server.

One server and one provision for the whole check (the runs take most of a minute, so
it is marked slow): the playbook runs twice (the second changes nothing), what it made
is read back with boto3, mail to SES's simulator through the identity it made reaches
the queue it made and ``mailops ses events`` suppresses the bounced recipient, then the
teardown removes everything, twice (the second changes nothing).

The first run is at -vvv with --diff, as a user debugging it would run it: neither the
access key's secret nor the SMTP password derived from it may appear in that output.
moto's gaps that the modules meet are filled in tests/motoserver.py
(``model_ses_settings``).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailops.ses.smtp_password import smtp_password
from mailops.store import Store
from tests.motoserver import MotoServer, clean_env, client, playbook

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.com"  # mail_domain of inventories/aws: ses_domain's default
NAME = "mailops-ses"
REGION = "us-east-1"

pytestmark = pytest.mark.slow


def made(moto: MotoServer) -> dict[str, Any]:
    """What exists on the server, as the teardown must leave it: names only."""
    ses, sns, sqs, iam = (client(moto, s) for s in ("ses", "sns", "sqs", "iam"))
    return {
        "identities": ses.list_identities()["Identities"],
        "configuration_sets": [
            c["Name"] for c in ses.list_configuration_sets()["ConfigurationSets"]
        ],
        "topics": [t["TopicArn"] for t in sns.list_topics()["Topics"]],
        "subscriptions": [s["Endpoint"] for s in sns.list_subscriptions()["Subscriptions"]],
        "queues": sqs.list_queues().get("QueueUrls", []),
        "users": [u["UserName"] for u in iam.list_users()["Users"]],
    }  # fmt: skip


def test_ses_playbook_provisions_idempotently_and_tears_down(tmp_path: Path) -> None:
    creds = tmp_path / "ses-credentials"
    extra = ("-e", f"ses_smtp_credentials_dir={creds}")
    with MotoServer() as moto:
        first, out = playbook(moto, "ses.yml", *extra, "-vvv", "--diff")
        assert first["changed"] > 0 and first["failed"] == 0
        second, _ = playbook(moto, "ses.yml", *extra)
        assert second["changed"] == 0, second

        ses, sns, sqs, iam = (client(moto, s) for s in ("ses", "sns", "sqs", "iam"))
        # The identity, its DKIM and MAIL FROM, its notifications.
        assert ses.list_identities()["Identities"] == [DOMAIN]
        dkim = ses.get_identity_dkim_attributes(Identities=[DOMAIN])["DkimAttributes"][DOMAIN]
        assert dkim["DkimEnabled"] and len(dkim["DkimTokens"]) == 3
        mail_from = ses.get_identity_mail_from_domain_attributes(Identities=[DOMAIN])
        assert mail_from["MailFromDomainAttributes"][DOMAIN]["MailFromDomain"] == f"bounce.{DOMAIN}"
        (topic,) = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
        assert topic.endswith(f":{NAME}-events")
        notes = ses.get_identity_notification_attributes(Identities=[DOMAIN])
        note = notes["NotificationAttributes"][DOMAIN]
        assert (note["BounceTopic"], note["ComplaintTopic"], note["DeliveryTopic"]) == (topic,) * 3
        assert note["ForwardingEnabled"] is False
        # The configuration set's events.
        found = ses.describe_configuration_set(
            ConfigurationSetName=NAME, ConfigurationSetAttributeNames=["eventDestinations"]
        )
        (dest,) = found["EventDestinations"]
        assert dest["SNSDestination"]["TopicARN"] == topic and dest["Enabled"]
        assert sorted(dest["MatchingEventTypes"]) == sorted(
            ["bounce", "complaint", "delivery", "reject", "deliveryDelay"]
        )
        # The queue, subscribed to the topic, with its dead-letter queue.
        queue_url = sqs.get_queue_url(QueueName=f"{NAME}-events")["QueueUrl"]
        dlq_url = sqs.get_queue_url(QueueName=f"{NAME}-events-dlq")["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == 5
        subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("sqs", attrs["QueueArn"])]
        # The SMTP user may send raw mail and do nothing else.
        user = f"{NAME}-smtp"
        assert iam.list_attached_user_policies(UserName=user)["AttachedPolicies"] == []
        (policy,) = iam.list_user_policies(UserName=user)["PolicyNames"]
        document = iam.get_user_policy(UserName=user, PolicyName=policy)["PolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        actions = [s["Action"] for s in document["Statement"] if s["Effect"] == "Allow"]
        assert actions in (["ses:SendRawEmail"], [["ses:SendRawEmail"]])
        assert iam.list_groups_for_user(UserName=user)["Groups"] == []
        # Its credentials, kept private, never printed.
        (key,) = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        assert (creds / "access-key-id.txt").read_text().strip() == key["AccessKeyId"]
        secret = (creds / "secret-access-key").read_text().strip()
        password = (creds / "smtp-password").read_text().strip()
        assert password == smtp_password(secret, REGION)
        for path in creds.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(creds.stat().st_mode) == 0o700
        assert len(out) > 50_000  # really -vvv
        assert secret not in out and password not in out

        # Mail to the simulator through the identity made: a bounce lands in the store.
        ses.send_email(
            Source=f"news@{DOMAIN}",
            Destination={"ToAddresses": ["bounce@simulator.amazonses.com"]},
            Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}},
        )
        cfg = tmp_path / "mailops.toml"
        cfg.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/mailops.db"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "mailops", "--config", str(cfg), "ses", "events",
             "--queue-url", queue_url, "--endpoint-url", moto.url, "--region", REGION,
             "--once", "--wait-seconds", "0"],
            env=clean_env(PYTHONPATH=str(ROOT / "scripts")),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        with Store.open(f"sqlite:///{tmp_path}/mailops.db") as store:
            assert [r["address"] for r in store.rows("suppressions")] == [
                "bounce@simulator.amazonses.com"
            ]

        down, _ = playbook(moto, "ses_teardown.yml", *extra)
        assert down["changed"] > 0
        assert made(moto) == {
            "identities": [],
            "configuration_sets": [],
            "topics": [],
            "subscriptions": [],
            "queues": [],
            "users": [],
        }
        assert list(creds.iterdir()) == []
        again, _ = playbook(moto, "ses_teardown.yml", *extra)
        assert again["changed"] == 0, again
