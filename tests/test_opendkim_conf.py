"""The opendkim role's opendkim.conf: which resolver setting it writes.

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

TEMPLATE = Path(__file__).resolve().parent.parent / "roles/opendkim/templates/opendkim.conf.j2"


def render(**overrides: Any) -> dict[str, str]:
    """The rendered file as {setting: value}, rendered as Ansible's template module does
    (trim_blocks)."""
    env = jinja2.Environment(
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=(), default_for_string=False),
    )
    values: dict[str, Any] = {
        "ansible_managed": "managed",
        "opendkim__mode": "sv",
        "opendkim__port": 8891,
        "opendkim__authserv_id": "mx1.example.com",
        "opendkim__nameservers": ["192.0.2.53", "2001:db8::53"],
        "opendkim__resolver_nodefault_zones": [],
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
