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

A listing not remembered yet is made by the same Ansible code, run by a fork server
(tests/support/ansible_forkserver.py) that has imported Ansible once, when the call
names the ansible-inventory beside this Python (one server per working directory
and ANSIBLE_* environment, which Ansible reads at import); by that executable
itself otherwise.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from mailops.dns import inventory

Key = tuple[tuple[str, ...], str, tuple[tuple[str, str], ...], tuple[tuple[str, int, int], ...]]

_listings: dict[Key, subprocess.CompletedProcess[str]] = {}
stats = {"hits": 0, "runs": 0, "forked": 0}


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
    return (tuple(argv), str(Path.cwd()), _ansible_env(), _tree(path))


def _ansible_env() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("ANSIBLE_")))


class ForkServer:
    """The client of tests/support/ansible_forkserver.py (one per test process)."""

    def __init__(self) -> None:
        self.cwd = str(Path.cwd())
        self.env = _ansible_env()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("ansible_forkserver.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"the ansible-inventory fork server exited {self.proc.wait()}")
        atexit.register(self.stop)

    def serves(self) -> bool:
        return (
            self.proc.poll() is None and str(Path.cwd()) == self.cwd and _ansible_env() == self.env
        )

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the ansible-inventory fork server exited {self.proc.wait()}")
        a = json.loads(line)
        return subprocess.CompletedProcess(argv, a["returncode"], a["stdout"], a["stderr"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_servers: dict[tuple[str, tuple[tuple[str, str], ...]], ForkServer] = {}


def _fork_server(argv: list[str]) -> ForkServer | None:
    """The fork server for this call, None for an ansible-inventory other than ours."""
    if argv[0] != str(Path(sys.executable).parent / "ansible-inventory"):
        return None
    where = (str(Path.cwd()), _ansible_env())
    if where not in _servers:
        _servers[where] = ForkServer()
    server = _servers[where]
    return server if server.serves() else None


def cached_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    key = _key(argv)
    if key is not None and key in _listings:
        stats["hits"] += 1
        return _listings[key]
    proc: subprocess.CompletedProcess[str]
    server = _fork_server(argv) if key is not None else None
    if server is not None:
        proc = server.run(argv)
        stats["forked"] += 1
    else:
        proc = subprocess.run(argv, **kwargs)
    stats["runs"] += 1
    if key is not None and proc.returncode == 0:
        _listings[key] = proc
    return proc


def use_cached_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    """For one test: mailops.dns.inventory runs ansible-inventory through the cache."""
    proxy = types.SimpleNamespace(run=cached_run, TimeoutExpired=subprocess.TimeoutExpired)
    monkeypatch.setattr(inventory, "subprocess", proxy)
