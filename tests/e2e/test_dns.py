"""Issue 5 in the lab: ns1 serves what `mailops dns plan` says, and `mailops dns check`
finds every record in order, including the DKIM keys the opendkim role made.  Issue 20:
the same for every tenant domain (alpha.test, beta.test): SPF of exactly its pool, its
DKIM key, DMARC, FCrDNS and DNSBL of every pool address."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.labhosts import INVENTORY, ROOT, inventory, mail_domain, sh

HOSTS = inventory()
DOMAIN = mail_domain()
MAILOPS = str(Path(sys.executable).parent / "mailops")
TENANT_DOMAINS = [
    d
    for t in yaml.safe_load((INVENTORY / "group_vars/all/tenants.yml").read_text())["mail_tenants"]
    for d in t["domains"]
]


def run_check(domain: str = DOMAIN) -> tuple[int, list[dict[str, str]]]:
    # postscreen makes an unknown client wait out its greeting (6 s): a longer timeout.
    cmd = [MAILOPS, "dns", "check", domain, "--json", "--smtp-timeout", "20"]
    cmd += ["--nameserver", HOSTS["ns1"]["ip"], "--inventory", str(ROOT / "inventories/lab")]
    cmd += ["--playbook-dir", str(ROOT / "playbooks")]
    cmd += ["--cafile", str(ROOT / ".lab/secrets/pki/ca.crt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout.strip(), proc.stderr
    rows: list[dict[str, str]] = json.loads(proc.stdout)["rows"]
    return proc.returncode, rows


def test_dns_check_passes_on_the_lab(evidence: list[str]) -> None:
    rc, rows = run_check()
    failed = [r for r in rows if r["status"] == "fail"]
    assert rc == 0 and not failed, json.dumps(failed, indent=1)
    names = {r["check"] for r in rows}
    for wanted in ("fcrdns", "spf-coverage", "dkim", "dnsbl"):
        assert any(wanted in str(n) for n in names), names
    passed = sum(r["status"] == "pass" for r in rows)
    warned = [f"{r['check']}: {r['evidence']}"[:80] for r in rows if r["status"] == "warn"]
    evidence.append(f"{passed} checks pass; warnings: {warned}"[:400])


@pytest.mark.parametrize("domain", TENANT_DOMAINS)
def test_dns_check_passes_for_each_tenant_domain(domain: str, evidence: list[str]) -> None:
    rc, rows = run_check(domain)
    failed = [r for r in rows if r["status"] == "fail"]
    assert rc == 0 and not failed, json.dumps(failed, indent=1)
    passed = {(r["check"], r["subject"]) for r in rows if r["status"] == "pass"}
    assert ("spf-pool", domain) in passed, rows
    assert any(c == "dkim" and s.endswith(f"._domainkey.{domain}") for c, s in passed), rows
    assert ("dmarc", f"_dmarc.{domain}") in passed, rows
    pool = [s for c, s in passed if c == "fcrdns"]
    assert pool and all(("spf-coverage", a) in passed for a in pool), rows
    assert all(("dnsbl", f"{a} in dnsbl.test") in passed for a in pool), rows
    spf = next(r["evidence"] for r in rows if r["check"] == "spf-pool")
    warned = [f"{r['check']}: {r['evidence']}"[:80] for r in rows if r["status"] == "warn"]
    evidence.append(f"{domain}: {len(passed)} checks pass ({spf}); warnings: {warned}"[:400])


ZONES = "/etc/nsd/zones"


def _break(zone: str, script: str) -> None:
    """Edit one of ns1's zone files, reload nsd, and start unbound afresh (no cache)."""
    sh("ns1", f"cp -p {ZONES}/{zone}.zone /tmp/{zone}.zone.saved && {script}")
    sh("ns1", f"nsd-control reload {zone} >/dev/null && service unbound restart >/dev/null")


def _restore(zone: str) -> None:
    sh("ns1", f"mv /tmp/{zone}.zone.saved {ZONES}/{zone}.zone")
    sh("ns1", f"nsd-control reload {zone} >/dev/null && service unbound restart >/dev/null")


def _other_dkim_key() -> str:
    """The public half of a key nobody signs with, as a DKIM p= value."""
    private = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        capture_output=True,
        check=True,
    ).stdout
    public = subprocess.run(
        ["openssl", "pkey", "-pubout", "-outform", "DER"],
        input=private,
        capture_output=True,
        check=True,
    ).stdout
    return base64.b64encode(public).decode()


TENANT = TENANT_DOMAINS[0]

BREAKAGES = {
    # id: (zone, sed script, the check that must fail, its subject[, the domain checked])
    "ptr deleted": (
        "100.51.198.in-addr.arpa",
        "sed -i '/^21 IN PTR/d' {zones}/{zone}.zone",
        "fcrdns",
        "198.51.100.21",
    ),
    "ip dropped from spf": (
        "company.test",
        "sed -i 's/ ip4:198.51.100.22//' {zones}/{zone}.zone",
        "spf-coverage",
        "198.51.100.22",
    ),
    "dkim key replaced": (
        "company.test",
        "sed -i 's|^mail._domainkey IN TXT .*|mail._domainkey IN TXT \"v=DKIM1; k=rsa; p={key}\"|'"
        " {zones}/{zone}.zone",
        "dkim",
        "mail._domainkey",
    ),
    "sending ip listed": (
        "dnsbl.test",
        "echo '21.100.51.198 IN A 127.0.0.2' >> {zones}/{zone}.zone",
        "dnsbl",
        "198.51.100.21",
    ),
    # One address too many in a tenant's SPF: every pool address still passes, but an
    # address outside the pool may send as the tenant.
    "tenant spf one address too many": (
        TENANT,
        "sed -i 's/ -all/ ip4:198.51.100.99 -all/' {zones}/{zone}.zone",
        "spf-pool",
        TENANT,
        TENANT,
    ),
}


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_one_broken_record_fails_exactly_its_check(case: str, evidence: list[str]) -> None:
    zone, script, check, subject, *checked = BREAKAGES[case]
    key = _other_dkim_key() if "{key}" in script else ""
    _break(zone, script.format(zones=ZONES, zone=zone, key=key))
    try:
        rc, rows = run_check(*checked)
    finally:
        _restore(zone)
    failed = [r for r in rows if r["status"] == "fail"]
    assert rc == 1, rows
    assert [(r["check"], subject in r["subject"]) for r in failed] == [(check, True)], failed
    assert failed[0]["fix"], failed[0]
    evidence.append(f"{failed[0]['check']} {failed[0]['subject']}: {failed[0]['evidence']}"[:160])
    evidence.append(f"fix: {failed[0]['fix']}"[:160])
