"""Tenants on the Postfix side (issue 20): the checks of the inventory data, the pool
transports, and main.cf/master.cf/maps as the postfix role renders them for a bulk node
and for an application host with sender-dependent relaying.

The rendering runs the role's own preflight and templates through ansible-playbook on
the controller alone (nothing is installed), with a small inventory of two tenants.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenants", ROOT / "plugins/filter/tenants.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tf = _load()

ALPHA: dict[str, Any] = {
    "name": "alpha",
    "domains": ["alpha.test"],
    "logins": ["alpha"],
    "pool": "alpha",
    "dkim_selectors": ["alpha1"],
}
BETA: dict[str, Any] = {
    "name": "beta",
    "domains": ["beta.test", "beta-news.test"],
    "logins": ["beta", "beta2"],
    "pool": "beta",
    "dkim_selectors": ["beta1"],
    "complaints": "tenant",
    "contact": "postmaster@beta.test",
}
POOLS = {
    "mail1": [
        {"pool": "alpha", "address": "198.51.100.121"},
        {"pool": "beta", "address": "198.51.100.131"},
        {"pool": "alpha", "address": "198.51.100.123", "private_address": "10.0.0.5"},
    ],
    "mail2": [{"pool": "beta", "address": "198.51.100.132", "name": "out.beta.test"}],
}
PUBLIC = {"mail1": "198.51.100.21", "mail2": "198.51.100.22"}


def problems(tenants: Any, **kw: Any) -> list[str]:
    args: dict[str, Any] = {
        "password_logins": ["alpha", "beta", "beta2"],
        "pools_by_host": POOLS,
        "mail_domain": "company.test",
        "public_addresses": PUBLIC,
        **kw,
    }
    return list(tf.mail_tenant_problems(tenants, **args))


# ---------------------------------------------------------------- the checks


def test_the_lab_shaped_tenants_pass() -> None:
    assert problems([ALPHA, BETA]) == []
    assert problems([], pools_by_host={}) == [] and problems(None, pools_by_host={}) == []


@pytest.mark.parametrize(
    ("tenants", "kw", "expected"),
    [
        ([{**ALPHA, "name": "Alpha"}], {}, "name must be 1-21 lower-case"),
        ([ALPHA, {**BETA, "name": "alpha"}], {}, "tenant name alpha appears twice"),
        ([{**ALPHA, "domains": []}], {}, "tenant alpha: domains must be a non-empty list"),
        ([{**ALPHA, "domains": "alpha.test"}], {}, "domains must be a non-empty list"),
        ([ALPHA, {**BETA, "domains": ["alpha.test"]}], {}, "domain alpha.test is tenant alpha's"),
        ([{**ALPHA, "domains": ["company.test"]}], {}, "is the company domain"),
        ([ALPHA, {**BETA, "logins": ["alpha"]}], {}, "login alpha is tenant alpha's already"),
        ([{**ALPHA, "logins": ["al:pha"]}], {}, "login 'al:pha' must be lower-case"),
        ([{**ALPHA, "logins": []}], {}, "logins must be a non-empty list"),
        ([ALPHA], {"password_logins": []}, "login alpha has no password in mail_tenant_passwords"),
        ([{**ALPHA, "pool": "Alpha!"}], {}, "pool must be 1-21 lower-case"),
        ([{**ALPHA, "dkim_selectors": []}], {}, "dkim_selectors must be a non-empty list"),
        ([{**ALPHA, "complaints": "all"}], {}, "complaints must be one of global, tenant"),
        ([{**ALPHA, "contact": "nobody"}], {}, "contact must be a mail address"),
        ([{**ALPHA, "pools": "alpha"}], {}, "unknown keys ['pools']"),
        (
            [{**ALPHA, "pool": "gamma"}],
            {},
            "pool gamma (tenant alpha) has no address on any bulk host",
        ),
        ([ALPHA], {}, "pool beta is no tenant's pool"),
        (
            [ALPHA, BETA],
            {"pools_by_host": {**POOLS, "mail1": [{"pool": "alpha", "address": "198.51.100.21"}]}},
            "address 198.51.100.21 is mail1's public_ipv4 already",
        ),
        (
            [ALPHA, BETA],
            {"pools_by_host": {**POOLS, "mail3": [{"pool": "beta", "address": "198.51.100.131"}]}},
            "address 198.51.100.131 is mail1's pool beta already",
        ),
        (
            [ALPHA, BETA],
            {"pools_by_host": {**POOLS, "mail3": [{"pool": "beta", "address": "2001:db8::1"}]}},
            "address must be an IPv4 address",
        ),
        (
            [ALPHA, BETA],
            {"pools_by_host": {**POOLS, "mail3": [{"pool": "beta", "adress": "198.51.100.9"}]}},
            "unknown keys ['adress']",
        ),
        ("alpha", {}, "mail_tenants must be a list"),
    ],
)
def test_each_mistake_is_named_with_what_to_fix(
    tenants: Any, kw: dict[str, Any], expected: str
) -> None:
    found = problems(tenants, **kw)
    assert any(expected in p for p in found), found


def test_passwords_and_pools_are_only_checked_where_asked() -> None:
    # The opendkim role checks the shape alone: no passwords, no pools there.
    assert tf.mail_tenant_problems([{**ALPHA, "pool": "gamma"}], mail_domain="company.test") == []


# ---------------------------------------------------------------- the pool transports

CLASSES = [
    {"name": "gmail", "domains": ["gmail.com"], "concurrency": 10, "recipients": 50,
     "rate_delay": "0s"},
    {"name": "microsoft", "domains": ["outlook.com"], "concurrency": 5, "recipients": 20,
     "rate_delay": "1s"},
]  # fmt: skip


def test_pool_transports_count_within_host_and_pool() -> None:
    out = tf.mail_pool_transports(POOLS["mail1"], "mail1", "company.test", CLASSES)
    names = [t["transport"] for t in out]
    assert names == [
        "pool_alpha_1", "pool_alpha_1_gmail", "pool_alpha_1_microsoft",
        "pool_beta_1", "pool_beta_1_gmail", "pool_beta_1_microsoft",
        "pool_alpha_2", "pool_alpha_2_gmail", "pool_alpha_2_microsoft",
    ]  # fmt: skip
    by = {t["transport"]: t for t in out}
    # The name DNS publishes (PTR and A) is the HELO name; it counts like the transport.
    assert by["pool_alpha_1"]["helo"] == "mail1-alpha1.company.test"
    assert by["pool_alpha_2_gmail"]["helo"] == "mail1-alpha2.company.test"
    assert by["pool_beta_1"]["private_address"] == "198.51.100.131"
    # On EC2 Postfix binds to the private address behind the Elastic IP.
    assert by["pool_alpha_2"]["private_address"] == "10.0.0.5"
    assert by["pool_alpha_2"]["address"] == "198.51.100.123"
    assert by["pool_alpha_1_microsoft"]["concurrency"] == 5
    assert by["pool_alpha_1"]["class"] == "default"


def test_a_pool_address_may_name_itself() -> None:
    out = tf.mail_pool_transports(POOLS["mail2"], "mail2.company.test", "company.test", [])
    assert [(t["transport"], t["helo"]) for t in out] == [("pool_beta_1", "out.beta.test")]


# ---------------------------------------------------------------- rendering by the role

PLAYBOOK = """---
- name: Render the postfix role's files on the controller
  hosts: all
  gather_facts: false
  tasks:
    - name: The role's checks, and its variables for the tasks below
      ansible.builtin.include_role:
        name: postfix
        tasks_from: preflight
        public: true
    - name: main.cf
      ansible.builtin.template:
        src: "{{ roles_dir }}/postfix/templates/main.cf.j2"
        dest: "{{ out_dir }}/{{ inventory_hostname }}/main.cf"
        mode: "0600"
    - name: master.cf
      ansible.builtin.template:
        src: "{{ roles_dir }}/postfix/templates/master.cf.j2"
        dest: "{{ out_dir }}/{{ inventory_hostname }}/master.cf"
        mode: "0600"
    - name: The lookup tables
      ansible.builtin.template:
        src: "{{ roles_dir }}/postfix/templates/map.j2"
        dest: "{{ out_dir }}/{{ inventory_hostname }}/{{ item.name }}"
        mode: "0600"
      loop: "{{ postfix__combined_maps }}"
      loop_control:
        label: "{{ item.name }}"
      no_log: "{{ item.no_log | default(false) }}"
    - name: The SASL users
      ansible.builtin.template:
        src: "{{ roles_dir }}/postfix/templates/sasl-users.j2"
        dest: "{{ out_dir }}/{{ inventory_hostname }}/sasl-users"
        mode: "0600"
      when: postfix__sasl_enabled | bool
      no_log: true
"""

SECRET = "s3cret-never-logged"


def inventory(**overrides: Any) -> dict[str, Any]:
    all_vars: dict[str, Any] = {
        "mail_domain": "company.test",
        "mail_tenants": [ALPHA, BETA],
        "mail_tenant_passwords": {"alpha": SECRET, "beta": "pw-b", "beta2": "pw-b2"},
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
    }
    all_vars.update(overrides.pop("all", {}))
    hosts: dict[str, Any] = {
        "mail_bulk": {
            "hosts": {
                "mail1": {"public_ipv4": "198.51.100.21", "mail_pool_addresses": POOLS["mail1"]},
                "mail2": {"public_ipv4": "198.51.100.22", "mail_pool_addresses": POOLS["mail2"]},
            },
            "vars": {"postfix__profile": "bulk", "postfix__smtp_bind_address": "{{ public_ipv4 }}"},
        },
        "mail_mx": {
            "hosts": {"mx1": {"public_ipv4": "198.51.100.10"}},
            "vars": {
                "postfix__profile": "mx",
                "postfix__mx_sasl_users": [{"name": "app1@company.test", "password": "pw-app1"}],
            },
        },
        "mail_relay_clients": {
            "hosts": {"app1": {"public_ipv4": "198.51.100.30"}},
            "vars": {
                "postfix__profile": "relay_client",
                "postfix__relayhost": "[mx1.company.test]:587",
                "postfix__relayhost_username": "app1@company.test",
                "postfix__relayhost_password": "pw-app1",
                "postfix__relay_client_sender_routes": [
                    {"senders": ["@alpha.test"], "nexthop": "[mail.company.test]:587",
                     "username": "alpha", "password": SECRET},
                    {"senders": ["@beta.test", "news@beta-news.test"],
                     "nexthop": "[mail.company.test]:587", "username": "beta", "password": "pw-b"},
                ],
            },
        },
    }  # fmt: skip
    for group, body in overrides.items():
        hosts[group]["vars"].update(body)
    return {"all": {"vars": all_vars, "children": hosts}}


def run_render(
    tmp_path: Path, inv: dict[str, Any], limit: str = "all"
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "render.yml").write_text(PLAYBOOK)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nretry_files_enabled = false\nnocows = true\n"
    )
    extra = {"roles_dir": str(ROOT / "roles"), "out_dir": str(tmp_path / "out")}
    for host in ("mail1", "mail2", "mx1", "app1"):
        (tmp_path / "out" / host).mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_FILTER_PLUGINS=str(ROOT / "plugins/filter"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_HOME=str(tmp_path / "home"),
        ANSIBLE_FORCE_COLOR="0",
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
         "--limit", limit, str(tmp_path / "render.yml"), "-e", json.dumps(extra)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def maincf(text: str) -> dict[str, str]:
    """main.cf as {name: value}, continuation lines joined."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            out[name] = (out[name] + " " + line.strip()).strip()
        else:
            name, _, value = line.partition("=")
            name = name.strip()
            out[name] = value.strip()
    return out


def mastercf(text: str) -> dict[str, list[str]]:
    """master.cf as {service/type: [command, args...]}."""
    out: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            out[key].append(line.strip())
        else:
            cols = line.split()
            key = f"{cols[0]}/{cols[1]}"
            out[key] = [" ".join(cols[7:])]
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("render")
    res = run_render(tmp, inventory())
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp / "out", res.stdout + res.stderr


@pytest.mark.slow
def test_bulk_node_takes_tenant_submissions_on_587(rendered: tuple[Path, str]) -> None:
    out, _ = rendered
    master = mastercf((out / "mail1/master.cf").read_text())
    sub = master["submission/inet"]
    assert sub[0] == "smtpd"
    assert "-o smtpd_tls_security_level=encrypt" in sub
    assert "-o smtpd_sasl_auth_enable=yes" in sub
    # main.cf's recipient restrictions (policy service, suppression) apply on 587 too.
    assert not any(a.startswith("-o smtpd_recipient_restrictions") for a in sub)
    main = maincf((out / "mail1/main.cf").read_text())
    assert main["smtpd_sender_login_maps"] == "hash:/etc/postfix/sender_logins"
    # Both ports: no -o on 587 replaces the sender restrictions.
    assert "reject_sender_login_mismatch" in main["smtpd_sender_restrictions"]
    assert not any(a.startswith("-o smtpd_sender_restrictions") for a in sub)
    # Postfix skips reject_sender_login_mismatch in an smtpd without SASL: port 25 needs it.
    assert main["smtpd_sasl_type"] == "dovecot" and main["smtpd_sasl_auth_enable"] == "yes"
    assert main["smtpd_tls_auth_only"] == "yes"
    logins = (out / "mail1/sender_logins").read_text().splitlines()
    assert "@alpha.test alpha" in logins
    assert "@beta.test beta,beta2" in logins and "@beta-news.test beta,beta2" in logins


@pytest.mark.slow
def test_bulk_sasl_users_are_the_tenant_logins_hashed(rendered: tuple[Path, str]) -> None:
    out, log = rendered
    users = dict(
        line.split(":", 1) for line in (out / "mail1/sasl-users").read_text().splitlines()
        if not line.startswith("#")
    )  # fmt: skip
    assert sorted(users) == ["alpha", "beta", "beta2"]
    assert all(h.startswith("{SHA512-CRYPT}$6$") for h in users.values())
    assert SECRET not in (out / "mail1/sasl-users").read_text()
    assert SECRET not in log
    # The MX keeps its own users, and only them.
    mx_users = (out / "mx1/sasl-users").read_text()
    assert "app1@company.test:{SHA512-CRYPT}$6$" in mx_users and "alpha:" not in mx_users


@pytest.mark.slow
def test_pool_transports_bind_to_their_address_and_helo_their_name(
    rendered: tuple[Path, str],
) -> None:
    out, _ = rendered
    master = mastercf((out / "mail1/master.cf").read_text())
    pools = sorted(k for k in master if k.startswith("pool_"))
    assert pools == sorted(
        f"pool_{p}_{n}{c}/unix"
        for p, n in (("alpha", 1), ("beta", 1), ("alpha", 2))
        for c in ("", "_gmail", "_microsoft", "_yahoo")
    )
    assert master["pool_alpha_1_gmail/unix"] == [
        "smtp",
        "-o smtp_bind_address=198.51.100.121",
        "-o smtp_helo_name=mail1-alpha1.company.test",
        "-o syslog_name=postfix/pool_alpha_1_gmail",
    ]
    assert master["pool_alpha_2/unix"][1] == "-o smtp_bind_address=10.0.0.5"
    main = maincf((out / "mail1/main.cf").read_text())
    assert main["pool_beta_1_microsoft_destination_concurrency_limit"] == "5"
    assert main["pool_beta_1_microsoft_destination_rate_delay"] == "1s"
    assert main["pool_alpha_2_gmail_destination_recipient_limit"] == "50"
    # Mail with no tenant keeps the default pool and the provider transports.
    assert main["smtp_bind_address"] == "198.51.100.21"
    assert master["gmail/unix"] == ["smtp", "-o syslog_name=postfix/gmail"]
    assert main.get("default_filter_nexthop", "") == ""
    other = mastercf((out / "mail2/master.cf").read_text())
    assert [k for k in other if k.startswith("pool_") and "_" not in k[5:].split("/")[0][5:]] == [
        "pool_beta_1/unix"
    ]
    assert "-o smtp_helo_name=out.beta.test" in other["pool_beta_1/unix"]


@pytest.mark.slow
def test_app_host_relays_tenant_senders_with_their_login(rendered: tuple[Path, str]) -> None:
    out, log = rendered
    main = maincf((out / "app1/main.cf").read_text())
    assert main["relayhost"] == "[mx1.company.test]:587"
    assert main["sender_dependent_relayhost_maps"] == "hash:/etc/postfix/sender_relay"
    assert main["smtp_sender_dependent_authentication"] == "yes"
    assert main["smtp_tls_security_level"] == "secure"
    relay = (out / "app1/sender_relay").read_text().splitlines()
    assert "@alpha.test [mail.company.test]:587" in relay
    assert "news@beta-news.test [mail.company.test]:587" in relay
    passwd = (out / "app1/sasl_passwd").read_text().splitlines()
    assert f"@alpha.test alpha:{SECRET}" in passwd
    assert "[mx1.company.test]:587 app1@company.test:pw-app1" in passwd
    assert SECRET not in log
    # No routes, no sender-dependent settings (the MX renders none of it either).
    assert "sender_dependent_relayhost_maps" not in maincf((out / "mx1/main.cf").read_text())


@pytest.mark.slow
def test_a_bad_tenant_stops_the_play_saying_what_to_fix(tmp_path: Path) -> None:
    inv = inventory(all={"mail_tenant_passwords": {"beta": "pw-b", "beta2": "pw-b2"}})
    inv["all"]["children"]["mail_bulk"]["hosts"]["mail2"]["mail_pool_addresses"] = []
    res = run_render(tmp_path, inv, limit="mail1")
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out
    assert "login alpha has no password in mail_tenant_passwords" in out, out
    # mail1 still has a beta address, so only a pool with none anywhere is named.
    assert "has no address on any bulk host" not in out, out


@pytest.mark.slow
def test_a_route_without_its_password_stops_the_play_without_printing_others(
    tmp_path: Path,
) -> None:
    inv = inventory()
    routes = inv["all"]["children"]["mail_relay_clients"]["vars"][
        "postfix__relay_client_sender_routes"
    ]
    routes[1] = {**routes[1], "password": ""}
    res = run_render(tmp_path, inv, limit="app1")
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out
    assert "route 2 (senders" in out and "lacks senders, nexthop, username or password" in out, out
    assert SECRET not in out
