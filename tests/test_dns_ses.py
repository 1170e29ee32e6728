"""The records Amazon SES needs (dns_ses): planned by `mailops dns plan`, checked by
`mailops dns check` (scripts/mailops/dns/ses_records.py, docs/ses.md)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from mailops.dns import check, plan, ses_records
from mailops.dns.inventory import Host, Settings
from mailops.dns.records import unquote_txt
from tests.support.dns import FIXTURE, run_mailops, zone_dns
from tests.support.inventory_cache import use_cached_listings

TOKENS = ["abcdefghijklmnopqrstuvwxyz234567", "bcdefghijklmnopqrstuvwxyz2345678", "c" * 32]


def settings(ses: dict[str, object] | None) -> Settings:
    hosts = [
        Host("mx1", "mx1.example.com", "127.0.0.10", None, frozenset({"mail_mx"})),
        Host("mail1", "mail1.example.com", "127.0.0.21", None, frozenset({"mail_bulk"})),
    ]
    s = Settings(domain="example.com", hosts=hosts, mta_sts_mode="off", tlsrpt_rua=[])
    return replace(s, ses=ses_records.from_inventory(ses, "example.com", "eu-west-1"))


def by_name(p: plan.Plan, name: str, rtype: str) -> list[str]:
    return [v for r in p.records if r.name == name and r.type == rtype for v in r.values]


def test_no_dns_ses_plans_nothing_of_ses() -> None:
    p = plan.build(settings(None), [])
    assert p.ses is None
    assert "amazonses" not in json.dumps([r.as_json() for r in p.records])


def test_custom_mail_from_domain() -> None:
    p = plan.build(settings({"dkim_tokens": TOKENS, "mail_from_domain": "bounce.example.com"}), [])
    for t in TOKENS:
        assert by_name(p, f"{t}._domainkey.example.com", "CNAME") == [f"{t}.dkim.amazonses.com."]
    assert by_name(p, "bounce.example.com", "MX") == ["10 feedback-smtp.eu-west-1.amazonses.com."]
    spf = [unquote_txt(v) for v in by_name(p, "bounce.example.com", "TXT")]
    assert spf == ["v=spf1 include:amazonses.com -all"]
    # The domain's own SPF is not touched: SES's envelope is the MAIL FROM domain.
    assert "amazonses" not in p.spf_record


def test_without_mail_from_the_domain_spf_includes_ses() -> None:
    p = plan.build(settings({"dkim_tokens": TOKENS, "region": "us-east-1"}), [])
    assert p.spf_record == "v=spf1 ip4:127.0.0.10 ip4:127.0.0.21 include:amazonses.com -all"
    assert p.spf_lookups == 1
    assert not [r for r in p.records if r.type == "MX" and "amazonses" in r.values[0]]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"dkim_tokens": TOKENS[:2]}, "three Easy DKIM tokens"),
        ({"dkim_tokens": [TOKENS[0]] * 3}, "must differ"),
        ({"dkim_tokens": ["not a token", *TOKENS[1:]]}, "not an Easy DKIM token"),
        ({"dkim_tokens": TOKENS, "region": "Ireland"}, "not an AWS region"),
        ({"dkim_tokens": TOKENS, "mail_from_domain": "bounce.other.org"}, "subdomain of"),
        ({"dkim_tokens": TOKENS, "tokens": TOKENS}, "unknown keys tokens"),
    ],
)
def test_wrong_dns_ses_is_refused(value: dict[str, object], words: str) -> None:
    with pytest.raises(ses_records.SesError, match=words):
        ses_records.from_inventory(value, "example.com", "eu-west-1")


def test_identity_outside_the_planned_zones_is_refused() -> None:
    with pytest.raises(plan.PlanError, match="not the mail domain"):
        plan.build(settings({"dkim_tokens": TOKENS, "domain": "other.org"}), [])


@pytest.mark.parametrize("mail_from", ["bounce.example.com", ""])
def test_check_passes_what_the_plan_publishes(mail_from: str) -> None:
    token = "pmBGN/7MjnfhTKUZ06Enqq1PeGUaOkw8lGhcfwefcHU="
    p = plan.build(
        settings(
            {"dkim_tokens": TOKENS, "mail_from_domain": mail_from, "verification_token": token}
        ),
        [],
    )
    assert p.ses is not None
    rows = ses_records.check(zone_dns(p), p.ses)
    assert [(c, st) for c, st, *_ in rows] == [("ses-dkim", "pass")] * 3 + (
        [("ses-mail-from", "pass")] if mail_from else []
    ) + [("ses-spf", "pass"), ("ses-verification", "pass")]


def test_check_fails_each_missing_or_wrong_record() -> None:
    p = plan.build(settings({"dkim_tokens": TOKENS, "mail_from_domain": "bounce.example.com"}), [])
    assert p.ses is not None
    d = zone_dns(p)
    del d.rrsets[(f"{TOKENS[1]}._domainkey.example.com", "CNAME")]
    d.rrsets[("bounce.example.com", "MX")] = ("10 mx1.example.com.",)
    d.rrsets[("bounce.example.com", "TXT")] = ('"v=spf1 -all"',)
    rows = ses_records.check(d, p.ses)
    failed = [(c, subj) for c, st, subj, _, _ in rows if st == "fail"]
    assert failed == [
        ("ses-dkim", f"{TOKENS[1]}._domainkey.example.com"),
        ("ses-mail-from", "bounce.example.com"),
        ("ses-spf", "bounce.example.com"),
    ]


def test_dns_check_runs_the_ses_checks() -> None:
    """check.run includes the SES rows when the plan's expectation carries them."""
    p = plan.build(settings({"dkim_tokens": TOKENS, "mail_from_domain": "bounce.example.com"}), [])
    d = zone_dns(p)
    d.rrsets[("example.com", "SOA")] = ("ns1.example.com. h.example.com. 1 2 3 4 5",)
    e = check.Expect(domain="example.com", sending=[("127.0.0.10", "mx1.example.com")], ses=p.ses)
    rows = check.run(d, e, check.Options(smtp_port=1, smtp_timeout=0.2))
    assert [r["check"] for r in rows if r["check"].startswith("ses-")] == [
        "ses-dkim",
        "ses-dkim",
        "ses-dkim",
        "ses-mail-from",
        "ses-spf",
    ]


def test_inventory_dns_ses_reaches_plan_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = tmp_path / "inventory"
    shutil.copytree(FIXTURE, inv)
    (inv / "group_vars" / "all" / "ses.yml").write_text(
        json.dumps(  # YAML reads JSON
            {
                "ses_region": "eu-west-1",
                "dns_ses": {"dkim_tokens": TOKENS, "mail_from_domain": "bounce.dnscheck.test"},
            }
        )
    )
    use_cached_listings(monkeypatch)
    code, out, err = run_mailops(
        ["dns", "plan", "--inventory", str(inv), "--format", "json", "--dkim-keys", str(tmp_path)],
        capsys,
    )
    assert code == 0, err
    got = {(r["name"], r["type"]): r["values"] for r in json.loads(out)}
    assert got[("bounce.dnscheck.test", "MX")] == ["10 feedback-smtp.eu-west-1.amazonses.com."]
    assert got[(f"{TOKENS[0]}._domainkey.dnscheck.test", "CNAME")] == [
        f"{TOKENS[0]}.dkim.amazonses.com."
    ]
