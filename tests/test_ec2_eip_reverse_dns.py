"""plugins/modules/ec2_eip_reverse_dns.py: reverse DNS of Elastic IPs.

moto (5.2) implements DescribeAddresses and DescribeAddressesAttribute but neither
ModifyAddressAttribute nor ResetAddressAttribute.  So:

- reading the attribute, finding addresses, check mode, state=absent on a fresh
  address, and the "emulator lacks the call" path run against moto itself, in-process
  (``mock_aws``) and through Ansible against ``moto_server``;
- the write path (pending updates, idempotence while EC2 works, failures, waiting) runs
  against moto with the two missing calls supplied by ``AwsAddressAttributes`` below,
  a small model of EC2's documented behaviour (an update is PENDING, then SUCCESSFUL
  or FAILED; PtrRecord changes only when it succeeds).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from tests.motoserver import MotoServer, clean_env

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PTR = "ec2-192-0-2-4.compute-1.amazonaws.com."  # EC2's own name for an address
ENDPOINT = "http://127.0.0.1:1"  # only ever named, never contacted, in the in-process tests


def _load() -> ModuleType:
    path = ROOT / "plugins/modules/ec2_eip_reverse_dns.py"
    spec = importlib.util.spec_from_file_location("ec2_eip_reverse_dns", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rdns = _load()


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in clean_env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def _alloc(client: Any) -> dict[str, Any]:
    a = client.allocate_address(Domain="vpc")
    return {"AllocationId": a["AllocationId"], "PublicIp": a["PublicIp"]}


class AwsAddressAttributes:
    """moto's EC2 client plus the two address-attribute writes moto lacks, as EC2 does them.

    An update stays PENDING for ``pending_reads`` reads of the attribute, then becomes
    SUCCESSFUL (PtrRecord takes the value) or, for names in ``refuse``, FAILED.
    """

    def __init__(self, client: Any, pending_reads: int = 1, refuse: tuple[str, ...] = ()) -> None:
        self._client = client
        self.pending_reads = pending_reads
        self.refuse = refuse
        self.ptr: dict[str, str] = {}
        self.update: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _default(self, alloc: str) -> str:
        ip = next(
            a["PublicIp"]
            for a in self._client.describe_addresses()["Addresses"]
            if a["AllocationId"] == alloc
        )
        return f"ec2-{ip.replace('.', '-')}.compute-1.amazonaws.com."

    def describe_addresses_attribute(self, AllocationIds: list[str], Attribute: str) -> Any:
        assert Attribute == "domain-name"
        self.calls.append("describe")
        out = []
        for alloc in AllocationIds:
            item: dict[str, Any] = {
                "AllocationId": alloc,
                "PtrRecord": self.ptr.get(alloc, self._default(alloc)),
            }
            upd = self.update.get(alloc)
            if upd:
                if upd["Status"] == "PENDING":
                    if upd["reads"] >= self.pending_reads:
                        if upd["Value"].rstrip(".") in self.refuse:
                            upd.update(Status="FAILED", Reason="forward record does not match")
                        else:
                            upd["Status"] = "SUCCESSFUL"
                            self.ptr[alloc] = upd["Value"]
                            item["PtrRecord"] = upd["Value"]
                    upd["reads"] += 1
                item["PtrRecordUpdate"] = {
                    k: upd[k] for k in ("Value", "Status", "Reason") if upd.get(k)
                }
            out.append(item)
        return {"Addresses": out}

    def modify_address_attribute(self, AllocationId: str, DomainName: str) -> Any:
        self.calls.append(f"modify {DomainName}")
        if DomainName.startswith("nx."):
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "InvalidParameterValue", "Message": "no A record"}},
                "ModifyAddressAttribute",
            )
        self.update[AllocationId] = {"Value": DomainName + ".", "Status": "PENDING", "reads": 0}
        return {
            "Address": {
                "AllocationId": AllocationId,
                "PtrRecordUpdate": {"Value": DomainName + ".", "Status": "PENDING"},
            }
        }

    def reset_address_attribute(self, AllocationId: str, Attribute: str) -> Any:
        self.calls.append("reset")
        self.update[AllocationId] = {
            "Value": self._default(AllocationId),
            "Status": "PENDING",
            "reads": 0,
        }
        self.ptr.pop(AllocationId, None)
        return {"Address": {"AllocationId": AllocationId}}


# ---------------------------------------------------------------- pure logic


@pytest.mark.parametrize(
    ("name", "want"),
    [("MX1.Example.COM.", "mx1.example.com"), ("mail-2.example.com", "mail-2.example.com")],
)
def test_names_are_normalised(name: str, want: str) -> None:
    assert rdns.normalise_name(name) == want


@pytest.mark.parametrize("bad", ["", "mx1", "-a.example.com", "a..example.com", "a b.example.com"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(rdns.ReverseDnsError, match="fully qualified"):
        rdns.normalise_name(bad)


@pytest.mark.parametrize(
    ("attr", "state", "want", "change", "pending"),
    [
        ({"PtrRecord": "mx1.example.com."}, "present", "mx1.example.com", False, False),
        ({"PtrRecord": DEFAULT_PTR}, "present", "mx1.example.com", True, False),
        ({}, "present", "mx1.example.com", True, False),
        (
            {"PtrRecordUpdate": {"Value": "mx1.example.com.", "Status": "PENDING"}},
            "present",
            "mx1.example.com",
            False,
            True,
        ),
        (
            {"PtrRecordUpdate": {"Value": "old.example.com.", "Status": "PENDING"}},
            "present",
            "mx1.example.com",
            True,
            False,
        ),
        (
            {
                "PtrRecord": DEFAULT_PTR,
                "PtrRecordUpdate": {"Value": "mx1.example.com.", "Status": "FAILED"},
            },
            "present",
            "mx1.example.com",
            True,
            False,
        ),
        ({"PtrRecord": DEFAULT_PTR}, "absent", "", False, False),
        ({}, "absent", "", False, False),
        ({"PtrRecord": "mx1.example.com."}, "absent", "", True, False),
        (
            {"PtrRecordUpdate": {"Value": "mx1.example.com.", "Status": "PENDING"}},
            "absent",
            "",
            True,
            False,
        ),
    ],
)
def test_decide(attr: dict[str, Any], state: str, want: str, change: bool, pending: bool) -> None:
    got_change, got_pending, note = rdns.decide(attr, state, want)
    assert (got_change, got_pending) == (change, pending)
    assert note


def test_errors_are_errors_without_an_endpoint() -> None:
    err = botocore.exceptions.ClientError(
        {"Error": {"Code": "InvalidAction", "Message": "x"}}, "ModifyAddressAttribute"
    )
    assert rdns.unsupported_reason(err, "ModifyAddressAttribute", None) is None
    assert "does not implement" in rdns.unsupported_reason(err, "ModifyAddressAttribute", ENDPOINT)
    other = botocore.exceptions.ClientError(
        {"Error": {"Code": "AuthFailure", "Message": "x"}}, "ModifyAddressAttribute"
    )
    assert rdns.unsupported_reason(other, "ModifyAddressAttribute", ENDPOINT) is None


# ---------------------------------------------------------------- against moto itself


def test_moto_reads_the_attribute(ec2: Any) -> None:
    a = _alloc(ec2)
    attr = rdns.read_attribute(ec2, a["AllocationId"], None)
    assert attr["AllocationId"] == a["AllocationId"]


def test_unknown_address_is_a_clear_error(ec2: Any) -> None:
    with pytest.raises(rdns.ReverseDnsError, match="no Elastic IP eipalloc-00000000"):
        rdns.ensure(ec2, allocation_id="eipalloc-00000000", domain_name="mx1.example.com")
    with pytest.raises(rdns.ReverseDnsError, match=r"no Elastic IP 192\.0\.2\.9"):
        rdns.ensure(ec2, public_ip="192.0.2.9", domain_name="mx1.example.com")


def test_check_mode_reads_and_sends_nothing(ec2: Any) -> None:
    a = _alloc(ec2)
    res = rdns.ensure(ec2, public_ip=a["PublicIp"], domain_name="mx1.example.com", check_mode=True)
    assert res["changed"] is True
    assert res["allocation_id"] == a["AllocationId"]
    assert "check mode" in res["msg"]
    assert not res.get("skipped")


def test_absent_on_a_fresh_address_is_unchanged(ec2: Any) -> None:
    a = _alloc(ec2)
    res = rdns.ensure(ec2, allocation_id=a["AllocationId"], state="absent")
    assert res["changed"] is False
    assert res["applied"] is True


def test_moto_lacks_modify_and_the_module_says_so(ec2: Any) -> None:
    a = _alloc(ec2)
    res = rdns.ensure(
        ec2, allocation_id=a["AllocationId"], domain_name="mx1.example.com", endpoint_url=ENDPOINT
    )
    assert res["skipped"] is True
    assert res["changed"] is False
    assert res["applied"] is False
    assert "NOT set to mx1.example.com" in res["msg"]
    assert "does not implement ModifyAddressAttribute" in res["msg"]


def test_without_an_endpoint_a_missing_call_is_never_success(ec2: Any) -> None:
    a = _alloc(ec2)
    with pytest.raises(NotImplementedError):
        rdns.ensure(ec2, allocation_id=a["AllocationId"], domain_name="mx1.example.com")


# ---------------------------------------------------------------- EC2's write behaviour


def test_set_then_idempotent_while_pending_and_after(ec2: Any) -> None:
    aws = AwsAddressAttributes(ec2, pending_reads=2)
    a = _alloc(ec2)
    first = rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    assert first["changed"] is True
    assert first["pending"] is True
    assert first["ptr_record"].endswith(".amazonaws.com.")
    second = rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    assert second["changed"] is False
    assert second["pending"] is True
    for _ in range(3):
        later = rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="MX1.example.com.")
    assert later["changed"] is False
    assert later["pending"] is False
    assert later["ptr_record"] == "mx1.example.com."
    assert [c for c in aws.calls if c.startswith("modify")] == ["modify mx1.example.com"]


def test_a_new_name_replaces_the_old(ec2: Any) -> None:
    aws = AwsAddressAttributes(ec2, pending_reads=0)
    a = _alloc(ec2)
    rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    res = rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mail1.example.com")
    assert res["changed"] is True
    assert aws.calls.count("modify mail1.example.com") == 1


def test_absent_resets_a_custom_name_once(ec2: Any) -> None:
    aws = AwsAddressAttributes(ec2, pending_reads=0)
    a = _alloc(ec2)
    rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    gone = rdns.ensure(aws, allocation_id=a["AllocationId"], state="absent")
    again = rdns.ensure(aws, allocation_id=a["AllocationId"], state="absent")
    assert (gone["changed"], again["changed"]) == (True, False)
    assert aws.calls.count("reset") == 1


def test_wait_polls_until_done(ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rdns, "POLL_SECONDS", 0.0)
    aws = AwsAddressAttributes(ec2, pending_reads=3)
    a = _alloc(ec2)
    res = rdns.ensure(
        aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com", wait=True
    )
    assert res["changed"] is True
    assert res["pending"] is False
    assert res["ptr_record"] == "mx1.example.com."
    assert res["ptr_record_update"]["status"] == "SUCCESSFUL"


def test_wait_reports_a_failed_update(ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rdns, "POLL_SECONDS", 0.0)
    aws = AwsAddressAttributes(ec2, pending_reads=1, refuse=("mx1.example.com",))
    a = _alloc(ec2)
    with pytest.raises(rdns.ReverseDnsError, match="forward record does not match"):
        rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com", wait=True)
    # The next run sees the failure and asks again rather than calling it done.
    retry = rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="mx1.example.com")
    assert retry["changed"] is True
    assert "failed" in retry["msg"]


def test_wait_times_out(ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rdns, "POLL_SECONDS", 0.0)
    aws = AwsAddressAttributes(ec2, pending_reads=10**6)
    a = _alloc(ec2)
    with pytest.raises(rdns.ReverseDnsError, match="still pending after 0 s"):
        rdns.ensure(
            aws,
            allocation_id=a["AllocationId"],
            domain_name="mx1.example.com",
            wait=True,
            wait_timeout=0,
        )


def test_refusal_names_the_forward_record(ec2: Any) -> None:
    aws = AwsAddressAttributes(ec2)
    a = _alloc(ec2)
    with pytest.raises(rdns.ReverseDnsError, match="already has an A record resolving to"):
        rdns.ensure(aws, allocation_id=a["AllocationId"], domain_name="nx.example.com")


# ---------------------------------------------------------------- through Ansible, moto_server


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def _run_module(moto: MotoServer, args: dict[str, Any], *flags: str) -> dict[str, Any]:
    """Run the module with ansible (ad hoc) on localhost; its result as a dict."""
    env = clean_env(
        ANSIBLE_LIBRARY=str(ROOT / "plugins/modules"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="true",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "ec2_eip_reverse_dns",
            "-a",
            json.dumps({"endpoint_url": moto.url, "region": "us-east-1", **args}),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    out = json.loads(proc.stdout)
    result: dict[str, Any] = out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result


def _server_address(moto: MotoServer) -> dict[str, Any]:
    client = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return _alloc(client)


def test_module_against_moto_server_skips_and_says_why(moto: MotoServer) -> None:
    a = _server_address(moto)
    res = _run_module(moto, {"allocation_id": a["AllocationId"], "domain_name": "mx1.example.com"})
    assert res.get("skipped") is True, res
    assert res["applied"] is False
    assert res["changed"] is False
    assert "HTTP 500" in res["msg"] and "NOT set to mx1.example.com" in res["msg"]


def test_module_check_mode_against_moto_server(moto: MotoServer) -> None:
    a = _server_address(moto)
    res = _run_module(
        moto, {"public_ip": a["PublicIp"], "domain_name": "mx1.example.com"}, "--check"
    )
    assert res["changed"] is True, res
    assert not res.get("skipped")


def test_module_absent_against_moto_server(moto: MotoServer) -> None:
    a = _server_address(moto)
    res = _run_module(moto, {"allocation_id": a["AllocationId"], "state": "absent"})
    assert res["changed"] is False, res
    assert res["applied"] is True


def test_module_fails_clearly_on_a_missing_address(moto: MotoServer) -> None:
    res = _run_module(
        moto, {"allocation_id": "eipalloc-0badc0ffee", "domain_name": "mx1.example.com"}
    )
    assert res.get("failed") is True, res
    assert "no Elastic IP eipalloc-0badc0ffee" in res["msg"]


def test_module_refuses_a_bad_name(moto: MotoServer) -> None:
    a = _server_address(moto)
    res = _run_module(moto, {"allocation_id": a["AllocationId"], "domain_name": "mx1"})
    assert res.get("failed") is True, res
    assert "not a fully qualified host name" in res["msg"]
