"""The rspamd_signer role's Rspamd configuration: signing only, on the milter socket the
postfix role is given, with the opendkim role's tables and headers.

Rendered here with Jinja as Ansible's template module runs it; the lab checks the running
signer (tests/e2e/test_rspamd_signer.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles/rspamd_signer"
DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
VARS = yaml.safe_load((ROLE / "vars/main.yml").read_text())
OPENDKIM = yaml.safe_load((ROOT / "roles/opendkim/defaults/main.yml").read_text())


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=(), default_for_string=False),
    )
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    return env


def values(**overrides: Any) -> dict[str, Any]:
    env = environment()
    v: dict[str, Any] = {
        "ansible_managed": "managed",
        "rspamd_signer__conf_dir": VARS["rspamd_signer__conf_dir"],
        "rspamd_signer__postfix_queue_dir": DEFAULTS["rspamd_signer__postfix_queue_dir"],
        "rspamd_signer__socket": DEFAULTS["rspamd_signer__socket"],
        "rspamd_signer__keys_dir": DEFAULTS["rspamd_signer__keys_dir"],
        "rspamd_signer__workers": 2,
        "rspamd_signer__log_level": "notice",
        "rspamd_signer__sign_networks": ["127.0.0.1", "::1", "192.0.2.30/32"],
        "rspamd_signer__sign_headers": OPENDKIM["opendkim__sign_headers"],
        "rspamd_signer__oversign_headers": OPENDKIM["opendkim__oversign_headers"],
        "rspamd_signer__tenant_from_check": True,
        **overrides,
    }
    v["rspamd_signer__socket_path"] = env.from_string(VARS["rspamd_signer__socket_path"]).render(
        **v
    )
    v["rspamd_signer__headers_spec"] = env.from_string(VARS["rspamd_signer__headers_spec"]).render(
        **v
    )
    v["rspamd_signer__symbols"] = ["DKIM_SIGNED"] + (
        ["MAILOPS_TENANT_FROM"] if v["rspamd_signer__tenant_from_check"] else []
    )
    return v


def render(template: str, **overrides: Any) -> str:
    text = (ROLE / "templates" / f"{template}.j2").read_text()
    return environment().from_string(text).render(**values(**overrides))


def test_one_worker_the_milter_on_the_socket_postfix_is_given() -> None:
    conf = render("rspamd.conf")
    workers = re.findall(r'^worker "([^"]+)"', conf, re.M)
    assert workers == ["rspamd_proxy"], workers
    bind = re.search(r'bind_socket = "([^"]+)";', conf)
    assert bind, conf
    assert bind.group(1) == (
        "/var/spool/postfix/rspamd/milter.sock mode=0660 owner=_rspamd group=postfix"
    )
    # Postfix names it relative to its queue directory (chrooted smtpd finds it too) and
    # answers 4xx when it is down.
    milters = {e["name"]: e["value"] for e in DEFAULTS["rspamd_signer__postfix__dependent_maincf"]}
    for key in ("smtpd_milters", "non_smtpd_milters"):
        names = [i["name"] for i in milters[key]]
        assert names == ["{ unix:{{ rspamd_signer__socket }}, default_action=tempfail }"], names
    assert re.search(r"self_scan = yes;", conf) and re.search(r"count = 2;", conf)


def test_signing_only_no_rules_no_other_plugins_no_other_symbols() -> None:
    conf = render("rspamd.conf")
    assert 'filters = "dkim";' in conf
    assert 'lua = "/etc/rspamd/signer/rules.lua";' in conf
    assert re.search(r'modules \{\s*path = "/etc/rspamd/signer/plugins";\s*\}', conf), conf
    assert ".include" not in conf  # none of the package's files
    enabled = re.search(r"symbols_enabled = \[([^\]]*)\];", conf)
    assert enabled and enabled.group(1) == '"DKIM_SIGNED", "MAILOPS_TENANT_FROM"', conf
    assert DEFAULTS["rspamd_signer__plugins"] == ["dkim_signing", "settings"]
    without = render("rspamd.conf", rspamd_signer__tenant_from_check=False)
    assert 'symbols_enabled = ["DKIM_SIGNED"];' in without
    assert "rspamd_config:register_symbol" not in render(
        "rules.lua", rspamd_signer__tenant_from_check=False, opendkim__tenants=[]
    )


def test_the_opendkim_roles_headers_and_networks() -> None:
    conf = render("rspamd.conf")
    spec = re.search(r'sign_headers = "([^"]+)";', conf)
    assert spec, conf
    parts = spec.group(1).split(":")
    assert parts[0] == "(o)from" and "(o)list-unsubscribe-post" in parts, parts
    assert "subject" in parts and "(o)subject" not in parts, parts
    assert len(parts) == len(set(parts)) == len(OPENDKIM["opendkim__sign_headers"]), parts
    assert 'sign_networks = ["127.0.0.1", "::1", "192.0.2.30/32"];' in conf


def test_tables_name_the_active_selector_and_this_hosts_key_files() -> None:
    keys = [
        {"domain": "example.com", "selector": "s1"},
        {"domain": "example.com", "selector": "s2"},
        {"domain": "alpha.example", "selector": "a1"},
    ]
    active = {"example.com": "s2", "alpha.example": "a1"}
    signing = render("signing_table.map", opendkim__active_in_force=active)
    lines = [ln for ln in signing.splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "*@example.com s2._domainkey.example.com",
        "*@*.example.com s2._domainkey.example.com",
        "*@alpha.example a1._domainkey.alpha.example",
        "*@*.alpha.example a1._domainkey.alpha.example",
    ]
    table = render("key_table.map", opendkim__keys_in_force=keys)
    lines = [ln for ln in table.splitlines() if ln and not ln.startswith("#")]
    assert lines[1] == (
        "s2._domainkey.example.com example.com:s2:/etc/rspamd/dkim/example.com/s2.private"
    )
    assert len(lines) == 3


def test_the_from_check_knows_every_login_and_domain() -> None:
    tenants = [
        {"name": "alpha", "domains": ["Alpha.example"], "logins": ["Alpha-News"]},
        {"name": "beta", "domains": ["beta.example", "b.example"], "logins": []},
    ]
    lua = render("rules.lua", opendkim__tenants=tenants)
    assert '["alpha-news"] = "alpha",' in lua
    assert '["beta"] = { ["beta.example"] = true, ["b.example"] = true, },' in lua
    assert 'task:set_pre_result("reject", text, "tenant_from")' in lua
