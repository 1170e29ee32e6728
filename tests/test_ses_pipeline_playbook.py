"""playbooks/ses_pipeline.yml and ses_pipeline_teardown.yml against moto's server.

One server for the whole check (slow: four playbook runs): the playbook runs twice (the
second changes nothing), what it made is read back with boto3, and the function's zip is
run as Lambda would run it (moto's Lambda cannot run code here): unpacked, its
``mailops.ses.lambda_pipeline.handler`` is called in a fresh interpreter with a recorded
SQS event, finds its settings and templates in the zip, claims the key in the DynamoDB
table the playbook made and sends through moto's SES, once for two deliveries of the
same event.  Then the teardown removes everything, twice (the second changes nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.motoserver import MotoServer, clean_env, client, playbook

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "tests/data/ses/pipeline/templates"
WELCOME = json.loads((ROOT / "tests/data/ses/pipeline/welcome.json").read_text())
NAME = "mailops-pipeline"  # ses_pipeline_name's default for inventories/aws
ALARM_TOPIC = "mailops-critical-alarms"

pytestmark = pytest.mark.slow


def made(moto: MotoServer) -> dict[str, Any]:
    sns, sqs, iam, dynamo, lam = (
        client(moto, s) for s in ("sns", "sqs", "iam", "dynamodb", "lambda")
    )
    return {
        "topics": sorted(t["TopicArn"].rpartition(":")[2] for t in sns.list_topics()["Topics"]),
        "subscriptions": len(sns.list_subscriptions()["Subscriptions"]),
        "queues": sorted(u.rpartition("/")[2] for u in sqs.list_queues().get("QueueUrls", [])),
        "tables": dynamo.list_tables()["TableNames"],
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
        "functions": sorted(f["FunctionName"] for f in lam.list_functions()["Functions"]),
        "mappings": len(lam.list_event_source_mappings()["EventSourceMappings"]),
    }


def test_pipeline_playbook_provisions_idempotently_and_tears_down(tmp_path: Path) -> None:
    with MotoServer() as moto:
        transports = {"ses": {"kind": "ses", "region": "us-east-1", "endpoint_url": moto.url}}
        extra = (
            "-e", f"ses_pipeline_templates_dir={TEMPLATES}",
            "-e", json.dumps({"ses_pipeline_transports": transports}),
        )  # fmt: skip
        first, _ = playbook(moto, "ses_pipeline.yml", *extra)
        assert first["changed"] > 0 and first["failed"] == 0
        second, out2 = playbook(moto, "ses_pipeline.yml", *extra)
        assert second["changed"] == 0, out2[-4000:]

        assert made(moto) == {
            "topics": sorted([f"{NAME}-events", ALARM_TOPIC]),
            "subscriptions": 2,
            "queues": sorted([f"{NAME}-events", f"{NAME}-alarms", f"{NAME}-dlq"]),
            "tables": [f"{NAME}-sends"],
            "roles": [f"{NAME}-lambda"],
            "functions": sorted([f"{NAME}-events", f"{NAME}-alarms"]),
            "mappings": 2,
        }
        sqs, lam = client(moto, "sqs"), client(moto, "lambda")
        queue = sqs.get_queue_url(QueueName=f"{NAME}-events")["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(f":{NAME}-dlq")
        conf = lam.get_function_configuration(FunctionName=f"{NAME}-events")
        assert conf["Handler"] == "mailops.ses.lambda_pipeline.handler"
        settings_path = conf["Environment"]["Variables"]["MAILOPS_PIPELINE_SETTINGS"]
        mappings = lam.list_event_source_mappings()["EventSourceMappings"]
        (mapping,) = [m for m in mappings if m["EventSourceArn"] == attrs["QueueArn"]]
        assert mapping["FunctionArn"].endswith(f":function:{NAME}-events")
        assert mapping.get("FunctionResponseTypes") == ["ReportBatchItemFailures"]

        # The zip, run as Lambda runs it: its own code, settings and templates only.
        task = tmp_path / "task"
        with zipfile.ZipFile(ROOT / f".build/lambda/{NAME}-events.zip") as archive:
            archive.extractall(task)
        client(moto, "ses").verify_domain_identity(Domain="example.com")  # the From's
        body = json.dumps({"Type": "Notification", "Message": json.dumps(WELCOME)})
        event = {
            "Records": [
                {"messageId": "m1", "eventSource": "aws:sqs", "body": body},
                {"messageId": "m2", "eventSource": "aws:sqs", "body": body},
            ]
        }
        run = (
            "import json, sys\n"
            "import mailops\n"
            "from mailops.ses.lambda_pipeline import handler\n"
            "print(mailops.__file__)\n"
            "print(json.dumps(handler(json.loads(sys.argv[1]), None)))\n"
        )
        # -S: no site, so the venv's editable mailops stays out; its site-packages come
        # after the zip on the path for boto3, as Lambda's runtime brings boto3.
        site = next(p for p in sys.path if p.endswith("site-packages"))
        proc = subprocess.run(
            [sys.executable, "-S", "-c", run, json.dumps(event)],
            cwd=task,
            env=clean_env(
                PYTHONPATH=f"{task}:{site}",
                LAMBDA_TASK_ROOT=str(task),
                MAILOPS_PIPELINE_SETTINGS=settings_path.replace("/var/task", str(task)),
                MAILOPS_DYNAMODB_ENDPOINT=moto.url,
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == f"{task}/mailops/__init__.py"  # the zip's code
        assert json.loads(proc.stdout.splitlines()[-1]) == {"batchItemFailures": []}
        assert "m1: sent" in proc.stdout and "m2: duplicate" in proc.stdout
        # moto's /moto-api/data.json fails once Lambda functions exist (tests/
        # test_ses_pipeline.py reads the rendered mail there); its send count says that one
        # mail went (moto counts the To header's address with the Destinations: 2).
        quota = client(moto, "ses").get_send_quota()
        assert quota["SentLast24Hours"] == 2, quota

        down, _ = playbook(moto, "ses_pipeline_teardown.yml", *extra)
        assert down["changed"] > 0
        assert made(moto) == {
            "topics": [],
            "subscriptions": 0,
            "queues": [],
            "tables": [],
            "roles": [],
            "functions": [],
            "mappings": 0,
        }
        assert not (ROOT / f".build/lambda/{NAME}-conf").exists()
        again, _ = playbook(moto, "ses_pipeline_teardown.yml", *extra)
        assert again["changed"] == 0, again
