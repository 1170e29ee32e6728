"""The lab's extra addresses: read from the inventory, refused when they clash."""

from __future__ import annotations

import importlib.util
import ipaddress
import sys
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parents[1] / "tools" / "lab.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lab_tool_under_test", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lab = load_tool()


def make_lab(*hosts: tuple[str, str, list[str]]) -> object:
    return lab.Lab(
        subnet=ipaddress.IPv4Network("198.51.100.0/24"),
        gateway="198.51.100.1",
        dns_ip="198.51.100.2",
        hosts=[lab.Host(name=n, ip=ip, fqdn=f"{n}.company.test", extra=x) for n, ip, x in hosts],
    )


def test_the_lab_inventory_gives_the_bulk_nodes_their_pools_and_the_cap() -> None:
    found = {h.name: h for h in lab.load_lab().hosts}
    assert found["mail1"].extra == ["198.51.100.121", "198.51.100.131"]
    assert found["mail2"].extra == ["198.51.100.122", "198.51.100.132"]
    for name in ("mail1", "mail2"):
        assert "NET_ADMIN" in found[name].caps
    assert lab.address_problems(lab.load_lab()) == []


def test_distinct_addresses_in_the_subnet_pass() -> None:
    ok = make_lab(
        ("mail1", "198.51.100.21", ["198.51.100.121", "198.51.100.131"]),
        ("mail2", "198.51.100.22", ["198.51.100.122"]),
    )
    assert lab.address_problems(ok) == []


def test_a_pool_address_outside_the_subnet_is_refused() -> None:
    bad = make_lab(("mail1", "198.51.100.21", ["192.0.2.121"]))
    assert lab.address_problems(bad) == [
        "mail1's pool address 192.0.2.121 is not in 198.51.100.0/24"
    ]


def test_an_address_claimed_twice_is_refused() -> None:
    bad = make_lab(
        ("mail1", "198.51.100.21", ["198.51.100.121"]),
        ("mail2", "198.51.100.22", ["198.51.100.121", "198.51.100.21"]),
    )
    assert lab.address_problems(bad) == [
        "mail2's pool address 198.51.100.121 is also mail1's",
        "mail2's pool address 198.51.100.21 is also mail1's",
    ]


def test_a_pool_address_that_is_no_address_is_refused() -> None:
    bad = make_lab(("mail1", "198.51.100.21", ["mail1-alpha1"]))
    assert lab.address_problems(bad) == ["mail1's pool address 'mail1-alpha1' is not an IP address"]
