"""``mailops ses inbound``: the SES inbound bridge, from S3 through SQS to the MX.

Usage::

    mailops ses inbound --queue-url URL --smtp-host HOST[:PORT] [--endpoint-url URL]
                        [--region R] [--once] [--dlq-url URL] [--delete-object]
                        [--metrics-file FILE] [--alarm-state FILE --alert-to ADDR]

SES receives mail for a domain, its receipt rule's S3 action stores each message in a
bucket and publishes a notification (``notificationType`` "Received", ``receipt.action``
of type "S3" naming ``bucketName`` and ``objectKey``) to an SNS topic; an SQS queue
subscribed to the topic keeps it.  For each notification this fetches the raw message
and relays it over SMTP, unchanged but for one header added on top
(:data:`VERDICT_HEADER`, SES's spam, virus, SPF, DKIM and DMARC verdicts), to the
recipients of ``receipt.recipients`` with ``mail.source`` as the envelope sender.

What happens to the SQS message (never a silent drop):

- a 250 for every recipient: deleted (the S3 object is left to the bucket's lifecycle,
  or deleted with ``--delete-object``);
- a connection failure, a timeout, a 4xx, S3 or SQS failing: kept, so SQS offers it
  again after the queue's visibility timeout, and after the redrive policy's
  ``maxReceiveCount`` it is in the dead-letter queue.  When some recipients were taken
  and others got a 4xx, the message goes back to the queue for the others only (a new
  SQS message, delayed), so nobody gets it twice;
- a 5xx (for a recipient, the sender or the data), a virus verdict, a body that is not
  an SES notification or an object that is gone: moved to the dead-letter queue at once
  (copied there with the reason and the server's reply as message attributes, then
  deleted), logged with the reply and counted.

The dead-letter queue is ``--dlq-url``, else the one the queue's redrive policy names.

The same :func:`handle` serves the long-poll loop here and the Lambda handler
(``mailops.ses.lambda_inbound.handler``).  See docs/ses_inbound.md.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailops.pipeio import log as _log
from mailops.store.text import clean

TOOL = "ses inbound"

# The one header the bridge adds: SES's verdicts, for the MX to act on.
VERDICT_HEADER = "X-Mailops-SES-Verdicts"
VERDICTS = (
    ("spam", "spamVerdict"),
    ("virus", "virusVerdict"),
    ("spf", "spfVerdict"),
    ("dkim", "dkimVerdict"),
    ("dmarc", "dmarcVerdict"),
)
MAX_BODY = 256 * 1024  # SQS's own limit on a message
MAX_RECIPIENTS = 100  # an SES receipt names at most 100
# Outcomes of one SQS message (metric labels).
RELAYED, RETRY, REFUSED, VIRUS, UNPARSEABLE = "relayed", "retry", "refused", "virus", "unparseable"
OUTCOMES = (RELAYED, RETRY, REFUSED, VIRUS, UNPARSEABLE)
# How many times the bridge re-queues the rest of a partly delivered message itself.
REQUEUE_LIMIT = 5


class Unparseable(ValueError):
    """A body that is not an SES "Received" notification with an S3 action."""


@dataclass(frozen=True)
class Received:
    """One message SES received and stored in S3."""

    bucket: str
    key: str
    sender: str  # the envelope sender, "" for a null sender
    recipients: tuple[str, ...]
    ses_message_id: str
    verdicts: tuple[tuple[str, str], ...]  # (name, status) in VERDICTS' order
    notification: dict[str, Any] = field(compare=False, repr=False)
    requeued: int = 0

    @property
    def virus(self) -> bool:
        return dict(self.verdicts).get("virus") == "FAIL"

    def header(self) -> bytes:
        """The verdict header line, CRLF-terminated."""
        text = "; ".join(f"{name}={status}" for name, status in self.verdicts)
        return f"{VERDICT_HEADER}: {text}\r\n".encode("ascii")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise Unparseable(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise Unparseable(f"{what} is not JSON ({clean(str(exc), 80)})") from None


_ADDRESS = re.compile(r"^[^\s<>@]+@[^\s<>@]+$")
_STATUS = re.compile(r"^[A-Z_]{1,40}$")


def parse_body(body: str) -> Received:
    """The notification in one SQS body (SNS-wrapped or raw)."""
    if len(body) > MAX_BODY:
        raise Unparseable(f"body of {len(body)} characters, over SQS's {MAX_BODY}")
    obj = _json(body, "body")
    if not isinstance(obj, dict):
        raise Unparseable("body is not a JSON object")
    if obj.get("Type") == "Notification" and "Message" in obj:  # the SNS envelope
        inner = obj["Message"]
        obj = _json(inner, "SNS Message") if isinstance(inner, str) else inner
        if not isinstance(obj, dict):
            raise Unparseable("SNS Message is not a JSON object")
    kind = _str(obj.get("notificationType"))
    if kind != "Received":
        raise Unparseable(f"notificationType {clean(kind, 40)!r}, not 'Received'")
    receipt = _dict(obj.get("receipt"))
    action = _dict(receipt.get("action"))
    if action.get("type") != "S3":
        raise Unparseable(f"receipt action {clean(_str(action.get('type')), 40)!r}, not 'S3'")
    bucket, key = _str(action.get("bucketName")), _str(action.get("objectKey"))
    if not bucket or not key:
        raise Unparseable("S3 action without bucketName or objectKey")
    found = receipt.get("recipients")
    listed = found if isinstance(found, list) else []
    recipients = tuple(dict.fromkeys(_str(r).strip() for r in listed[: MAX_RECIPIENTS + 1]))
    if not recipients or len(recipients) > MAX_RECIPIENTS:
        raise Unparseable(f"{len(recipients)} receipt recipients")
    bad = [r for r in recipients if not _ADDRESS.match(r)]
    if bad:
        raise Unparseable(f"receipt recipient {clean(bad[0], 80)!r} is not an address")
    mail = _dict(obj.get("mail"))
    sender = _str(mail.get("source")).strip()
    if sender in ("<>", "MAILER-DAEMON"):
        sender = ""
    if sender and not _ADDRESS.match(sender):
        raise Unparseable(f"mail.source {clean(sender, 80)!r} is not an address")
    verdicts = []
    for name, field_name in VERDICTS:
        status = _str(_dict(receipt.get(field_name)).get("status")).upper()
        verdicts.append((name, status if _STATUS.match(status) else "NONE"))
    requeued = obj.get("mailopsRequeued", 0)
    return Received(
        bucket=bucket,
        key=key,
        sender=sender,
        recipients=recipients,
        ses_message_id=clean(mail.get("messageId"), 200),
        verdicts=tuple(verdicts),
        notification=obj,
        requeued=requeued if isinstance(requeued, int) and requeued >= 0 else 0,
    )


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class Target:
    """Where the bridge relays: the MX (or the Workspace relay)."""

    host: str
    port: int = 25
    timeout: float = 60.0
    helo: str = ""
    starttls: bool = True  # when offered (opportunistic, as Postfix's "may")


def parse_target(text: str, timeout: float = 60.0) -> Target:
    """HOST, HOST:PORT or [V6]:PORT."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"not HOST[:PORT]: {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or 25)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {text!r}")
    return Target(host=host, port=port, timeout=timeout)


@dataclass
class Delivery:
    """What the MX said to one relay attempt."""

    delivered: list[str] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)  # (recipient, reply)
    refused: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""  # a failure before any recipient was settled (connection, 4xx)
    permanent: bool = False  # error is a 5xx for the whole message

    def reply(self) -> str:
        parts = [f"{r}: {t}" for r, t in self.refused] or [self.error]
        return clean("; ".join(parts), 900)


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return clean(f"{code} {' '.join(text.split())}", 400)


def relay(raw: bytes, msg: Received, target: Target, recipients: Sequence[str]) -> Delivery:
    """One SMTP transaction: the verdict header on top of ``raw``, to ``recipients``.
    smtplib dot-stuffs lines that start with a dot and ends every line with CRLF."""
    out = Delivery()
    try:
        # Connected by the constructor, which keeps the host name STARTTLS needs (a
        # banner other than 220 raises SMTPConnectError).
        client = smtplib.SMTP(target.host, target.port, timeout=target.timeout)
        try:
            client.ehlo(target.helo or socket.getfqdn())
            if target.starttls and client.has_extn("starttls"):
                # Opportunistic, as the MX's own peers: encrypted, not authenticated.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                client.starttls(context=context)
                client.ehlo(target.helo or socket.getfqdn())
            code, text = client.mail(msg.sender)
            if code != 250:
                out.error, out.permanent = f"MAIL FROM: {_reply(code, text)}", code >= 500
                return out
            taken: list[str] = []
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code in (250, 251):
                    taken.append(rcpt)
                elif code >= 500:
                    out.refused.append((rcpt, _reply(code, text)))
                else:
                    out.deferred.append((rcpt, _reply(code, text)))
            if not taken:
                client.rset()
                return out
            said: bytes | str
            try:
                code, said = client.data(msg.header() + raw)
            except smtplib.SMTPDataError as exc:
                code, said = exc.smtp_code, exc.smtp_error
            if code == 250:
                out.delivered = taken
            elif code >= 500:
                out.refused += [(r, f"DATA: {_reply(code, said)}") for r in taken]
            else:
                out.deferred += [(r, f"DATA: {_reply(code, said)}") for r in taken]
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    except smtplib.SMTPResponseException as exc:
        out.error = _reply(exc.smtp_code, exc.smtp_error)
        out.permanent = exc.smtp_code >= 500 and not out.deferred and not out.refused
    except (smtplib.SMTPException, OSError, ValueError) as exc:  # ssl: OSError, ValueError
        out.error = clean(f"{type(exc).__name__}: {exc}", 400)
    if out.error and not out.permanent:
        # Whatever was not settled before the failure is to be tried again.
        settled = {r for r, _ in out.refused} | set(out.delivered)
        out.deferred = [(r, out.error) for r in recipients if r not in settled]
    return out


# --------------------------------------------------------------------------- handling


@dataclass(frozen=True)
class Settings:
    """What the poller and the Lambda handler both need."""

    target: Target
    dlq_url: str = ""  # "" : the queue's redrive policy's
    delete_object: bool = False


@dataclass
class Outcome:
    """What became of one SQS message."""

    kind: str  # one of OUTCOMES
    detail: str = ""
    delete: bool = False  # remove it from the queue (relayed, moved or re-queued)
    to_dlq: bool = False  # copy it to the dead-letter queue first
    requeue: str = ""  # a body to send to the queue again (the rest of its recipients)
    delay: int = 0


def fetch(s3: Any, msg: Received) -> bytes:
    answer = s3.get_object(Bucket=msg.bucket, Key=msg.key)
    return bytes(answer["Body"].read())


def _is_missing(exc: Exception) -> bool:
    err = _dict(getattr(exc, "response", None)).get("Error", {})
    return _str(_dict(err).get("Code")) in ("NoSuchKey", "NoSuchBucket", "404")


def handle(
    body: str,
    s3: Any,
    settings: Settings,
    *,
    retry_delay: int = 60,
    log: Callable[..., None] = _log,
) -> Outcome:
    """Decide and do what one SQS body asks: fetch, relay, say what to do with it."""
    try:
        msg = parse_body(body)
    except Unparseable as exc:
        return Outcome(UNPARSEABLE, str(exc), delete=True, to_dlq=True)
    what = f"SES message {msg.ses_message_id or '?'} (s3://{msg.bucket}/{msg.key})"
    if msg.virus:
        return Outcome(VIRUS, f"{what}: SES's virus verdict FAIL, not relayed", True, True)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        raw = fetch(s3, msg)
    except ClientError as exc:
        if _is_missing(exc):
            return Outcome(REFUSED, f"{what}: object gone ({clean(str(exc), 200)})", True, True)
        return Outcome(RETRY, f"{what}: S3: {clean(str(exc), 300)}")
    except BotoCoreError as exc:
        return Outcome(RETRY, f"{what}: S3: {clean(str(exc), 300)}")
    done = relay(raw, msg, settings.target, msg.recipients)
    if done.delivered:
        log(TOOL, f"{what}: relayed to {', '.join(done.delivered)} via {settings.target.host}")
    if settings.delete_object and not done.deferred and not done.refused and not done.error:
        try:
            s3.delete_object(Bucket=msg.bucket, Key=msg.key)
        except (BotoCoreError, ClientError) as exc:  # the lifecycle removes it later
            log(TOOL, f"{what}: relayed, object left: {clean(str(exc), 200)}", error=True)
    if done.permanent or done.refused:
        # The refusal goes to the dead-letter queue with its reply; recipients that
        # were deferred at the same time are named there too, never dropped.
        detail = f"{what}: refused: {done.reply()}"
        if done.deferred:
            detail += f"; also deferred: {', '.join(r for r, _ in done.deferred)}"
        return Outcome(REFUSED, detail, delete=True, to_dlq=True)
    if done.deferred:
        reply = done.deferred[0][1]
        if done.delivered and msg.requeued < REQUEUE_LIMIT:
            rest = dict(msg.notification)
            receipt = dict(_dict(rest.get("receipt")))
            receipt["recipients"] = [r for r, _ in done.deferred]
            rest["receipt"] = receipt
            rest["mailopsRequeued"] = msg.requeued + 1
            return Outcome(
                RETRY,
                f"{what}: deferred for {', '.join(receipt['recipients'])}: {reply}",
                delete=True,
                requeue=json.dumps(rest),
                delay=max(0, min(900, retry_delay)),
            )
        return Outcome(RETRY, f"{what}: deferred: {reply}")
    return Outcome(RELAYED, what, delete=True)


# --------------------------------------------------------------------------- SQS


def _region_of(queue_url: str) -> str | None:
    m = re.search(r"(?:^|[./])sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d{1,2})\.", queue_url)
    return m.group(1) if m else None


def clients(queue_url: str, endpoint_url: str | None, region: str | None) -> tuple[Any, Any]:
    """(sqs, s3) boto3 clients."""
    import boto3

    session = boto3.session.Session(region_name=region or _region_of(queue_url))
    from botocore.config import Config

    # Path-style addressing: an endpoint such as moto's has no per-bucket host names.
    s3_config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
    return (
        session.client("sqs", endpoint_url=endpoint_url),
        session.client("s3", endpoint_url=endpoint_url, config=s3_config),
    )


def dead_letter_url(sqs: Any, queue_url: str) -> str:
    """The queue's redrive target's URL ("" without a redrive policy)."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = _dict(attrs.get("Attributes")).get("RedrivePolicy")
    if not policy:
        return ""
    arn = _str(json.loads(policy).get("deadLetterTargetArn"))
    parts = arn.split(":")
    if len(parts) < 6:
        return ""
    return str(sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])


def queue_of_arn(sqs: Any, arn: str) -> str:
    """arn:aws:sqs:REGION:ACCOUNT:NAME -> the queue's URL."""
    parts = arn.split(":")
    return str(sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])


def to_dead_letter(sqs: Any, dlq_url: str, body: str, outcome: Outcome, receives: str) -> None:
    """A copy of the message in the dead-letter queue, with why it is there."""
    sqs.send_message(
        QueueUrl=dlq_url,
        MessageBody=body,
        MessageAttributes={
            "mailops-outcome": {"DataType": "String", "StringValue": outcome.kind},
            "mailops-reason": {"DataType": "String", "StringValue": clean(outcome.detail, 900)},
            "mailops-receive-count": {"DataType": "Number", "StringValue": receives or "1"},
        },
    )


@dataclass
class Pass:
    """What one pass saw and did."""

    received: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: int = 0  # temporary failures: relay, S3 or SQS
    oldest_age: float = 0.0
    last_refusal: str = ""


def apply(
    sqs: Any,
    queue_url: str,
    dlq_url: str,
    message: dict[str, Any],
    outcome: Outcome,
    *,
    log: Callable[..., None] = _log,
) -> bool:
    """Carry out an outcome on the poller's SQS message; False when it stays queued."""
    attrs = _dict(message.get("Attributes"))
    receives = clean(attrs.get("ApproximateReceiveCount"), 10)
    if outcome.to_dlq:
        if not dlq_url:
            log(TOOL, f"no dead-letter queue: kept in the queue: {outcome.detail}", error=True)
            return False
        to_dead_letter(sqs, dlq_url, _str(message.get("Body")), outcome, receives)
        log(TOOL, f"moved to the dead-letter queue ({outcome.kind}): {outcome.detail}", error=True)
    elif outcome.requeue:
        sqs.send_message(
            QueueUrl=queue_url, MessageBody=outcome.requeue, DelaySeconds=outcome.delay
        )
        log(TOOL, f"re-queued the rest: {outcome.detail}", error=True)
    elif not outcome.delete:
        log(TOOL, f"kept for a retry (received {receives or '?'} times): {outcome.detail}",
            error=True)  # fmt: skip
        return False
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return True


def run_pass(
    sqs: Any,
    s3: Any,
    queue_url: str,
    settings: Settings,
    *,
    once: bool = True,
    wait: int = 1,
    limit: int = 1000,
    retry_delay: int = 60,
    log: Callable[..., None] = _log,
    clock: Callable[[], float] = time.time,
) -> Pass:
    """Receive, relay, settle.  With ``once``: until a receive brings nothing new."""
    from botocore.exceptions import BotoCoreError, ClientError

    out = Pass()
    dlq_url = settings.dlq_url or dead_letter_url(sqs, queue_url)
    seen: set[str] = set()
    while out.received < limit:
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max(1, min(10, limit - out.received)),
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        batch = [m for m in answer.get("Messages") or [] if m.get("MessageId") not in seen]
        if not batch:
            break
        for message in batch:
            seen.add(_str(message.get("MessageId")))
            out.received += 1
            sent = _dict(message.get("Attributes")).get("SentTimestamp")
            if isinstance(sent, str) and sent.isdigit():
                out.oldest_age = max(out.oldest_age, clock() - int(sent) / 1000)
            outcome = handle(
                _str(message.get("Body")), s3, settings, retry_delay=retry_delay, log=log
            )
            out.outcomes[outcome.kind] += 1
            if outcome.kind == RETRY:
                out.errors += 1
            elif outcome.kind in (REFUSED, UNPARSEABLE):
                out.last_refusal = outcome.detail
            try:
                apply(sqs, queue_url, dlq_url, message, outcome, log=log)
            except (BotoCoreError, ClientError) as exc:
                out.errors += 1
                log(TOOL, f"SQS: {clean(str(exc), 300)}; left in the queue", error=True)
        if not once:
            break
    return out


_DEPTH = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")


def depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(_DEPTH))
    return sum(int(_dict(attrs.get("Attributes")).get(n, 0)) for n in _DEPTH)
