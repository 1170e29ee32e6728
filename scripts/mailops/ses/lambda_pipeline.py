"""The transactional pipeline as an AWS Lambda function: ``handler(event, context)``.

The function's settings file is ``$MAILOPS_PIPELINE_SETTINGS``, else ``pipeline.toml``
beside this package in the zip (playbooks/ses_pipeline.yml puts it and the templates
there).  Its ledger is normally ``dynamodb:TABLE`` (the playbook makes the table).

Records may come from an SQS event source mapping (``eventSource`` "aws:sqs", with
``ReportBatchItemFailures``: the answer lists the records to keep, so only those are
retried and, past the redrive count, reach the dead-letter queue) or straight from an
SNS subscription (``EventSource`` "aws:sns": a failed record raises, so Lambda's own
retries and its on-failure destination take over).  Each record is handed to
:func:`mailops.ses.pipeline.process`, the same function the poller on the monitor runs.

``alarm_handler`` is the CloudWatch alarm formatter (:mod:`mailops.ses.alarm`) for
alarm topics, with the same settings file's transports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mailops.ses.pipeline import Outcome, Pipeline, process
from mailops.ses.pipeline_settings import Settings
from mailops.ses.pipeline_settings import load as load_settings

_PIPELINE: Pipeline | None = None


class RecordsFailed(RuntimeError):
    """Some SNS-delivered records were not sent: Lambda retries the invocation."""


def settings_path() -> Path:
    explicit = os.environ.get("MAILOPS_PIPELINE_SETTINGS")
    if explicit:
        return Path(explicit)
    root = os.environ.get("LAMBDA_TASK_ROOT") or str(Path(__file__).resolve().parents[2])
    return Path(root) / "pipeline.toml"


def make_ledger(settings: Settings) -> Any:
    from mailops.ses.pipeline_send import DynamoLedger, StoreLedger

    if settings.ledger.startswith("dynamodb:"):
        import boto3

        endpoint = os.environ.get("MAILOPS_DYNAMODB_ENDPOINT") or None
        client = boto3.client("dynamodb", endpoint_url=endpoint)
        return DynamoLedger(client, settings.ledger.partition(":")[2])
    from mailops import config
    from mailops.store import open_from_config

    return StoreLedger(open_from_config(config.load()))  # a store the function can reach


def pipeline() -> Pipeline:
    """Made once per container, kept across invocations."""
    global _PIPELINE
    if _PIPELINE is None:
        settings = load_settings(settings_path())
        _PIPELINE = Pipeline(settings, make_ledger(settings))
    return _PIPELINE


def records(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, record id, body) for each record of an SQS or SNS invocation."""
    out = []
    for record in event.get("Records") or []:
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("Sns"), dict):
            sns = record["Sns"]
            out.append(("sns", str(sns.get("MessageId", "")), str(sns.get("Message", ""))))
        else:
            out.append(("sqs", str(record.get("messageId", "")), str(record.get("body", ""))))
    return out


def handle(event: dict[str, Any], pipe: Pipeline) -> dict[str, Any]:
    """A plain function of the recorded event and the pipeline (tests call this)."""
    failures: list[str] = []
    sns_failed: list[Outcome] = []
    for source, ident, body in records(event):
        outcome = process(body, pipe)
        print(f"mailops ses pipeline: {ident}: {outcome.status}: {outcome.detail}")  # CloudWatch
        if outcome.done:
            continue
        if source == "sqs":
            failures.append(ident)
        else:
            sns_failed.append(outcome)
    if sns_failed:
        raise RecordsFailed("; ".join(f"{o.status}: {o.detail}" for o in sns_failed))
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failures]}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point: ``mailops.ses.lambda_pipeline.handler``."""
    return handle(event, pipeline())


def alarm_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The alarm formatter's entry point: ``mailops.ses.lambda_pipeline.alarm_handler``."""
    from mailops.ses import alarm

    pipe = pipeline()
    routes = alarm.load_routes(settings_path())
    failures = []
    for _source, ident, body in records(event):
        if not alarm.deliver(body, routes, pipe):
            failures.append(ident)
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failures]}
