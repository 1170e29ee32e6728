"""playbooks/init.yml without the lab: the EC2 rendering, and answers it must refuse.

The own-servers rendering, read by ansible-inventory and converged in check mode
against the lab's containers, is tests/e2e/test_inventory_skeleton.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slow]

EC2_ANSWERS: dict[str, Any] = {
    "init_platform": "ec2",
    "init_domain": "example.net",
    "init_mx_hosts": [{"name": "mx1"}],
    "init_bulk_hosts": [{"name": "mail1"}, {"name": "mail2"}, {"name": "mail3"}],
    "init_monitor_host": {"name": "monitor", "address": "10.42.1.50"},
    "init_relay_clients": [],
    "init_tenants": [{"name": "acme", "domains": ["acme.example"]}],
    "init_ses": False,
    "init_aws_region": "eu-central-1",
    "init_aws_cluster_name": "mailprod",
}


def render(tmp_path: Path, answers: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    password = tmp_path / "pass"
    password.write_text("unit-test-vault-password\n")
    answers_file = tmp_path / "answers.yml"
    answers_file.write_text(yaml.safe_dump(answers))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "playbooks/init.yml",
            "-e",
            f"@{answers_file}",
            "-e",
            f"init_dest={tmp_path / 'inv'}",
            "-e",
            f"init_vault_password_file={password}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_ec2_inventory_is_the_aws_ec2_plugin_with_the_answered_sizes(tmp_path: Path) -> None:
    proc = render(tmp_path, EC2_ANSWERS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    inv = tmp_path / "inv"
    plugin = yaml.safe_load((inv / "aws_ec2.yml").read_text())
    assert plugin["plugin"] == "amazon.aws.aws_ec2"
    assert plugin["regions"] == ["eu-central-1"]
    assert plugin["filters"]["tag:mailops:cluster"] == "mailprod"
    aws = yaml.safe_load((inv / "group_vars/all/aws.yml").read_text())
    assert (aws["aws_mx_count"], aws["aws_bulk_count"]) == (1, 3)
    assert (aws["aws_region"], aws["aws_cluster_name"]) == ("eu-central-1", "mailprod")
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())["all"]["children"]
    # The MX and bulk nodes come from the plugin; only the monitor is listed.
    assert set(hosts) == {"mail_monitor", "mail_relay_clients"}
    assert hosts["mail_monitor"]["hosts"] == {"monitor": {"public_ipv4": "10.42.1.50"}}
    bulk = (inv / "group_vars/mail_bulk/postfix.yml").read_text()
    assert "aws_app_networks" in bulk and "smtp_bind_address" not in yaml.safe_load(bulk)
    assert not (inv / "group_vars/all/ses.yml").exists()
    tenants = yaml.safe_load((inv / "group_vars/all/tenants.yml").read_text())["mail_tenants"]
    assert tenants[0] | {"complaints": None, "limits": None} == {
        "name": "acme",
        "domains": ["acme.example"],
        "logins": ["acme"],
        "pool": "acme",
        "dkim_selectors": ["acme1"],
        "contact": "postmaster@acme.example",
        "complaints": None,
        "limits": None,
    }
    assert (inv / "group_vars/all/vault.yml").read_text().startswith("$ANSIBLE_VAULT;")


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"init_monitor_host": None}, "bulk nodes need a"),
        ({"init_bulk_hosts": [{"name": "mail1"}, {"name": "mail3"}]}, "mail1..mailN"),
    ],
)
def test_refused_answers_write_nothing(tmp_path: Path, change: dict[str, Any], said: str) -> None:
    proc = render(tmp_path, EC2_ANSWERS | change)
    assert proc.returncode != 0
    assert said in " ".join(proc.stdout.split()), proc.stdout[-2000:]
    assert not (tmp_path / "inv").exists()
