"""``mailops ses pipeline``: application events → templated mail, sent once.

Usage::

    mailops ses pipeline --queue-url URL [--settings FILE] [--endpoint-url URL]
                         [--region R] [--once] [--wait-seconds S]
    mailops ses pipeline --render FILE [--settings FILE]     print the mail, send nothing

Applications publish an event to an SNS topic and never speak SMTP.  The event, the
SNS Message (or a raw SQS body), is a JSON object::

    {"template": "welcome", "to": "ann@example.net", "tenant": "alpha",
     "data": {"name": "Ann"}, "idempotency_key": "signup-4711"}

``template`` names a folder under the settings' ``templates`` with ``subject.txt``,
``body.txt`` and optionally ``body.html`` (Jinja2 in a sandbox; HTML escaped; a
variable the event does not carry is an error, not an empty string).  The variables
are ``data``'s keys, plus ``event`` (to, tenant, template, idempotency_key).  The
settings' routes pick the transport (SES's SendRawEmail, or the cluster's submission
with a SASL login) and the From by tenant and/or template.

Sent once: ``(tenant, idempotency_key)`` is claimed in the ledger before the send and
marked sent after it.  A replayed event (SNS or SQS delivering twice, an application
retrying) finds the key sent and sends nothing; it is deleted from the queue.

Failures: an event that can never be sent (not JSON, a missing field, an unknown
template, a missing variable, a 5xx, SES's MessageRejected) is logged and left in the
queue, so that the redrive policy moves it to the dead-letter queue (never dropped
silently, never retried in a loop beyond the redrive count); a transient failure (4xx,
no connection, the ledger unreachable) is left for the next receive.  The Lambda entry
point (``mailops.ses.lambda_pipeline.handler``) runs the same :func:`process`.

Exit codes: 0; 75 when SQS or the ledger failed (retrying can help); 78 bad settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any

from mailops import exitcodes
from mailops.pipeio import log as _log
from mailops.ses.pipeline_send import (
    Ledger,
    Permanent,
    Sender,
    SendError,
    make_sender,
)
from mailops.ses.pipeline_settings import Settings, SettingsError, Transport
from mailops.ses.pipeline_settings import load as load_settings
from mailops.store.text import clean, normalize_address, valid_address

TOOL = "ses pipeline"
FIELDS = ("template", "to", "tenant", "data", "idempotency_key")
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
MAX_BODY = 256 * 1024
RETRY_PAUSE = 10  # seconds the daemon waits after SQS or the ledger failed


class BadEvent(ValueError):
    """An event that can never be sent as it is; the message says why."""


@dataclass(frozen=True)
class Event:
    template: str
    to: str
    tenant: str
    data: dict[str, Any]
    idempotency_key: str

    @property
    def key(self) -> str:
        """The ledger's key: the idempotency key within its tenant."""
        return hashlib.sha256(f"{self.tenant}\0{self.idempotency_key}".encode()).hexdigest()


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadEvent(f"{what} is not JSON") from None


def parse_event(body: str | dict[str, Any]) -> Event:
    """The event in an SQS body or an SNS Message (SNS envelope unwrapped)."""
    if isinstance(body, str):
        if len(body) > MAX_BODY:
            raise BadEvent(f"body of {len(body)} characters, over {MAX_BODY}")
        body = _json(body, "body")
    obj: Any = body
    if isinstance(obj, dict) and obj.get("Type") == "Notification" and "Message" in obj:
        inner = obj["Message"]
        obj = _json(inner, "SNS Message") if isinstance(inner, str) else inner
    if not isinstance(obj, dict):
        raise BadEvent("the event is not a JSON object")
    missing = [f for f in FIELDS if f not in obj and f not in ("tenant", "data")]
    if missing:
        raise BadEvent(f"the event lacks {', '.join(missing)}")
    extra = sorted(set(obj) - set(FIELDS))
    if extra:
        raise BadEvent(f"unknown field {clean(extra[0], 40)!r}")
    template, to, tenant = obj["template"], obj["to"], obj.get("tenant", "")
    data, key = obj.get("data", {}), obj["idempotency_key"]
    if not isinstance(template, str) or not _TEMPLATE.match(template):
        raise BadEvent(f"template {clean(str(template), 70)!r} is not a template name")
    if not isinstance(to, str) or not valid_address(normalize_address(to)) or "," in to:
        raise BadEvent(f"to {clean(str(to), 100)!r} is not one address")
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise BadEvent(f"tenant {clean(str(tenant), 70)!r} is not a tenant name")
    if not isinstance(data, dict):
        raise BadEvent("data is not an object")
    if not isinstance(key, str) or not key.strip() or len(key) > 200:
        raise BadEvent("idempotency_key must be a non-empty string of at most 200 characters")
    return Event(template, normalize_address(to), tenant, data, key)


# --------------------------------------------------------------------------- templates


class Templates:
    """A folder of templates, rendered in Jinja2's sandbox."""

    PARTS = ("subject.txt", "body.txt", "body.html")

    def __init__(self, folder: Path) -> None:
        from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.folder = folder
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(str(folder)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            keep_trailing_newline=True,
        )

    def render(self, event: Event) -> tuple[str, str, str | None]:
        """(subject, text, html or None).  BadEvent for an unknown template or a
        variable the event does not carry."""
        from jinja2 import TemplateError, TemplateNotFound, UndefinedError

        folder = self.folder / event.template
        if not (folder / "subject.txt").is_file() or not (folder / "body.txt").is_file():
            raise BadEvent(f"no template {event.template!r} (subject.txt and body.txt)")
        context = dict(event.data)
        context["event"] = {
            "to": event.to,
            "tenant": event.tenant,
            "template": event.template,
            "idempotency_key": event.idempotency_key,
        }
        out: list[str | None] = []
        for part in self.PARTS:
            name = f"{event.template}/{part}"
            if part == "body.html" and not (folder / part).is_file():
                out.append(None)
                continue
            try:
                out.append(self.env.get_template(name).render(context))
            except UndefinedError as exc:
                raise BadEvent(f"template {name}: {exc.message}") from None
            except TemplateNotFound:
                raise BadEvent(f"no template {name}") from None
            except TemplateError as exc:
                raise BadEvent(f"template {name}: {type(exc).__name__}: {exc}") from None
        subject = " ".join(str(out[0]).split())
        if not subject:
            raise BadEvent(f"template {event.template}: the subject renders empty")
        return subject, str(out[1]), out[2]


def message_id(event: Event, sender: str) -> str:
    """The same Message-ID for every send of the same event: a duplicate that slipped
    through (a crash between the send and the ledger) is recognisable downstream."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<pipeline.{event.key[:40]}@{domain}>"


def build(event: Event, sender: str, rendered: tuple[str, str, str | None]) -> EmailMessage:
    subject, text, html = rendered
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = event.to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(event, sender)
    msg["X-Mailops-Template"] = event.template
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


# --------------------------------------------------------------------------- one event


@dataclass(frozen=True)
class Outcome:
    """What became of one event: sent, duplicate (sent before), busy (another worker
    holds its claim), bad (permanent), retry (transient)."""

    status: str
    detail: str = ""
    transport: str = ""

    @property
    def done(self) -> bool:
        """May the event leave the queue?"""
        return self.status in ("sent", "duplicate")


@dataclass
class Pipeline:
    """Settings, templates, a ledger and the transports (made on first use)."""

    settings: Settings
    ledger: Ledger
    make: Callable[[Transport], Sender] = make_sender
    clock: Callable[[], float] = time.time
    senders: dict[str, Sender] = field(default_factory=dict)
    _templates: Templates | None = None

    @property
    def templates(self) -> Templates:
        if self._templates is None:
            self._templates = Templates(self.settings.templates)
        return self._templates

    def sender_for(self, transport: Transport) -> Sender:
        if transport.name not in self.senders:
            self.senders[transport.name] = self.make(transport)
        return self.senders[transport.name]


def process(body: str | dict[str, Any], pipe: Pipeline) -> Outcome:
    """Parse, claim, render, send, record: one event."""
    try:
        event = parse_event(body)
    except BadEvent as exc:
        return Outcome("bad", str(exc))
    transport, sender = pipe.settings.route(event.tenant, event.template)
    try:
        rendered = pipe.templates.render(event)  # before the claim: a bad one claims nothing
        raw = build(event, sender, rendered).as_bytes()
    except BadEvent as exc:
        return Outcome("bad", str(exc), transport.name)
    now = int(pipe.clock())
    info = {"tenant": event.tenant, "template": event.template, "recipient": event.to}
    try:
        claim = pipe.ledger.claim(event.key, info, now, pipe.settings.lease_seconds)
    except Exception as exc:  # the ledger is down: nothing was sent, try later
        return Outcome("retry", f"ledger: {type(exc).__name__}: {clean(str(exc), 200)}")
    if claim == "sent":
        return Outcome("duplicate", f"{event.idempotency_key} was sent before", transport.name)
    if claim == "busy":
        return Outcome("busy", f"{event.idempotency_key} is being sent", transport.name)
    try:
        ident = pipe.sender_for(transport).send(sender, event.to, raw)
    except SendError as exc:
        pipe.ledger.release(event.key)
        status = "bad" if isinstance(exc, Permanent) else "retry"
        return Outcome(status, str(exc), transport.name)
    except Exception:
        pipe.ledger.release(event.key)
        raise
    try:
        pipe.ledger.finish(event.key, clean(ident, 200), transport.name, int(pipe.clock()))
    except Exception as exc:  # sent, but not recorded: the lease guards a retry for a while
        _log(TOOL, f"{event.idempotency_key} sent but not recorded: {exc}", error=True)
    what = f"{event.template} to {event.to} ({event.idempotency_key}) via {transport.name}"
    return Outcome("sent", f"{what}: {clean(ident, 120)}".rstrip(": "), transport.name)


# --------------------------------------------------------------------------- the poller


@dataclass
class Pass:
    received: int = 0
    deleted: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def _messages(sqs: Any, queue_url: str, *, once: bool, wait: int) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    while True:
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        batch = [m for m in answer.get("Messages") or [] if m.get("MessageId") not in seen]
        if once and not batch:
            return
        for message in batch:
            seen.add(str(message.get("MessageId")))
            yield message
        if not once:
            return


def run_pass(
    sqs: Any,
    queue_url: str,
    pipe: Pipeline,
    *,
    once: bool = True,
    wait: int = 1,
    log: Callable[..., None] = _log,
) -> Pass:
    out = Pass()
    for message in _messages(sqs, queue_url, once=once, wait=wait):
        out.received += 1
        outcome = process(str(message.get("Body", "")), pipe)
        out.by_status[outcome.status] = out.by_status.get(outcome.status, 0) + 1
        ident = clean(message.get("MessageId"), 100)
        if outcome.done:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            out.deleted += 1
            log(TOOL, f"{outcome.status}: {outcome.detail}")
        elif outcome.status == "bad":
            count = clean(message.get("Attributes", {}).get("ApproximateReceiveCount"), 10)
            log(
                TOOL,
                f"left for the dead-letter queue: message {ident} (received {count or '?'}"
                f" times): {outcome.detail}",
                error=True,
            )
        else:
            log(TOOL, f"{outcome.status}, kept in the queue: message {ident}: {outcome.detail}")
    return out


def open_ledger(settings: Settings, args: argparse.Namespace) -> tuple[Ledger, Any]:
    """The ledger the settings name, and what to close afterwards (or None)."""
    from mailops.ses.pipeline_send import DynamoLedger, StoreLedger

    if settings.ledger.startswith("dynamodb:"):
        import boto3

        client = boto3.client("dynamodb", region_name=args.region, endpoint_url=args.endpoint_url)
        return DynamoLedger(client, settings.ledger.partition(":")[2]), None
    from mailops import config
    from mailops.store import open_from_config

    store = open_from_config(config.load(args.config))
    return StoreLedger(store), store


def render_file(path: str, settings: Settings) -> int:
    body = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        event = parse_event(body)
        transport, sender = settings.route(event.tenant, event.template)
        msg = build(event, sender, Templates(settings.templates).render(event))
    except BadEvent as exc:
        _log(TOOL, str(exc), error=True)
        return exitcodes.DATAERR
    sys.stdout.write(f"X-Mailops-Transport: {transport.name}\n")
    sys.stdout.write(msg.as_string())
    return exitcodes.OK


def cmd_pipeline(args: argparse.Namespace) -> int:
    """``--once``: one pass, exit 75 when SQS or the ledger fails.  Without: a daemon that
    rides out failures (logs, waits ``RETRY_PAUSE`` seconds, asks again) and opens the
    ledger afresh for every pass, so a restarted store or a lost connection heals."""
    from mailops.store import StoreError

    try:
        settings = load_settings(args.settings)
    except SettingsError as exc:
        _log(TOOL, str(exc), error=True)
        return exitcodes.CONFIG
    if args.render:
        return render_file(args.render, settings)
    if not args.queue_url:
        _log(TOOL, "--queue-url or --render is required", error=True)
        return exitcodes.USAGE
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    wait = args.wait_seconds if args.wait_seconds is not None else (1 if args.once else 20)
    sqs = boto3.client("sqs", region_name=args.region, endpoint_url=args.endpoint_url)
    templates: Templates | None = None
    senders: dict[str, Sender] = {}
    try:
        while True:
            closer = None
            try:
                ledger, closer = open_ledger(settings, args)
                pipe = Pipeline(settings, ledger, senders=senders, _templates=templates)
                done = run_pass(sqs, args.queue_url, pipe, once=args.once, wait=wait)
                templates = pipe._templates
            except (BotoCoreError, ClientError, StoreError) as exc:
                _log(TOOL, f"{type(exc).__name__}: {clean(str(exc), 300)}", error=True)
                if args.once:
                    return exitcodes.TEMPFAIL
                time.sleep(RETRY_PAUSE)
                continue
            finally:
                if closer is not None:
                    closer.close()
            if args.once:
                if done.received:
                    counts = ", ".join(f"{k} {v}" for k, v in sorted(done.by_status.items()))
                    _log(TOOL, f"{done.received} received ({counts}), {done.deleted} deleted")
                return exitcodes.OK
    except KeyboardInterrupt:
        return 130


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "pipeline",
        help="send transactional mail from application events (SQS), each event once",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--queue-url", metavar="URL", help="the SQS queue of events")
    parser.add_argument(
        "--settings", metavar="FILE", help="pipeline settings (default /etc/mailops/pipeline.toml)"
    )
    parser.add_argument("--render", metavar="FILE", help="print the mail for one event (- stdin)")
    parser.add_argument("--endpoint-url", metavar="URL", help="SQS/DynamoDB endpoint")
    parser.add_argument("--region", metavar="R", help="AWS region (default: boto3's chain)")
    parser.add_argument("--once", action="store_true", help="read what is queued, then exit")
    parser.add_argument(
        "--wait-seconds",
        type=int,
        choices=range(0, 21),
        metavar="S",
        help="long-poll wait per receive, 0-20 (default 1 with --once, else 20)",
    )
    parser.set_defaults(func=cmd_pipeline)
