"""provision_ec2.yml, the aws_ec2 inventory and teardown_ec2.yml, end to end against moto.

moto's server runs on 127.0.0.1; the playbooks are run with the exact command of
issue 9 (only credentials in the environment and ``-e aws_endpoint_url``).  Any AWS
call that ignored aws_endpoint_url would go to a proxy on a closed loopback port and
fail the run, so a passing run also shows that every call honours it.  What the
playbooks made is then read back with boto3, independently of Ansible.

moto has no ModifyAddressAttribute: the reverse DNS task must report every address as
skipped with the reason, and no PTR may appear.

The three runs against moto take minutes (marked slow); the checks that refuse bad
settings take seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.motoserver import MotoServer, clean_env, client, playbook, tags

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TAG = "mailops:cluster"
CLUSTER = "mailops"
DOMAIN = "example.com"
ADMIN = "203.0.113.0/24"
APPS = "10.42.0.0/16"
TAGGED = [{"Name": f"tag:{TAG}", "Values": [CLUSTER]}]


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def instances(moto: MotoServer) -> list[dict[str, Any]]:
    ec2 = client(moto, "ec2")
    out = []
    for r in ec2.describe_instances(Filters=TAGGED)["Reservations"]:
        out += [i for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    return out


def ingress(group: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    return {
        (p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"])
        for p in group["IpPermissions"]
        for r in p.get("IpRanges", [])
    } | {
        (p["IpProtocol"], p.get("FromPort", -1), p.get("ToPort", -1), "other-source")
        for p in group["IpPermissions"]
        if p.get("UserIdGroupPairs") or p.get("Ipv6Ranges") or p.get("PrefixListIds")
    }


def zone_id(moto: MotoServer, name: str) -> str | None:
    r53 = client(moto, "route53")
    for z in r53.list_hosted_zones()["HostedZones"]:
        if z["Name"] == name + ".":
            return str(z["Id"]).split("/")[-1]
    return None


def record_sets(moto: MotoServer, zid: str) -> dict[tuple[str, str], list[str]]:
    r53 = client(moto, "route53")
    out: dict[tuple[str, str], list[str]] = {}
    for rr in r53.list_resource_record_sets(HostedZoneId=zid)["ResourceRecordSets"]:
        key = (rr["Name"], rr["Type"])
        out.setdefault(key, []).extend(v["Value"] for v in rr.get("ResourceRecords", []))
    return out


def unwrap(value: Any) -> Any:
    """ansible-inventory --list writes untrusted values as {"__ansible_unsafe": value}."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    return value


def check_estate(moto: MotoServer, bulk: int) -> dict[str, str]:
    """What provision_ec2.yml must have made; the address of each host."""
    ec2 = client(moto, "ec2")
    running = instances(moto)
    names = {tags(i)["Name"]: i for i in running}
    want = {"mx1"} | {f"mail{n}" for n in range(1, bulk + 1)}
    assert set(names) == want
    assert all(i["State"]["Name"] == "running" for i in running)
    groups = {
        tags(g)["Name"]: g for g in ec2.describe_security_groups(Filters=TAGGED)["SecurityGroups"]
    }
    assert set(groups) == {f"{CLUSTER}-admin", f"{CLUSTER}-mx", f"{CLUSTER}-bulk"}
    assert ingress(groups[f"{CLUSTER}-admin"]) == {("tcp", 22, 22, ADMIN)}
    assert ingress(groups[f"{CLUSTER}-mx"]) == {
        ("tcp", 25, 25, "0.0.0.0/0"),
        ("tcp", 587, 587, APPS),
    }
    assert ingress(groups[f"{CLUSTER}-bulk"]) == {("tcp", 25, 25, APPS), ("tcp", 587, 587, APPS)}
    gid = {name: g["GroupId"] for name, g in groups.items()}
    for name, inst in names.items():
        role = "mx" if name.startswith("mx") else "bulk"
        assert tags(inst)["mailops:role"] == role
        assert inst["InstanceType"] == "t3.medium"
        assert {g["GroupId"] for g in inst["SecurityGroups"]} == {
            gid[f"{CLUSTER}-admin"],
            gid[f"{CLUSTER}-{role}"],
        }
        assert inst["IamInstanceProfile"]["Arn"].endswith(f"/{CLUSTER}-node")
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
    addresses = ec2.describe_addresses(Filters=TAGGED)["Addresses"]
    assert len(addresses) == len(want)
    by_host = {tags(a)["mailops:host"]: a for a in addresses}
    for name, inst in names.items():
        assert by_host[name]["InstanceId"] == inst["InstanceId"], name
    # The instance role grants nothing.
    iam = client(moto, "iam")
    role = iam.get_role(RoleName=f"{CLUSTER}-node")["Role"]
    assert tags(role)[TAG] == CLUSTER
    assert iam.list_attached_role_policies(RoleName=f"{CLUSTER}-node")["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName=f"{CLUSTER}-node")["PolicyNames"] == []
    statement = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in statement] == [{"Service": "ec2.amazonaws.com"}]
    # moto cannot set reverse DNS: nothing may claim it did.
    attrs = ec2.describe_addresses_attribute(
        AllocationIds=[a["AllocationId"] for a in addresses], Attribute="domain-name"
    )["Addresses"]
    assert not any(a.get("PtrRecord") or a.get("PtrRecordUpdate") for a in attrs)
    return {name: str(by_host[name]["PublicIp"]) for name in names}


def check_records(moto: MotoServer, ips: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    zid = zone_id(moto, DOMAIN)
    assert zid, "no hosted zone for the mail domain"
    rr = record_sets(moto, zid)
    d = DOMAIN + "."
    assert rr[(d, "MX")] == [f"10 mx1.{d}"]
    for name, ip in ips.items():
        assert rr[(f"{name}.{d}", "A")] == [ip]
    bulk = sorted(ip for name, ip in ips.items() if name.startswith("mail"))
    assert sorted(rr[(f"mail.{d}", "A")]) == bulk
    spf = [v for v in rr[(d, "TXT")] if v.startswith('"v=spf1')]
    assert len(spf) == 1
    assert all(f"ip4:{ip}" in spf[0] for ip in ips.values())
    assert "include:_spf.google.com" in spf[0] and spf[0].endswith('-all"')
    assert rr[(f"_dmarc.{d}", "TXT")][0].startswith('"v=DMARC1; p=quarantine')
    assert rr[(f"_mta-sts.{d}", "TXT")][0].startswith('"v=STSv1; id=')
    assert rr[(f"_smtp._tls.{d}", "TXT")][0].startswith('"v=TLSRPTv1; rua=mailto:')
    assert not [k for k in rr if k[1] == "PTR"]
    return rr


def check_inventory(moto: MotoServer, ips: dict[str, str]) -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", "inventories/aws", "--list"],
        cwd=ROOT,
        env=clean_env(AWS_ENDPOINT_URL=moto.url),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    inv = json.loads(proc.stdout)
    assert inv["mail_mx"]["hosts"] == ["mx1"]
    assert sorted(inv["mail_bulk"]["hosts"]) == sorted(n for n in ips if n != "mx1")
    hostvars = inv["_meta"]["hostvars"]
    for name, ip in ips.items():
        assert unwrap(hostvars[name]["public_ipv4"]) == ip
        assert unwrap(hostvars[name]["ansible_host"]) == ip
        assert hostvars[name]["mail_domain"] == DOMAIN


def check_nothing_tagged(moto: MotoServer) -> None:
    ec2 = client(moto, "ec2")
    f = TAGGED
    assert instances(moto) == []
    assert ec2.describe_addresses(Filters=f)["Addresses"] == []
    assert ec2.describe_security_groups(Filters=f)["SecurityGroups"] == []
    assert ec2.describe_route_tables(Filters=f)["RouteTables"] == []
    assert ec2.describe_subnets(Filters=f)["Subnets"] == []
    assert ec2.describe_internet_gateways(Filters=f)["InternetGateways"] == []
    assert ec2.describe_vpcs(Filters=f)["Vpcs"] == []
    assert ec2.describe_key_pairs(Filters=f)["KeyPairs"] == []
    iam = client(moto, "iam")
    assert [r for r in iam.list_roles()["Roles"] if r["RoleName"] == f"{CLUSTER}-node"] == []
    profiles = iam.list_instance_profiles()["InstanceProfiles"]
    assert [p for p in profiles if p["InstanceProfileName"] == f"{CLUSTER}-node"] == []


def bystanders(moto: MotoServer) -> dict[str, str]:
    """Things in the same account that are not the project's, some with our names."""
    ec2 = client(moto, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "mx1"}]}],
    )["Instances"][0]["InstanceId"]
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.create_tags(Resources=[eip], Tags=[{"Key": "mailops:host", "Value": "mx1"}])
    vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    sg = ec2.create_security_group(
        GroupName=f"{CLUSTER}-mx", Description="someone else's", VpcId=vpc
    )["GroupId"]
    return {"instance": inst, "eip": eip, "vpc": vpc, "sg": sg}


def check_bystanders(moto: MotoServer, ids: dict[str, str]) -> None:
    ec2 = client(moto, "ec2")
    state = ec2.describe_instances(InstanceIds=[ids["instance"]])["Reservations"][0]["Instances"][
        0
    ]["State"]["Name"]
    assert state == "running"
    assert ec2.describe_addresses(AllocationIds=[ids["eip"]])["Addresses"]
    assert ec2.describe_vpcs(VpcIds=[ids["vpc"]])["Vpcs"]
    assert ec2.describe_security_groups(GroupIds=[ids["sg"]])["SecurityGroups"]


@pytest.mark.slow
def test_provision_inventory_teardown(moto: MotoServer) -> None:
    started = time.monotonic()
    # Someone else's instance named mx1, address marked for mx1 and group named like ours.
    others = bystanders(moto)
    recap, out = playbook(moto, "provision_ec2.yml")
    assert recap["failed"] == 0 and recap["changed"] > 0
    # No Debian image in moto: the play says which one it used instead.
    assert "No image matches debian-12-amd64-*" in out
    ips = check_estate(moto, bulk=4)
    for name in ips:
        assert f"NOT set to {name}.{DOMAIN}" in out, f"no skip message for {name}"
    zid = zone_id(moto, DOMAIN)
    assert zid
    zone_tags = client(moto, "route53").list_tags_for_resource(
        ResourceType="hostedzone", ResourceId=zid
    )["ResourceTagSet"]["Tags"]
    assert {"Key": TAG, "Value": CLUSTER} in zone_tags
    check_records(moto, ips)
    check_inventory(moto, ips)

    again, out = playbook(moto, "provision_ec2.yml")
    assert again["changed"] == 0, f"second run changed something:\n{out[-6000:]}"
    assert again["failed"] == 0
    assert check_estate(moto, bulk=4) == ips

    gone, out = playbook(moto, "teardown_ec2.yml")
    assert gone["changed"] > 0
    check_nothing_tagged(moto)
    assert zone_id(moto, DOMAIN) is None
    check_bystanders(moto, others)
    twice, out = playbook(moto, "teardown_ec2.yml")
    assert twice["changed"] == 0, f"second teardown changed something:\n{out[-6000:]}"
    print(f"provision, inventory and teardown took {time.monotonic() - started:.0f} s")


def fake_provision(moto: MotoServer, names: list[str]) -> dict[str, str]:
    """Running, tagged instances with an Elastic IP each, as provision_ec2.yml leaves them."""
    ec2 = client(moto, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ips = {}
    for name in names:
        tag_list = [
            {"Key": "Name", "Value": name},
            {"Key": TAG, "Value": CLUSTER},
            {"Key": "mailops:role", "Value": "mx" if name.startswith("mx") else "bulk"},
        ]
        inst = ec2.run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
        )["Instances"][0]["InstanceId"]
        eip = ec2.allocate_address(Domain="vpc")
        ec2.create_tags(
            Resources=[eip["AllocationId"]],
            Tags=[{"Key": TAG, "Value": CLUSTER}, {"Key": "mailops:host", "Value": name}],
        )
        ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=inst)
        ips[name] = str(eip["PublicIp"])
    return ips


@pytest.mark.slow
def test_dns_in_a_zone_it_did_not_make(moto: MotoServer) -> None:
    """The company's existing zone is used as it is and keeps every record not planned.

    The instances are made with boto3 (provision_ec2.yml is the test above); route53.yml
    is the part of provision_ec2.yml that publishes, and teardown's route53 play removes.
    """
    r53 = client(moto, "route53")
    zid = r53.create_hosted_zone(Name=DOMAIN, CallerReference="theirs")["HostedZone"]["Id"]
    zid = zid.split("/")[-1]
    theirs = [
        ("www." + DOMAIN + ".", "A", "192.0.2.80"),
        (DOMAIN + ".", "A", "192.0.2.80"),
        ("mx1." + DOMAIN + ".", "AAAA", "2001:db8::25"),
    ]
    r53.change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": name,
                        "Type": rtype,
                        "TTL": 300,
                        "ResourceRecords": [{"Value": value}],
                    },
                }
                for name, rtype, value in theirs
            ]
        },
    )
    ips = fake_provision(moto, ["mx1", "mail1"])
    first, _ = playbook(moto, "route53.yml")
    assert first["changed"] > 0
    assert zone_id(moto, DOMAIN) == zid, "a second zone was made next to the existing one"
    tags_now = r53.list_tags_for_resource(ResourceType="hostedzone", ResourceId=zid)
    assert tags_now["ResourceTagSet"].get("Tags", []) == [], "someone else's zone was tagged"
    rr = check_records(moto, ips)
    assert rr[("www." + DOMAIN + ".", "A")] == ["192.0.2.80"]
    again, out = playbook(moto, "route53.yml")
    assert again["changed"] == 0, f"second run changed something:\n{out[-6000:]}"

    gone, _ = playbook(moto, "teardown_ec2.yml", "--tags", "route53")
    assert gone["changed"] > 0
    assert zone_id(moto, DOMAIN) == zid
    left = record_sets(moto, zid)
    assert sorted(k for k in left if k[1] not in ("SOA", "NS")) == sorted(
        (name, rtype) for name, rtype, _ in theirs
    )
    assert len(instances(moto)) == 2, "--tags route53 touched the instances"


@pytest.mark.slow
def test_existing_vpc_and_pinned_image(moto: MotoServer) -> None:
    """aws_vpc_id: the hosts go into someone's VPC, which teardown leaves standing."""
    ec2 = client(moto, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    image = ec2.describe_images(Owners=["amazon"])["Images"][-1]["ImageId"]
    small = (
        *("-e", f"aws_vpc_id={vpc}", "-e", f"aws_ami_id={image}"),
        *("-e", "aws_bulk_count=0", "-e", "aws_route53=false", "-e", "aws_reverse_dns=false"),
    )
    made, out = playbook(moto, "provision_ec2.yml", *small)
    assert made["changed"] > 0
    assert "No image matches" not in out
    (inst,) = instances(moto)
    assert inst["VpcId"] == vpc and inst["ImageId"] == image
    assert ec2.describe_vpcs(Filters=TAGGED)["Vpcs"] == [], "a VPC was made anyway"
    subnet = ec2.describe_subnets(SubnetIds=[inst["SubnetId"]])["Subnets"][0]
    assert tags(subnet)[TAG] == CLUSTER
    routes = ec2.describe_route_tables(Filters=TAGGED)["RouteTables"][0]["Routes"]
    gateways_out = {
        r["DestinationCidrBlock"]: r["GatewayId"] for r in routes if r["GatewayId"] != "local"
    }
    assert gateways_out == {"0.0.0.0/0": igw}

    playbook(moto, "teardown_ec2.yml", *small)
    check_nothing_tagged(moto)
    assert ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"]
    gateways = ec2.describe_internet_gateways(InternetGatewayIds=[igw])["InternetGateways"]
    assert gateways[0]["Attachments"][0]["VpcId"] == vpc


def refused(*extra: str) -> str:
    """Run provision_ec2.yml where it must stop at its first checks; its output."""
    command = [str(BIN / "ansible-playbook"), "-i", "inventories/aws"]
    command.append("playbooks/provision_ec2.yml")
    proc = subprocess.run(
        [*command, *extra],
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
    return out


def test_aws_itself_refuses_the_placeholders() -> None:
    # No endpoint: the run is meant for AWS and stops before its first AWS call (any
    # call would fail on the closed proxy of clean_env and name another task).
    out = refused()
    assert "Against AWS set mail_domain (not example.com)" in out


@pytest.mark.parametrize(
    "bad",
    [
        '{"aws_admin_cidrs": ["0.0.0.0/0"]}',
        '{"aws_app_networks": ["10.0.0.0/8", "0.0.0.0/0"]}',
        '{"aws_mx_count": 0}',
        '{"aws_mx_name_prefix": "mail", "aws_bulk_name_prefix": "mail"}',
    ],
)
def test_dangerous_settings_are_refused(bad: str) -> None:
    out = refused("-e", "aws_endpoint_url=http://127.0.0.1:9", "-e", bad)
    assert "never 0.0.0.0/0" in out
