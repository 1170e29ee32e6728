"""playbooks/ses_inbound.yml and ses_inbound_teardown.yml against moto's server, and the
Lambda packaging they share with the pipeline's playbook (plugins/modules/lambda_zip.py).

The playbook check (slow: the runs take a few minutes on a busy machine) uses one server:
the playbook runs twice (the second changes nothing), what it made is read back with
boto3 (the rule, the bucket's encryption, public access block and lifecycle, the queues'
timeouts and redrive, the consumer's policy, the Lambda and its trigger), a message
published on the topic reaches the queue it made, then the teardown runs twice (the
first removes everything, the second changes nothing).  The first run is at -vvv with
--diff: the poller's secret access key may not appear in that output.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.motoserver import MotoServer, client, playbook
from tests.support.ansible_modules import load_module

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.com"  # mail_domain of inventories/aws: ses_inbound_recipients' default
NAME = "mailops-ses-inbound"
ACCOUNT = "123456789012"  # moto's
BUCKET = f"{NAME}-{ACCOUNT}"
PREFIX = "inbound/"
HANDLER = "mailops.ses.lambda_inbound.handler"


def lambda_zip() -> ModuleType:
    return load_module("lambda_zip")


def document(doc: Any) -> dict[str, Any]:
    """A policy document as IAM, SQS or S3 return it (a string, URL-quoted or not)."""
    if isinstance(doc, str):
        from urllib.parse import unquote

        doc = json.loads(doc if doc.lstrip().startswith("{") else unquote(doc))
    assert isinstance(doc, dict)
    return doc


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the packaging ------------------------------------------------------------------


def test_zip_is_the_same_bytes_for_the_same_sources(tmp_path: Path) -> None:
    mod = lambda_zip()
    src = tmp_path / "src" / "pkg"
    (src / "sub").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "sub" / "__init__.py").write_text("")
    (src / "sub" / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")
    (src / "stale.pyc").write_bytes(b"compiled")
    first, files = mod.build(["pkg"], [str(tmp_path / "src")])
    # Another mtime and a new __pycache__ entry change nothing.
    os.utime(src / "sub" / "handler.py", (1_000_000_000, 1_000_000_000))
    (src / "__pycache__" / "y.cpython-311.pyc").write_bytes(b"other")
    again, _ = mod.build(["pkg"], [str(tmp_path / "src")])
    assert again == first and files == 3
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert names == ["pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/handler.py"]
    for info in zipfile.ZipFile(io.BytesIO(first)).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert stat.S_IMODE(info.external_attr >> 16) == 0o644
    # A changed source is a changed zip.
    (src / "sub" / "handler.py").write_text("def handler(event, context):\n    return 2\n")
    changed, _ = mod.build(["pkg"], [str(tmp_path / "src")])
    assert changed != first
    assert mod.code_sha256(changed) == base64.b64encode(hashlib.sha256(changed).digest()).decode()


def test_zip_written_only_when_it_differs(tmp_path: Path) -> None:
    mod = lambda_zip()
    dest = tmp_path / "out" / "fn.zip"
    assert mod.write(dest, b"one", check=True) is True and not dest.exists()
    assert mod.write(dest, b"one", check=False) is True and dest.read_bytes() == b"one"
    assert mod.write(dest, b"one", check=False) is False
    assert mod.write(dest, b"two", check=False) is True and dest.read_bytes() == b"two"
    assert list(dest.parent.iterdir()) == [dest]  # no partial file left


def test_zip_of_mailops_holds_the_handlers_package() -> None:
    """What the playbook packages: the whole mailops package, importable at the zip's
    root as Lambda's runtime imports it, without compiled leftovers."""
    mod = lambda_zip()
    data, _ = mod.build(["mailops"], [str(ROOT / "scripts")])
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "mailops/__init__.py" in names and "mailops/ses/__init__.py" in names
    assert HANDLER.rpartition(".")[0].replace(".", "/") + ".py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.parametrize(
    ("names", "words"),
    [(["no_such_module_here"], "not found"), (["mailops.ses"], "top-level"), ([], "nothing")],
)
def test_zip_refuses_what_it_cannot_package(names: list[str], words: str) -> None:
    mod = lambda_zip()
    with pytest.raises(mod.PackageError, match=words):
        mod.build(names, [str(ROOT / "scripts")])


# --- the receipt rule module ----------------------------------------------------------


def test_receipt_rule_compares_what_an_emulator_returns() -> None:
    """A rule read back with string booleans and recipients in another order or case is
    the same rule; another prefix or TLS policy is not."""
    mod = load_module("ses_receipt_rule")
    params = {
        "name": "r",
        "enabled": True,
        "tls_policy": "Require",
        "recipients": ["example.com", "Postmaster@example.com"],
        "scan_enabled": True,
        "s3_bucket": "b",
        "s3_prefix": PREFIX,
        "s3_topic_arn": "arn:aws:sns:us-east-1:1:t",
        "s3_kms_key_arn": "",
    }
    want = mod.desired(params)
    read = json.loads(json.dumps(want))
    read.update(Enabled="true", ScanEnabled="true")
    read["Recipients"] = ["postmaster@example.com", "example.com"]
    assert mod.normal(read) == mod.normal(want)
    for key, value in (("TlsPolicy", "Optional"), ("ScanEnabled", "false")):
        assert mod.normal({**read, key: value}) != mod.normal(want)
    other = json.loads(json.dumps(want))
    other["Actions"][0]["S3Action"]["ObjectKeyPrefix"] = "elsewhere/"
    assert mod.normal(other) != mod.normal(want)


# --- the playbooks against moto -------------------------------------------------------


def made(moto: MotoServer) -> dict[str, Any]:
    """What exists on the server, as the teardown must leave it: names only."""
    ses, sns, sqs, iam, s3, lam = (
        client(moto, s) for s in ("ses", "sns", "sqs", "iam", "s3", "lambda")
    )
    return {
        "rule_sets": [r["Name"] for r in ses.list_receipt_rule_sets().get("RuleSets", [])],
        "topics": [t["TopicArn"] for t in sns.list_topics()["Topics"]],
        "subscriptions": [s["Endpoint"] for s in sns.list_subscriptions()["Subscriptions"]],
        "queues": sqs.list_queues().get("QueueUrls", []),
        "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]],
        "users": [u["UserName"] for u in iam.list_users()["Users"]],
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
        "policies": [p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]],
        "functions": [f["FunctionName"] for f in lam.list_functions()["Functions"]],
        "mappings": lam.list_event_source_mappings()["EventSourceMappings"],
    }


def check_rule(moto: MotoServer, topic: str) -> None:
    ses = client(moto, "ses")
    active = ses.describe_active_receipt_rule_set()
    assert active["Metadata"]["Name"] == NAME
    (rule,) = active["Rules"]
    assert rule["Name"] == f"{NAME}-s3"
    assert rule["Recipients"] == [DOMAIN]
    assert rule["TlsPolicy"] == "Require"
    assert rule["ScanEnabled"] in (True, "true") and rule["Enabled"] in (True, "true")
    (action,) = rule["Actions"]
    assert action["S3Action"] == {
        "BucketName": BUCKET,
        "ObjectKeyPrefix": PREFIX,
        "TopicArn": topic,
    }


def check_bucket(moto: MotoServer) -> None:
    s3 = client(moto, "s3")
    enc = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]
    (rule,) = enc["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    (life,) = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert life["Status"] == "Enabled" and life["Expiration"] == {"Days": 30}
    assert PREFIX in (life.get("Prefix"), life.get("Filter", {}).get("Prefix"))
    policy = document(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    allowed = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert [(s["Principal"], s["Action"], s["Resource"]) for s in allowed] == [
        ({"Service": "ses.amazonaws.com"}, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}*")
    ]


def check_queues(moto: MotoServer, topic: str) -> tuple[str, str, str]:
    """The queue's and the dead-letter queue's URL and the queue's ARN."""
    sqs, sns = client(moto, "sqs"), client(moto, "sns")
    queue = sqs.get_queue_url(QueueName=NAME)["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName=f"{NAME}-dlq")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    dlq_attrs = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "120"
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_attrs["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 5
    assert dlq_attrs["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("sqs", attrs["QueueArn"])]
    return queue, dlq, attrs["QueueArn"]


def check_consumer_policy(moto: MotoServer, queue_arn: str, dlq_arn: str) -> str:
    """The consumer's policy: the prefix read, the two queues used, nothing else; its ARN."""
    iam = client(moto, "iam")
    (policy,) = iam.list_policies(Scope="Local")["Policies"]
    assert policy["PolicyName"] == f"{NAME}-consumer"
    version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])[
        "PolicyVersion"
    ]
    statements = document(version["Document"])["Statement"]
    grants = sorted(
        (action, resource)
        for s in statements
        if s["Effect"] == "Allow"
        for action in as_list(s["Action"])
        for resource in as_list(s["Resource"])
    )
    queue_actions = ["ChangeMessageVisibility", "DeleteMessage", "GetQueueAttributes",
                     "ReceiveMessage", "SendMessage"]  # fmt: skip
    assert grants == sorted(
        [("s3:GetObject", f"arn:aws:s3:::{BUCKET}/{PREFIX}*")]
        + [(f"sqs:{a}", queue_arn) for a in queue_actions]
        + [("sqs:GetQueueAttributes", dlq_arn), ("sqs:SendMessage", dlq_arn)]
    )
    return str(policy["Arn"])


def check_lambda(moto: MotoServer, policy_arn: str, queue_arn: str) -> None:
    iam, lam = client(moto, "iam"), client(moto, "lambda")
    role = iam.get_role(RoleName=f"{NAME}-lambda")["Role"]
    trust = document(role["AssumeRolePolicyDocument"])["Statement"]
    assert [(s["Principal"], s["Action"]) for s in trust] == [
        ({"Service": "lambda.amazonaws.com"}, "sts:AssumeRole")
    ]
    attached = iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [policy_arn]
    (inline,) = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    logs = document(
        iam.get_role_policy(RoleName=role["RoleName"], PolicyName=inline)["PolicyDocument"]
    )
    for s in logs["Statement"]:
        assert all(a.startswith("logs:") for a in as_list(s["Action"]))
        assert s["Resource"].endswith(f":log-group:/aws/lambda/{NAME}:*")
    config = lam.get_function(FunctionName=NAME)["Configuration"]
    assert (config["Handler"], config["Role"]) == (HANDLER, role["Arn"])
    assert config["Runtime"].startswith("python3")
    # The code is the zip the playbook wrote, and that zip holds the handler's module.
    package = ROOT / ".build" / "lambda" / f"{NAME}.zip"
    data = package.read_bytes()
    assert config["CodeSha256"] == lambda_zip().code_sha256(data)
    names = zipfile.ZipFile(package).namelist()
    assert HANDLER.rpartition(".")[0].replace(".", "/") + ".py" in names
    # The handler, imported from the zip alone, reads the settings the function was given.
    probe = (
        "import json, sys; from mailops.ses.lambda_inbound import settings_from; "
        "s = settings_from(json.loads(sys.stdin.read())); "
        "print(json.dumps([s.target.host, s.target.port, s.target.timeout, s.delete_object]))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(package)!r}); {probe}"],
        input=json.dumps(config["Environment"]["Variables"]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [f"mx1.{DOMAIN}", 25, 20.0, False]
    (mapping,) = lam.list_event_source_mappings()["EventSourceMappings"]
    assert mapping["FunctionArn"] == config["FunctionArn"]
    assert mapping["EventSourceArn"] == queue_arn and mapping["BatchSize"] == 1


@pytest.mark.slow
def test_ses_inbound_playbook_provisions_idempotently_and_tears_down(tmp_path: Path) -> None:
    creds = tmp_path / "poller"
    extra = ("-e", f"ses_inbound_credentials_dir={creds}")
    with MotoServer() as moto:
        first, out = playbook(moto, "ses_inbound.yml", *extra, "-vvv", "--diff")
        assert first["changed"] > 0 and first["failed"] == 0
        second, _ = playbook(moto, "ses_inbound.yml", *extra)
        assert second["changed"] == 0, second

        (topic,) = [t["TopicArn"] for t in client(moto, "sns").list_topics()["Topics"]]
        assert topic == f"arn:aws:sns:us-east-1:{ACCOUNT}:{NAME}"
        check_rule(moto, topic)
        check_bucket(moto)
        queue, dlq, queue_arn = check_queues(moto, topic)
        dlq_arn = queue_arn + "-dlq"
        policy_arn = check_consumer_policy(moto, queue_arn, dlq_arn)
        check_lambda(moto, policy_arn, queue_arn)

        # The poller's user: the consumer's policy alone, its key kept private, never printed.
        iam = client(moto, "iam")
        user = f"{NAME}-poller"
        attached = iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]
        assert [p["PolicyArn"] for p in attached] == [policy_arn]
        assert iam.list_user_policies(UserName=user)["PolicyNames"] == []
        assert iam.list_groups_for_user(UserName=user)["Groups"] == []
        (key,) = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        assert (creds / "access-key-id.txt").read_text().strip() == key["AccessKeyId"]
        secret = (creds / "secret-access-key").read_text().strip()
        assert len(secret) >= 20
        for path in creds.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(creds.stat().st_mode) == 0o700
        assert len(out) > 50_000  # really -vvv
        assert secret not in out

        # What SES publishes on the topic reaches the queue made for it.
        client(moto, "sns").publish(TopicArn=topic, Message='{"notificationType": "Received"}')
        got = client(moto, "sqs").receive_message(QueueUrl=queue, WaitTimeSeconds=5)
        (message,) = got["Messages"]
        assert json.loads(message["Body"])["TopicArn"] == topic
        assert dlq.endswith(f"/{NAME}-dlq")

        down, _ = playbook(moto, "ses_inbound_teardown.yml", *extra)
        assert down["changed"] > 0
        left = made(moto)
        assert left == {
            "rule_sets": [],
            "topics": [],
            "subscriptions": [],
            "queues": [],
            "buckets": [],
            "users": [],
            "roles": [],
            "policies": [],
            "functions": [],
            "mappings": [],
        }
        assert list(creds.iterdir()) == []
        again, _ = playbook(moto, "ses_inbound_teardown.yml", *extra)
        assert again["changed"] == 0, again
