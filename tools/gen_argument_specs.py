"""Write meta/argument_specs.yml for a role from its defaults/main.yml.

The defaults file is where every variable is documented (the comment block above it);
this keeps the spec's descriptions and types in step with it.  Choices and other
constraints that comments cannot express are kept from an existing spec: re-running
only adds new variables and drops removed ones.

    tools/gen_argument_specs.py roles/postfix
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


class IndentedDumper(yaml.SafeDumper):
    """Indent block sequences under their key, as yamllint's default expects."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


TYPES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


def comments(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    block: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            if "-----" not in line:
                block.append(line.lstrip("# ").rstrip())
        elif line and not line[0].isspace() and ":" in line and not line.startswith("---"):
            name = line.split(":", 1)[0]
            out[name] = " ".join(b for b in block if b) or name
            block = []
        elif not line.strip():
            block = []
    return out


def main(role: str) -> None:
    path = Path(role)
    text = (path / "defaults" / "main.yml").read_text()
    defaults: dict[str, Any] = yaml.safe_load(text) or {}
    docs = comments(text)
    spec_path = path / "meta" / "argument_specs.yml"
    old: dict[str, Any] = {}
    if spec_path.exists():
        old = yaml.safe_load(spec_path.read_text())["argument_specs"]["main"]["options"]
    options: dict[str, Any] = {}
    for name, value in defaults.items():
        opt = dict(old.get(name, {}))
        is_template = isinstance(value, str) and "{{" in value
        opt.setdefault("type", "raw" if is_template else TYPES.get(type(value), "raw"))
        opt["description"] = docs.get(name, name)
        opt.setdefault("required", False)
        options[name] = opt
    spec = {
        "argument_specs": {
            "main": {
                "short_description": f"The {path.name} role",
                "options": options,
            }
        }
    }
    text = yaml.dump(spec, Dumper=IndentedDumper, sort_keys=False, width=100)
    spec_path.write_text("---\n" + text)


if __name__ == "__main__":
    for r in sys.argv[1:]:
        main(r)
