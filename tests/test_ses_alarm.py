"""``mailops ses alarm-mail``: recorded CloudWatch alarm notifications become mails whose
first lines name the alarm, the state change with its time and the reason, then the
metric, threshold and period; topics route to their own recipients or to a digest.
The notifications in tests/data/ses/alarms are SNS-wrapped, as an alarm topic delivers
them to an SQS queue or a Lambda function."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailops.ses import alarm as al
from mailops.ses.pipeline import Pipeline
from mailops.ses.pipeline_send import StoreLedger
from mailops.ses.pipeline_settings import parse
from mailops.store import Store

ROOT = Path(__file__).resolve().parent.parent
ALARMS = ROOT / "tests/data/ses/alarms"
DLQ = (ALARMS / "dlq-not-empty.sns.json").read_text()
BILLING = (ALARMS / "billing-ok.sns.json").read_text()


def test_recorded_alarm_reads_first_what_an_operator_needs() -> None:
    subject, text = al.format_alarm(al.parse_alarm(DLQ))
    assert subject == "ALARM: mailops-ses-inbound-dlq-not-empty (OK -> ALARM)"
    assert text.splitlines()[:6] == [
        "Alarm: mailops-ses-inbound-dlq-not-empty",
        "State: OK -> ALARM at 2026-12-08 00:00:37 UTC",
        "Reason: Threshold Crossed: 1 out of the last 1 datapoints [1.0 (07/12/26 23:55:00)]"
        " was greater than the threshold (0.0) (minimum 1 datapoint for OK -> ALARM"
        " transition).",
        "Metric: AWS/SQS ApproximateNumberOfMessagesVisible (MAXIMUM)"
        " QueueName=mailops-ses-inbound-dlq",
        "Threshold: > 0",
        "Period: 300 s x 1 evaluation period(s)",
    ]
    assert "Topic: arn:aws:sns:us-east-1:123456789012:prod-critical-alarms" in text


def test_raw_message_without_the_sns_envelope() -> None:
    inner = json.loads(BILLING)["Message"]
    alarm = al.parse_alarm(inner)
    assert (alarm.name, alarm.old_state, alarm.new_state) == (
        "billing-estimated-charges",
        "ALARM",
        "OK",
    )
    assert alarm.threshold == ">= 10" and alarm.topic == ""


def test_not_an_alarm() -> None:
    with pytest.raises(al.NotAnAlarm):
        al.parse_alarm(json.dumps({"Type": "Notification", "Message": '{"template": "x"}'}))


def test_cli_renders_a_recorded_notification() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailops", "ses", "alarm-mail", "--render", "-"],
        input=DLQ,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Subject: ALARM: mailops-ses-inbound-dlq-not-empty (OK -> ALARM)"
    assert lines[2:4] == [
        "Alarm: mailops-ses-inbound-dlq-not-empty",
        "State: OK -> ALARM at 2026-12-08 00:00:37 UTC",
    ]


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, sender: str, recipient: str, raw: bytes) -> str:
        self.sent.append((sender, recipient, raw))
        return ""


def test_topics_route_to_recipients_or_a_digest(tmp_path: Path) -> None:
    raw = {
        "templates": "templates",
        "from": "Ops <ops@company.test>",
        "transports": {"ses": {"kind": "ses"}},
        "alarms": {
            "from": "CloudWatch <alarms@company.test>",
            "digest_dir": str(tmp_path / "digest"),
            "routes": [
                {"topic": "prod-critical-*", "to": ["oncall@company.test"]},
                {"topic": "billing-alerts", "to": ["finance@company.test"], "mode": "digest"},
            ],
        },
    }
    settings = parse(raw, tmp_path)
    routes = al.parse_routes(raw, settings.sender, settings.transport)
    recorder = Recorder()
    with Store.open(f"sqlite:///{tmp_path}/store.db") as store:
        pipe = Pipeline(settings, StoreLedger(store), make=lambda t: recorder)
        logged: list[str] = []

        def log(tool: str, text: str, error: bool = False) -> None:
            logged.append(text)

        assert al.deliver(DLQ, routes, pipe, log=log)
        assert al.deliver(DLQ, routes, pipe, log=log)  # SNS again: mailed once
        assert al.deliver(BILLING, routes, pipe, log=log)
        assert [r for _, r, _ in recorder.sent] == ["oncall@company.test"]
        mail = email.message_from_bytes(recorder.sent[0][2], policy=email.policy.default)
        assert mail["From"] == "CloudWatch <alarms@company.test>"
        body = mail.get_content()
        assert body.startswith("Alarm: mailops-ses-inbound-dlq-not-empty\nState: OK -> ALARM")
        # The digest goes out when flushed, once, with the billing alarm in it.
        assert al.flush_digest(routes, pipe) == 1
        assert al.flush_digest(routes, pipe) == 0
        _, rcpt, raw_digest = recorder.sent[1]
        digest = email.message_from_bytes(raw_digest, policy=email.policy.default)
        assert rcpt == "finance@company.test"
        assert digest["Subject"] == "Alarm digest (billing-alerts): 1 state change(s)"
        assert "Alarm: billing-estimated-charges\nState: ALARM -> OK" in digest.get_content()
        # A topic no route names stays in the queue (its DLQ), with a line saying so.
        other = json.loads(DLQ)
        other["TopicArn"] = "arn:aws:sns:us-east-1:123456789012:dev-idle-notify"
        other["MessageId"] = "another"
        assert not al.deliver(json.dumps(other), routes, pipe, log=log)
        assert "no route for topic 'dev-idle-notify'" in logged[-1]
