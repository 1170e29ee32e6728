"""The lab itself: DNS through ns1 for every host, and the outside world receiving mail."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.labhosts import headers, inventory, sh, smtp_reply, swaks, token, wait_for_maildir

HOSTS = inventory()
NS1 = next(h for h, v in HOSTS.items() if v["group"] == "lab_dns")


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_host_resolves_lab_names_through_ns1(host: str, evidence: list[str]) -> None:
    # Every lookup in one shell on the host: one line per name, "<name> <answers...>".
    script = ["grep ^nameserver /etc/resolv.conf | tr '\\n' ' '; echo"]
    for v in HOSTS.values():
        for name, args in ((v["fqdn"], f"{v['fqdn']} A"), (v["ip"], f"-x {v['ip']}")):
            script.append(f"echo {name} $(dig +short +time=2 {args})")
    res = sh(host, "\n".join(script))
    lines = res.out.splitlines()
    assert len(lines) == 1 + 2 * len(HOSTS), f"{host}: {res.out} {res.err}"
    conf = lines[0].split()
    assert conf[1::2] == [HOSTS[NS1]["ip"]], f"{host} resolves through {conf}, not ns1"
    answers = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    for v in HOSTS.values():
        fwd, rev = answers[v["fqdn"]], answers[v["ip"]]
        assert fwd == [v["ip"]], f"{host}: {v['fqdn']} A -> {fwd}, want {v['ip']}"
        assert rev == [v["fqdn"] + "."], f"{host}: PTR {v['ip']} -> {rev}, want {v['fqdn']}."
    evidence.append(f"{len(HOSTS)} names forward and reverse via {HOSTS[NS1]['ip']}")


def test_outside_domains_have_mx_to_inbox(evidence: list[str]) -> None:
    inbox = next(v for v in HOSTS.values() if v["group"] == "lab_inbox")
    for domain in ("gmail.test", "outlook.test"):
        mx = sh("app1", f"dig +short {domain} MX").out.split()
        assert mx == ["10", inbox["fqdn"] + "."], f"{domain} MX -> {mx}"
        evidence.append(f"{domain} MX {mx[1]}")


def test_dnsbl_zone_lists_exactly_one_address(evidence: list[str]) -> None:
    listed = sh("mx1", "dig +short 66.100.51.198.dnsbl.test A").out.split()
    clean = sh("mx1", f"dig +short {'.'.join(reversed(HOSTS['mx1']['ip'].split('.')))}"
               ".dnsbl.test A").out.split()  # fmt: skip
    assert listed == ["127.0.0.2"] and clean == []
    evidence.append(f"198.51.100.66 -> {listed}; mx1 -> not listed")


def test_app1_hands_mail_to_inbox_and_it_lands_in_the_maildir(evidence: list[str]) -> None:
    tag = token()
    res = swaks(
        "app1",
        f"--server inbox.outside.test --to alice@gmail.test --from ops@company.test "
        f"--header 'Subject: lab check {tag}'",
    )
    assert res.rc == 0, res.out
    queued = [ln for ln in res.out.splitlines() if "250" in ln and "queued" in ln]
    assert queued, res.out
    evidence.append(queued[0].strip())
    msg = wait_for_maildir("alice@gmail.test", tag)
    ar = [v for n, v in headers(msg) if n.lower() == "authentication-results"]
    # The outside world records what it verified: DKIM, SPF and DMARC verdicts.
    assert any("dkim=" in v for v in ar), ar
    assert any("spf=" in v for v in ar), ar
    assert any("dmarc=" in v for v in ar), ar
    evidence.append("Authentication-Results: " + " ; ".join(v.split(";", 1)[1].strip()[:40]
                                                            for v in ar))  # fmt: skip


def test_inbox_refuses_unknown_users_so_bounces_are_real(evidence: list[str]) -> None:
    res = swaks(
        "app1", "--server inbox.outside.test --to nobody@gmail.test --from ops@company.test"
    )
    assert res.rc != 0
    reply = smtp_reply(res)
    assert "550 5.1.1" in reply, res.out
    evidence.append(reply.strip())


def test_ad_hoc_ansible_reaches_every_host_from_the_repository_root(
    evidence: list[str],
) -> None:
    """What an operator types every day: an ad-hoc command against the lab inventory,
    from the repository root, with no playbook (so no playbook_dir) and none of the
    Makefile's environment."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    # A control socket of its own: one left by an earlier connection would let ssh in
    # without reading the key file or the known hosts this check is about.
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = tempfile.mkdtemp(prefix="adhoc-cp-")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", "inventories/lab", "all",
         "-m", "ansible.builtin.ping", "--one-line"],
        cwd=root, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    ok = [ln.split()[0] for ln in proc.stdout.splitlines() if '"ping": "pong"' in ln]
    assert proc.returncode == 0 and sorted(ok) == sorted(HOSTS), proc.stdout + proc.stderr
    evidence.append(f"ansible -i inventories/lab all -m ping: pong from {len(ok)} hosts")
