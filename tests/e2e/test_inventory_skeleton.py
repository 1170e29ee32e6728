"""The production inventory skeleton (templates/inventory, playbooks/init.yml) against the lab.

An operator's path, with the lab's containers as the servers: answer the questions
(own servers at the lab's addresses, the lab's domain and tenants, SES on), render the
inventory, put the certificates and passwords into its vault, read it back with
`ansible-inventory`, and converge playbooks/site.yml with it in --check mode.  What the
lab gives that a real operator has elsewhere: the SSH key and known hosts, and the DKIM
keys and queue collector's key on the controller (passed as extra variables below).
--check changes nothing on the hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.labhosts import ROOT, lab_tool

# A converge of five hosts, even in check mode, takes minutes: with `make test` only, and
# started first (long_wait) so that the other checks run meanwhile.
pytestmark = [pytest.mark.slow, pytest.mark.long_wait]

LAB = ROOT / "inventories" / "lab"
SECRETS = ROOT / ".lab" / "secrets"
BIN = Path(sys.executable).parent
HOSTS = ("mx1", "mail1", "mail2", "app1", "monitor")
TENANTS = ("alpha", "beta", "gamma")
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)"
)


def lab_yaml(path: str) -> Any:
    return yaml.safe_load((LAB / path).read_text())


def secret(name: str) -> str:
    """A password the lab generated (ansible's password lookup: '<password>[ salt=...]')."""
    return (SECRETS / name).read_text().split()[0]


def answers() -> dict[str, Any]:
    """The questions answered with the lab's hosts, domain and tenants."""
    hosts = lab_yaml("hosts.yml")["all"]["children"]

    def entries(group: str) -> list[dict[str, Any]]:
        out = []
        for name, hv in hosts[group]["hosts"].items():
            entry: dict[str, Any] = {"name": name, "address": hv["public_ipv4"]}
            if hv.get("mail_pool_addresses"):
                entry["pool_addresses"] = {
                    p["pool"]: p["address"] for p in hv["mail_pool_addresses"]
                }
            out.append(entry)
        return out

    keys = ("name", "domains", "logins", "pool", "dkim_selectors", "contact")
    tenants = [
        {k: t[k] for k in keys} for t in lab_yaml("group_vars/all/tenants.yml")["mail_tenants"]
    ]
    return {
        "init_platform": "static",
        "init_domain": lab_yaml("group_vars/all/main.yml")["mail_domain"],
        "init_mx_hosts": entries("mail_mx"),
        "init_bulk_hosts": entries("mail_bulk"),
        "init_monitor_host": entries("mail_monitor")[0],
        "init_relay_clients": entries("mail_relay_clients"),
        "init_tenants": tenants,
        "init_ses": True,
        "init_ses_region": lab_yaml("group_vars/all/ses.yml")["ses_region"],
        "init_ssh_user": "root",
        "init_ssh_key_file": str(SECRETS / "ssh" / "id_ed25519"),
    }


def ansible(
    tool: str,
    *args: str,
    timeout: float = 120,
    stdin: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> str:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    env.update(env_extra or {})
    proc = subprocess.run(
        [str(BIN / tool), *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.splitlines()
    # Each failure with the lines that say why (the tail alone may hold only the recap).
    failures = [
        "\n".join(lines[i : i + 8])
        for i, line in enumerate(lines)
        if line.startswith(("fatal:", "[ERROR]")) or "UNREACHABLE!" in line
    ]
    assert proc.returncode == 0, (
        f"{tool} {' '.join(args)}: {chr(10).join(failures)[:4000]}\n"
        f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    )
    return proc.stdout


def pem(name: str) -> str:
    return (SECRETS / "pki" / name).read_text()


def test_skeleton_renders_and_converges_in_check_mode(tmp_path: Path, evidence: list[str]) -> None:
    inv = tmp_path / "inventory"
    password = tmp_path / "vault-pass"
    password.write_text("skeleton-test-vault-password\n")
    password.chmod(0o600)
    answers_file = tmp_path / "answers.yml"
    answers_file.write_text(yaml.safe_dump(answers()))
    rendered = (
        "-i",
        "localhost,",
        "playbooks/init.yml",
        "-e",
        f"@{answers_file}",
        "-e",
        f"init_dest={inv}",
        "-e",
        f"init_vault_password_file={password}",
    )
    ansible("ansible-playbook", *rendered)

    # The vault is encrypted on disk, and holds generated passwords.
    vault = inv / "group_vars" / "all" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;"), vault.read_text()[:80]
    assert oct(vault.stat().st_mode & 0o777) == "0o600"
    plain = yaml.safe_load(
        ansible("ansible-vault", "view", "--vault-password-file", str(password), str(vault))
    )
    generated = plain["vault_mailops_db_password"]
    assert len(generated) == 32 and generated.isalnum(), "the store's password was not generated"
    assert set(plain["mail_tenant_passwords"]) == set(TENANTS)
    assert all(generated not in p.read_text() for p in inv.rglob("*") if p.is_file())

    # A second run adds nothing and overwrites nothing.
    before = {p: p.read_bytes() for p in inv.rglob("*") if p.is_file()}
    again = ansible("ansible-playbook", *rendered)
    assert re.search(r"localhost\s+:\s+ok=\d+\s+changed=0\s", again), again[-600:]
    assert {p: p.read_bytes() for p in inv.rglob("*") if p.is_file()} == before

    # What an operator puts in the vault: the hosts' certificates, and (to match the lab's
    # running services) the lab's passwords instead of the generated ones.
    plain.update(
        vault_tls_certificates={h: pem(f"{h}.crt") for h in HOSTS},
        vault_tls_keys={h: pem(f"{h}.key") for h in HOSTS},
        vault_mailops_db_password=secret("mailops-db"),
        vault_mta_sts_certificates={"mta-sts.company.test": pem("mta-sts.company.test.crt")},
        vault_mta_sts_keys={"mta-sts.company.test": pem("mta-sts.company.test.key")},
        unsubscribe__tls_cert=pem("unsubscribe.company.test.crt"),
        unsubscribe__tls_key=pem("unsubscribe.company.test.key"),
        mail_tenant_passwords={t: secret(f"sasl-tenant-{t}") for t in TENANTS},
        mail_unsubscribe_keys=[secret("unsubscribe-key")],
    )
    plain["vault_postfix_sasl_users"][0]["password"] = secret("sasl-app1")
    plain["vault_relay_passwords"]["app1"] = secret("sasl-app1")
    vault.write_text(
        ansible(
            "ansible-vault",
            "encrypt",
            "--vault-password-file",
            str(password),
            "--output",
            "-",
            "-",
            stdin=yaml.safe_dump(plain),
        )
    )

    # ansible-inventory reads it: groups, host variables and the vault's values.
    # The vault's password as its README says: in the environment, where `mailops dns`
    # (run by the mta_sts role and route53.yml) finds it for its own ansible-inventory.
    vault_env = {"ANSIBLE_VAULT_PASSWORD_FILE": str(password)}
    listing = json.loads(
        ansible("ansible-inventory", "-i", str(inv), "--list", env_extra=vault_env)
    )
    groups = {
        g: sorted(listing.get(g, {}).get("hosts", []))
        for g in ("mail_mx", "mail_bulk", "mail_monitor", "mail_relay_clients")
    }
    assert groups == {
        "mail_mx": ["mx1"],
        "mail_bulk": ["mail1", "mail2"],
        "mail_monitor": ["monitor"],
        "mail_relay_clients": ["app1"],
    }
    mail1 = listing["_meta"]["hostvars"]["mail1"]
    assert mail1["postfix__profile"] == "bulk"
    assert {p["pool"] for p in mail1["mail_pool_addresses"]} == {"alpha", "beta"}
    assert [t["name"] for t in mail1["mail_tenants"]] == list(TENANTS)
    evidence.append(
        f"rendered {sum(1 for p in inv.rglob('*') if p.is_file())} files; "
        f"ansible-inventory: {groups}"
    )

    # The controller-side secrets of the lab, and how to reach its containers.
    overrides = tmp_path / "lab-controller.yml"
    overrides.write_text(
        yaml.safe_dump(
            {
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={SECRETS}/ssh/known_hosts"
                " -o StrictHostKeyChecking=yes",
                "opendkim__keys_dir": str(SECRETS / "dkim"),
                "queue_collector_key_file": str(SECRETS / "queue-collector" / "id_ed25519"),
            }
        )
    )
    lab = lab_tool()
    # One converge at a time: the mailops role builds the controller's wheelhouse.
    with lab.lab_lock():
        started = time.monotonic()
        out = ansible(
            "ansible-playbook",
            "-i",
            str(inv),
            "playbooks/site.yml",
            "--check",
            "-e",
            f"@{overrides}",
            timeout=600,
            # Generous: the lab shares two cores with everything else a test run does.
            env_extra=lab.mitogen_env() | vault_env | {"ANSIBLE_TIMEOUT": "60"},
        )
        took = time.monotonic() - started
    recap = {m["host"]: m.groupdict() for m in map(RECAP.match, out.splitlines()) if m}
    assert set(recap) == set(HOSTS), out[-2000:]
    for host, r in recap.items():
        assert r["failed"] == "0" and r["unreachable"] == "0", f"{host}: {r}\n{out[-3000:]}"
        assert int(r["ok"]) > 10, f"{host}: {r}"
    evidence.append(
        f"site.yml --check in {took:.0f} s: "
        + ", ".join(f"{h} ok={r['ok']} changed={r['changed']}" for h, r in sorted(recap.items()))
    )
