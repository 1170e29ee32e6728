"""``mailops ses events``: SES notifications from SQS into the store.

The first half feeds :func:`parse_body` and the store recorded bodies of every shape
(SNS-wrapped and raw, identity notifications and configuration-set events).  The second
half runs the command against moto's server (one per module): mail to SES's simulator
addresses through a domain whose identity notifications go to an SNS topic, an SQS
queue subscribed to it with a dead-letter queue, then ``mailops ses events --once``.
moto's SES is taught the simulator's notifications first (tests/motoserver.py,
``model_ses_simulator``); moto sends no DeliveryDelay, so that body is made here.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailops import exitcodes
from mailops.ses import events as ev
from mailops.store import Store
from mailops.tenants.model import Tenants, load_tenants
from tests.motoserver import MotoServer, clean_env, client
from tests.pgcluster import backend_url

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


# --------------------------------------------------------------------------- bodies


def notification(kind: str, message_id: str = "m-1", **own: Any) -> dict[str, Any]:
    """An identity notification as SES writes it (the parts the tool reads)."""
    body: dict[str, Any] = {
        "notificationType": kind,
        "mail": {
            "timestamp": "2026-12-07T20:00:00.000Z",
            "messageId": message_id,
            "source": "news@alpha.test",
            "destination": ["a@example.net"],
            "commonHeaders": {"from": ["News <news@alpha.test>"]},
        },
    }
    body[ev.TYPES[kind]] = own
    return body


def bounce(address: str, kind: str = "Permanent", sub: str = "General", **kw: Any) -> Any:
    status = "5.1.1" if kind == "Permanent" else "4.2.2"
    diag = "smtp; 550 5.1.1 user unknown" if kind == "Permanent" else "smtp; 452 4.2.2 full"
    return notification(
        "Bounce",
        kw.pop("message_id", "m-1"),
        bounceType=kind,
        bounceSubType=sub,
        bouncedRecipients=[{"emailAddress": address, "status": status, "diagnosticCode": diag}],
        timestamp="2026-12-07T20:00:01.000Z",
        feedbackId="f-1",
    )


def complaint(address: str, feedback: str = "abuse", message_id: str = "m-2") -> Any:
    return notification(
        "Complaint",
        message_id,
        complainedRecipients=[{"emailAddress": address}],
        complaintFeedbackType=feedback,
        timestamp="2026-12-07T20:00:02.000Z",
        feedbackId="f-2",
    )


def delay(address: str, message_id: str = "m-3") -> Any:
    """A configuration-set DeliveryDelay event (moto never sends one)."""
    body = notification(
        "DeliveryDelay",
        message_id,
        delayType="MailboxFull",
        delayedRecipients=[
            {"emailAddress": address, "status": "4.2.2", "diagnosticCode": "smtp; 452 4.2.2 full"}
        ],
        expirationTime="2026-12-08T20:00:00.000Z",
        timestamp="2026-12-07T20:05:00.000Z",
    )
    body["eventType"] = body.pop("notificationType")
    return body


def sns(inner: dict[str, Any], sns_id: str = "sns-1") -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": sns_id,
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses",
            "Message": json.dumps(inner),
        }
    )


def test_sns_wrapped_identity_bounce() -> None:
    notice = ev.parse_body(sns(bounce("Gone@Example.net")))
    assert notice is not None and notice.report is not None
    assert notice.event_type == "Bounce"
    assert notice.addresses == ("gone@example.net",)
    assert notice.sns_message_id == "sns-1"
    assert notice.source == "news@alpha.test"
    assert notice.detail == "Permanent/General"
    assert notice.occurred_at == 1796673601
    (rcpt,) = notice.report.recipients
    assert rcpt.hard and rcpt.reason == "userunknown" and rcpt.status == "5.1.1"


def test_raw_configuration_set_event() -> None:
    body = complaint("x@example.net")
    body["eventType"] = body.pop("notificationType")
    notice = ev.parse_body(json.dumps(body))
    assert notice is not None and notice.report is not None
    assert (notice.event_type, notice.report.kind, notice.sns_message_id) == (
        "Complaint",
        "feedback",
        "",
    )


def test_send_event_names_the_destinations() -> None:
    body = notification("Send")
    body["eventType"] = body.pop("notificationType")
    body["mail"]["destination"] = ["A@example.net", "not an address", "b@example.net"]
    notice = ev.parse_body(json.dumps(body))
    assert notice is not None and notice.report is None
    assert notice.addresses == ("a@example.net", "b@example.net")


def test_subscription_notice_is_informational() -> None:
    assert ev.parse_body(sns({"notificationType": "AmazonSnsSubscriptionSucceeded"})) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "body is not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"Type": "Notification", "Message": "{broken"}), "SNS Message is not JSON"),
        (json.dumps({"Type": "SubscriptionConfirmation", "TopicArn": "t"}), "not a notification"),
        (json.dumps({"mail": {"messageId": "m"}}), "neither notificationType nor eventType"),
        (json.dumps({"notificationType": "Bounce, Complaint, or Delivery."}), "unknown SES"),
        (json.dumps({"notificationType": "Bounce", "bounce": {}}), "without its mail object"),
        (json.dumps(notification("Bounce", "")), "without mail.messageId"),
        (json.dumps({"notificationType": "Bounce", "mail": {"messageId": "m"}}), "'bounce'"),
        (json.dumps(notification("Bounce", bouncedRecipients=[])), "names no recipient"),
        ("[" * 100000 + "]" * 100000, "body"),
    ],
)
def test_unparseable_bodies_say_why(body: str, reason: str) -> None:
    with pytest.raises(ev.Unparseable, match=reason.replace("(", r"\(")):
        ev.parse_body(body)


# --------------------------------------------------------------------------- the store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with Store.open(backend_url(request.param, tmp_path), timeout=5) as s:
        yield s


def put(store: Store, body: Any, scope: str = "") -> Any:
    notice = ev.parse_body(json.dumps(body))
    assert notice is not None
    return store.record_ses_event(
        notice.event_type,
        notice.ses_message_id,
        notice.addresses,
        report=notice.report,
        source=notice.source,
        occurred_at=notice.occurred_at,
        scope=scope,
    )


def suppressed(store: Store) -> dict[str, str]:
    return {r["address"]: r["source"] for r in store.rows("suppressions")}


def test_permanent_bounce_and_complaint_suppress_at_once(store: Store) -> None:
    assert put(store, bounce("gone@example.net")).suppressed == ["gone@example.net"]
    assert put(store, complaint("angry@example.net")).suppressed == ["angry@example.net"]
    assert suppressed(store) == {"gone@example.net": "bounce", "angry@example.net": "complaint"}
    rows = store.rows("bounces")
    assert [(r["address"], r["hard"], r["reason"], r["detector"]) for r in rows] == [
        ("gone@example.net", 1, "userunknown", "ses-sqs")
    ]
    assert store.ses_event_counts() == {"Bounce": 1, "Complaint": 1}


def test_the_same_notification_twice_stores_once(store: Store) -> None:
    first = put(store, bounce("gone@example.net"))
    again = put(store, bounce("gone@example.net"))
    assert (first.stored, again.stored, again.duplicates) == (1, 0, 1)
    assert len(store.rows("bounces")) == 1
    assert store.ses_event_counts() == {"Bounce": 1}


def test_transient_bounces_count_as_soft(store: Store) -> None:
    # The default policy: 3 soft bounces within 7 days suppress, for a while.
    for n in range(2):
        assert put(
            store, bounce("full@example.net", "Transient", "MailboxFull", message_id=f"t{n}")
        )
    assert suppressed(store) == {}
    put(store, bounce("full@example.net", "Transient", "MailboxFull", message_id="t2"))
    (entry,) = store.rows("suppressions")
    assert entry["source"] == "soft" and entry["expires_at"] is not None
    assert {r["reason"] for r in store.rows("bounces")} == {"mailboxfull"}


def test_delivery_delay_is_kept_but_never_suppresses(store: Store) -> None:
    for n in range(5):
        put(store, delay("slow@example.net", message_id=f"d{n}"))
    assert suppressed(store) == {}
    rows = store.rows("bounces")
    assert len(rows) == 5 and {(r["action"], r["hard"]) for r in rows} == {("delayed", 0)}


def test_delivery_counts_and_clears_soft_history(store: Store) -> None:
    for n in range(2):
        put(store, bounce("back@example.net", "Transient", "General", message_id=f"s{n}"))
    body = notification("Delivery", "m-ok", recipients=["back@example.net"], smtpResponse="250 ok")
    assert put(store, body).cleared == 2
    # Two more soft bounces do not reach the threshold: the two before were cleared.
    for n in range(2, 4):
        put(store, bounce("back@example.net", "Transient", "General", message_id=f"s{n}"))
    assert suppressed(store) == {}
    assert store.ses_event_counts() == {"Bounce": 4, "Delivery": 1}


def test_not_spam_feedback_is_stored_but_suppresses_nothing(store: Store) -> None:
    assert put(store, complaint("fine@example.net", "not-spam")).suppressed == []
    assert len(store.rows("complaints")) == 1


def test_scope_of_the_suppression(store: Store) -> None:
    put(store, bounce("gone@example.net"), scope="alpha")
    assert [(r["tenant"], r["address"]) for r in store.rows("suppressions")] == [
        ("alpha", "gone@example.net")
    ]


def test_rows_carry_the_tenant_of_the_sender() -> None:
    tenants = load_tenants({"tenants": {"alpha": {"domains": ["alpha.test"]}}})
    ours = ev.parse_body(json.dumps(bounce("x@example.net")))  # source news@alpha.test
    other = bounce("x@example.net")
    other["mail"]["source"] = "news@beta.test"
    other["mail"]["commonHeaders"]["from"] = ["news@beta.test"]
    theirs = ev.parse_body(json.dumps(other))
    assert ours is not None and theirs is not None
    assert ev.tenant_of(ours, tenants, "") == "alpha"
    assert ev.tenant_of(theirs, tenants, "") == ""
    assert ev.tenant_of(theirs, tenants, "scope") == "scope"


# --------------------------------------------------------------------------- moto


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


class Pipeline:
    """A verified domain whose identity notifications go to an SNS topic, an SQS queue
    subscribed to it (SNS-wrapped), and the queue's dead-letter queue."""

    def __init__(self, server: MotoServer, max_receives: int = 2) -> None:
        tag = uuid.uuid4().hex[:8]
        self.server = server
        self.domain = f"ses-{tag}.test"
        self.sender = f"news@{self.domain}"
        self.sqs = client(server, "sqs")
        self.ses = client(server, "ses")
        sns = client(server, "sns")
        self.dlq_url = self.sqs.create_queue(QueueName=f"ses-{tag}-dlq")["QueueUrl"]
        dlq_arn = self.arn(self.dlq_url)
        # Visibility timeout 0: a body left undeleted is visible again at once, so the
        # redrive count is reached in a few passes instead of minutes.
        self.queue_url = self.sqs.create_queue(
            QueueName=f"ses-{tag}",
            Attributes={
                "VisibilityTimeout": "0",
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
                ),
            },
        )["QueueUrl"]
        self.topic = sns.create_topic(Name=f"ses-{tag}")["TopicArn"]
        sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=self.arn(self.queue_url))
        self.sns = sns
        self.ses.verify_domain_identity(Domain=self.domain)
        for kind in ("Bounce", "Complaint", "Delivery"):
            self.ses.set_identity_notification_topic(
                Identity=self.domain, NotificationType=kind, SnsTopic=self.topic
            )

    def arn(self, url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attrs["Attributes"]["QueueArn"])

    def send(self, to: str) -> str:
        answer = self.ses.send_email(
            Source=self.sender,
            Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": "hello"}, "Body": {"Text": {"Data": "hello"}}},
        )
        return str(answer["MessageId"])

    def depth(self, url: str) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return sum(int(attrs[n]) for n in names)


def settings(tmp_path: Path, url: str | None = None) -> Path:
    path = tmp_path / "mailops.toml"
    path.write_text(f'[store]\nurl = "{url or f"sqlite:///{tmp_path}/mailops.db"}"\ntimeout = 1\n')
    return path


def run_events(
    cfg: Path, pipe: Pipeline, *extra: str, metrics: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = clean_env(PYTHONPATH=str(ROOT / "scripts"))
    env.pop("MAILOPS_CONFIG", None)
    argv = [
        sys.executable, "-m", "mailops", "--config", str(cfg), "ses", "events",
        "--queue-url", pipe.queue_url, "--endpoint-url", pipe.server.url,
        "--region", REGION, "--once", "--wait-seconds", "0",
    ]  # fmt: skip
    if metrics is not None:
        argv += ["--metrics-file", str(metrics)]
    return subprocess.run(
        [*argv, *extra], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def table_counts(cfg: Path, tmp_path: Path) -> dict[str, Any]:
    with Store.open(f"sqlite:///{tmp_path}/mailops.db") as s:
        return {
            **s.counts(),
            "ses_events": s.ses_event_counts(),
            "suppressed": {(r["address"], r["source"]) for r in s.rows("suppressions")},
        }


def test_simulator_bounces_and_complaints_end_suppressed(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Pipeline(moto)
    sent = [pipe.send(f"{who}@simulator.amazonses.com") for who in ("bounce", "complaint")]
    pipe.send("success@simulator.amazonses.com")
    # moto sends no DeliveryDelay: one made here, published to the same topic.
    late = "late@example.net"
    pipe.sns.publish(TopicArn=pipe.topic, Message=json.dumps(delay(late, message_id="d-1")))
    assert pipe.depth(pipe.queue_url) == 4
    cfg = settings(tmp_path)
    metrics = tmp_path / "ses.prom"

    first = run_events(cfg, pipe, metrics=metrics)
    assert first.returncode == 0, first.stderr
    after = table_counts(cfg, tmp_path)
    assert after["suppressed"] == {
        ("bounce@simulator.amazonses.com", "bounce"),
        ("complaint@simulator.amazonses.com", "complaint"),
    }
    assert after["ses_events"] == {"Bounce": 1, "Complaint": 1, "Delivery": 1, "DeliveryDelay": 1}
    with Store.open(f"sqlite:///{tmp_path}/mailops.db") as s:
        bounced = s.rows("bounces", address="bounce@simulator.amazonses.com")
    assert bounced[0]["message_id"] == f"ses:Bounce:{sent[0]}"  # SendEmail's own id
    assert pipe.depth(pipe.queue_url) == 0
    text = metrics.read_text()
    assert text.startswith("# HELP ")
    assert 'mailops_ses_events_total{type="Bounce"} 1' in text
    assert 'mailops_ses_queue_messages{queue="dead-letter"} 0' in text
    assert "mailops_ses_last_pass_success 1" in text

    second = run_events(cfg, pipe, metrics=metrics)
    assert second.returncode == 0, second.stderr
    assert "received" not in second.stderr  # an empty pass is silent: cron mails output
    assert table_counts(cfg, tmp_path) == after


def test_a_notification_delivered_twice_is_stored_once(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Pipeline(moto)
    body = bounce("twice@example.net", message_id="dup-1")
    for _ in range(2):
        pipe.sns.publish(TopicArn=pipe.topic, Message=json.dumps(body))
    cfg = settings(tmp_path)
    proc = run_events(cfg, pipe)
    assert proc.returncode == 0, proc.stderr
    assert "1 already stored" in proc.stderr and "2 deleted" in proc.stderr
    counts = table_counts(cfg, tmp_path)
    assert counts["bounces"] == 1 and counts["ses_events"] == {"Bounce": 1}
    assert pipe.depth(pipe.queue_url) == 0


def test_a_broken_body_ends_in_the_dead_letter_queue(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Pipeline(moto, max_receives=2)
    pipe.sqs.send_message(QueueUrl=pipe.queue_url, MessageBody='{"Type": "Notification", "Mes')
    pipe.send("bounce@simulator.amazonses.com")
    cfg = settings(tmp_path)
    metrics = tmp_path / "ses.prom"
    first = run_events(cfg, pipe, metrics=metrics)
    assert first.returncode == 0, first.stderr
    assert "left for the dead-letter queue" in first.stderr and "body is not JSON" in first.stderr
    assert "mailops_ses_unparseable_messages 1" in metrics.read_text()
    stored = table_counts(cfg, tmp_path)
    assert stored["ses_events"] == {"Bounce": 1}
    # Not deleted: the next pass sees it again, until the redrive count moves it.
    for _ in range(3):
        if pipe.depth(pipe.dlq_url):
            break
        run_events(cfg, pipe, metrics=metrics)
    assert pipe.depth(pipe.dlq_url) == 1
    assert pipe.depth(pipe.queue_url) == 0
    body = pipe.sqs.receive_message(QueueUrl=pipe.dlq_url)["Messages"][0]["Body"]
    assert body.startswith('{"Type": "Notification"')
    assert table_counts(cfg, tmp_path) == stored
    last = run_events(cfg, pipe, metrics=metrics)
    assert last.returncode == 0
    assert 'mailops_ses_queue_messages{queue="dead-letter"} 1' in metrics.read_text()


def test_a_store_outage_deletes_nothing(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Pipeline(moto, max_receives=50)
    pipe.send("bounce@simulator.amazonses.com")
    cfg = settings(tmp_path)
    table_counts(cfg, tmp_path)  # the store exists, at the latest schema
    # Another writer holds the store's write lock past the tool's timeout (1 s).
    holder = sqlite3.connect(tmp_path / "mailops.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        proc = run_events(cfg, pipe, metrics=tmp_path / "ses.prom")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == exitcodes.TEMPFAIL, proc.stderr
    assert "store unavailable" in proc.stderr and "kept in the queue" in proc.stderr
    assert "mailops_ses_last_pass_success 0" in (tmp_path / "ses.prom").read_text()
    assert pipe.depth(pipe.queue_url) == 1
    assert table_counts(cfg, tmp_path)["ses_events"] == {}
    # Once the store is back, the same message is stored and deleted.
    proc = run_events(cfg, pipe)
    assert proc.returncode == 0, proc.stderr
    assert pipe.depth(pipe.queue_url) == 0
    assert ("bounce@simulator.amazonses.com", "bounce") in table_counts(cfg, tmp_path)["suppressed"]


def test_without_once_a_pass_is_one_receive(moto: MotoServer, tmp_path: Path) -> None:
    """The long-poll loop writes its metrics after every batch: a pass must end."""
    pipe = Pipeline(moto)
    for n in range(13):
        pipe.sns.publish(
            TopicArn=pipe.topic, Message=json.dumps(delay(f"d{n}@example.net", f"m{n}"))
        )
    with Store.open(f"sqlite:///{tmp_path}/mailops.db") as s:
        first = ev.run_pass(pipe.sqs, pipe.queue_url, s, Tenants({}), once=False, wait=0)
        second = ev.run_pass(pipe.sqs, pipe.queue_url, s, Tenants({}), once=False, wait=0)
        assert (first.deleted, second.deleted) == (10, 3)
        assert s.ses_event_counts() == {"DeliveryDelay": 13}
    assert pipe.depth(pipe.queue_url) == 0
