"""mailops dns plan: records from real inventories (the lab's and fixtures in tests/data/dns).

The inventories are read by the real Ansible: the ``ansible-inventory`` next to the
test's Python, or the same code run by a fork server that imports Ansible once, each
listing made once per inventory and test process (tests/support/inventory_cache.py);
DKIM keys are made by the openssl CLI in temporary directories, laid
out as the opendkim role and dkim_rotate.yml leave them.  Zone output is parsed back
with dnspython's master-file reader, so "loads into a DNS server" is checked too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.rdatatype
import dns.zone
import pytest
import yaml

from mailops import exitcodes
from mailops.dns import dkim, inventory, plan, records, spf
from mailops.dns.plan import reverse_zone
from tests.support.dns import (
    FIXTURE,
    PRODUCTION,
    ROOT,
    SOA,
    WEIGHTED,
    make_key,
    public_p,
    run_mailops,
)
from tests.support.inventory_cache import use_cached_listings

LAB = ROOT / "inventories" / "lab"


# --- helpers ------------------------------------------------------------------------


def plan_argv(inv: Path, *extra: str) -> list[str]:
    return ["dns", "plan", "--inventory", str(inv), *extra]


def zone_with_soa(zone: str, fragment: str) -> str:
    return f"$ORIGIN {zone}.\n" + SOA.format(z=zone) + fragment


def load_zone(zone: str, fragment: str) -> dns.zone.Zone:
    return dns.zone.from_text(zone_with_soa(zone, fragment), origin=zone, relativize=False)


def txt_of(z: dns.zone.Zone, name: str) -> list[str]:
    node = z.get_node(name + ".")
    assert node is not None, f"no {name} in zone"
    rds = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
    assert rds is not None
    return [b"".join(r.strings).decode() for r in rds]


@pytest.fixture(autouse=True)
def _no_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "mailops.toml"
    empty.write_text("")
    monkeypatch.setenv("MAILOPS_CONFIG", str(empty))
    use_cached_listings(monkeypatch)  # one ansible-inventory run per inventory


# --- the lab inventory ------------------------------------------------------------


def test_lab_plan_has_every_record(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_key(keys / "company.test", "mail")
    code, out, err = run_mailops(
        plan_argv(LAB, "--zone", "company.test", "--dkim-keys", str(keys)), capsys
    )
    assert code == 0, err
    z = load_zone("company.test", out)
    mx = z.get_rdataset("company.test.", "MX")
    assert mx is not None and {r.exchange.to_text() for r in mx} == {"mx1.company.test."}
    for host, ip in [("mx1", "198.51.100.10"), ("mail1", "198.51.100.21"), ("ns1", "198.51.100.2")]:
        a = z.get_rdataset(f"{host}.company.test.", "A")
        assert a is not None and [r.address for r in a] == [ip]
    cluster = z.get_rdataset("mail.company.test.", "A")
    assert cluster is not None
    assert sorted(r.address for r in cluster) == ["198.51.100.21", "198.51.100.22"]
    (spf_text,) = [t for t in txt_of(z, "company.test") if t.startswith("v=spf1")]
    # every sending host (MX and bulk), not the relay client that sends through the MX
    assert spf_text == "v=spf1 ip4:198.51.100.10 ip4:198.51.100.21 ip4:198.51.100.22 -all"
    dkim_txt = txt_of(z, "mail._domainkey.company.test")
    assert dkim_txt == [f"v=DKIM1; k=rsa; p={public_p(keys / 'company.test' / 'mail.private')}"]
    assert txt_of(z, "_dmarc.company.test") == [
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@company.test"
    ]
    assert txt_of(z, "_smtp._tls.company.test") == ["v=TLSRPTv1; rua=mailto:tlsrpt@company.test"]
    assert txt_of(z, "_mta-sts.company.test")[0].startswith("v=STSv1; id=")
    # the outside world's host is not in the company zone
    assert z.get_node("inbox.company.test.") is None
    assert "inbox.outside.test is outside company.test" in err


def test_lab_reverse_zone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_mailops(
        plan_argv(LAB, "--zone", "100.51.198.in-addr.arpa", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0
    z = load_zone("100.51.198.in-addr.arpa", out)
    ptr = {
        name.to_text(): rds[0].target.to_text()
        for name, rds in [
            (n, node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.PTR))
            for n, node in z.nodes.items()
        ]
        if rds is not None
    }
    assert ptr["10.100.51.198.in-addr.arpa."] == "mx1.company.test."
    assert ptr["21.100.51.198.in-addr.arpa."] == "mail1.company.test."
    assert ptr["22.100.51.198.in-addr.arpa."] == "mail2.company.test."
    assert ptr["40.100.51.198.in-addr.arpa."] == "inbox.outside.test."
    assert "IN MX" not in out and "TXT" not in out


def test_lab_keys_dir_resolved_from_the_inventory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """opendkim__keys_dir is "{{ lab_secrets_dir }}/dkim", lab_secrets_dir is
    "{{ inventory_dir }}/../../.lab/secrets": a copy of the lab inventory elsewhere, named
    by a relative path as the lab's play does, finds the keys beside its own copy,
    whatever --playbook-dir says."""
    repo = tmp_path / "repo"
    shutil.copytree(LAB, repo / "inventories" / "lab")
    key = make_key(repo / ".lab" / "secrets" / "dkim" / "company.test", "s1")
    elsewhere = tmp_path / "elsewhere" / "playbooks"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(repo)
    code, out, err = run_mailops(
        plan_argv(
            repo / "inventories" / "lab", "--format", "json", "--playbook-dir", str(elsewhere)
        ),
        capsys,
    )
    assert code == 0, err
    recs = {(r["name"], r["type"]): r for r in json.loads(out)}
    value = records.unquote_txt(recs[("s1._domainkey.company.test", "TXT")]["values"][0])
    assert value == f"v=DKIM1; k=rsa; p={public_p(key)}"


def test_lab_default_keys_dir_is_the_repos_lab_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    inv = inventory.load(str(LAB))
    s = inventory.settings(inv)
    assert s.dkim_keys_dir == (ROOT / ".lab" / "secrets" / "dkim").resolve()


# --- a fixture with IPv6, weights, includes and a DMARC dictionary -----------------


def test_weighted_cluster_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_mailops(
        plan_argv(WEIGHTED, "--format", "json", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0, err
    recs = json.loads(out)
    cluster = [r for r in recs if r["name"] == "bulk.example.com"]
    got = {(r["type"], r["set_id"], r["values"][0], r["weight"]) for r in cluster}
    assert got == {
        ("A", "mail1", "192.0.2.21", 100),
        ("A", "mail2", "192.0.2.22", 100),
        ("A", "mail3", "198.51.100.23", 10),
        ("A", "mail4", "198.51.100.24", 0),
        ("AAAA", "mail1", "2001:db8:10::21", 100),
    }
    mx = next(r for r in recs if r["type"] == "MX")
    assert mx["values"] == ["10 mx1.example.com.", "20 mx2.example.com."]
    assert all(r["ttl"] == 600 for r in recs)
    ptr6 = next(
        r
        for r in recs
        if r["type"] == "PTR"
        and r["values"] == ["mx1.example.com."]
        and r["name"].endswith("ip6.arpa")
    )
    assert ptr6["zone"] == reverse_zone("2001:db8:10::10")
    assert ptr6["name"].startswith("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.")
    spf_rec = next(r for r in recs if r["type"] == "TXT" and r["name"] == "example.com")
    assert records.unquote_txt(spf_rec["values"][0]) == (
        "v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 ip4:192.0.2.21 ip4:192.0.2.22 "
        "ip4:198.51.100.23 ip4:198.51.100.24 ip6:2001:db8:10::10 ip6:2001:db8:10::21 "
        "include:_spf.google.com a:relay.example.com ~all"
    )
    dmarc = next(r for r in recs if r["name"] == "_dmarc.example.com")
    assert records.unquote_txt(dmarc["values"][0]) == (
        "v=DMARC1; p=quarantine; pct=50; "
        "rua=mailto:dmarc@example.com,mailto:reports@dmarc.example.org; "
        "ruf=mailto:forensic@example.com; adkim=s; aspf=r"
    )
    assert "example.com._report._dmarc.dmarc.example.org" in err
    # the monitor's name is in another domain: PTR yes, A not here
    assert any(r["values"] == ["status.example.net."] for r in recs)
    assert not any(r["name"] == "status.example.net" for r in recs)


def test_weighted_cluster_route53(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_mailops(
        plan_argv(WEIGHTED, "--format", "route53", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0
    items = json.loads(out)
    assert not any(i["type"] == "PTR" for i in items)
    assert all(set(i) >= {"zone", "record", "type", "ttl", "value"} for i in items)
    assert all(i["zone"] == "example.com" and isinstance(i["value"], list) for i in items)
    weighted = [i for i in items if "weight" in i]
    assert {(i["identifier"], i["weight"]) for i in weighted if i["type"] == "A"} == {
        ("mail1", 100),
        ("mail2", 100),
        ("mail3", 10),
        ("mail4", 0),
    }
    txt = next(i for i in items if i["record"] == "_mta-sts.example.com")
    assert txt["value"][0].startswith('"v=STSv1; id=')


def test_weighted_cluster_zone_comments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_mailops(
        plan_argv(WEIGHTED, "--zone", "example.com", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0
    # a weight-0 node gets no traffic: its line is there but commented out
    assert "; bulk" in out and "198.51.100.24 ; mail4, weight 0" in out
    z = load_zone("example.com", out)
    cluster = z.get_rdataset("bulk.example.com.", "A")
    assert cluster is not None
    assert sorted(r.address for r in cluster) == ["192.0.2.21", "192.0.2.22", "198.51.100.23"]


def test_mta_sts_policy_file_and_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = tmp_path / "mta-sts.txt"
    code, out, _ = run_mailops(
        plan_argv(
            WEIGHTED,
            "--format",
            "json",
            "--dkim-keys",
            str(tmp_path),
            "--mta-sts-policy-out",
            str(policy),
        ),
        capsys,
    )
    assert code == 0
    body = policy.read_bytes()
    assert body == (
        b"version: STSv1\r\nmode: testing\r\nmx: mx1.example.com\r\nmx: mx2.example.com\r\n"
        b"max_age: 86400\r\n"
    )
    rec = next(r for r in json.loads(out) if r["name"] == "_mta-sts.example.com")
    pid = hashlib.sha256(body).hexdigest()[:20]
    assert records.unquote_txt(rec["values"][0]) == f"v=STSv1; id={pid}"


# --- SPF: lookup counting and refusal ----------------------------------------------


@pytest.mark.parametrize(
    ("record", "lookups"),
    [
        ("v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all", 0),
        ("v=spf1 a mx ptr include:x.example exists:%{i}.y.example ~all", 5),
        ("v=spf1 a:b.example/24 mx/24//64 redirect=z.example", 3),
        ("v=spf1 ip4:192.0.2.0/24 exp=explain.example -all", 0),
    ],
)
def test_spf_lookup_count(record: str, lookups: int) -> None:
    assert spf.parse(record).lookups == lookups


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ip4:300.1.1.1 -all",
        "v=spf1 ip4:2001:db8::1",
        "v=spf1 include: -all",
        "v=spf1 foo:bar",
        "v=spf1 all:x",
        "v=spf1 a/33",
        "v=spf1 ip4:192.0.2.0/024",
        "v=spf1 redirect=a.example redirect=b.example",
        "spf1 -all",
    ],
)
def test_spf_syntax_errors(record: str) -> None:
    with pytest.raises(spf.SpfSyntaxError):
        spf.parse(record)


def write_inventory(root: Path, group_vars: dict[str, Any], extra_hosts: str = "") -> Path:
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text(
        "all:\n  children:\n    mail_mx:\n      hosts:\n        mx1:\n"
        "          public_ipv4: 192.0.2.10\n    mail_bulk:\n      hosts:\n        mail1:\n"
        "          public_ipv4: 192.0.2.21\n" + extra_hosts
    )
    (root / "group_vars" / "all" / "main.yml").write_text(
        yaml.safe_dump({"mail_domain": "example.com", **group_vars})
    )
    return root


def test_spf_over_ten_lookups_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    includes = [f"_spf{i}.example.net" for i in range(10)] + ["mx"]
    inv = write_inventory(tmp_path / "inv", {"dns_spf_includes": includes})
    code, out, err = run_mailops(plan_argv(inv, "--dkim-keys", str(tmp_path)), capsys)
    assert code == exitcodes.DATAERR
    assert out == ""
    assert "11 DNS lookups" in err and "limit of 10" in err


def test_spf_ten_lookups_is_accepted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    includes = [f"_spf{i}.example.net" for i in range(9)] + ["mx"]
    inv = write_inventory(tmp_path / "inv", {"dns_spf_includes": includes})
    code, out, err = run_mailops(plan_argv(inv, "--dkim-keys", str(tmp_path)), capsys)
    assert code == 0, err
    assert "SPF needs 10 DNS lookups" in out


def test_long_spf_is_split_into_255_byte_strings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hosts = "".join(
        f'        bulk{i}:\n          public_ipv6: "2001:db8:{i:x}::{i:x}"\n' for i in range(1, 41)
    )
    inv = write_inventory(tmp_path / "inv", {}, hosts)
    code, out, err = run_mailops(
        plan_argv(inv, "--zone", "example.com", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0, err
    z = load_zone("example.com", out)
    rds = z.get_rdataset("example.com.", "TXT")
    assert rds is not None
    (rd,) = [r for r in rds if r.strings[0].startswith(b"v=spf1")]
    assert len(rd.strings) >= 3
    assert all(len(s) <= 255 for s in rd.strings)
    joined = b"".join(rd.strings).decode()
    assert all(f"ip6:2001:db8:{i:x}::{i:x}" in joined for i in range(1, 41))
    spf.parse(joined)


def test_split_and_quote_round_trip() -> None:
    text = 'a"b\\c' + "x" * 600
    parts = records.split_txt(text)
    assert [len(p) for p in parts] == [255, 255, 95]
    assert b"".join(parts).decode() == text
    assert records.unquote_txt(records.txt_value(text)) == text
    assert records.split_txt("") == [b""]


# --- DKIM keys: rotation state, file formats ---------------------------------------


def test_rotation_state_lists_the_selectors_in_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "example.com"
    old = make_key(d, "mail")
    new = make_key(d, "s20260101000000")
    make_key(d / "retired", "gone")
    make_key(d, "stray")  # a file not in state.yml is not in force
    # the shape dkim_rotate.yml writes with to_nice_yaml (indent 4)
    state = {
        "active": "s20260101000000",
        "retiring": {"mail": 1767225600},
        "selectors": ["mail", "s20260101000000"],
    }
    (d / "state.yml").write_text(yaml.dump(state, indent=4, default_flow_style=False))
    keys, notes = dkim.load(tmp_path, "example.com")
    assert [k.selector for k in keys] == ["mail", "s20260101000000"]
    assert [k.p for k in keys] == [public_p(old), public_p(new)]
    assert notes == []
    inv = write_inventory(tmp_path / "inv", {})
    code, out, _ = run_mailops(
        plan_argv(inv, "--format", "json", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0
    names = {r["name"] for r in json.loads(out) if "_domainkey" in r["name"]}
    assert names == {"mail._domainkey.example.com", "s20260101000000._domainkey.example.com"}


def test_state_flow_list_and_quotes(tmp_path: Path) -> None:
    (tmp_path / "state.yml").write_text("---\nactive: 'b'\nselectors: [a, \"b\"]\nretiring: {}\n")
    assert dkim.read_state(tmp_path / "state.yml") == ["a", "b"]
    (tmp_path / "state.yml").write_text("active: a\nretiring: {}\n")
    with pytest.raises(dkim.KeyError_, match="no 'selectors'"):
        dkim.read_state(tmp_path / "state.yml")


def test_opendkim_genkey_txt_and_ed25519(tmp_path: Path) -> None:
    d = tmp_path / "example.com"
    d.mkdir()
    p = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "A" * 20
    (d / "old.txt").write_text(
        'old._domainkey\tIN\tTXT\t( "v=DKIM1; h=sha256; k=rsa; "\n\t  "p='
        + p[:30]
        + '"\n\t  "'
        + p[30:]
        + '" )  ; ----- DKIM key old for example.com\n'
    )
    ed = make_key(d, "ed", kind="ed25519")
    keys, _ = dkim.load(tmp_path, "example.com")
    by = {k.selector: k for k in keys}
    assert by["old"].p == p and by["old"].key_type == "rsa"
    assert by["ed"].key_type == "ed25519" and len(by["ed"].public) == 32
    assert by["ed"].source == ed


def test_txt_that_disagrees_with_the_private_key_is_noted(tmp_path: Path) -> None:
    d = tmp_path / "example.com"
    make_key(d, "mail")
    other = make_key(tmp_path / "other", "x")
    (d / "mail.txt").write_text(f"v=DKIM1; k=rsa; p={public_p(other)}")
    keys, notes = dkim.load(tmp_path, "example.com")
    assert keys[0].p == public_p(d / "mail.private")
    assert len(notes) == 1 and "does not match" in notes[0]


def test_unreadable_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "example.com"
    d.mkdir()
    (d / "mail.private").write_text("not a key\n")
    inv = write_inventory(tmp_path / "inv", {})
    code, _, err = run_mailops(plan_argv(inv, "--dkim-keys", str(tmp_path)), capsys)
    assert code == exitcodes.NOINPUT
    assert "mail.private: openssl cannot read the key" in err


# --- inventory errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("group_vars", "message"),
    [
        ({"dns_spf_all": "?all"}, "dns_spf_all"),
        ({"dns_mta_sts_mode": "strict"}, "dns_mta_sts_mode"),
        ({"dns_dmarc": {"p": "block"}}, "dns_dmarc.p"),
        ({"dns_dmarc": {"rua": "dmarc@example.com"}}, "mailto"),
        ({"dns_dmarc": {"policy": "reject"}}, "unknown keys policy"),
        ({"dns_ttl": "soon"}, "dns_ttl"),
        ({"opendkim__keys_dir": "{{ lookup('env', 'HOME') }}/dkim"}, "does not render"),
        ({"opendkim__keys_dir": "{{ nowhere }}/dkim"}, "nowhere, which is not defined"),
    ],
)
def test_bad_variables_are_named(
    group_vars: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path / "inv", group_vars)
    code, out, err = run_mailops(plan_argv(inv), capsys)
    assert code == exitcodes.CONFIG
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_an_inventory_changed_in_place_is_read_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The listing cache (tests/support/inventory_cache.py) must not hide an edit."""
    inv = write_inventory(tmp_path / "inv", {})
    code, out, err = run_mailops(plan_argv(inv, "--format", "json"), capsys)
    assert code == 0, err
    assert any(r["values"] == ["192.0.2.21"] for r in json.loads(out))
    hosts = inv / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("192.0.2.21", "192.0.2.29"))
    code, out, err = run_mailops(plan_argv(inv, "--format", "json"), capsys)
    assert code == 0, err
    assert any(r["values"] == ["192.0.2.29"] for r in json.loads(out))
    assert not any("192.0.2.21" in str(r["values"]) for r in json.loads(out))


def test_two_hosts_on_one_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write_inventory(
        tmp_path / "inv", {}, "        mail2:\n          public_ipv4: 192.0.2.21\n"
    )
    code, _, err = run_mailops(plan_argv(inv, "--dkim-keys", str(tmp_path)), capsys)
    assert code == exitcodes.DATAERR
    assert "both have address 192.0.2.21" in err


def test_missing_inventory_and_missing_ansible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_mailops(plan_argv(tmp_path / "nope"), capsys)
    assert code == exitcodes.CONFIG and "no such inventory" in err
    settings = tmp_path / "s.toml"
    settings.write_text(f'[dns]\nansible_inventory = "{tmp_path / "no-ansible"}"\n')
    monkeypatch.setenv("MAILOPS_CONFIG", str(settings))
    code, _, err = run_mailops(plan_argv(FIXTURE), capsys)
    assert code == exitcodes.CONFIG and "cannot run" in err


def test_resolve_references() -> None:
    v = {"a": "{{ b }}/x", "b": "{{ c }}", "c": "/root", "l": ["{{ c }}", 3], "n": 5}
    assert inventory.resolve("{{ a }}", v, "t") == "/root/x"
    assert inventory.resolve("{{ l }}", v, "t") == ["/root", 3]
    assert inventory.resolve("port {{n}}", v, "t") == "port 5"
    with pytest.raises(inventory.InventoryError, match="nest too deep"):
        inventory.resolve("{{ x }}", {"x": "{{ x }}"}, "t")


def test_route53_items_load_into_moto(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The route53 items map one to one onto a ChangeResourceRecordSets batch (what the
    amazon.aws.route53 module sends), and moto's Route53 takes and lists them back."""
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    make_key(tmp_path / "example.com", "mail")
    code, out, _ = run_mailops(
        plan_argv(WEIGHTED, "--format", "route53", "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0
    items = json.loads(out)
    changes = []
    for i in items:
        rrset: dict[str, Any] = {
            "Name": i["record"],
            "Type": i["type"],
            "TTL": i["ttl"],
            "ResourceRecords": [{"Value": v} for v in i["value"]],
        }
        if "weight" in i:
            rrset |= {"SetIdentifier": i["identifier"], "Weight": i["weight"]}
        changes.append({"Action": "CREATE", "ResourceRecordSet": rrset})
    with moto.mock_aws():
        r53 = boto3.client("route53", region_name="us-east-1")
        zone = r53.create_hosted_zone(Name="example.com", CallerReference="mailops-test")
        zid = zone["HostedZone"]["Id"]
        r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": changes})
        listed = r53.list_resource_record_sets(HostedZoneId=zid)["ResourceRecordSets"]
    got = {
        (r["Name"], r["Type"], r.get("SetIdentifier")): [v["Value"] for v in r["ResourceRecords"]]
        for r in listed
        if r["Type"] not in ("SOA", "NS")
    }
    assert got[("bulk.example.com.", "A", "mail3")] == ["198.51.100.23"]
    dkim_value = got[("mail._domainkey.example.com.", "TXT", None)][0]
    assert (
        records.unquote_txt(dkim_value)
        == f"v=DKIM1; k=rsa; p={public_p(tmp_path / 'example.com' / 'mail.private')}"
    )
    assert len(got) == len(items)


def test_settings_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text(
        f'[dns]\ninventory = "{WEIGHTED}"\nformat = "json"\ndkim_keys = "{tmp_path}"\n'
    )
    monkeypatch.setenv("MAILOPS_CONFIG", str(settings))
    code, out, _ = run_mailops(["dns", "plan"], capsys)
    assert code == 0 and json.loads(out)[0]["name"] == "example.com"
    code, out, _ = run_mailops(["dns", "plan", "--format", "zone", "--zone", "example.com"], capsys)
    assert code == 0 and out.startswith("; Records for example.com")
    settings.write_text("[dns]\nnameservers = 1\n")
    code, _, err = run_mailops(["dns", "plan"], capsys)
    assert code == exitcodes.CONFIG and "unknown key 'nameservers'" in err
    settings.write_text("[dns]\n")
    code, _, err = run_mailops(["dns", "plan"], capsys)
    assert code == exitcodes.USAGE and "no inventory" in err


def test_values_marked_unsafe_by_ansible_inventory_are_read() -> None:
    from mailops.dns.inventory import unwrap_unsafe

    listing = {
        "_meta": {"hostvars": {"mx1": {"public_ipv4": {"__ansible_unsafe": "192.0.2.10"}}}},
        "mail_mx": {"hosts": ["mx1"]},
    }
    assert unwrap_unsafe(listing)["_meta"]["hostvars"]["mx1"]["public_ipv4"] == "192.0.2.10"
    assert unwrap_unsafe([{"__ansible_unsafe": "x"}, 1]) == ["x", 1]


# --- tenants (issue 20) -----------------------------------------------------------


def plan_json(
    capsys: pytest.CaptureFixture[str], inv: Path, keys: Path, *extra: str
) -> tuple[dict[tuple[str, str], dict[str, Any]], str]:
    code, out, err = run_mailops(
        plan_argv(inv, "--format", "json", "--dkim-keys", str(keys), *extra), capsys
    )
    assert code == 0, err
    recs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in json.loads(out):
        assert (r["name"], r["type"]) not in recs, r  # one RRset per name and type
        recs[(r["name"], r["type"])] = r
    return recs, err


def txt(recs: dict[tuple[str, str], dict[str, Any]], name: str) -> list[str]:
    return [records.unquote_txt(v) for v in recs[(name, "TXT")]["values"]]


def test_lab_tenant_zones(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """alpha.test and beta.test are zones of their own: SPF of exactly the pool (on
    both bulk nodes), DMARC reporting to the company, and no MX."""
    recs, _ = plan_json(capsys, LAB, tmp_path)
    assert txt(recs, "alpha.test") == ["v=spf1 ip4:198.51.100.121 ip4:198.51.100.122 -all"]
    assert txt(recs, "beta.test") == ["v=spf1 ip4:198.51.100.131 ip4:198.51.100.132 -all"]
    for d in ("alpha.test", "beta.test"):
        assert recs[(d, "TXT")]["zone"] == d
        assert (d, "MX") not in recs
        assert txt(recs, f"_dmarc.{d}") == ["v=DMARC1; p=quarantine; rua=mailto:dmarc@company.test"]
        auth = recs[(f"{d}._report._dmarc.company.test", "TXT")]
        assert auth["zone"] == "company.test"
        assert records.unquote_txt(auth["values"][0]) == "v=DMARC1"
    # FCrDNS of every pool address: A of its name, PTR back to it
    for host, pool, n, address in [
        ("mail1", "alpha", 1, "198.51.100.121"),
        ("mail2", "alpha", 1, "198.51.100.122"),
        ("mail1", "beta", 1, "198.51.100.131"),
        ("mail2", "beta", 1, "198.51.100.132"),
    ]:
        name = f"{host}-{pool}{n}.company.test"
        assert recs[(name, "A")]["values"] == [address]
        ptr = recs[(f"{address.split('.')[-1]}.100.51.198.in-addr.arpa", "PTR")]
        assert ptr["values"] == [f"{name}."]
    # the pools stay out of the company's SPF and the cluster name
    assert "198.51.100.121" not in txt(recs, "company.test")[0]
    assert all("198.51.100.1" not in v for v in recs[("mail.company.test", "A")]["values"])


def test_tenant_pool_spanning_two_hosts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The production example: acme's pool is two addresses on mail1 and one on mail2,
    globex and initech share a pool, initech has two domains and a DMARC of its own."""
    make_key(tmp_path / "acme.example", "acme1")
    recs, err = plan_json(capsys, PRODUCTION, tmp_path)
    assert txt(recs, "acme.example") == [
        "v=spf1 ip4:198.51.100.11 ip4:198.51.100.12 ip4:198.51.100.13 -all"
    ]
    shared = ["v=spf1 ip4:198.51.100.31 ip4:198.51.100.32 -all"]
    for d in ("globex.example", "initech.example", "initech-news.example"):
        assert txt(recs, d) == shared, d
        assert recs[(d, "TXT")]["zone"] == d
    # n counts within the host and the pool; an entry's own name wins
    assert recs[("mail1-acme1.example.com", "A")]["values"] == ["198.51.100.11"]
    assert recs[("mail1-acme2.example.com", "A")]["values"] == ["198.51.100.12"]
    assert recs[("mail2-acme1.example.com", "A")]["values"] == ["198.51.100.13"]
    assert recs[("out2.smallbiz.example.com", "A")]["values"] == ["198.51.100.32"]
    assert recs[("32.100.51.198.in-addr.arpa", "PTR")]["values"] == ["out2.smallbiz.example.com."]
    # the company's record keeps its include; the tenants' never get it
    assert "include:_spf.google.com" in txt(recs, "example.com")[0]
    assert txt(recs, "_dmarc.initech.example") == [
        "v=DMARC1; p=reject; rua=mailto:dmarc@example.com; adkim=s"
    ]
    assert txt(recs, "_dmarc.globex.example") == [
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"
    ]
    assert txt(recs, "acme1._domainkey.acme.example") == [
        f"v=DKIM1; k=rsa; p={public_p(tmp_path / 'acme.example' / 'acme1.private')}"
    ]
    assert recs[("acme1._domainkey.acme.example", "TXT")]["zone"] == "acme.example"
    assert "no DKIM keys under" in err and "globex.example" in err
    # (mail_tenant_passwords holds lookups, which the plan refuses: it never read them)


def test_tenant_zone_files_load(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for zone in ("acme.example", "initech.example"):
        code, out, err = run_mailops(
            plan_argv(PRODUCTION, "--zone", zone, "--dkim-keys", str(tmp_path)), capsys
        )
        assert code == 0, err
        z = load_zone(zone, out)
        (spf_text,) = [t for t in txt_of(z, zone) if t.startswith("v=spf1")]
        spf.parse(spf_text)
        assert z.get_rdataset(f"{zone}.", "MX") is None
        assert txt_of(z, f"_dmarc.{zone}")[0].startswith("v=DMARC1; p=")


def tenant_inventory(root: Path, tenants: list[dict[str, Any]], **extra: Any) -> Path:
    pools = "          mail_pool_addresses:\n            - {pool: p1, address: 192.0.2.121}\n"
    return write_inventory(
        root,
        {"mail_tenants": tenants, **extra},
        "        mail2:\n          public_ipv4: 192.0.2.22\n" + pools,
    )


def test_tenant_mx_only_when_asked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tenants = [
        {"name": "a", "domains": ["a.example"], "pool": "p1", "mx": "company"},
        {"name": "b", "domains": ["b.example"], "pool": "p1", "mx": ["mx.b.example"]},
        {"name": "c", "domains": ["c.example", "news.c.example"], "pool": "p1"},
    ]
    inv = tenant_inventory(tmp_path / "inv", tenants)
    recs, _ = plan_json(capsys, inv, tmp_path)
    assert recs[("a.example", "MX")]["values"] == ["10 mx1.example.com."]
    assert recs[("b.example", "MX")]["values"] == ["10 mx.b.example."]
    assert ("c.example", "MX") not in recs
    # a tenant domain under another is in that one's zone, SPF and DMARC of its own
    assert recs[("news.c.example", "TXT")]["zone"] == "c.example"
    assert txt(recs, "news.c.example") == ["v=spf1 ip4:192.0.2.121 -all"]
    assert ("news.c.example._report._dmarc.example.com", "TXT") in recs


def test_tenant_selector_without_key_is_noted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    make_key(tmp_path / "keys" / "a.example", "other")
    tenants = [{"name": "a", "domains": ["a.example"], "pool": "p1", "dkim_selectors": ["a1"]}]
    inv = tenant_inventory(tmp_path / "inv", tenants)
    recs, err = plan_json(capsys, inv, tmp_path / "keys")
    assert ("other._domainkey.a.example", "TXT") in recs  # in the directory: published
    assert "tenant a's selector a1 (dkim_selectors) has no key in" in err


@pytest.mark.parametrize(
    ("tenants", "extra_hosts", "code", "message"),
    [
        (
            [{"name": "a", "domains": ["a.example"], "pool": "nowhere"}],
            "",
            exitcodes.CONFIG,
            "pool nowhere has no address on any mail_bulk host",
        ),
        (
            [{"name": "a", "domains": ["example.com"], "pool": "p1"}],
            "",
            exitcodes.CONFIG,
            "example.com is the company's domain",
        ),
        (
            [{"name": "a", "domains": ["a.example"], "pool": "p1", "dmarc": {"p": "drop"}}],
            "",
            exitcodes.CONFIG,
            "mail_tenants[a].dmarc.p",
        ),
        (
            [
                {"name": "a", "domains": ["a.example"], "pool": "p1"},
                {"name": "b", "domains": ["a.example"], "pool": "p1"},
            ],
            "",
            exitcodes.CONFIG,
            "a.example is tenant a's already",
        ),
        (
            [{"name": "a", "domains": ["a.example"], "pool": "p1"}],
            "        mail3:\n          public_ipv4: 192.0.2.23\n          mail_pool_addresses:\n"
            "            - {pool: p1, address: 192.0.2.21}\n",
            exitcodes.DATAERR,
            "192.0.2.21 is also mail1's",
        ),
    ],
)
def test_tenant_errors_are_named(
    tenants: list[dict[str, Any]],
    extra_hosts: str,
    code: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inv = write_inventory(
        tmp_path / "inv",
        {"mail_tenants": tenants},
        "        mail2:\n          public_ipv4: 192.0.2.22\n          mail_pool_addresses:\n"
        "            - {pool: p1, address: 192.0.2.121}\n" + extra_hosts,
    )
    got, out, err = run_mailops(plan_argv(inv, "--dkim-keys", str(tmp_path)), capsys)
    assert (got, out) == (code, "")
    assert message in err and "Traceback" not in err


def test_pool_addresses_only_on_bulk_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path / "inv", {})
    hosts = (
        (inv / "hosts.yml")
        .read_text()
        .replace(
            "          public_ipv4: 192.0.2.10\n",
            "          public_ipv4: 192.0.2.10\n          mail_pool_addresses:\n"
            "            - {pool: p1, address: 192.0.2.121}\n",
        )
    )
    (inv / "hosts.yml").write_text(hosts)
    code, _, err = run_mailops(plan_argv(inv, "--dkim-keys", str(tmp_path)), capsys)
    assert code == exitcodes.CONFIG
    assert "mx1: mail_pool_addresses is read on mail_bulk hosts only" in err


def test_docs_show_the_production_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/dns.md pastes the plan of tests/data/dns/production: it must be what the
    command prints today."""
    command = "$ mailops dns plan --inventory tests/data/dns/production --dkim-keys /empty\n"
    text = (ROOT / "docs" / "dns.md").read_text()
    assert command in text
    shown = text.split(command, 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    code, out, err = run_mailops(
        plan_argv(Path("tests/data/dns/production"), "--dkim-keys", str(tmp_path)), capsys
    )
    assert code == 0, err
    assert shown == out


# --- MTA-STS: one policy text, its id, and where it is served ---------------------


def _sts_settings(**changes: Any) -> inventory.Settings:
    """A small cluster as plain Settings (no Ansible): one MX, one bulk node, a monitor."""
    hosts = [
        inventory.Host("mx1", "mx1.example.com", "192.0.2.10", None, frozenset({"mail_mx"})),
        inventory.Host("mail1", "mail1.example.com", "192.0.2.21", None, frozenset({"mail_bulk"})),
        inventory.Host(
            "monitor", "monitor.example.com", "192.0.2.50", "2001:db8::50",
            frozenset({"mail_monitor"}),
        ),
    ]  # fmt: skip
    base: dict[str, Any] = {
        "domain": "example.com",
        "hosts": hosts,
        "mta_sts_mode": "testing",
        "tlsrpt_rua": ["mailto:tlsrpt@example.com"],
    }
    return inventory.Settings(**{**base, **changes})


def _sts(s: inventory.Settings) -> tuple[str, str, str]:
    """(policy, id, the _mta-sts record's text) of the mail domain."""
    p = plan.build(s, [])
    (txt,) = [r for r in p.records if r.name == "_mta-sts.example.com"]
    assert p.mta_sts_policy is not None and p.mta_sts_id is not None
    return p.mta_sts_policy, p.mta_sts_id, records.unquote_txt(txt.values[0])


def _other_mx(s: inventory.Settings) -> inventory.Settings:
    extra = inventory.Host("mx2", "mx2.example.com", "192.0.2.11", None, frozenset({"mail_mx"}))
    return _sts_settings(hosts=[*s.hosts, extra])


def _more_bulk(s: inventory.Settings) -> inventory.Settings:
    extra = inventory.Host(
        "mail2", "mail2.example.com", "192.0.2.22", None, frozenset({"mail_bulk"})
    )
    return _sts_settings(hosts=[*s.hosts, extra])


Change = Callable[[inventory.Settings], inventory.Settings]
POLICY_CHANGES: dict[str, Change] = {
    "mode enforce": lambda s: _sts_settings(mta_sts_mode="enforce"),
    "mode none": lambda s: _sts_settings(mta_sts_mode="none"),
    "max_age": lambda s: _sts_settings(mta_sts_max_age=86400),
    "another MX host": _other_mx,
}
OTHER_CHANGES: dict[str, Change] = {
    "another bulk node": _more_bulk,
    "an SPF include": lambda s: _sts_settings(spf_includes=["_spf.example.net"]),
    "DMARC p=reject": lambda s: _sts_settings(dmarc=inventory.Dmarc(p="reject")),
    "TTL": lambda s: _sts_settings(ttl=60),
    "TLS-RPT address": lambda s: _sts_settings(tlsrpt_rua=["mailto:tls@example.net"]),
}


@pytest.mark.parametrize("change", sorted(POLICY_CHANGES))
def test_mta_sts_id_changes_with_the_policy(change: str) -> None:
    base = _sts_settings()
    policy, pid, _ = _sts(base)
    new_policy, new_pid, new_txt = _sts(POLICY_CHANGES[change](base))
    assert new_policy != policy
    assert new_pid != pid and new_txt == f"v=STSv1; id={new_pid}"
    assert new_pid == plan.policy_id(new_policy)  # the id names exactly this text


@pytest.mark.parametrize("change", sorted(OTHER_CHANGES))
def test_mta_sts_id_stays_when_the_policy_does(change: str) -> None:
    """Senders refetch the policy when the id changes: a change elsewhere must not
    make every sender fetch the same policy again."""
    base = _sts_settings()
    assert _sts(OTHER_CHANGES[change](base)) == _sts(base)


def test_mta_sts_host_points_at_the_monitor() -> None:
    p = plan.build(_sts_settings(), [])
    host = {r.type: r.values for r in p.records if r.name == "mta-sts.example.com"}
    assert host == {"A": ("192.0.2.50",), "AAAA": ("2001:db8::50",)}
    assert [m.as_json() for m in p.mta_sts] == [
        {
            "domain": "example.com",
            "host": "mta-sts.example.com",
            "policy": (
                "version: STSv1\r\nmode: testing\r\nmx: mx1.example.com\r\nmax_age: 604800\r\n"
            ),
            "id": p.mta_sts_id,
        }
    ]
    # another host named to serve it; none at all: no name planned, and a note says so
    p = plan.build(_sts_settings(mta_sts_server="mail1"), [])
    assert [r.values for r in p.records if r.name == "mta-sts.example.com"] == [("192.0.2.21",)]
    s = _sts_settings()
    s.hosts = [h for h in s.hosts if h.name != "monitor"]
    p = plan.build(s, [])
    assert not any(r.name == "mta-sts.example.com" for r in p.records)
    assert any("no host in mail_monitor" in n for n in p.notes)
    # off: no policy, no record, nothing to serve
    p = plan.build(_sts_settings(mta_sts_mode="off"), [])
    assert p.mta_sts == [] and not any("mta-sts" in r.name for r in p.records)


def test_tenant_domain_with_the_company_mx_gets_the_same_policy() -> None:
    """The cluster receives mail for a tenant domain whose MX is the company's: it gets
    MTA-STS (the same text, so the same id) and TLS-RPT; a tenant whose MX is its own
    gets neither."""
    mine = inventory.TenantDns("t1", ("t1.example",), "default", (), inventory.Dmarc(),
                               mx=((10, "mx1.example.com"),))  # fmt: skip
    own = inventory.TenantDns("t2", ("t2.example",), "default", (), inventory.Dmarc(),
                              mx=((10, "mx.t2.example"),))  # fmt: skip
    p = plan.build(_sts_settings(tenants=[mine, own]), [])
    assert [m.domain for m in p.mta_sts] == ["example.com", "t1.example"]
    assert p.mta_sts[1].policy == p.mta_sts_policy and p.mta_sts[1].id == p.mta_sts_id
    t1 = {(r.name, r.type): r for r in p.records if r.zone == "t1.example"}
    assert records.unquote_txt(t1[("_mta-sts.t1.example", "TXT")].values[0]) == (
        f"v=STSv1; id={p.mta_sts_id}"
    )
    assert t1[("mta-sts.t1.example", "A")].values == ("192.0.2.50",)
    assert records.unquote_txt(t1[("_smtp._tls.t1.example", "TXT")].values[0]) == (
        "v=TLSRPTv1; rua=mailto:tlsrpt@example.com"
    )
    assert not any("t2.example" in r.name and "sts" in r.name for r in p.records)
    assert not any(r.name == "_smtp._tls.t2.example" for r in p.records)


def test_mta_sts_command_serves_what_the_records_name(capsys: pytest.CaptureFixture[str]) -> None:
    """`mailops dns mta-sts` (what the mta_sts role serves) and the plan's records agree."""
    code, out, err = run_mailops(["dns", "mta-sts", "--inventory", str(FIXTURE)], capsys)
    assert code == 0, err
    served = json.loads(out)
    code, out, err = run_mailops(plan_argv(FIXTURE, "--format", "json"), capsys)
    assert code == 0, err
    txt = {
        r["name"]: records.unquote_txt(r["values"][0])
        for r in json.loads(out)
        if r["name"].startswith("_mta-sts.")
    }
    assert {f"_mta-sts.{m['domain']}": f"v=STSv1; id={m['id']}" for m in served} == txt
    assert [m["domain"] for m in served] == ["dnscheck.test", "tenant1.test"]
    for m in served:
        assert m["id"] == hashlib.sha256(m["policy"].encode()).hexdigest()[:20]
        assert "mode: enforce\r\n" in m["policy"]
