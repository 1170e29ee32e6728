"""``mailops ses alarm-mail``: CloudWatch alarm notifications as mails people can read.

Usage::

    mailops ses alarm-mail --render FILE                 print the mail for one notification
    mailops ses alarm-mail --queue-url URL [--once]      deliver from an SQS queue
    mailops ses alarm-mail --flush-digest                send the digests collected so far

CloudWatch publishes an alarm's state change to SNS as one JSON object (``AlarmName``,
``NewStateValue``, ``OldStateValue``, ``StateChangeTime``, ``NewStateReason``,
``Trigger`` ...).  Mailed as it is, it is one unreadable line.  The mail made here starts
with what an operator needs first, one item a line::

    Alarm: mailops-ses-dlq-not-empty
    State: OK -> ALARM at 2026-12-08 00:10:05 UTC
    Reason: Threshold Crossed: 1 datapoint [1.0 (08/12/26 00:05:00)] was greater than ...
    Metric: AWS/SQS ApproximateNumberOfMessagesVisible (Maximum) QueueName=mailops-ses-dlq
    Threshold: > 0
    Period: 300 s x 1 evaluation period(s)

then the description, account, region and ARNs.  Routing (the ``[alarms]`` table of the
pipeline's settings file, docs/ses_pipeline.md) sends each topic's alarms to its own
recipients, at once or into a digest mailed by ``--flush-digest`` (cron).  The mail
goes through the pipeline's transports (SES or the cluster's submission); a replayed
notification (same SNS MessageId) is mailed once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from mailops import exitcodes
from mailops.pipeio import log as _log
from mailops.ses.pipeline_send import SendError
from mailops.store.text import clean, normalize_address, valid_address

TOOL = "ses alarm-mail"
COMPARISONS = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
    "LessThanLowerOrGreaterThanUpperThreshold": "outside the band",
    "LessThanLowerThreshold": "below the band",
    "GreaterThanUpperThreshold": "above the band",
}


class NotAnAlarm(ValueError):
    """The body is not a CloudWatch alarm notification."""


@dataclass(frozen=True)
class Alarm:
    name: str
    new_state: str
    old_state: str
    changed_at: str
    reason: str
    metric: str
    threshold: str
    period: str
    description: str = ""
    account: str = ""
    region: str = ""
    alarm_arn: str = ""
    topic_arn: str = ""
    sns_message_id: str = ""

    @property
    def topic(self) -> str:
        return self.topic_arn.rpartition(":")[2]


def _s(value: object) -> str:
    return clean(value if isinstance(value, str | int | float) else "", 2000)


def _when(value: object) -> str:
    """CloudWatch's "2026-12-08T00:10:05.123+0000" as "2026-12-08 00:10:05 UTC"."""
    text = _s(value)
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text or "an unknown time"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _s(value)


def _metric(trigger: dict[str, Any]) -> str:
    if trigger.get("MetricName"):
        stat = _s(trigger.get("Statistic") or trigger.get("ExtendedStatistic"))
        dims = trigger.get("Dimensions") or []
        named = " ".join(
            f"{_s(d.get('name') or d.get('Name'))}={_s(d.get('value') or d.get('Value'))}"
            for d in dims
            if isinstance(d, dict)
        )
        text = f"{_s(trigger.get('Namespace'))} {_s(trigger.get('MetricName'))}"
        return " ".join(p for p in (text.strip(), f"({stat})" if stat else "", named) if p)
    metrics = trigger.get("Metrics") or []
    for m in metrics:  # a metric-math alarm: the expression that returns data
        if isinstance(m, dict) and m.get("ReturnData", True):
            if m.get("Expression"):
                return f"expression {_s(m.get('Expression'))} ({_s(m.get('Label'))})".strip()
            metric_stat = _dict(m.get("MetricStat"))
            inner = _dict(metric_stat.get("Metric"))
            name = f"{_s(inner.get('Namespace'))} {_s(inner.get('MetricName'))}"
            return f"{name} ({_s(metric_stat.get('Stat'))})"
    return "unknown"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_alarm(body: str | dict[str, Any]) -> Alarm:
    """The alarm in an SNS-wrapped or raw notification."""
    try:
        obj: Any = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        raise NotAnAlarm("not JSON") from None
    topic = sns_id = ""
    if isinstance(obj, dict) and obj.get("Type") == "Notification" and "Message" in obj:
        topic, sns_id = _s(obj.get("TopicArn")), _s(obj.get("MessageId"))
        inner = obj["Message"]
        try:
            obj = json.loads(inner) if isinstance(inner, str) else inner
        except ValueError:
            raise NotAnAlarm("the SNS Message is not JSON") from None
    if not isinstance(obj, dict) or not obj.get("AlarmName") or not obj.get("NewStateValue"):
        raise NotAnAlarm("no AlarmName and NewStateValue")
    trigger = _dict(obj.get("Trigger"))
    comparison = _s(trigger.get("ComparisonOperator"))
    threshold = _number(trigger.get("Threshold"))
    if trigger.get("ThresholdMetricId"):
        threshold = f"band {_s(trigger.get('ThresholdMetricId'))}"
    sign = COMPARISONS.get(comparison, comparison)
    periods = trigger.get("EvaluationPeriods")
    period = f"{_number(trigger.get('Period'))} s" if trigger.get("Period") else "unknown"
    if periods:
        period += f" x {_number(periods)} evaluation period(s)"
    return Alarm(
        name=_s(obj.get("AlarmName")),
        new_state=_s(obj.get("NewStateValue")),
        old_state=_s(obj.get("OldStateValue")) or "?",
        changed_at=_when(obj.get("StateChangeTime")),
        reason=_s(obj.get("NewStateReason")),
        metric=_metric(trigger),
        threshold=f"{sign} {threshold}".strip() or "unknown",
        period=period,
        description=_s(obj.get("AlarmDescription")),
        account=_s(obj.get("AWSAccountId")),
        region=_s(obj.get("Region")),
        alarm_arn=_s(obj.get("AlarmArn")),
        topic_arn=topic,
        sns_message_id=sns_id,
    )


def head(alarm: Alarm) -> list[str]:
    """The first lines of the mail, in the order an operator reads them."""
    return [
        f"Alarm: {alarm.name}",
        f"State: {alarm.old_state} -> {alarm.new_state} at {alarm.changed_at}",
        f"Reason: {alarm.reason or 'none given'}",
        f"Metric: {alarm.metric}",
        f"Threshold: {alarm.threshold}",
        f"Period: {alarm.period}",
    ]


def format_alarm(alarm: Alarm) -> tuple[str, str]:
    """(subject, text body)."""
    lines = head(alarm)
    lines.append("")
    if alarm.description:
        lines += ["Description:", alarm.description, ""]
    for label, value in (
        ("Account", alarm.account),
        ("Region", alarm.region),
        ("Alarm ARN", alarm.alarm_arn),
        ("Topic", alarm.topic_arn),
    ):
        if value:
            lines.append(f"{label}: {value}")
    subject = f"{alarm.new_state}: {alarm.name} ({alarm.old_state} -> {alarm.new_state})"
    return subject, "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class AlarmRoute:
    topic: str  # a topic name or a glob (fnmatch) over it; "*" for any
    to: tuple[str, ...]
    digest: bool = False


@dataclass(frozen=True)
class AlarmRoutes:
    sender: str
    transport: str
    digest_dir: Path
    routes: tuple[AlarmRoute, ...]

    def find(self, topic: str) -> AlarmRoute | None:
        for route in self.routes:
            if fnmatchcase(topic, route.topic):
                return route
        return None


def parse_routes(raw: dict[str, Any], default_from: str, default_transport: str) -> AlarmRoutes:
    from mailops.ses.pipeline_settings import SettingsError

    table = _dict(raw.get("alarms"))
    out = []
    for i, item in enumerate(table.get("routes") or []):
        item = _dict(item)
        to = item.get("to")
        addresses = tuple(normalize_address(a) for a in (to if isinstance(to, list) else [to]))
        if not addresses or not all(isinstance(a, str) and valid_address(a) for a in addresses):
            raise SettingsError(f"alarms.routes[{i}].to: expected a list of addresses")
        mode = item.get("mode", "immediate")
        if mode not in ("immediate", "digest"):
            raise SettingsError(f"alarms.routes[{i}].mode: immediate or digest, got {mode!r}")
        topic = item.get("topic", "*")
        if not isinstance(topic, str) or not topic:
            raise SettingsError(f"alarms.routes[{i}].topic: expected a topic name or glob")
        out.append(AlarmRoute(topic, addresses, mode == "digest"))
    sender = table.get("from", default_from)
    transport = table.get("transport", default_transport)
    digest_dir = table.get("digest_dir", "/var/lib/mailops/alarm-digest")
    if not isinstance(sender, str) or "@" not in parseaddr(sender)[1]:
        raise SettingsError(f"alarms.from: not an address: {sender!r}")
    if not isinstance(transport, str) or not isinstance(digest_dir, str):
        raise SettingsError("alarms.transport and alarms.digest_dir: expected strings")
    return AlarmRoutes(sender, transport, Path(digest_dir), tuple(out))


def load_routes(path: str | Path | None) -> AlarmRoutes:
    from mailops.ses.pipeline_settings import DEFAULT_PATH
    from mailops.ses.pipeline_settings import load as load_settings

    file = Path(path) if path else DEFAULT_PATH
    settings = load_settings(file)
    raw = tomllib.loads(file.read_text(encoding="utf-8"))
    routes = parse_routes(raw, settings.sender, settings.transport)
    if routes.transport not in settings.transports:
        from mailops.ses.pipeline_settings import SettingsError

        raise SettingsError(f"{file}: alarms.transport: no transport named {routes.transport!r}")
    return routes


def _mail(sender: str, to: tuple[str, ...], subject: str, text: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    msg.set_content(text)
    return msg


def _send(pipe: Any, routes: AlarmRoutes, to: tuple[str, ...], msg: EmailMessage) -> None:
    sender = pipe.sender_for(pipe.settings.transports[routes.transport])
    raw = msg.as_bytes()
    for address in to:
        sender.send(routes.sender, address, raw)


def deliver(body: str, routes: AlarmRoutes, pipe: Any, *, log: Any = _log) -> bool:
    """Mail (or file into its digest) one notification; False when it must stay queued."""
    try:
        alarm = parse_alarm(body)
    except NotAnAlarm as exc:
        log(TOOL, f"left for the dead-letter queue: {exc}", error=True)
        return False
    route = routes.find(alarm.topic or "*")
    if route is None:
        log(TOOL, f"no route for topic {alarm.topic!r} (alarm {alarm.name})", error=True)
        return False
    key = hashlib.sha256(f"alarm\0{alarm.sns_message_id or body}".encode()).hexdigest()
    now = int(time.time())
    claim = pipe.ledger.claim(key, {"template": "alarm", "tenant": ""}, now, 300)
    if claim == "sent":
        return True
    if claim == "busy":
        return False
    try:
        if route.digest:
            folder = routes.digest_dir / _safe(route.topic)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}.json").write_text(json.dumps(alarm.__dict__), encoding="utf-8")
        else:
            subject, text = format_alarm(alarm)
            _send(pipe, routes, route.to, _mail(routes.sender, route.to, subject, text))
    except (SendError, OSError) as exc:
        pipe.ledger.release(key)
        log(TOOL, f"alarm {alarm.name}: {exc}", error=True)
        return False
    pipe.ledger.finish(key, "", routes.transport, now)
    log(TOOL, f"alarm {alarm.name} ({alarm.new_state}) {'filed' if route.digest else 'mailed'}")
    return True


def _safe(topic: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in topic) or "any"


def digest_text(alarms: list[Alarm]) -> str:
    alarms = sorted(alarms, key=lambda a: a.changed_at)
    lines = [f"{len(alarms)} alarm state change(s):", ""]
    for alarm in alarms:
        lines += [*head(alarm), ""]
    return "\n".join(lines).rstrip() + "\n"


def flush_digest(routes: AlarmRoutes, pipe: Any) -> int:
    """One mail per digest route with what was filed; the files go once mailed."""
    sent = 0
    for route in routes.routes:
        if not route.digest:
            continue
        folder = routes.digest_dir / _safe(route.topic)
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            continue
        alarms = [Alarm(**json.loads(f.read_text(encoding="utf-8"))) for f in files]
        subject = f"Alarm digest ({route.topic}): {len(alarms)} state change(s)"
        _send(pipe, routes, route.to, _mail(routes.sender, route.to, subject, digest_text(alarms)))
        for f in files:
            f.unlink()
        sent += 1
    return sent


def cmd_alarm_mail(args: argparse.Namespace) -> int:
    from mailops.ses.pipeline import Pipeline, open_ledger
    from mailops.ses.pipeline_settings import SettingsError
    from mailops.ses.pipeline_settings import load as load_settings

    if args.render:
        body = sys.stdin.read() if args.render == "-" else Path(args.render).read_text("utf-8")
        try:
            subject, text = format_alarm(parse_alarm(body))
        except NotAnAlarm as exc:
            _log(TOOL, str(exc), error=True)
            return exitcodes.DATAERR
        sys.stdout.write(f"Subject: {subject}\n\n{text}")
        return exitcodes.OK
    try:
        settings = load_settings(args.settings)
        routes = load_routes(args.settings)
    except SettingsError as exc:
        _log(TOOL, str(exc), error=True)
        return exitcodes.CONFIG
    ledger, closer = open_ledger(settings, args)
    pipe = Pipeline(settings, ledger)
    try:
        if args.flush_digest:
            flush_digest(routes, pipe)
            return exitcodes.OK
        if not args.queue_url:
            _log(TOOL, "--queue-url, --render or --flush-digest is required", error=True)
            return exitcodes.USAGE
        import boto3

        sqs = boto3.client("sqs", region_name=args.region, endpoint_url=args.endpoint_url)
        while True:
            answer = sqs.receive_message(
                QueueUrl=args.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1 if args.once else 20,
            )
            batch = answer.get("Messages") or []
            for message in batch:
                if deliver(str(message.get("Body", "")), routes, pipe):
                    sqs.delete_message(
                        QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )
            if args.once and not batch:
                return exitcodes.OK
    finally:
        if closer is not None:
            closer.close()


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "alarm-mail",
        help="CloudWatch alarm notifications as readable mails, routed by topic",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--render", metavar="FILE", help="print the mail for one notification")
    parser.add_argument("--queue-url", metavar="URL", help="the SQS queue of notifications")
    parser.add_argument("--flush-digest", action="store_true", help="mail the digests")
    parser.add_argument("--settings", metavar="FILE", help="the pipeline's settings file")
    parser.add_argument("--endpoint-url", metavar="URL", help="SQS endpoint")
    parser.add_argument("--region", metavar="R", help="AWS region")
    parser.add_argument("--once", action="store_true", help="read what is queued, then exit")
    parser.set_defaults(func=cmd_alarm_mail)
