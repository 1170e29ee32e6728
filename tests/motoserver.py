"""Start moto's AWS emulator on loopback for a test, and stop it afterwards.

Used by the EC2 tests: ``with MotoServer() as moto: ... moto.url ...``.  The server is
moto's own (the ``moto[server]`` extra of the dev dependencies), started as
``python -m tests.motoserver`` so that one gap in its EC2 model is filled first (see
``model_secondary_ips``); its log is kept for the failure message.

moto 5.2 ignores ``PrivateIpAddress`` in AssociateAddress: every Elastic IP lands on
the interface's primary address, and an interface has one public address, so a second
Elastic IP on an instance silently replaces the first one in DescribeInstances.  EC2
associates the address with the private IP named (a secondary one included), reports
it as the address's ``PrivateIpAddress``, leaves the primary's association alone, and
disassociates an address whose private IP is unassigned.  ``model_secondary_ips`` makes
moto do that, and nothing else; every other call is moto's.  ``model_ses_simulator``
likewise makes SES's mailbox simulator notify as SES does, and ``model_ses_settings``
fills four gaps playbooks/ses.yml meets (their docstrings say how moto differs).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# Dummy credentials for the emulator: never real ones, whatever the environment holds.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would point boto3 or Ansible somewhere else than the test says.
ESCAPING = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_URL",
    "EC2_URL",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


ROOT = Path(__file__).resolve().parent.parent


def executable() -> Path:
    return Path(sys.executable).parent / "moto_server"


def model_secondary_ips() -> None:
    """Teach moto's EC2 backend Elastic IPs on secondary private addresses (module doc)."""
    import threading

    from moto.ec2.exceptions import InvalidParameterValueError, ResourceAlreadyAssociatedError
    from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend
    from moto.ec2.models.elastic_network_interfaces import NetworkInterfaceBackend
    from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses

    asked = threading.local()  # the PrivateIpAddress of the request being served
    respond = ElasticIPAddresses.associate_address

    def associate_response(self: Any) -> Any:
        asked.ip = self._get_param("PrivateIpAddress")
        try:
            return respond(self)
        finally:
            asked.ip = None

    def private_ip(self: Any) -> Any:
        if not self.eni:
            return None
        return getattr(self, "secondary_ip", None) or self.eni.private_ip_address

    filter_value = ElasticAddress.get_filter_value

    def get_filter_value(self: Any, name: str, method_name: str | None = None) -> Any:
        if name == "private-ip-address":
            return self.private_ip_address
        return filter_value(self, name, method_name)

    associate = ElasticAddressBackend.associate_address

    def associate_address(self: Any, instance: Any = None, eni: Any = None, **kw: Any) -> Any:
        ip = getattr(asked, "ip", None)
        nic = eni or (instance.nics[0] if instance else None)
        if not ip or nic is None or ip == nic.private_ip_address:
            done: Any = associate(self, instance=instance, eni=eni, **kw)
            done.secondary_ip = None
            return done
        if ip not in [a.get("PrivateIpAddress") for a in nic.private_ip_addresses]:
            raise InvalidParameterValueError(ip)
        if kw.get("address"):
            target = self.address_by_ip([kw["address"]])[0]
        else:
            target = self.address_by_allocation([kw.get("allocation_id")])[0]
        taken = [
            a for a in self.addresses if a is not target and a.eni is nic and private_ip(a) == ip
        ]
        if taken and not kw.get("reassociate"):
            raise ResourceAlreadyAssociatedError(ip)
        for other in taken:
            other.eni = other.instance = other.association_id = other.secondary_ip = None
        primary_public = nic.public_ip
        eip: Any = associate(self, instance=instance, eni=eni, **kw)
        nic.public_ip = primary_public  # moto moved the primary's association: undo
        eip.secondary_ip = ip
        eip.instance = getattr(nic, "instance", None) or instance
        return eip

    disassociate = ElasticAddressBackend.disassociate_address

    def disassociate_address(
        self: Any, address: str | None = None, association_id: str | None = None
    ) -> None:
        if address:
            eips = self.address_by_ip([address])
        else:
            eips = self.address_by_association([association_id])
        eip = eips[0]
        if getattr(eip, "secondary_ip", None):
            eip.eni = eip.instance = eip.association_id = eip.secondary_ip = None
            return
        disassociate(self, address=address, association_id=association_id)

    unassign = NetworkInterfaceBackend.unassign_private_ip_addresses

    def unassign_private_ip_addresses(self: Any, eni_id: str, ips: list[str]) -> Any:
        eni = self.get_network_interface(eni_id)
        for eip in list(self.addresses):
            if eip.eni is eni and getattr(eip, "secondary_ip", None) in ips:
                eip.eni = eip.instance = eip.association_id = eip.secondary_ip = None
        return unassign(self, eni_id, ips)

    patches: list[tuple[type, str, Any]] = [
        (ElasticIPAddresses, "associate_address", associate_response),
        (ElasticAddress, "private_ip_address", property(private_ip)),
        (ElasticAddress, "get_filter_value", get_filter_value),
        (ElasticAddressBackend, "associate_address", associate_address),
        (ElasticAddressBackend, "disassociate_address", disassociate_address),
        (NetworkInterfaceBackend, "unassign_private_ip_addresses", unassign_private_ip_addresses),
    ]
    for cls, name, value in patches:
        setattr(cls, name, value)


def model_ses_simulator() -> None:
    """Teach moto's SES the mailbox simulator's notifications (module doc of tests/
    test_ses_events.py says what the tests need from them).

    moto 5.2 answers a message to an address containing "bounce", "complaint" or
    "success" with one canned notification copied from AWS's documentation: its
    ``notificationType`` is the literal "Bounce, Complaint, or Delivery.", its
    recipients are recipient1@example.com and recipient2@example.com whatever was sent,
    every feedbackId and mail.messageId is the same constant, and the SNS Message is an
    object instead of a JSON string.  SES's simulator (bounce@, complaint@, success@ and
    suppressionlist@simulator.amazonses.com) reports on the address itself, with the
    type named, fresh ids, mail.messageId equal to the MessageId SendEmail returned, and
    the notification as a JSON string in the SNS Message.  This makes moto do that, for
    the identity notification topics set with SetIdentityNotificationTopic; nothing else.
    """
    import datetime
    import json
    import threading
    from email.utils import getaddresses, parseaddr

    from moto.ses import models as ses_models
    from moto.sns.models import sns_backends

    pending = threading.local()  # the id the message being sent will get
    from moto.ses.utils import get_random_message_id as make_id

    def message_id() -> str:
        mid = getattr(pending, "id", None)
        pending.id = None
        return mid or make_id()

    kinds = {
        "success": "Delivery",
        "bounce": "Bounce",
        "complaint": "Complaint",
        "suppressionlist": "Bounce",
    }

    def feedback(self: Any, source: str, destinations: Any) -> None:
        sender = parseaddr(str(source))[1]
        if isinstance(destinations, dict):
            listed = [a for key in ("ToAddresses", "CcAddresses", "BccAddresses")
                      for a in destinations.get(key, [])]  # fmt: skip
        else:
            listed = list(destinations)
        addresses = [a for _, a in getaddresses(listed) if a]
        topics = self.sns_topics.get(sender) or self.sns_topics.get(sender.rpartition("@")[2])
        mid = make_id()
        pending.id = mid
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        for address in addresses:
            local, _, host = address.lower().partition("@")
            kind = kinds.get(local.split("+")[0]) if host == "simulator.amazonses.com" else None
            topic = (topics or {}).get(kind) if kind else None
            if not topic:
                continue
            note: dict[str, Any] = {
                "notificationType": kind,
                "mail": {
                    "timestamp": now,
                    "messageId": mid,
                    "source": sender,
                    "sendingAccountId": self.account_id,
                    "destination": addresses,
                    "headersTruncated": False,
                    "commonHeaders": {"from": [sender], "to": addresses},
                },
            }
            if kind == "Bounce":
                listed_before = local.startswith("suppressionlist")
                note["bounce"] = {
                    "bounceType": "Permanent",
                    "bounceSubType": "OnAccountSuppressionList" if listed_before else "General",
                    "bouncedRecipients": [
                        {
                            "emailAddress": address,
                            "action": "failed",
                            "status": "5.1.1",
                            "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                        }
                    ],
                    "timestamp": now,
                    "feedbackId": make_id(),
                    "reportingMTA": "dns; a8-1.smtp-out.amazonses.com",
                }
            elif kind == "Complaint":
                note["complaint"] = {
                    "complainedRecipients": [{"emailAddress": address}],
                    "timestamp": now,
                    "feedbackId": make_id(),
                    "complaintFeedbackType": "abuse",
                    "userAgent": "Amazon SES Mailbox Simulator",
                }
            else:
                note["delivery"] = {
                    "timestamp": now,
                    "processingTimeMillis": 1,
                    "recipients": [address],
                    "smtpResponse": "250 2.6.0 Message received",
                    "reportingMTA": "a8-1.smtp-out.amazonses.com",
                }
            sns_backends[self.account_id][self.region_name].publish(json.dumps(note), arn=topic)

    ses_models.SESBackend.__process_sns_feedback__ = feedback  # type: ignore[method-assign]
    ses_models.get_random_message_id = message_id  # type: ignore[attr-defined]


def model_ses_settings() -> None:
    """Fill four gaps of moto (SES v1, IAM) that playbooks/ses.yml runs into.

    - GetIdentityNotificationAttributes answers without the BounceTopic, ComplaintTopic
      and DeliveryTopic that SetIdentityNotificationTopic set, so community.aws's
      ses_identity sets them again on every run; SES returns them.
    - DeleteConfigurationSet keeps the set's event destination names registered (a new
      set cannot reuse them) and fails with a server error for an unknown set; SES
      deletes the destinations with the set and answers ConfigurationSetDoesNotExist.
    - DescribeConfigurationSet lists a null event destination for a set that has none;
      SES lists none.
    - IAM's ListServiceSpecificCredentials is not implemented (amazon.aws.iam_user calls
      it before deleting a user); moto has no such credentials, so the true answer is
      an empty list, checking that the user exists as IAM does.
    """
    from moto.core.responses import ActionResult
    from moto.iam.responses import IamResponse
    from moto.ses.exceptions import ConfigurationSetDoesNotExist
    from moto.ses.models import SESBackend
    from moto.ses.responses import EmailResponse

    attributes = SESBackend.get_identity_notification_attributes

    def get_identity_notification_attributes(self: Any, identities: list[str]) -> Any:
        out = attributes(self, identities)
        for identity, found in out.items():
            topics = self.sns_topics.get(identity, {})
            for kind in ("Bounce", "Complaint", "Delivery"):
                if topics.get(kind):
                    found[f"{kind}Topic"] = topics[kind]
        return out

    def delete_configuration_set(self: Any, configuration_set_name: str) -> None:
        if configuration_set_name not in self.config_sets:
            raise ConfigurationSetDoesNotExist(
                f"Configuration set <{configuration_set_name}> does not exist."
            )
        self.config_sets.pop(configuration_set_name)
        destination = self.config_set_event_destination.pop(configuration_set_name, None)
        if destination:
            self.event_destinations.pop(destination.get("Name"), None)

    describe = EmailResponse.describe_configuration_set

    def describe_configuration_set(self: Any) -> Any:
        result = describe(self)
        found = result.result if hasattr(result, "result") else None
        if isinstance(found, dict):
            found["EventDestinations"] = [d for d in found.get("EventDestinations", []) if d]
        return result

    def list_service_specific_credentials(self: Any) -> Any:
        self.backend.get_user(self._get_param("UserName"))  # NoSuchEntity when missing
        return ActionResult({"ServiceSpecificCredentials": []})

    IamResponse.list_service_specific_credentials = list_service_specific_credentials  # type: ignore[attr-defined]
    SESBackend.get_identity_notification_attributes = get_identity_notification_attributes  # type: ignore[method-assign]
    SESBackend.delete_configuration_set = delete_configuration_set  # type: ignore[method-assign]
    EmailResponse.describe_configuration_set = describe_configuration_set  # type: ignore[method-assign]


def model_dynamodb_table_id() -> None:
    """DescribeTable (and CreateTable, DeleteTable) answer without the ``TableId`` DynamoDB
    gives every table; community.aws.dynamodb_table reads it (playbooks/ses_pipeline.yml's
    table of idempotency keys).  A stable id per table ARN, as DynamoDB's is per table."""
    import uuid

    from moto.dynamodb.models.table import Table

    describe = Table.describe

    def with_id(self: Any, base_key: str = "TableDescription") -> dict[str, Any]:
        out: dict[str, Any] = describe(self, base_key)
        out[base_key].setdefault("TableId", str(uuid.uuid5(uuid.NAMESPACE_URL, self.table_arn)))
        return out

    Table.describe = with_id  # type: ignore[method-assign]


RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)",
    re.MULTILINE,
)


def run_playbook(
    server: MotoServer, name: str, *extra: str, inventory: str | Path = "inventories/aws"
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook -i INVENTORY playbooks/NAME against the server, as docs/aws.md says."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [
            str(bin_dir / "ansible-playbook"),
            "-i",
            str(inventory),
            f"playbooks/{name}",
            "-e",
            f"aws_endpoint_url={server.url}",
            *extra,
        ],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def playbook(
    server: MotoServer, name: str, *extra: str, inventory: str | Path = "inventories/aws"
) -> tuple[dict[str, int], str]:
    """A run that must succeed: its PLAY RECAP counts and its output."""
    proc = run_playbook(server, name, *extra, inventory=inventory)
    out = proc.stdout + proc.stderr
    found = RECAP.search(proc.stdout)
    assert proc.returncode == 0 and found, f"{name} failed (rc {proc.returncode}):\n{out[-6000:]}"
    keys = ("ok", "changed", "unreachable", "failed", "skipped")
    return dict(zip(keys, map(int, found.groups()), strict=True)), out


def client(server: MotoServer, service: str) -> Any:
    """A boto3 client of the server, with the dummy credentials."""
    import boto3

    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def tags(obj: dict[str, Any]) -> dict[str, str]:
    """An EC2 object's Tags as a dict."""
    return {t["Key"]: t["Value"] for t in obj.get("Tags", [])}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment with test credentials and nothing that leads elsewhere.

    Any AWS call that does not go to the endpoint it was given is sent to a proxy on a
    closed loopback port, so it fails at once instead of leaving the machine.
    """
    env = {k: v for k, v in os.environ.items() if k not in ESCAPING}
    env.update(CREDENTIALS)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    trap = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = trap
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class MotoServer:
    """moto_server on 127.0.0.1 and a free port, for the duration of a with block."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    def start(self) -> MotoServer:
        exe = executable()
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: install the moto[server] extra")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.motoserver", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited at start:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not listen within {self.start_timeout} s")

    def log(self, tail: int = 4000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-tail:]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    # The server MotoServer starts: moto's own, with the model above.
    from moto.server import main

    model_secondary_ips()
    model_ses_simulator()
    model_ses_settings()
    model_dynamodb_table_id()
    main(sys.argv[1:])
