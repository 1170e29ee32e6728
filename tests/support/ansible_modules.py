"""Load one of the project's own Ansible modules (plugins/modules/NAME.py) as a Python
module, so tests can call its functions without Ansible running it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent


def load_module(name: str) -> ModuleType:
    path = ROOT / "plugins" / "modules" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"plugins_modules_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
