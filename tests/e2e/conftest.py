"""The end-to-end suite runs against the container lab; it starts the lab when absent."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.labhosts import PREFIX, ROOT, inventory


def _lab_running() -> bool:
    out = subprocess.run(
        ["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return all(f"{PREFIX}-{h}" in out for h in inventory())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


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
