"""The bench's log generator and pflogsumm reader, for the tests that use them too.

bench/ is no package (its scripts run as files), so each module is loaded from its file,
under its own name, once: one copy of each piece of knowledge, no edit of sys.path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


loggen = load("loggen")
pflogsumm_text = load("pflogsumm_text")
