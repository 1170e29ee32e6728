"""The inbound bridge as an AWS Lambda function: ``mailops.ses.lambda_inbound.handler``.

The write-up's design: the SQS queue is the function's event source (with
``ReportBatchItemFailures``), so the Lambda service deletes what the handler settled
and leaves the records it names in ``batchItemFailures`` for SQS to offer again (and,
past the redrive count, to move to the dead-letter queue).  Each record goes through
the same :func:`mailops.ses.inbound.handle` as the poller on the monitor: a 5xx, a
virus verdict or a body that is not a notification is copied to the dead-letter queue
at once, with its reason, and reported settled; a re-queued rest of recipients is sent
to the source queue.

Settings come from the function's environment:

``MAILOPS_INBOUND_SMTP_HOST``  HOST[:PORT] of the MX (required)
``MAILOPS_INBOUND_DLQ_URL``    the dead-letter queue (default: the source queue's
                               redrive policy's)
``MAILOPS_INBOUND_DELETE_OBJECT``  "true": delete the S3 object once relayed
``MAILOPS_INBOUND_TIMEOUT``    SMTP timeout in seconds (default 20: keep it under the
                               function's own timeout)
``MAILOPS_INBOUND_HELO``       EHLO name
``MAILOPS_INBOUND_RETRY_DELAY`` delay of a re-queued rest of recipients (default 60)

AWS's own variables (region, credentials, ``AWS_ENDPOINT_URL``) are boto3's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from mailops.pipeio import log as _log
from mailops.ses import inbound as ib

_CLIENTS: dict[str, Any] = {}


def settings_from(env: Mapping[str, str]) -> ib.Settings:
    host = env.get("MAILOPS_INBOUND_SMTP_HOST", "")
    if not host:
        raise RuntimeError("MAILOPS_INBOUND_SMTP_HOST is not set")
    t = ib.parse_target(host, timeout=float(env.get("MAILOPS_INBOUND_TIMEOUT", "20")))
    return ib.Settings(
        target=ib.Target(t.host, t.port, t.timeout, helo=env.get("MAILOPS_INBOUND_HELO", "")),
        dlq_url=env.get("MAILOPS_INBOUND_DLQ_URL", ""),
        delete_object=env.get("MAILOPS_INBOUND_DELETE_OBJECT", "").lower() in ("1", "true", "yes"),
    )


def _default_clients() -> tuple[Any, Any]:
    if not _CLIENTS:  # kept between invocations of a warm function
        import boto3
        from botocore.config import Config

        # Another endpoint (AWS_ENDPOINT_URL: moto's in the tests) has no bucket host names.
        path = {"addressing_style": "path"} if os.environ.get("AWS_ENDPOINT_URL") else {}
        _CLIENTS["sqs"] = boto3.client("sqs")
        _CLIENTS["s3"] = boto3.client("s3", config=Config(s3=path))
    return _CLIENTS["sqs"], _CLIENTS["s3"]


def process(
    event: Mapping[str, Any],
    sqs: Any,
    s3: Any,
    settings: ib.Settings,
    *,
    retry_delay: int = 60,
    log: Callable[..., None] = _log,
) -> dict[str, Any]:
    """The records of one SQS event; the Lambda answer (``batchItemFailures``)."""
    failures: list[dict[str, str]] = []
    queues: dict[str, tuple[str, str]] = {}  # source ARN -> (queue URL, DLQ URL)
    for record in event.get("Records") or []:
        ident = str(record.get("messageId", ""))
        try:
            arn = str(record.get("eventSourceARN", ""))
            if arn not in queues:
                url = ib.queue_of_arn(sqs, arn)
                queues[arn] = (url, settings.dlq_url or ib.dead_letter_url(sqs, url))
            url, dlq = queues[arn]
            body = str(record.get("body", ""))
            outcome = ib.handle(body, s3, settings, retry_delay=retry_delay, log=log)
            receives = str((record.get("attributes") or {}).get("ApproximateReceiveCount", ""))
            if outcome.to_dlq and dlq:
                ib.to_dead_letter(sqs, dlq, body, outcome, receives)
                log(ib.TOOL, f"moved to the dead-letter queue ({outcome.kind}): {outcome.detail}",
                    error=True)  # fmt: skip
            elif outcome.requeue:
                sqs.send_message(QueueUrl=url, MessageBody=outcome.requeue,
                                 DelaySeconds=outcome.delay)  # fmt: skip
                log(ib.TOOL, f"re-queued the rest: {outcome.detail}", error=True)
            elif not outcome.delete or outcome.to_dlq:  # no DLQ known: SQS's redrive
                log(ib.TOOL, f"kept for a retry: {outcome.detail}", error=True)
                failures.append({"itemIdentifier": ident})
        except Exception as exc:  # this record is retried; the others are settled
            log(ib.TOOL, f"record {ident}: {type(exc).__name__}: {exc}", error=True)
            failures.append({"itemIdentifier": ident})
    return {"batchItemFailures": failures}


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    sqs, s3 = _default_clients()
    settings = settings_from(os.environ)
    delay = int(os.environ.get("MAILOPS_INBOUND_RETRY_DELAY", "60"))
    return process(event, sqs, s3, settings, retry_delay=delay)
