"""Issue 5 in the lab: ns1 serves what `mailops dns plan` says, and `mailops dns check`
finds every record in order, including the DKIM keys the opendkim role made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.labhosts import ROOT, inventory, mail_domain

HOSTS = inventory()
DOMAIN = mail_domain()
MAILOPS = str(Path(sys.executable).parent / "mailops")


def run_check() -> tuple[int, list[dict[str, str]]]:
    # postscreen makes an unknown client wait out its greeting (6 s): a longer timeout.
    cmd = [MAILOPS, "dns", "check", DOMAIN, "--json", "--smtp-timeout", "20"]
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
