"""One ``ansible-inventory --list`` per inventory and test process.

The `mailops dns` tests plan and check the same few fixture inventories dozens of
times; every run starts ``ansible-inventory`` (about a second of Python start-up and
plugin loading on a loaded machine).  `use_cached_listings` swaps the ``subprocess``
that mailops.dns.inventory sees for one whose ``run`` remembers a successful
``ansible-inventory -i PATH --list``, keyed by the command, the working directory,
the ANSIBLE_* environment and every file under PATH (name, size, mtime): an inventory
written or changed by a test is read afresh, a failing or missing ansible-inventory
is never remembered, and everything after the listing (parsing, settings, the plan)
runs for real each time.
"""

from __future__ import annotations

import os
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

from mailops.dns import inventory

Key = tuple[tuple[str, ...], str, tuple[tuple[str, str], ...], tuple[tuple[str, int, int], ...]]

_listings: dict[Key, subprocess.CompletedProcess[str]] = {}
stats = {"hits": 0, "runs": 0}


def _tree(path: Path) -> tuple[tuple[str, int, int], ...]:
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    out = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            out.append((str(f.relative_to(path)), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _key(argv: list[str]) -> Key | None:
    """The cache key of an ``ansible-inventory -i PATH --list`` call, None for any other."""
    if len(argv) != 4 or argv[1] != "-i" or argv[3] != "--list":
        return None
    if Path(argv[0]).name != "ansible-inventory":
        return None
    path = Path(argv[2])
    if not path.exists():
        return None
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("ANSIBLE_")))
    return (tuple(argv), str(Path.cwd()), env, _tree(path))


def cached_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    key = _key(argv)
    if key is not None and key in _listings:
        stats["hits"] += 1
        return _listings[key]
    proc: subprocess.CompletedProcess[str] = subprocess.run(argv, **kwargs)
    stats["runs"] += 1
    if key is not None and proc.returncode == 0:
        _listings[key] = proc
    return proc


def use_cached_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    """For one test: mailops.dns.inventory runs ansible-inventory through the cache."""
    proxy = types.SimpleNamespace(run=cached_run, TimeoutExpired=subprocess.TimeoutExpired)
    monkeypatch.setattr(inventory, "subprocess", proxy)
