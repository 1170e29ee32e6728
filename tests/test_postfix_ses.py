"""Relaying through Amazon SES as the postfix role renders it (issue 23, docs/ses.md).

The role's SES tasks (settings check, password derivation on the controller) and its
templates run through ansible-playbook on the controller alone, nothing installed, for
one bulk node of a small inventory: the four routes, the next hop's TLS policy and
login, and what a wrong setting says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailops.ses.smtp_password import smtp_password

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
NEXTHOP = "[email-smtp.eu-west-1.amazonaws.com]:587"

PLAYBOOK = """
- name: Render the postfix role's files for a node, installing nothing
  hosts: all
  gather_facts: false
  tasks:
    - name: The role's checks and variables
      ansible.builtin.include_role:
        name: postfix
        tasks_from: preflight
        public: true
    - name: The role's SES tasks
      ansible.builtin.include_role:
        name: postfix
        tasks_from: ses
        public: true
      when: postfix__ses_enabled | bool
    - name: main.cf
      ansible.builtin.template:
        src: "{{ roles_dir }}/postfix/templates/main.cf.j2"
        dest: "{{ out_dir }}/main.cf"
        mode: "0600"
    - name: The lookup tables
      ansible.builtin.template:
        src: "{{ roles_dir }}/postfix/templates/map.j2"
        dest: "{{ out_dir }}/{{ item.name }}"
        mode: "0600"
      loop: "{{ postfix__combined_maps }}"
      loop_control:
        label: "{{ item.name }}"
      no_log: "{{ item.no_log | default(false) }}"
"""


def render(tmp: Path, **node_vars: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    inv = {
        "all": {
            "vars": {
                "mail_domain": "company.test",
                "mail_tenants": [
                    {"name": "alpha", "domains": ["alpha.test", "alpha-news.test"],
                     "logins": ["alpha"], "pool": "alpha", "dkim_selectors": ["alpha1"]},
                ],
                "mail_tenant_passwords": {"alpha": "pw-a"},
                "ses_region": "eu-west-1",
                "vault_ses_smtp_access_key_id": KEY_ID,
                "vault_ses_smtp_secret_access_key": SECRET,
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            },
            "children": {
                "mail_bulk": {
                    "hosts": {
                        "mail1": {
                            "public_ipv4": "198.51.100.21",
                            "mail_pool_addresses": [{"pool": "alpha", "address": "198.51.100.121"}],
                            **node_vars,
                        }
                    }
                }
            },
        }
    }  # fmt: skip
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    (tmp / "render.yml").write_text(PLAYBOOK)
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = false\n")
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_FILTER_PLUGINS=str(ROOT / "plugins/filter"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "tmp"),
        ANSIBLE_HOME=str(tmp / "home"),
        ANSIBLE_FORCE_COLOR="0",
    )
    extra = {"roles_dir": str(ROOT / "roles"), "out_dir": str(out)}
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp / "hosts.yml"),
         str(tmp / "render.yml"), "-v", "-e", json.dumps(extra)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    return res, out


def maincf(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    name = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            out[name] = (out[name] + " " + line.strip()).strip()
        else:
            name, _, value = line.partition("=")
            name = name.strip()
            out[name] = value.strip()
    return out


def table(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


@pytest.mark.slow
def test_four_routes_one_verified_login(tmp_path: Path) -> None:
    res, out = render(
        tmp_path,
        postfix__profile="bulk",
        postfix__ses_relay_all=True,
        postfix__ses_relay_tenants=["alpha"],
        postfix__ses_relay_destinations=["example.org", ".example.org", "carol+ses@outlook.test"],
        postfix__ses_fallback=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    main = maincf(out / "main.cf")
    assert main["relayhost"] == NEXTHOP
    assert main["smtp_fallback_relay"] == NEXTHOP
    assert main["sender_dependent_relayhost_maps"] == "hash:/etc/postfix/ses_sender_relay"
    # SES's destinations are looked up before the role's own transports.
    assert main["transport_maps"].startswith("hash:/etc/postfix/ses_transport,")
    assert main["smtp_sasl_auth_enable"] == "yes"
    assert main["smtp_sasl_auth_soft_bounce"] == "yes"
    assert main["smtp_sasl_password_maps"] == "hash:/etc/postfix/ses_sasl_passwd"
    assert main["smtp_tls_policy_maps"] == "hash:/etc/postfix/ses_tls_policy"
    assert table(out / "ses_tls_policy") == [f"{NEXTHOP} secure protocols=>=TLSv1.2"]
    assert table(out / "ses_sender_relay") == [
        f"@alpha.test {NEXTHOP}",
        f"@alpha-news.test {NEXTHOP}",
    ]
    assert f"carol+ses@outlook.test smtp:{NEXTHOP}" in table(out / "ses_transport")
    assert f".example.org smtp:{NEXTHOP}" in table(out / "ses_transport")
    # The login: the key id, and AWS's derivation of the secret for the region.
    password = smtp_password(SECRET, "eu-west-1")
    assert table(out / "ses_sasl_passwd") == [f"{NEXTHOP} {KEY_ID}:{password}"]
    log = res.stdout + res.stderr
    assert SECRET not in log and password not in log


@pytest.mark.slow
def test_off_by_default(tmp_path: Path) -> None:
    res, out = render(tmp_path, postfix__profile="bulk")
    assert res.returncode == 0, res.stdout + res.stderr
    text = (out / "main.cf").read_text()
    assert "email-smtp" not in text and "smtp_sasl" not in text and "relayhost" not in text
    assert not (out / "ses_sasl_passwd").exists()


@pytest.mark.slow
def test_a_wrong_setting_stops_the_play_naming_it(tmp_path: Path) -> None:
    res, out = render(
        tmp_path,
        postfix__profile="bulk",
        postfix__ses_relay_tenants=["alpha", "nosuch"],
        ses_region="eu-west",
    )
    log = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, log
    assert "got 'eu-west'" in log and "unknown: ['nosuch']" in log, log
    assert SECRET not in log
    assert not (out / "main.cf").exists()
