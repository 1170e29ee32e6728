"""The end-to-end suite runs against the container lab; it starts the lab when absent."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.e2e.labhosts import PREFIX, ROOT, inventory

# Modules whose checks share a module-scoped fixture (one attack, then checks of its
# outcome): when checks run side by side (pytest-xdist), each such module stays on one
# worker so that its fixture runs once; every other check goes wherever a worker is free.
# test_ses_relay.py's checks turn the SES stand-in's throttling switch and password
# on and off: side by side they would see each other's.
ONE_WORKER_MODULES = frozenset({"tests/e2e/test_saslblock.py", "tests/e2e/test_ses_relay.py"})


class _SharedFixtureScheduling(LoadScopeScheduling):
    """Spread checks one by one, except the modules of ONE_WORKER_MODULES, kept whole.

    (xdist's own loadgroup marks do not take under pytest 9: they rewrite a node id that
    pytest no longer reads back.)
    """

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in ONE_WORKER_MODULES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling | None:
    if config.getvalue("dist") != "loadscope":
        return None
    return _SharedFixtureScheduling(config, log)  # type: ignore[arg-type]


def _lab_running() -> bool:
    out = subprocess.run(
        ["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return all(f"{PREFIX}-{h}" in out for h in inventory())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
    # Checks that spend a minute waiting for a cron job go first: side by side, the
    # others then run while they wait, instead of after them.
    items.sort(key=lambda item: item.get_closest_marker("long_wait") is None)


@pytest.fixture(scope="session", autouse=True)
def lab() -> Iterator[None]:
    """Bring the lab up (converged, without its own checks) if it is not running."""
    if os.environ.get("MAILOPS_LAB_RUNNING") != "1" and not _lab_running():
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "lab.py"), "up", "--no-check"], check=True
        )
    yield


@pytest.fixture
def evidence(record_property: pytest.RecordProperty) -> Iterator[list[str]]:
    """Lines of evidence a check shows in the lab summary (SMTP replies, headers seen)."""
    lines: list[str] = []
    yield lines
    record_property("evidence", " | ".join(lines)[:500])
