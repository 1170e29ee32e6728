"""Where the pipeline's mail goes, and how it remembers what it sent.

Transports: SES's API (``SendRawEmail``) or the cluster's own submission (SMTP with
STARTTLS and a SASL login).  Each raises :class:`Permanent` when trying again cannot
help (a 5xx, SES's MessageRejected) and :class:`Transient` when it can (a 4xx, a
connection failure, throttling).

Ledgers keep the idempotency keys: the store (migration 8, for the poller) or a DynamoDB
table (for the Lambda function).  A key is *claimed* before the send, marked *sent*
after it, and released when the send failed; a claim older than the lease (a worker
that died mid-send) may be taken over.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import ssl
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal, Protocol

from mailops.ses.pipeline_settings import Transport

Claim = Literal["new", "sent", "busy"]


class SendError(Exception):
    """A send that failed; the message says why."""


class Permanent(SendError):
    """Retrying will not help: the event goes to the dead-letter queue."""


class Transient(SendError):
    """Retrying may help: the event stays in the queue."""


class Sender(Protocol):
    def send(self, sender: str, recipient: str, raw: bytes) -> str:
        """Send one message; the id the transport gave it."""
        ...


class Ledger(Protocol):
    def claim(self, key: str, info: dict[str, str], now: int, lease: int) -> Claim: ...

    def finish(self, key: str, message_id: str, transport: str, now: int) -> None: ...

    def release(self, key: str) -> None: ...


# --------------------------------------------------------------------------- transports


class SesSender:
    """SendRawEmail through a boto3 SES client."""

    PERMANENT = frozenset(
        [
            "MessageRejected",
            "MailFromDomainNotVerified",
            "MailFromDomainNotVerifiedException",
            "ConfigurationSetDoesNotExist",
            "ConfigurationSetSendingPausedException",
            "AccountSendingPausedException",
            "InvalidParameterValue",
        ]
    )

    def __init__(self, client: Any, configuration_set: str = "") -> None:
        self.client = client
        self.configuration_set = configuration_set

    def send(self, sender: str, recipient: str, raw: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {
            "Source": parseaddr(sender)[1],
            "Destinations": [recipient],
            "RawMessage": {"Data": raw},
        }
        if self.configuration_set:
            kwargs["ConfigurationSetName"] = self.configuration_set
        try:
            answer = self.client.send_raw_email(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            text = f"SES {code}: {exc.response.get('Error', {}).get('Message', '')}"
            if code in self.PERMANENT:
                raise Permanent(text) from None
            raise Transient(text) from None
        except BotoCoreError as exc:
            raise Transient(f"SES: {exc}") from None
        return str(answer.get("MessageId", ""))


def ses_client(transport: Transport) -> Any:
    import boto3

    return boto3.client(
        "ses",
        region_name=transport.region or None,
        endpoint_url=transport.endpoint_url or None,
    )


def _password(transport: Transport) -> str:
    if transport.password_env:
        value = os.environ.get(transport.password_env, "")
        if not value:
            raise Permanent(f"transport {transport.name}: ${transport.password_env} is empty")
        return value
    try:
        return Path(transport.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise Transient(
            f"transport {transport.name}: password file {transport.password_file}: "
            f"{exc.strerror or exc}"
        ) from None


class SmtpSender:
    """The cluster's submission: STARTTLS (or implicit TLS) and a SASL login."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.t.ca_file or None)

    def send(self, sender: str, recipient: str, raw: bytes) -> str:
        t = self.t
        envelope = parseaddr(sender)[1]
        smtp: smtplib.SMTP | None = None
        try:
            if t.tls == "tls":
                smtp = smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout, context=self._context())
            else:
                smtp = smtplib.SMTP(t.host, t.port, timeout=t.timeout)
            smtp.ehlo()
            if t.tls == "starttls":
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if t.login:
                smtp.login(t.login, _password(t))
            for step, (code, reply) in (
                ("MAIL FROM", smtp.mail(envelope)),
                ("RCPT TO", smtp.rcpt(recipient)),
            ):
                if code != 250:
                    text = f"{step} {recipient}: {code} {reply.decode(errors='replace')}"
                    raise _by_code(code, f"submission {t.host}:{t.port}: {text}")
            code, reply = smtp.data(raw)
            if code != 250:
                text = f"DATA: {code} {reply.decode(errors='replace')}"
                raise _by_code(code, f"submission {t.host}:{t.port}: {text}")
            smtp.quit()
            return (
                reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
            )  # "2.0.0 Ok: queued as 4Xyz..."
        except SendError:
            raise
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            said = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            text = f"{exc.smtp_code} {said}"
            raise _by_code(exc.smtp_code, f"submission {t.host}:{t.port}: {text}") from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise Transient(f"submission {t.host}:{t.port}: {exc}") from None
        finally:
            if smtp is not None:
                with contextlib.suppress(OSError):
                    smtp.close()


def _by_code(code: int, text: str) -> SendError:
    return Permanent(text) if 500 <= code < 600 else Transient(text)


def make_sender(transport: Transport) -> Sender:
    if transport.kind == "ses":
        return SesSender(ses_client(transport), transport.configuration_set)
    return SmtpSender(transport)


# --------------------------------------------------------------------------- ledgers


class StoreLedger:
    """Idempotency keys in the store (the poller on the monitor)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def claim(self, key: str, info: dict[str, str], now: int, lease: int) -> Claim:
        answer: Claim = self.store.claim_pipeline_send(key, info, now=now, lease=lease)
        return answer

    def finish(self, key: str, message_id: str, transport: str, now: int) -> None:
        self.store.finish_pipeline_send(key, message_id, transport, now=now)

    def release(self, key: str) -> None:
        self.store.release_pipeline_send(key)


class DynamoLedger:
    """Idempotency keys in a DynamoDB table (partition key ``key``, a string): the
    Lambda function's ledger.  Conditional writes make two workers' claims exclusive."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    def claim(self, key: str, info: dict[str, str], now: int, lease: int) -> Claim:
        item = {"key": {"S": key}, "state": {"S": "claimed"}, "claimed_at": {"N": str(now)}}
        item.update({k: {"S": v} for k, v in info.items() if k not in item})
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression=(
                    "attribute_not_exists(#k) OR (#s = :claimed AND claimed_at < :stale)"
                ),
                ExpressionAttributeNames={"#k": "key", "#s": "state"},
                ExpressionAttributeValues={
                    ":claimed": {"S": "claimed"},
                    ":stale": {"N": str(now - lease)},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            found = self.client.get_item(
                TableName=self.table, Key={"key": {"S": key}}, ConsistentRead=True
            ).get("Item", {})
            return "sent" if found.get("state", {}).get("S") == "sent" else "busy"
        return "new"

    def finish(self, key: str, message_id: str, transport: str, now: int) -> None:
        self.client.update_item(
            TableName=self.table,
            Key={"key": {"S": key}},
            UpdateExpression="SET #s = :sent, sent_at = :now, message_id = :id, transport = :t",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={
                ":sent": {"S": "sent"},
                ":now": {"N": str(now)},
                ":id": {"S": message_id},
                ":t": {"S": transport},
            },
        )

    def release(self, key: str) -> None:
        # sent meanwhile by someone else: keep it
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.delete_item(
                TableName=self.table,
                Key={"key": {"S": key}},
                ConditionExpression="#s = :claimed",
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues={":claimed": {"S": "claimed"}},
            )
