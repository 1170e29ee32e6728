"""``mailops ses pipeline``: events → templates → one send per idempotency key.

The first half checks the event shape, the templates (sandbox, escaping, a missing
variable is an error) and the ledgers.  The second half runs against moto's server (one
per module): a ``welcome`` event published to an SNS topic reaches an SQS queue, the
poller (``mailops ses pipeline --once``) sends it through moto's SES, and the message
is in moto's sent messages (``/moto-api/data.json``) with its rendered subject and
body; the same event published again sends nothing more.  The Lambda entry point is fed
a recorded SQS event with its ledger in moto's DynamoDB.
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailops.ses import lambda_pipeline as lp
from mailops.ses import pipeline as pl
from mailops.ses.pipeline_send import (
    DynamoLedger,
    Permanent,
    SmtpSender,
    StoreLedger,
    Transient,
)
from mailops.ses.pipeline_settings import SettingsError, Transport, parse
from mailops.store import Store
from tests.motoserver import CREDENTIALS, ESCAPING, MotoServer, clean_env, client
from tests.support.smtpsink import Script, SmtpSink, closed_port

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/data/ses/pipeline"
WELCOME = json.loads((DATA / "welcome.json").read_text())


def settings_dict(endpoint: str = "", **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "templates": str(DATA / "templates"),
        "from": "Company <noreply@company.test>",
        "transport": "ses",
        "transports": {
            "ses": {"kind": "ses", "region": "us-east-1", "endpoint_url": endpoint},
            "alpha": {
                "kind": "smtp",
                "host": "127.0.0.1",
                "port": 1,
                "login": "alpha",
                "password_env": "NOPE",
            },
        },
        "routes": [
            {"tenant": "alpha", "template": "reset", "transport": "alpha"},
            {"tenant": "alpha", "transport": "ses", "from": "Alpha <hello@alpha.test>"},
        ],
    }
    raw.update(over)
    return raw


class Recorder:
    """A transport that keeps what it was given (for the tests that need no server)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.fail = fail

    def send(self, sender: str, recipient: str, raw: bytes) -> str:
        if self.fail:
            raise self.fail
        self.sent.append((sender, recipient, raw))
        return f"id-{len(self.sent)}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/store.db") as s:
        yield s


def pipe_with(store: Store, recorder: Recorder, **over: Any) -> pl.Pipeline:
    settings = parse(settings_dict(**over), ROOT)
    return pl.Pipeline(settings, StoreLedger(store), make=lambda t: recorder)


# --------------------------------------------------------------------------- events


def test_event_shape_sns_wrapped_and_raw() -> None:
    raw = pl.parse_event(json.dumps(WELCOME))
    wrapped = pl.parse_event(json.dumps({"Type": "Notification", "Message": json.dumps(WELCOME)}))
    assert raw == wrapped
    assert (raw.template, raw.to, raw.tenant) == ("welcome", "ann@example.net", "alpha")
    other_tenant = pl.parse_event(json.dumps({**WELCOME, "tenant": "beta"}))
    assert other_tenant.key != raw.key  # keys are per tenant


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"idempotency_key": None}, "idempotency_key"),
        ({"to": "a@x.test, b@x.test"}, "not one address"),
        ({"template": "../etc/passwd"}, "not a template name"),
        ({"data": [1]}, "data is not an object"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_bad_events_are_refused(change: dict[str, Any], said: str) -> None:
    event = {k: v for k, v in {**WELCOME, **change}.items() if v is not None}
    with pytest.raises(pl.BadEvent, match=said):
        pl.parse_event(json.dumps(event))


# --------------------------------------------------------------------------- templates


def test_welcome_renders_text_and_escaped_html() -> None:
    event = pl.parse_event(json.dumps(WELCOME))
    subject, text, html = pl.Templates(DATA / "templates").render(event)
    assert subject == "Welcome to Alpha Notes, Ann <Admin>!"
    assert "Hello Ann <Admin>," in text and "  - Pin what matters" in text
    assert html is not None and "Welcome, Ann &lt;Admin&gt;!" in html
    assert "with the address ann@example.net" in text


def test_a_missing_variable_is_an_error_not_an_empty_string() -> None:
    data = {k: v for k, v in WELCOME["data"].items() if k != "login_url"}
    event = pl.parse_event(json.dumps({**WELCOME, "data": data}))
    with pytest.raises(pl.BadEvent, match="login_url"):
        pl.Templates(DATA / "templates").render(event)


def test_templates_run_in_a_sandbox(tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil/subject.txt").write_text("x")
    (tmp_path / "evil/body.txt").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    event = pl.parse_event(json.dumps({**WELCOME, "template": "evil"}))
    with pytest.raises(pl.BadEvent):
        pl.Templates(tmp_path).render(event)


def test_unknown_template_is_bad() -> None:
    event = pl.parse_event(json.dumps({**WELCOME, "template": "nosuch"}))
    with pytest.raises(pl.BadEvent, match="no template 'nosuch'"):
        pl.Templates(DATA / "templates").render(event)


# --------------------------------------------------------------------------- routes, ledger


def test_routes_pick_transport_and_from_per_tenant_and_template() -> None:
    settings = parse(settings_dict(), ROOT)
    assert [t.name for t, _ in [settings.route("alpha", "reset")]] == ["alpha"]
    transport, sender = settings.route("alpha", "welcome")
    assert (transport.name, sender) == ("ses", "Alpha <hello@alpha.test>")
    transport, sender = settings.route("beta", "reset")
    assert (transport.name, sender) == ("ses", "Company <noreply@company.test>")


def test_settings_refuse_an_unknown_transport() -> None:
    with pytest.raises(SettingsError, match=r"routes\[0\]\.transport"):
        parse(settings_dict(routes=[{"transport": "nosuch"}]), ROOT)


def test_replayed_event_is_sent_once(store: Store) -> None:
    recorder = Recorder()
    pipe = pipe_with(store, recorder)
    body = json.dumps(WELCOME)
    first = pl.process(body, pipe)
    again = pl.process(body, pipe)
    assert (first.status, again.status) == ("sent", "duplicate")
    assert len(recorder.sent) == 1
    sender, rcpt, raw = recorder.sent[0]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert (sender, rcpt) == ("Alpha <hello@alpha.test>", "ann@example.net")
    assert msg["Subject"] == "Welcome to Alpha Notes, Ann <Admin>!"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    (row,) = store.pipeline_sends()
    assert (row["state"], row["transport"], row["message_id"]) == ("sent", "ses", "id-1")


def test_failed_send_releases_the_key(store: Store) -> None:
    failing = Recorder(fail=Transient("451 4.3.0 try later"))
    out = pl.process(json.dumps(WELCOME), pipe_with(store, failing))
    assert out.status == "retry" and not out.done
    assert store.pipeline_sends() == []  # a later try may send
    rejected = Recorder(fail=Permanent("554 5.7.1 no"))
    assert pl.process(json.dumps(WELCOME), pipe_with(store, rejected)).status == "bad"
    recorder = Recorder()
    assert pl.process(json.dumps(WELCOME), pipe_with(store, recorder)).status == "sent"


def test_claims_are_exclusive_until_the_lease_ends(store: Store) -> None:
    info = {"tenant": "alpha", "template": "welcome", "recipient": "a@x.test"}
    assert store.claim_pipeline_send("k", info, now=1000, lease=300) == "new"
    assert store.claim_pipeline_send("k", info, now=1200, lease=300) == "busy"
    assert store.claim_pipeline_send("k", info, now=1301, lease=300) == "new"  # worker died
    store.finish_pipeline_send("k", "id", "ses", now=1302)
    assert store.claim_pipeline_send("k", info, now=9999, lease=300) == "sent"
    store.release_pipeline_send("k")  # a sent key is never released
    assert store.claim_pipeline_send("k", info, now=9999, lease=300) == "sent"


# --------------------------------------------------------------------------- submission


def smtp_transport(port: int) -> Transport:
    return Transport(name="cluster", kind="smtp", host="127.0.0.1", port=port, tls="none")


def test_submission_sends_and_sorts_refusals() -> None:
    raw = b"From: a@alpha.test\r\nSubject: s\r\n\r\n.leading dot\r\n"
    with SmtpSink() as sink:
        answer = SmtpSender(smtp_transport(sink.port)).send("A <a@alpha.test>", "b@x.test", raw)
        (got,) = sink.messages
    assert "queued" in answer
    assert (got.sender, got.recipients) == ("a@alpha.test", ["b@x.test"])
    assert b"\r\n.leading dot\r\n" in got.data
    refused = Script(rcpt=lambda a: "550 5.1.1 no such user")
    with SmtpSink(refused) as sink, pytest.raises(Permanent, match=r"550 5\.1\.1"):
        SmtpSender(smtp_transport(sink.port)).send("a@alpha.test", "b@x.test", raw)
    later = Script(rcpt=lambda a: "451 4.7.1 paused")
    with SmtpSink(later) as sink, pytest.raises(Transient, match=r"451 4\.7\.1"):
        SmtpSender(smtp_transport(sink.port)).send("a@alpha.test", "b@x.test", raw)
    with pytest.raises(Transient):
        SmtpSender(smtp_transport(closed_port())).send("a@alpha.test", "b@x.test", raw)


# --------------------------------------------------------------------------- moto's server


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        client(server, "ses").verify_domain_identity(Domain="alpha.test")
        client(server, "ses").verify_domain_identity(Domain="company.test")
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process boto3 clients the pipeline makes: dummy credentials only."""
    for name in ESCAPING:
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def sent_by_moto(moto: MotoServer) -> list[dict[str, Any]]:
    """moto's record of every message its SES accepted."""
    with urllib.request.urlopen(f"{moto.url}/moto-api/data.json", timeout=10) as answer:  # noqa: S310 - loopback
        data = json.load(answer)
    return list(data.get("ses", {}).get("RawMessage", []))


def topic_and_queue(moto: MotoServer) -> tuple[str, str]:
    sns, sqs = client(moto, "sns"), client(moto, "sqs")
    name = f"events-{uuid.uuid4().hex[:8]}"
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
    return topic, queue


def run_poller(moto: MotoServer, settings: Path, store_url: str, queue: str) -> str:
    conf = settings.parent / "mailops.toml"
    conf.write_text(f'[store]\nurl = "{store_url}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "mailops", "--config", str(conf), "ses", "pipeline",
         "--settings", str(settings), "--queue-url", queue, "--endpoint-url", moto.url,
         "--region", "us-east-1", "--once"],
        cwd=ROOT, env=clean_env(PYTHONPATH=str(ROOT / "scripts")),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def write_settings(path: Path, moto: MotoServer) -> Path:
    lines = [
        f'templates = "{DATA / "templates"}"',
        'from = "Company <noreply@company.test>"',
        'transport = "ses"',
        "[transports.ses]",
        'kind = "ses"',
        'region = "us-east-1"',
        f'endpoint_url = "{moto.url}"',
        "[[routes]]",
        'tenant = "alpha"',
        'transport = "ses"',
        'from = "Alpha <hello@alpha.test>"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_welcome_event_through_moto_ses_is_sent_once(moto: MotoServer, tmp_path: Path) -> None:
    topic, queue = topic_and_queue(moto)
    key = f"signup-{uuid.uuid4().hex}"
    event = {**WELCOME, "idempotency_key": key}
    before = len(sent_by_moto(moto))
    settings = write_settings(tmp_path / "pipeline.toml", moto)
    store_url = f"sqlite:///{tmp_path}/store.db"
    client(moto, "sns").publish(TopicArn=topic, Message=json.dumps(event))
    said = run_poller(moto, settings, store_url, queue)
    assert "1 received (sent 1), 1 deleted" in said
    found = sent_by_moto(moto)[before:]
    assert len(found) == 1, found
    (sent,) = found
    # moto adds the To header's addresses to the Destinations given (SES does not).
    assert sent["source"] == "hello@alpha.test"
    assert set(sent["destinations"]) == {"ann@example.net"}
    msg = email.message_from_string(sent["raw_data"], policy=email.policy.default)
    assert msg["Subject"] == "Welcome to Alpha Notes, Ann <Admin>!"
    text = msg.get_body(("plain",))
    assert text is not None and "Sign in at https://app.alpha.test/login" in text.get_content()
    # The same event again (an application retrying, SNS delivering twice): nothing more.
    client(moto, "sns").publish(TopicArn=topic, Message=json.dumps(event))
    said = run_poller(moto, settings, store_url, queue)
    assert "1 received (duplicate 1), 1 deleted" in said
    assert len(sent_by_moto(moto)) == before + 1
    attrs = client(moto, "sqs").get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_unverified_sender_is_permanent_and_kept_for_the_dlq(
    moto: MotoServer, store: Store, aws_env: None
) -> None:
    settings = parse(settings_dict(moto.url, routes=[], **{"from": "x@unverified.test"}), ROOT)
    pipe = pl.Pipeline(settings, StoreLedger(store))
    out = pl.process(json.dumps({**WELCOME, "idempotency_key": uuid.uuid4().hex}), pipe)
    assert out.status == "bad" and "MessageRejected" in out.detail
    assert store.pipeline_sends() == []


def test_lambda_handler_with_a_recorded_sqs_event(
    moto: MotoServer, tmp_path: Path, aws_env: None
) -> None:
    dynamo = client(moto, "dynamodb")
    table = f"sends-{uuid.uuid4().hex[:8]}"
    dynamo.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    settings = parse(settings_dict(moto.url, ledger=f"dynamodb:{table}"), ROOT)
    pipe = pl.Pipeline(settings, DynamoLedger(dynamo, table))
    key = uuid.uuid4().hex
    good = json.dumps(
        {"Type": "Notification", "Message": json.dumps({**WELCOME, "idempotency_key": key})}
    )
    bad = json.dumps({**WELCOME, "template": "nosuch", "idempotency_key": key + "b"})
    event = {
        "Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": good},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": bad},
            {"messageId": "m3", "eventSource": "aws:sqs", "body": good},  # the replay
        ]
    }
    before = len(sent_by_moto(moto))
    answer = lp.handle(event, pipe)
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert len(sent_by_moto(moto)) == before + 1
    item = dynamo.scan(TableName=table)["Items"]
    assert [i["state"]["S"] for i in item] == ["sent"]
    # Straight from SNS: a record that fails raises, so Lambda retries the invocation.
    with pytest.raises(lp.RecordsFailed, match="nosuch"):
        lp.handle({"Records": [{"Sns": {"MessageId": "s1", "Message": bad}}]}, pipe)
