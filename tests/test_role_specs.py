"""Every role documents its variables: meta/argument_specs.yml matches defaults/main.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_match_defaults(role: Path) -> None:
    defaults_file = role / "defaults" / "main.yml"
    spec_file = role / "meta" / "argument_specs.yml"
    defaults = yaml.safe_load(defaults_file.read_text()) or {} if defaults_file.exists() else {}
    assert spec_file.exists(), f"{role.name} has no meta/argument_specs.yml"
    spec = yaml.safe_load(spec_file.read_text())["argument_specs"]["main"]["options"]
    assert sorted(spec) == sorted(defaults), (
        f"{role.name}: argument_specs and defaults differ: "
        f"only in specs {sorted(set(spec) - set(defaults))}, "
        f"only in defaults {sorted(set(defaults) - set(spec))}"
    )
    for name, opt in spec.items():
        assert opt.get("description"), f"{role.name}: {name} has no description"
        assert name.startswith(role.name + "__"), f"{name} is not namespaced {role.name}__"
