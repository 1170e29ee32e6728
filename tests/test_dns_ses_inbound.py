"""SES's receiving MX for the inbound bridge (dns_ses_inbound): planned by `mailops dns
plan` next to the mail_mx hosts in the order the operator chose, listed in the MTA-STS
policy, and read back by `mailops dns check` (scripts/mailops/dns/ses_inbound_records.py)."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailops import dns as dns_cli
from mailops.dns import check, inventory, plan, ses_inbound_records
from mailops.dns.inventory import Host, Settings
from tests.support.dns import FIXTURE, run_mailops, zone_dns
from tests.support.inventory_cache import use_cached_listings

EU = "inbound-smtp.eu-west-1.amazonaws.com"
US = "inbound-smtp.us-west-2.amazonaws.com"


def settings(inbound: dict[str, Any] | None, mx_priority: int = 10) -> Settings:
    hosts = [
        Host(
            "mx1",
            "mx1.example.com",
            "127.0.0.10",
            None,
            frozenset({"mail_mx"}),
            mx_priority=mx_priority,
        ),
        Host("mail1", "mail1.example.com", "127.0.0.21", None, frozenset({"mail_bulk"})),
    ]
    s = Settings(domain="example.com", hosts=hosts, mta_sts_mode="enforce", tlsrpt_rua=[])
    return replace(s, ses_inbound=ses_inbound_records.from_inventory(inbound, "eu-west-1"))


def mx(p: plan.Plan) -> list[str]:
    (record,) = [r for r in p.records if r.name == "example.com" and r.type == "MX"]
    return list(record.values)


def test_without_dns_ses_inbound_the_mx_is_the_clusters_alone() -> None:
    p = plan.build(settings(None), [])
    assert mx(p) == ["10 mx1.example.com."]
    assert p.ses_inbound_mx == []
    assert "amazonaws" not in (p.mta_sts_policy or "")


@pytest.mark.parametrize(
    ("inbound", "values"),
    [
        ({"mode": "backup"}, ["10 mx1.example.com.", f"20 {EU}."]),
        ({}, None),  # empty: nothing of SES
        ({"mode": "primary"}, [f"5 {EU}.", "10 mx1.example.com."]),
        (
            {"mode": "failover", "failover_region": "us-west-2"},
            ["10 mx1.example.com.", f"20 {EU}.", f"30 {US}."],
        ),
        ({"mode": "backup", "preference": 50}, ["10 mx1.example.com.", f"50 {EU}."]),
        ({"mode": "primary", "preference": 0, "region": "us-west-2"},
         [f"0 {US}.", "10 mx1.example.com."]),
    ],
)  # fmt: skip
def test_modes_order_ses_against_the_mx_hosts(
    inbound: dict[str, Any], values: list[str] | None
) -> None:
    p = plan.build(settings(inbound), [])
    assert mx(p) == (values or ["10 mx1.example.com."])
    policy = p.mta_sts_policy or ""
    for value in values or []:
        # Every MX is in the MTA-STS policy: an enforcing sender refuses one it lacks.
        assert f"mx: {value.split()[1].rstrip('.')}\r\n" in policy


def test_the_mx_hosts_own_priority_moves_the_backup_default() -> None:
    p = plan.build(settings({"mode": "backup"}, mx_priority=30), [])
    assert mx(p) == ["30 mx1.example.com.", f"40 {EU}."]


@pytest.mark.parametrize(
    ("inbound", "mx_priority", "words"),
    [
        ({"mode": "primary", "preference": 10}, 10, "below every MX host"),
        ({"mode": "primary"}, 5, "below every MX host"),
        ({"mode": "backup", "preference": 10}, 10, "above every MX host"),
        ({"mode": "failover", "failover_region": "us-west-2", "preference": 65530}, 10, "no room"),
    ],
)
def test_preferences_that_contradict_the_mode_are_refused(
    inbound: dict[str, Any], mx_priority: int, words: str
) -> None:
    with pytest.raises(plan.PlanError, match=words):
        plan.build(settings(inbound, mx_priority), [])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"mode": "tertiary"}, "not one of primary, backup, failover"),
        ({"mode": "failover"}, "failover_region"),
        ({"mode": "failover", "failover_region": "eu-west-1"}, "is region already"),
        ({"mode": "backup", "failover_region": "us-west-2"}, "only with mode failover"),
        ({"region": "Ireland"}, "not an AWS region"),
        ({"preference": "high"}, "not 0-65535"),
        ({"preference": 70000}, "not 0-65535"),
        ({"mode": "backup", "regions": ["eu-west-1"]}, "unknown keys regions"),
        (["eu-west-1"], "must be a mapping"),
    ],
)
def test_wrong_dns_ses_inbound_is_refused(value: Any, words: str) -> None:
    with pytest.raises(ses_inbound_records.SesInboundError, match=words):
        ses_inbound_records.from_inventory(value, "eu-west-1")


def test_region_comes_from_ses_region_or_aws_region() -> None:
    found = ses_inbound_records.from_inventory({"mode": "backup"}, "us-west-2")
    assert found is not None and found.hosts == [US]
    with pytest.raises(ses_inbound_records.SesInboundError, match="ses_region/aws_region"):
        ses_inbound_records.from_inventory({"mode": "backup"}, None)


def test_check_passes_the_plan_and_fails_another_order() -> None:
    p = plan.build(settings({"mode": "failover", "failover_region": "us-west-2"}), [])
    d = zone_dns(p)
    rows = ses_inbound_records.check(d, "example.com", "failover", p.ses_inbound_mx)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("ses-inbound-mx", "pass", f"example.com MX {EU}"),
        ("ses-inbound-mx", "pass", f"example.com MX {US}"),
    ]
    # SES published before the cluster's MX, and the second region left out.
    d.rrsets[("example.com", "MX")] = (f"5 {EU}.", "10 mx1.example.com.")
    rows = ses_inbound_records.check(d, "example.com", "failover", p.ses_inbound_mx)
    assert [(r[1], r[3].split(",")[0]) for r in rows] == [
        ("fail", "preference 5"),
        ("fail", "not in the MX record (failover: SES would receive nothing)"),
    ]


def test_dns_check_expects_ses_in_the_mx_and_probes_only_the_clusters_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expectation `mailops dns check` builds from an inventory: SES's hosts are
    planned MX names (no 'not in the inventory' warning), checked for their preference,
    and never probed over SMTP (they are AWS's; the check's traffic stays on loopback)."""
    inv = tmp_path / "inventory"
    shutil.copytree(FIXTURE, inv)
    (inv / "group_vars" / "all" / "ses_inbound.yml").write_text(
        json.dumps({"aws_region": "eu-west-1", "dns_ses_inbound": {"mode": "backup"}})
    )
    use_cached_listings(monkeypatch)
    s = {"inventory": str(inv), "ansible_inventory": "", "playbook_dir": "",
         "dkim_keys": str(tmp_path), "sending_ips": [], "dnsbls": []}  # fmt: skip
    inv_data = inventory.load(str(inv), None, None)
    st = inventory.settings(inv_data, str(tmp_path))
    p = plan.build(st, [], {d: [] for d in st.tenant_domains})
    args = argparse.Namespace(sending_ip=None, dnsbl=None)
    e = dns_cli._expect(args, s, st.domain, (st, p, {}))
    assert e.ses_inbound_mx == [(20, EU)] and e.ses_inbound_mode == "backup"
    assert e.mx_names is not None and EU in e.mx_names
    probed: list[str] = []
    monkeypatch.setattr(check, "check_mx_host", lambda d, name, o: probed.append(name) or [])
    d = zone_dns(p)
    rows, names = check.check_mx(d, e, check.Options())
    assert [(r["check"], r["status"]) for r in rows] == [("mx", "pass")]
    assert EU in names and probed == ["mx1.dnscheck.test"]
    inbound_rows = [r for r in check.run(d, e, check.Options()) if r["check"] == "ses-inbound-mx"]
    assert [(r["status"], r["subject"]) for r in inbound_rows] == [
        ("pass", f"dnscheck.test MX {EU}")
    ]


def test_inventory_dns_ses_inbound_reaches_plan_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = tmp_path / "inventory"
    shutil.copytree(FIXTURE, inv)
    (inv / "group_vars" / "all" / "ses_inbound.yml").write_text(
        json.dumps(  # YAML reads JSON
            {"ses_region": "us-west-2", "dns_ses_inbound": {"mode": "primary", "preference": 1}}
        )
    )
    use_cached_listings(monkeypatch)
    code, out, err = run_mailops(
        ["dns", "plan", "--inventory", str(inv), "--format", "json", "--dkim-keys", str(tmp_path)],
        capsys,
    )
    assert code == 0, err
    got = {(r["name"], r["type"]): r["values"] for r in json.loads(out)}
    assert got[("dnscheck.test", "MX")] == [f"1 {US}.", "10 mx1.dnscheck.test."]


def test_inventory_with_a_contradiction_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = tmp_path / "inventory"
    shutil.copytree(FIXTURE, inv)
    (inv / "group_vars" / "all" / "ses_inbound.yml").write_text(
        json.dumps({"aws_region": "eu-west-1", "dns_ses_inbound": {"mode": "sideways"}})
    )
    use_cached_listings(monkeypatch)
    code, _, err = run_mailops(
        ["dns", "plan", "--inventory", str(inv), "--dkim-keys", str(tmp_path)], capsys
    )
    assert code != 0 and "dns_ses_inbound.mode" in err
