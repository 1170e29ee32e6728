"""``mailops ses inbound``: the SES inbound bridge, against moto's server and a sink.

moto's server (one per module) holds the bucket SES's S3 action writes to, the topic it
announces on, and the queue subscribed to the topic (SNS-wrapped bodies, visibility
timeout 0 so that a message left undeleted is offered again at once, a redrive policy
with ``maxReceiveCount`` 2).  The consumer relays to an SMTP sink on loopback
(tests/support/smtpsink.py) that answers as each test tells it.  The notification is
tests/data/ses_inbound/received.json, the shape SES publishes for a receipt rule with
an S3 action, pointed at the test's own bucket and object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailops.ses import inbound as ib
from mailops.ses import inbound_alarms as al
from mailops.ses import lambda_inbound
from tests.motoserver import MotoServer, clean_env, client
from tests.support.smtpsink import Script, SmtpSink, closed_port, self_signed

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "ses_inbound"
RECORDED = json.loads((DATA / "received.json").read_text())

# Lines that start with a dot, one of them a lone dot: SMTP's end of data unless stuffed.
RAW = (
    b"Return-Path: <carol@outside.test>\r\n"
    b"Received: from mail.outside.test by inbound-smtp.eu-west-1.amazonaws.com\r\n"
    b"From: Carol <carol@outside.test>\r\n"
    b"To: bill@company.test\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q4.2026@outside.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Figures below.\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b".one dot\r\n"
    b"caf\xc3\xa9 \t trailing space \r\n"
    b"end\r\n"
)


def notification(bucket: str, key: str, **receipt: Any) -> dict[str, Any]:
    note: dict[str, Any] = json.loads(json.dumps(RECORDED))
    note["receipt"]["action"].update(bucketName=bucket, objectKey=key)
    note["receipt"].update(receipt)
    return note


# --------------------------------------------------------------------------- parsing


def sns(inner: dict[str, Any]) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:mailops-inbound",
            "Message": json.dumps(inner),
        }
    )


def test_the_recorded_notification() -> None:
    msg = ib.parse_body(sns(RECORDED))
    assert (msg.bucket, msg.key) == ("mailops-inbound", RECORDED["receipt"]["action"]["objectKey"])
    assert msg.sender == "carol@outside.test"
    assert msg.recipients == ("bill@company.test",)
    assert not msg.virus
    assert msg.header() == (
        b"X-Mailops-SES-Verdicts: spam=PASS; virus=PASS; spf=PASS; dkim=GRAY; dmarc=PASS\r\n"
    )
    assert ib.parse_body(json.dumps(RECORDED)) == msg  # raw message delivery


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"notificationType": "Bounce"}, "not 'Received'"),
        ({"receipt": {"action": {"type": "Lambda"}, "recipients": ["a@b.test"]}}, "not 'S3'"),
        ({"receipt": {"action": {"type": "S3", "bucketName": "b"}}}, "objectKey"),
        (
            {"receipt": {"action": {"type": "S3", "bucketName": "b", "objectKey": "k"}}},
            "0 receipt recipients",
        ),
        (
            {
                "receipt": {
                    "action": {"type": "S3", "bucketName": "b", "objectKey": "k"},
                    "recipients": ["bill@company.test>\r\nRCPT TO:<x@y.test"],
                }
            },
            "not an address",
        ),
    ],
)
def test_what_is_not_a_received_notification(change: dict[str, Any], reason: str) -> None:
    body = {**json.loads(json.dumps(RECORDED)), **change}
    with pytest.raises(ib.Unparseable, match=reason):
        ib.parse_body(json.dumps(body))


def test_verdicts_missing_or_odd_are_named_none() -> None:
    note = json.loads(json.dumps(RECORDED))
    del note["receipt"]["spamVerdict"]
    note["receipt"]["dkimVerdict"] = {"status": "fail\r\nX-Evil: 1"}
    header = ib.parse_body(json.dumps(note)).header()
    assert header.startswith(b"X-Mailops-SES-Verdicts: spam=NONE; virus=PASS")
    assert b"dkim=NONE" in header and header.count(b"\r\n") == 1


def test_targets() -> None:
    assert ib.parse_target("mx1.company.test") == ib.Target("mx1.company.test", 25)
    assert ib.parse_target("127.0.0.1:2525").port == 2525
    assert ib.parse_target("[::1]:26").host == "::1"
    with pytest.raises(ValueError):
        ib.parse_target("host:99999")


# --------------------------------------------------------------------------- moto


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


class Inbound:
    """SES's side of the bridge in moto: bucket, topic, queue with its DLQ."""

    def __init__(self, server: MotoServer, max_receives: int = 2) -> None:
        tag = uuid.uuid4().hex[:8]
        self.server = server
        self.sqs = client(server, "sqs")
        self.s3 = client(server, "s3")
        self.sns = client(server, "sns")
        self.bucket = f"inbound-{tag}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.dlq_url = self.sqs.create_queue(QueueName=f"inbound-{tag}-dlq")["QueueUrl"]
        redrive = {"deadLetterTargetArn": self.arn(self.dlq_url), "maxReceiveCount": max_receives}
        self.queue_url = self.sqs.create_queue(
            QueueName=f"inbound-{tag}",
            Attributes={
                "VisibilityTimeout": "0",
                "RedrivePolicy": json.dumps(redrive),
            },
        )["QueueUrl"]
        self.topic = self.sns.create_topic(Name=f"inbound-{tag}")["TopicArn"]
        self.sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=self.arn(self.queue_url))

    def arn(self, url: str) -> str:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attrs["Attributes"]["QueueArn"])

    def receive(self, raw: bytes = RAW, **receipt: Any) -> str:
        """What SES does for one message: store it, then announce it."""
        key = f"inbound/{uuid.uuid4().hex}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=raw)
        note = notification(self.bucket, key, **receipt)
        self.sns.publish(TopicArn=self.topic, Message=json.dumps(note))
        return key

    def depth(self, url: str) -> int:
        return ib.depth(self.sqs, url)

    def dead_letters(self) -> list[dict[str, Any]]:
        got = self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )
        return list(got.get("Messages", []))


def run_inbound(
    pipe: Inbound, port: int, *extra: str, metrics: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = clean_env(PYTHONPATH=str(ROOT / "scripts"))
    argv = [
        sys.executable, "-m", "mailops", "ses", "inbound",
        "--queue-url", pipe.queue_url, "--endpoint-url", pipe.server.url,
        "--region", "us-east-1", "--smtp-host", f"127.0.0.1:{port}",
        "--once", "--wait-seconds", "0", "--timeout", "10",
    ]  # fmt: skip
    if metrics is not None:
        argv += ["--metrics-file", str(metrics)]
    return subprocess.run(
        [*argv, *extra], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_message_reaches_the_sink_intact(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Inbound(moto)
    key = pipe.receive()
    metrics = tmp_path / "inbound.prom"
    with SmtpSink() as sink:
        proc = run_inbound(pipe, sink.port, metrics=metrics)
    assert proc.returncode == 0, proc.stderr
    (got,) = sink.messages
    assert got.sender == "carol@outside.test"
    assert got.recipients == ["bill@company.test"]
    verdicts = b"X-Mailops-SES-Verdicts: spam=PASS; virus=PASS; spf=PASS; dkim=GRAY; dmarc=PASS\r\n"
    assert got.data == verdicts + RAW  # one header on top, every byte after it as stored
    assert pipe.depth(pipe.queue_url) == 0 and pipe.depth(pipe.dlq_url) == 0
    assert pipe.s3.get_object(Bucket=pipe.bucket, Key=key)  # left to the lifecycle
    text = metrics.read_text()
    assert 'mailops_ses_inbound_messages_total{outcome="relayed"} 1' in text
    assert 'mailops_ses_inbound_queue_messages{queue="main"} 0' in text
    assert 'mailops_ses_inbound_alarm{alarm="dead-letter"} 0' in text


def test_starttls_when_the_mx_offers_it(moto: MotoServer, tmp_path: Path) -> None:
    """mx1 offers STARTTLS: the relay must upgrade and still arrive intact."""
    pipe = Inbound(moto)
    pipe.receive()
    with SmtpSink(tls=self_signed(tmp_path)) as sink:
        proc = run_inbound(pipe, sink.port)
    assert proc.returncode == 0, proc.stderr
    assert sink.encrypted == 1 and sink.messages[0].data.endswith(RAW)
    assert pipe.depth(pipe.queue_url) == 0


def test_delete_object_removes_what_was_relayed(moto: MotoServer) -> None:
    pipe = Inbound(moto)
    key = pipe.receive()
    with SmtpSink() as sink:
        proc = run_inbound(pipe, sink.port, "--delete-object")
    assert proc.returncode == 0, proc.stderr
    assert len(sink.messages) == 1
    listed = pipe.s3.list_objects_v2(Bucket=pipe.bucket, Prefix=key)
    assert listed.get("KeyCount", 0) == 0


def test_with_the_sink_down_the_message_ends_in_the_dlq(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Inbound(moto, max_receives=2)
    pipe.receive()
    metrics = tmp_path / "inbound.prom"
    port = closed_port()
    first = run_inbound(pipe, port, metrics=metrics)
    assert first.returncode == 0, first.stderr
    assert "kept for a retry" in first.stderr and "ConnectionRefusedError" in first.stderr
    assert pipe.depth(pipe.queue_url) == 1 and pipe.depth(pipe.dlq_url) == 0  # not lost
    assert 'mailops_ses_inbound_messages_total{outcome="retry"} 1' in metrics.read_text()
    for _ in range(3):  # SQS moves it once it was received maxReceiveCount times
        if pipe.depth(pipe.dlq_url):
            break
        run_inbound(pipe, port, metrics=metrics)
    assert pipe.depth(pipe.dlq_url) == 1 and pipe.depth(pipe.queue_url) == 0
    last = run_inbound(pipe, port, metrics=metrics)
    assert last.returncode == 0, last.stderr
    text = metrics.read_text()
    assert 'mailops_ses_inbound_queue_messages{queue="dead-letter"} 1' in text
    assert 'mailops_ses_inbound_alarm{alarm="dead-letter"} 1' in text
    (dead,) = pipe.dead_letters()
    assert json.loads(json.loads(dead["Body"])["Message"])["notificationType"] == "Received"


def test_a_5xx_goes_to_the_dlq_at_once_with_the_reply(moto: MotoServer, tmp_path: Path) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.receive()
    refusal = "550 5.1.1 <bill@company.test>: Recipient address rejected: User unknown"
    metrics = tmp_path / "inbound.prom"
    with SmtpSink(Script(rcpt=lambda _a: refusal)) as sink:
        proc = run_inbound(pipe, sink.port, metrics=metrics)
        assert sink.messages == [] and sink.sessions == 1  # one try, no loop
    assert proc.returncode == 0, proc.stderr
    assert "moved to the dead-letter queue (refused)" in proc.stderr
    assert refusal in proc.stderr
    assert pipe.depth(pipe.queue_url) == 0
    (dead,) = pipe.dead_letters()
    attrs = dead["MessageAttributes"]
    assert attrs["mailops-outcome"]["StringValue"] == "refused"
    assert refusal in attrs["mailops-reason"]["StringValue"]
    assert 'mailops_ses_inbound_messages_total{outcome="refused"} 1' in metrics.read_text()


def test_a_5xx_after_data_is_refused_too(moto: MotoServer) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.receive()
    with SmtpSink(Script(data="554 5.7.1 Message rejected: content")) as sink:
        proc = run_inbound(pipe, sink.port)
    assert proc.returncode == 0, proc.stderr
    assert "DATA: 554 5.7.1 Message rejected" in proc.stderr
    assert pipe.depth(pipe.queue_url) == 0 and pipe.depth(pipe.dlq_url) == 1


def test_a_4xx_is_retried_not_refused(moto: MotoServer) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.receive()
    with SmtpSink(Script(rcpt=lambda _a: "450 4.2.0 Greylisted, try again")) as sink:
        proc = run_inbound(pipe, sink.port)
    assert proc.returncode == 0, proc.stderr
    assert "450 4.2.0 Greylisted" in proc.stderr
    assert pipe.depth(pipe.queue_url) == 1 and pipe.depth(pipe.dlq_url) == 0


def test_a_partial_4xx_retries_only_the_rest(moto: MotoServer) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.receive(recipients=["bill@company.test", "dave@company.test"])
    answers = {"dave@company.test": "452 4.2.2 Mailbox full"}
    with SmtpSink(Script(rcpt=lambda a: answers.get(a, "250 2.1.5 Ok"))) as sink:
        first = run_inbound(pipe, sink.port, "--retry-delay", "0")
        assert first.returncode == 0, first.stderr
        assert [m.recipients for m in sink.messages] == [["bill@company.test"]]
        answers.clear()
        second = run_inbound(pipe, sink.port)
        assert second.returncode == 0, second.stderr
        assert [m.recipients for m in sink.messages] == [
            ["bill@company.test"],
            ["dave@company.test"],
        ]
    assert sink.messages[1].data == sink.messages[0].data
    assert pipe.depth(pipe.queue_url) == 0 and pipe.depth(pipe.dlq_url) == 0


def test_a_virus_is_not_relayed(moto: MotoServer) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.receive(virusVerdict={"status": "FAIL"})
    with SmtpSink() as sink:
        proc = run_inbound(pipe, sink.port)
        assert sink.sessions == 0
    assert proc.returncode == 0, proc.stderr
    assert "virus verdict FAIL" in proc.stderr
    (dead,) = pipe.dead_letters()
    assert dead["MessageAttributes"]["mailops-outcome"]["StringValue"] == "virus"
    assert pipe.depth(pipe.queue_url) == 0


def test_a_body_that_is_no_notification_goes_to_the_dlq(moto: MotoServer) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.sqs.send_message(QueueUrl=pipe.queue_url, MessageBody="hello")
    with SmtpSink() as sink:
        proc = run_inbound(pipe, sink.port)
    assert proc.returncode == 0, proc.stderr
    assert "(unparseable)" in proc.stderr
    assert pipe.depth(pipe.queue_url) == 0 and pipe.depth(pipe.dlq_url) == 1


# --------------------------------------------------------------------------- Lambda


def sqs_event(pipe: Inbound) -> dict[str, Any]:
    """The event the Lambda service hands the function: the queue's messages as Records."""
    got = pipe.sqs.receive_message(
        QueueUrl=pipe.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": pipe.arn(pipe.queue_url),
                "awsRegion": "us-east-1",
            }
            for m in got.get("Messages", [])
        ]
    }


def test_the_lambda_handler(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = Inbound(moto, max_receives=5)
    pipe.receive()
    pipe.receive(recipients=["nobody@company.test"])
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setattr(lambda_inbound, "_CLIENTS", {})
    refuse = "550 5.1.1 <nobody@company.test>: User unknown"
    with SmtpSink(Script(rcpt=lambda a: refuse if a.startswith("nobody") else "250 Ok")) as sink:
        monkeypatch.setenv("MAILOPS_INBOUND_SMTP_HOST", f"127.0.0.1:{sink.port}")
        event = sqs_event(pipe)
        assert len(event["Records"]) == 2
        answer = lambda_inbound.handler(event, None)
        assert answer == {"batchItemFailures": []}  # both settled: one relayed, one refused
        assert [m.data.endswith(RAW) for m in sink.messages] == [True]
    (dead,) = pipe.dead_letters()
    assert refuse in dead["MessageAttributes"]["mailops-reason"]["StringValue"]
    # With the MX down, the record is reported failed: SQS offers it again.
    pipe.sqs.purge_queue(QueueUrl=pipe.queue_url)
    pipe.receive()
    monkeypatch.setenv("MAILOPS_INBOUND_SMTP_HOST", f"127.0.0.1:{closed_port()}")
    event = sqs_event(pipe)
    answer = lambda_inbound.handler(event, None)
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


# --------------------------------------------------------------------------- alarms


def gauges(**kw: Any) -> al.Gauges:
    base: dict[str, Any] = dict(
        totals={}, queue=0, dlq=0, oldest_age=0.0, errors_in_window=0, ok=True, now=1000.0
    )
    return al.Gauges(**{**base, **kw})


def test_an_alarm_is_mailed_when_it_starts_and_when_it_stops(tmp_path: Path) -> None:
    path = tmp_path / "alarms.json"
    sent: list[tuple[str, str]] = []
    mail = lambda s, b: sent.append((s, b))  # noqa: E731
    limits = al.Limits()
    state = al.load_state(path)
    assert al.update(path, state, gauges(), limits, mail) == {} and sent == []
    firing = al.update(path, state, gauges(dlq=1, oldest_age=400.0), limits, mail)
    assert set(firing) == {al.DLQ, al.OLDEST}
    assert len(sent) == 1 and "dead-letter" in sent[0][0] and "FIRING" in sent[0][1]
    state = al.load_state(path)  # a new run reads what fired
    al.update(path, state, gauges(dlq=1, oldest_age=400.0), limits, mail)
    assert len(sent) == 1
    al.update(path, state, gauges(dlq=0), limits, mail)
    assert len(sent) == 2 and "resolved" in sent[1][0]


def test_errors_alarm_counts_a_window() -> None:
    state: dict[str, Any] = {"firing": {}, "errors": []}
    limits = al.Limits(errors=5, window_seconds=300)
    done = ib.Pass(errors=4)
    assert al.note_errors(state, done, 1000.0, limits) == 4
    assert al.note_errors(state, done, 1100.0, limits) == 8
    assert al.firing(gauges(errors_in_window=8), limits).keys() == {al.ERRORS}
    assert al.note_errors(state, ib.Pass(), 1350.0, limits) == 4  # the first four aged out


def test_a_failing_alert_mail_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "alarms.json"
    state = al.load_state(path)

    def broken(subject: str, body: str) -> None:
        raise OSError("sendmail missing")

    with pytest.raises(OSError):
        al.update(path, state, gauges(dlq=2), al.Limits(), broken)
    sent: list[str] = []
    al.update(path, al.load_state(path), gauges(dlq=2), al.Limits(), lambda s, b: sent.append(s))
    assert len(sent) == 1
