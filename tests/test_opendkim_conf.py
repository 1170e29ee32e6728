"""The opendkim role's opendkim.conf: which resolver setting it writes, and the milter
socket it shares with Postfix.

OpenDKIM 2.11 parses a ResolverConfiguration file again for every message, and
libunbound's parser is not thread-safe (tests/e2e/test_faults.py shows the verifier
dying under a burst with it).  So the file goes in only where zones must be taken out
of libunbound's built-in refusals (the lab's .test names); real deployments get
Nameservers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROLE = Path(__file__).resolve().parent.parent / "roles/opendkim"
TEMPLATE = ROLE / "templates/opendkim.conf.j2"
DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())


def environment() -> jinja2.Environment:
    """Jinja as Ansible's template module sets it up (trim_blocks)."""
    return jinja2.Environment(
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=(), default_for_string=False),
    )


def render(**overrides: Any) -> dict[str, str]:
    """The rendered file as {setting: value}."""
    env = environment()
    values: dict[str, Any] = {
        "ansible_managed": "managed",
        "opendkim__mode": "sv",
        "opendkim__postfix_queue_dir": DEFAULTS["opendkim__postfix_queue_dir"],
        "opendkim__socket": DEFAULTS["opendkim__socket"],
        "opendkim__authserv_id": "mx1.example.com",
        "opendkim__nameservers": ["192.0.2.53", "2001:db8::53"],
        "opendkim__resolver_nodefault_zones": [],
        "opendkim__tenant_from_check": False,
        "opendkim__oversign_headers": DEFAULTS["opendkim__oversign_headers"],
        "opendkim__sign_headers": DEFAULTS["opendkim__sign_headers"],
        **overrides,
    }
    text = env.from_string(TEMPLATE.read_text()).render(**values)
    settings: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition(" ")
            assert name not in settings, f"{name} written twice"
            settings[name] = value.strip()
    return settings


def test_a_verifier_for_real_domains_gets_nameservers_and_no_resolver_file() -> None:
    conf = render()
    assert conf["Nameservers"] == "192.0.2.53,2001:db8::53"
    assert "ResolverConfiguration" not in conf


def test_the_resolver_file_only_where_zones_must_be_let_through() -> None:
    conf = render(opendkim__resolver_nodefault_zones=["test"])
    assert conf["ResolverConfiguration"] == "/etc/opendkim/resolver.conf"
    assert "Nameservers" not in conf


@pytest.mark.parametrize(
    "overrides",
    [
        {"opendkim__mode": "s"},
        {"opendkim__mode": "s", "opendkim__resolver_nodefault_zones": ["test"]},
        {"opendkim__nameservers": []},
    ],
)
def test_no_resolver_setting_where_it_only_signs_or_has_no_resolvers(
    overrides: dict[str, Any],
) -> None:
    conf = render(**overrides)
    assert "Nameservers" not in conf and "ResolverConfiguration" not in conf
    assert conf["Mode"] == overrides.get("opendkim__mode", "sv")


def test_the_milter_is_a_unix_socket_that_postfix_reaches_by_the_exported_name() -> None:
    """TCP on loopback cost about 90 ms a message in the lab (docs/bench.md): OpenDKIM
    listens on a unix socket in Postfix's queue directory, and what the role hands to the
    postfix role names that same socket relative to the queue directory, which is where
    Postfix's daemons resolve it from, chrooted or not."""
    conf = render()
    kind, _, path = conf["Socket"].partition(":")
    assert kind == "local", conf["Socket"]
    env = environment()
    values = {k: DEFAULTS[k] for k in ("opendkim__postfix_queue_dir", "opendkim__socket")}
    exported = {
        entry["name"]: [env.from_string(v).render(**values) for v in entry["value"]]
        for entry in DEFAULTS["opendkim__postfix__dependent_maincf"]
    }
    for name in ("smtpd_milters", "non_smtpd_milters"):
        [milter] = exported[name]
        kind, _, relative = milter.partition(":")
        assert kind == "unix" and not relative.startswith("/"), milter
        assert path == f"{values['opendkim__postfix_queue_dir']}/{relative}", (path, milter)


def test_the_tenant_from_check_only_where_asked() -> None:
    assert "FinalPolicyScript" not in render()
    conf = render(opendkim__tenant_from_check=True)
    assert conf["FinalPolicyScript"] == "/etc/opendkim/tenant-from.lua"


def test_the_unsubscribe_headers_are_always_signed() -> None:
    """The milter adds them before OpenDKIM signs: they must be in h= (oversigned)."""
    conf = render()
    over = conf["OversignHeaders"].split(",")
    assert {"From", "List-Unsubscribe", "List-Unsubscribe-Post"} <= set(over)
    # An oversigned header OpenDKIM does not also sign is in h= only as absent, and
    # the receiver's check fails when it is there (seen in the lab): both lists need it.
    signed = conf["SignHeaders"].split(",")
    assert {"From", "List-Unsubscribe", "List-Unsubscribe-Post"} <= set(signed)
