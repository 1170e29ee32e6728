"""``mailops ses events``: SES's notifications from an SQS queue into the store.

Usage::

    mailops ses events --queue-url URL [--endpoint-url URL] [--region R] [--once]
                       [--metrics-file FILE] [--max-messages N] [--wait-seconds S]

SES publishes what happens to a message (identity notifications: ``notificationType``
Bounce, Complaint, Delivery; configuration-set events: ``eventType`` Send, Reject,
Bounce, Complaint, Delivery, DeliveryDelay, Open, Click, ...) to an SNS topic; an SQS
queue subscribed to the topic keeps them until this command reads them.  Bodies may be
SNS-wrapped (``{"Type": "Notification", "Message": "<json>"}``) or raw (a subscription
with raw message delivery).  AWS credentials come from boto3's standard chain
(environment, instance profile); ``--endpoint-url`` points it at another endpoint
(moto's server in the tests and the lab).

What is stored, in the same store and vocabulary as the cluster's own reports:

- a permanent bounce and a complaint suppress the recipient at once (global scope, or
  ``[store] tenant``), exactly as a DSN or an ARF report to bounces@ would;
- a transient bounce is a soft bounce (it counts toward ``soft_threshold``), a
  DeliveryDelay is a ``delayed`` bounce row (kept, never suppressing);
- a Delivery clears the recipient's soft history, as a success DSN does;
- every event (those above and Send, Reject, Open, ...) is one ``ses_events`` row per
  recipient, for the figures; the same (type, SES message id, recipient) is stored once.

Delivery guarantee: a message is deleted from SQS only after the transaction holding
its rows has committed.  A body that cannot be parsed is not deleted: it becomes
visible again after the queue's visibility timeout and, after the redrive policy's
``maxReceiveCount`` receives, SQS moves it to the dead-letter queue.  It is counted and
logged with its reason and its receive count.  When the store cannot be reached nothing
is deleted and the command exits 75 (EX_TEMPFAIL: the next run retries).

``--once`` reads until the queue has nothing new to give (or ``--max-messages``), then
exits; without it the command long-polls for ever, one receive per pass (run it under a
supervisor; it exits 75 at the first failure).

Metrics (``--metrics-file``, Prometheus text for the monitor's /metrics, written after
every pass): events stored by type (from the store), bodies left unparsed, the age of
the oldest message the pass received, the queue's and its dead-letter queue's visible
messages, and the time of the last successful pass.

Exit codes: 0; 75 when the store, SQS or the credentials fail (retrying can help); 78
for a bad settings file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mailops import config, exitcodes
from mailops.bounceparse import _text
from mailops.bounceparse.model import Report
from mailops.bounceparse.ses import draft_of
from mailops.pipeio import log as _log
from mailops.queues.render import family, write_atomic
from mailops.store import RawInfo, Store, StoreError, open_from_config, store_settings
from mailops.store.text import clean, normalize_address, valid_address
from mailops.tenants.model import Tenants, load_tenants

TOOL = "ses events"

# Event type -> the key of its own object in the notification.
TYPES: dict[str, str] = {
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
    "DeliveryDelay": "deliveryDelay",
    "Send": "send",
    "Reject": "reject",
    "Open": "open",
    "Click": "click",
    "Rendering Failure": "failure",
    "Subscription": "subscription",
}
# The types whose object names the recipients it is about (and must be there).
WITH_RECIPIENTS = ("Bounce", "Complaint", "Delivery", "DeliveryDelay")
# Sent by SES when a topic is first set for an identity: nothing to store.
INFORMATIONAL = frozenset(["AmazonSnsSubscriptionSucceeded"])
MAX_BODY = 256 * 1024  # SQS's own limit on a message


class Unparseable(ValueError):
    """A body that is not an SES notification; the message says why."""


@dataclass(frozen=True)
class Notice:
    """One SES event, ready for the store."""

    event_type: str
    ses_message_id: str
    source: str
    addresses: tuple[str, ...]
    report: Report | None  # a bounce or a complaint (or a delivery), classified
    detail: str
    occurred_at: int | None
    sns_message_id: str = ""


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _epoch(value: object) -> int | None:
    """SES's ISO 8601 timestamps ("2026-12-07T20:41:01.184Z"); None when not one."""
    text = _str(value).strip()
    if not text:
        return None
    text = re.sub(r"\s*([+-]\d\d):?(\d\d)$", r"\1:\2", text.replace("Z", "+00:00"))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise Unparseable(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise Unparseable(f"{what} is not JSON ({clean(str(exc), 80)})") from None


def _detail(kind: str, obj: dict[str, Any]) -> str:
    inner = _dict(obj.get(TYPES.get(kind, "")))
    if kind == "Bounce":
        return f"{_str(inner.get('bounceType'))}/{_str(inner.get('bounceSubType'))}"
    if kind == "Complaint":
        return _str(inner.get("complaintFeedbackType"))
    if kind == "DeliveryDelay":
        return _str(inner.get("delayType"))
    if kind == "Reject":
        return _str(inner.get("reason"))
    if kind == "Delivery":
        return _str(inner.get("smtpResponse"))
    return ""


def parse_body(body: str) -> Notice | None:
    """The SES event in one SQS body; None for an informational notice (nothing to
    store).  Raises :class:`Unparseable` with the reason for anything else."""
    if len(body) > MAX_BODY:
        raise Unparseable(f"body of {len(body)} characters, over SQS's {MAX_BODY}")
    obj = _json(body, "body")
    if not isinstance(obj, dict):
        raise Unparseable("body is not a JSON object")
    sns_id = ""
    if obj.get("Type") == "Notification" and "Message" in obj:  # the SNS envelope
        sns_id = _str(obj.get("MessageId"))
        inner = obj["Message"]
        obj = _json(inner, "SNS Message") if isinstance(inner, str) else inner
        if not isinstance(obj, dict):
            raise Unparseable("SNS Message is not a JSON object")
    elif "Type" in obj and "TopicArn" in obj:
        raise Unparseable(f"SNS {clean(obj.get('Type'), 40)!r} message, not a notification")
    kind = _str(obj.get("notificationType")) or _str(obj.get("eventType"))
    if kind in INFORMATIONAL:
        return None
    if not kind:
        raise Unparseable("neither notificationType nor eventType")
    if kind not in TYPES:
        raise Unparseable(f"unknown SES event type {clean(kind, 40)!r}")
    mail = obj.get("mail")
    if not isinstance(mail, dict):
        raise Unparseable(f"{kind} without its mail object")
    message_id = clean(mail.get("messageId"), 200)
    if not message_id:
        raise Unparseable(f"{kind} without mail.messageId")
    own = obj.get(TYPES[kind])
    if kind in WITH_RECIPIENTS and not isinstance(own, dict):
        raise Unparseable(f"{kind} without its {TYPES[kind]!r} object")
    source = _text.first_address(_str(mail.get("source")))
    stamp = _epoch(_dict(own).get("timestamp")) or _epoch(mail.get("timestamp"))
    report: Report | None = None
    if kind in WITH_RECIPIENTS:
        draft = draft_of(obj)
        addresses = tuple(r.address for r in draft.recipients)
        if not addresses:
            raise Unparseable(f"{kind} names no recipient")
        headers = _dict(mail.get("commonHeaders"))
        authors = headers.get("from")
        author = _str(authors[0]) if isinstance(authors, list) and authors else ""
        report = Report(
            kind=draft.kind,
            detector="ses-sqs",
            recipients=tuple(draft.recipients),
            original_message_id=clean(draft.original_message_id),
            x_message_id=clean(draft.x_message_id),
            original_sender=source,
            original_from=_text.first_address(author),
            # The dedup key of the bounce/complaint rows: SES's id of the event.
            message_id=f"ses:{kind}:{message_id}",
            feedback_type=draft.feedback_type,
            reporting_mta=clean(_dict(own).get("reportingMTA")),
        )
    else:
        found = mail.get("destination")
        items = found if isinstance(found, list) else []
        addresses = tuple(
            a for a in (normalize_address(_str(x)) for x in items[:1000]) if valid_address(a)
        )
    return Notice(
        event_type=kind,
        ses_message_id=message_id,
        source=source,
        addresses=addresses,
        report=report,
        detail=clean(_detail(kind, obj), 300),
        occurred_at=stamp,
        sns_message_id=clean(sns_id, 200),
    )


# --------------------------------------------------------------------------- the poller


@dataclass
class Pass:
    """What one run saw and did."""

    received: int = 0
    deleted: int = 0
    stored: int = 0  # new ses_events rows
    duplicates: int = 0
    informational: int = 0
    unparseable: int = 0  # bodies left in the queue (the redrive policy moves them)
    by_type: Counter[str] = field(default_factory=Counter)  # new events by type
    suppressed: list[str] = field(default_factory=list)
    oldest_age: float = 0.0  # seconds: the oldest message received
    store_failed: bool = False
    queue_visible: int | None = None
    dlq_visible: int | None = None


def tenant_of(notice: Notice, tenants: Tenants, scope: str) -> str:
    """The tenant whose mail the event is about: its sender's, else the store's scope."""
    for address in (notice.source, notice.report.original_from if notice.report else ""):
        tenant = tenants.for_address(address) if address else None
        if tenant is not None:
            return tenant.name
    return scope


def _region_of(queue_url: str) -> str | None:
    """sqs.REGION.amazonaws.com (or a VPC endpoint name holding it) -> REGION."""
    m = re.search(r"(?:^|[./])sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d{1,2})\.", queue_url)
    return m.group(1) if m else None


def sqs_client(queue_url: str, endpoint_url: str | None, region: str | None) -> Any:
    import boto3  # the only user of boto3: imported when events run

    return boto3.client(
        "sqs", region_name=region or _region_of(queue_url), endpoint_url=endpoint_url
    )


def _messages(
    sqs: Any, queue_url: str, *, once: bool, wait: int, limit: int, seen_bad: set[str]
) -> Iterator[dict[str, Any]]:
    """Messages from the queue, batch by batch.  With ``once``: until a receive brings
    nothing new (an empty answer, or only bodies already found unparseable in this
    pass), or ``limit`` messages.  Without: one receive (one long poll), so that the
    loop around it writes its metrics after every batch."""
    got = 0
    while got < limit:
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max(1, min(10, limit - got)),
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        batch = answer.get("Messages") or []
        if once and all(m.get("MessageId") in seen_bad for m in batch):
            return
        for message in batch:
            got += 1
            yield message
        if not once:
            return


def run_pass(
    sqs: Any,
    queue_url: str,
    store: Store,
    tenants: Tenants,
    *,
    scope: str = "",
    once: bool = True,
    wait: int = 1,
    limit: int = 1000,
    log: Callable[..., None] = _log,
    clock: Callable[[], float] = time.time,
) -> Pass:
    """Read, store, delete.  Stops at the first store failure (``store_failed``): what
    was not committed stays in the queue."""
    out = Pass()
    seen_bad: set[str] = set()
    for message in _messages(sqs, queue_url, once=once, wait=wait, limit=limit, seen_bad=seen_bad):
        out.received += 1
        attrs = _dict(message.get("Attributes"))
        sent = attrs.get("SentTimestamp")
        if isinstance(sent, str) and sent.isdigit():
            out.oldest_age = max(out.oldest_age, clock() - int(sent) / 1000)
        body = _str(message.get("Body"))
        ident = clean(message.get("MessageId"), 100)
        try:
            notice = parse_body(body)
        except Unparseable as exc:
            if ident not in seen_bad:
                seen_bad.add(ident)
                out.unparseable += 1
                log(
                    TOOL,
                    f"left for the dead-letter queue: message {ident} (received "
                    f"{clean(attrs.get('ApproximateReceiveCount'), 10) or '?'} times): {exc}",
                    error=True,
                )
            continue
        if notice is not None:
            try:
                outcome = store.record_ses_event(
                    notice.event_type,
                    notice.ses_message_id,
                    notice.addresses,
                    report=notice.report,
                    raw=RawInfo(sha256=_sha256(body), size=len(body.encode("utf-8"))),
                    source=notice.source,
                    sns_message_id=notice.sns_message_id,
                    detail=notice.detail,
                    occurred_at=notice.occurred_at,
                    tenant=tenant_of(notice, tenants, scope),
                    scope=scope,
                    now=clock(),
                )
            except StoreError as exc:
                log(
                    TOOL, f"store unavailable, message {ident} kept in the queue: {exc}", error=True
                )
                out.store_failed = True
                return out
            out.stored += outcome.stored
            out.duplicates += outcome.duplicates
            out.by_type[notice.event_type] += outcome.stored
            out.suppressed.extend(outcome.suppressed)
        else:
            out.informational += 1
        # Committed (or nothing to commit): now, and only now, the message may go.
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        out.deleted += 1
    return out


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_DEPTH = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")


def queue_depths(sqs: Any, queue_url: str) -> tuple[int | None, int | None]:
    """(messages in the queue, in its dead-letter queue), visible or in flight; None
    where unknown."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=[*_DEPTH, "RedrivePolicy"]
    ).get("Attributes", {})
    visible = sum(int(attrs.get(name, 0)) for name in _DEPTH)
    policy = attrs.get("RedrivePolicy")
    if not policy:
        return visible, None
    arn = str(json.loads(policy).get("deadLetterTargetArn", ""))
    parts = arn.split(":")
    if len(parts) < 6:
        return visible, None
    dlq_url = sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=list(_DEPTH))
    return visible, sum(int(dlq.get("Attributes", {}).get(name, 0)) for name in _DEPTH)


def metrics(done: Pass, counts: dict[str, int] | None, *, ok: bool, now: float) -> str:
    """Prometheus text for the monitor's /metrics (starts with '# HELP ', as the
    collector's --prometheus-include wants)."""
    depths = [("main", done.queue_visible), ("dead-letter", done.dlq_visible)]
    lines = [
        *family(
            "mailops_ses_events_total",
            "SES events stored from SQS, by type (from the store).",
            [({"type": k}, v) for k, v in sorted((counts or {}).items())],
            kind="counter",
        ),
        *family(
            "mailops_ses_unparseable_messages",
            "Bodies the last pass could not parse and left for the dead-letter queue.",
            [({}, done.unparseable)],
        ),
        *family(
            "mailops_ses_oldest_message_age_seconds",
            "Age of the oldest message the last pass received (0: none).",
            [({}, round(done.oldest_age, 1))],
        ),
        *family(
            "mailops_ses_queue_messages",
            "Messages (visible or in flight) after the last pass, in the queue and its DLQ.",
            [({"queue": q}, v) for q, v in depths if v is not None],
        ),
        *family(
            "mailops_ses_last_pass_success",
            "1 when the last pass reached SQS and the store, 0 when it did not.",
            [({}, 1 if ok else 0)],
        ),
        *family(
            "mailops_ses_last_pass_timestamp_seconds", "When the last pass ended.", [({}, int(now))]
        ),
    ]
    return "\n".join(lines) + "\n"


def _write_metrics(path: str, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        _log(TOOL, f"could not write metrics to {path}: {exc}", error=True)


def events(args: argparse.Namespace) -> int:
    data = config.load(args.config)
    scope = str(store_settings(data)["tenant"])
    tenants = load_tenants(data)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        sqs = sqs_client(args.queue_url, args.endpoint_url, args.region)
    except BotoCoreError as exc:  # no region, say
        _log(TOOL, f"SQS: {clean(str(exc), 300)}", error=True)
        return exitcodes.TEMPFAIL
    wait = args.wait_seconds if args.wait_seconds is not None else (1 if args.once else 20)
    status = exitcodes.OK
    while True:
        done = Pass()
        counts: dict[str, int] | None = None
        ok = False
        try:
            with open_from_config(data) as store:
                done = run_pass(
                    sqs,
                    args.queue_url,
                    store,
                    tenants,
                    scope=scope,
                    once=args.once,
                    wait=wait,
                    limit=args.max_messages,
                )
                if not done.store_failed:
                    counts = store.ses_event_counts()
            done.queue_visible, done.dlq_visible = queue_depths(sqs, args.queue_url)
            ok = not done.store_failed
        except StoreError as exc:
            _log(TOOL, f"store unavailable, nothing deleted: {exc}", error=True)
        except (BotoCoreError, ClientError) as exc:
            _log(TOOL, f"SQS: {clean(str(exc), 300)}", error=True)
        summary = (
            f"{done.received} received, {done.stored} new events"
            f" ({', '.join(f'{k} {v}' for k, v in sorted(done.by_type.items()) if v) or 'none'}),"
            f" {done.duplicates} already stored, {done.deleted} deleted,"
            f" {done.unparseable} unparseable left in the queue"
        )
        if done.suppressed:
            summary += f"; suppressed {', '.join(done.suppressed[:5])}"
            if len(done.suppressed) > 5:
                summary += f" and {len(done.suppressed) - 5} more"
        if done.received or not ok:  # an empty pass says nothing: cron mails any output
            _log(TOOL, summary, error=not ok)
        if args.metrics_file:
            _write_metrics(args.metrics_file, metrics(done, counts, ok=ok, now=time.time()))
        status = exitcodes.OK if ok else exitcodes.TEMPFAIL
        if args.once or not ok:
            return status


def cmd_events(args: argparse.Namespace) -> int:
    try:
        return events(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback, and the next run retries
        if isinstance(exc, config.ConfigError):
            raise
        _log(TOOL, f"unexpected {type(exc).__name__}: {clean(str(exc), 300)}", error=True)
        return exitcodes.TEMPFAIL


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "events",
        help="read SES bounce/complaint/delivery notices from SQS into the store",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--queue-url", required=True, metavar="URL", help="the SQS queue")
    parser.add_argument(
        "--endpoint-url", metavar="URL", help="SQS endpoint (default: AWS's, from the region)"
    )
    parser.add_argument("--region", metavar="R", help="AWS region (default: boto3's chain)")
    parser.add_argument(
        "--once", action="store_true", help="read what is queued now, then exit (cron)"
    )
    parser.add_argument(
        "--max-messages",
        type=int,
        default=1000,
        metavar="N",
        help="stop a pass after N messages (default 1000)",
    )
    parser.add_argument(
        "--wait-seconds",
        type=int,
        choices=range(0, 21),
        metavar="S",
        help="long-poll wait per receive, 0-20 (default 1 with --once, else 20)",
    )
    parser.add_argument(
        "--metrics-file", metavar="FILE", help="write Prometheus text here after each pass"
    )
    parser.set_defaults(func=cmd_events)
