"""Tenant pool addresses on EC2 (issue 20): provision_ec2.yml, the aws_ec2 inventory and
teardown_ec2.yml against moto.

A copy of inventories/aws with two tenants (pools alpha and beta) and two bulk nodes:
every bulk node must get one secondary private IP per pool on its interface, an Elastic
IP associated with exactly that private IP and tagged with its node and pool, an A
record ``<node>-<pool>1.example.com`` and a reverse DNS request for that name (which moto
cannot carry out: the play must say so).  The inventory must hand the addresses to the
roles as ``mail_pool_addresses``.  A second run changes nothing; one more address for one
node adds only that one; dropping it again is refused until ``aws_pool_release=true``,
which then releases exactly it (these three with ``--tags pools``, the pool part
alone); teardown leaves nothing.

moto's server is started with its EIP model taught EC2's association with a secondary
private IP (tests/motoserver.py); everything is read back with boto3.  The playbook runs
take minutes (marked slow); the checks of the settings and of the inventory alone take
seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.motoserver import MotoServer, clean_env, client, playbook, run_playbook, tags

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLUSTER = "mailops"
DOMAIN = "example.com"
TAGGED = [{"Name": "tag:mailops:cluster", "Values": [CLUSTER]}]
NODES = ["mail1", "mail2"]
SMALL = ("-e", "aws_bulk_count=2")
POOLS = (*SMALL, "--tags", "pools")
TENANTS = """\
---
mail_tenants:
  - {name: alpha, domains: [alpha.test], logins: [alpha], pool: alpha, dkim_selectors: [alpha1]}
  - {name: beta, domains: [beta.test], logins: [beta], pool: beta, dkim_selectors: [beta1]}
"""


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """inventories/aws as it is, plus the two tenants (whose pools make the default)."""
    inv = tmp_path / "aws"
    shutil.copytree(ROOT / "inventories/aws", inv)
    (inv / "group_vars/all/tenants.yml").write_text(TENANTS)
    return inv


def pool_state(moto: MotoServer) -> dict[str, dict[str, str]]:
    """Every pool address of the cluster by its Name tag, checked against the interface.

    Each must sit on a secondary private IP of its node's primary interface, carry the
    cluster, node and pool tags, and the node's own address must stay on the primary IP.
    """
    ec2 = client(moto, "ec2")
    nodes = {}
    for r in ec2.describe_instances(Filters=TAGGED)["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                nodes[tags(i)["Name"]] = i
    addresses = ec2.describe_addresses(Filters=TAGGED)["Addresses"]
    out: dict[str, dict[str, str]] = {}
    for name in NODES:
        inst = nodes[name]
        (nic,) = [n for n in inst["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0]
        eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[nic["NetworkInterfaceId"]])
        ips = eni["NetworkInterfaces"][0]["PrivateIpAddresses"]
        primary = [p["PrivateIpAddress"] for p in ips if p["Primary"]]
        secondary = sorted(p["PrivateIpAddress"] for p in ips if not p["Primary"])
        own = [a for a in addresses if tags(a).get("mailops:host") == name]
        assert [a["PrivateIpAddress"] for a in own] == primary, f"{name}'s own address moved"
        assert nic["Association"]["PublicIp"] == own[0]["PublicIp"]
        pools = [a for a in addresses if tags(a).get("mailops:node") == name]
        assert sorted(a["PrivateIpAddress"] for a in pools) == secondary, (
            f"{name}: secondary IPs {secondary}, pool addresses on {pools}"
        )
        for a in pools:
            t = tags(a)
            assert a["NetworkInterfaceId"] == nic["NetworkInterfaceId"]
            assert a["InstanceId"] == inst["InstanceId"]
            assert t["Name"].startswith(f"{name}-{t['mailops:pool']}")
            assert "mailops:host" not in t
            out[t["Name"]] = {
                "pool": t["mailops:pool"],
                "address": a["PublicIp"],
                "private_address": a["PrivateIpAddress"],
                "name": f"{t['Name']}.{DOMAIN}",
            }
    return out


def a_records(moto: MotoServer) -> dict[str, list[str]]:
    r53 = client(moto, "route53")
    zones = [z for z in r53.list_hosted_zones()["HostedZones"] if z["Name"] == DOMAIN + "."]
    if not zones:
        return {}
    sets = r53.list_resource_record_sets(HostedZoneId=zones[0]["Id"])["ResourceRecordSets"]
    return {
        rr["Name"].rstrip("."): [v["Value"] for v in rr["ResourceRecords"]]
        for rr in sets
        if rr["Type"] == "A"
    }


def hostvars(moto: MotoServer, inventory: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inventory), "--list", "--yaml"],
        cwd=ROOT,
        env=clean_env(AWS_ENDPOINT_URL=moto.url),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    listing = yaml.safe_load(proc.stdout)
    found: dict[str, Any] = {}

    def walk(group: dict[str, Any]) -> None:
        for host, hv in (group.get("hosts") or {}).items():
            found.setdefault(host, {}).update(hv or {})
        for child in (group.get("children") or {}).values():
            walk(child or {})

    walk(listing["all"])
    return found


def check_pools(
    moto: MotoServer, inventory: Path, out: str, want: set[str]
) -> dict[str, dict[str, str]]:
    """The addresses named in want exist, with records, inventory entries and rDNS requests."""
    state = pool_state(moto)
    assert set(state) == want
    records = a_records(moto)
    for entry in state.values():
        assert records.get(entry["name"]) == [entry["address"]], entry["name"]
    stale = [n for n in records if n.split(".")[0] not in want and "-" in n.split(".")[0]]
    assert stale == [], f"records of released addresses: {stale}"
    hv = hostvars(moto, inventory)
    for node in NODES:
        mine = sorted(
            (e for e in state.values() if e["name"].startswith(node + "-")),
            key=lambda e: e["name"],
        )
        assert hv[node]["mail_pool_addresses"] == mine, node
    assert hv["mx1"]["mail_pool_addresses"] == []
    for entry in state.values():
        assert f"NOT set to {entry['name']}" in out, f"no reverse DNS message for {entry['name']}"
    return state


@pytest.mark.slow
def test_pools_provision_grow_shrink_teardown(moto: MotoServer, inventory: Path) -> None:
    started = time.monotonic()
    first, out = playbook(moto, "provision_ec2.yml", *SMALL, inventory=inventory)
    assert first["changed"] > 0
    both = {f"{n}-{p}1" for n in NODES for p in ("alpha", "beta")}
    made = check_pools(moto, inventory, out, both)
    assert len({e["address"] for e in made.values()}) == 4
    print(f"first run: {time.monotonic() - started:.0f} s")

    again, out = playbook(moto, "provision_ec2.yml", *SMALL, inventory=inventory)
    assert again["changed"] == 0, f"second run changed something:\n{out[-6000:]}"
    assert check_pools(moto, inventory, out, both) == made

    # One node warms a second alpha address: only that one is made.  The pool part alone
    # (--tags pools) from here on, as an operator would, and in a third of the time.
    more = ("-e", '{"aws_pool_addresses_by_host": {"mail2": {"alpha": 2, "beta": 1}}}')
    grown, out = playbook(moto, "provision_ec2.yml", *POOLS, *more, inventory=inventory)
    assert grown["changed"] > 0
    now = check_pools(moto, inventory, out, both | {"mail2-alpha2"})
    assert {k: v for k, v in now.items() if k != "mail2-alpha2"} == made
    extra = now["mail2-alpha2"]

    # Back to one: refused, nothing touched, and the message says what to do.
    proc = run_playbook(moto, "provision_ec2.yml", *POOLS, inventory=inventory)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, said[-4000:]
    assert f"mail2-alpha2 = {extra['address']}" in said
    assert "-e aws_pool_release=true" in said
    assert pool_state(moto) == now

    shrunk, out = playbook(
        moto, "provision_ec2.yml", *POOLS, "-e", "aws_pool_release=true", inventory=inventory
    )
    assert shrunk["changed"] > 0
    assert check_pools(moto, inventory, out, both) == made
    ec2 = client(moto, "ec2")
    assert (
        ec2.describe_addresses(Filters=[{"Name": "public-ip", "Values": [extra["address"]]}])[
            "Addresses"
        ]
        == []
    ), "the released address is still allocated"

    gone, out = playbook(moto, "teardown_ec2.yml", *SMALL, inventory=inventory)
    assert gone["changed"] > 0
    assert ec2.describe_addresses(Filters=TAGGED)["Addresses"] == []
    left = [
        i
        for r in ec2.describe_instances(Filters=TAGGED)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    assert left == []
    assert a_records(moto) == {}
    print(f"provision, grow, shrink and teardown took {time.monotonic() - started:.0f} s")


def test_pool_tags_make_mail_pool_addresses(moto: MotoServer) -> None:
    """The inventory side alone: instance tags as provisioning writes them, read back."""
    ec2 = client(moto, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    entries = [
        {"address": "192.0.2.31", "name": "mail1-beta1.example.com", "pool": "beta"},
        {"address": "192.0.2.21", "name": "mail1-alpha1.example.com", "pool": "alpha"},
        {"address": "192.0.2.22", "name": "mail1-alpha2.example.com", "pool": "alpha"},
    ]
    tag_list = [
        {"Key": "Name", "Value": "mail1"},
        {"Key": "mailops:cluster", "Value": CLUSTER},
        {"Key": "mailops:role", "Value": "bulk"},
        {"Key": "mailops:poolnot", "Value": "ignored"},
    ]
    for n, e in enumerate(entries):
        private = f"10.42.1.{100 + n}"
        value = json.dumps({**e, "private_address": private}, sort_keys=True)
        tag_list.append({"Key": f"mailops:pool:{private}", "Value": value})
    ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
    )
    got = hostvars(moto, ROOT / "inventories/aws")["mail1"]["mail_pool_addresses"]
    assert [e["name"] for e in got] == [
        "mail1-alpha1.example.com",
        "mail1-alpha2.example.com",
        "mail1-beta1.example.com",
    ]
    assert got[0] == {**entries[1], "private_address": "10.42.1.101"}


@pytest.mark.parametrize(
    "bad",
    [
        '{"aws_pool_addresses": {"Alpha": 1}}',
        '{"aws_pool_addresses": {"alpha": "two"}}',
        '{"aws_pool_addresses": ["alpha"]}',
        '{"aws_pool_addresses_by_host": {"mx1": {"alpha": 1}}}',
        '{"aws_pool_addresses_by_host": {"mail1": 2}}',
    ],
)
def test_bad_pool_settings_are_refused_before_anything_is_made(bad: str) -> None:
    # Nothing listens on the endpoint: any AWS call would fail under another name.
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-i", "inventories/aws", "playbooks/provision_ec2.yml"),
            *("-e", "aws_endpoint_url=http://127.0.0.1:9", "-e", bad),
        ],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "changed=0" in out and "failed=1" in out, out[-3000:]
    assert "maps pool names" in out, out[-3000:]
