"""The node's warm-up files: each address's day 1 (``starts``) and the day's counts.

``starts`` (JSON) is written by the policy daemon when it first routes mail through an
address the inventory warms up, and by ``mailops warmup start|stop``; every writer holds
an exclusive ``flock`` on ``<starts>.lock`` while it reads, changes and replaces it (by
rename), so the daemon's first sight never undoes an operator's start::

    {"format": 1, "addresses": {"203.0.113.121": {"day1": "2026-12-07", "by": "first-seen"},
                                "203.0.113.122": {"day1": "2026-12-01", "by": "operator",
                                                  "curve": {"start": 50}},
                                "203.0.113.123": {"stopped": true, "by": "operator"}}}

``counts`` (JSON) is the daemon's alone: the recipients it routed today per address and
provider, written every few seconds while they change and when it stops, so a restart
goes on from where it was (yesterday's counts are not kept)::

    {"format": 1, "day": "2026-12-07", "written_at": 1765100000.0,
     "counts": {"203.0.113.121": {"gmail": 120, "other": 3}}}
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

FORMAT = 1


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` by rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, sort_keys=True, separators=(",", ":"))
            fh.write("\n")
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        with suppress(OSError):
            Path(tmp).unlink()
        raise


def read_starts(path: Path) -> dict[str, dict[str, Any]]:
    """address -> its entry; a missing file is no entry.  Raises ValueError when the
    file is not a starts file."""
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a warm-up starts file of format {FORMAT}")
    addresses = data.get("addresses")
    if not isinstance(addresses, dict) or not all(isinstance(v, dict) for v in addresses.values()):
        raise ValueError(f"{path}: no addresses table")
    return addresses


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def change_starts(
    path: Path, change: Callable[[dict[str, dict[str, Any]]], bool]
) -> dict[str, dict[str, Any]]:
    """Read, let ``change`` edit the entries in place (it returns whether it changed
    anything), and write them back, under the lock."""
    with _locked(path):
        entries = read_starts(path)
        if change(entries):
            _write_json(path, {"format": FORMAT, "addresses": entries})
        return entries


def read_counts(path: Path) -> tuple[str, float, dict[str, dict[str, int]]]:
    """(day, written_at, address -> provider -> count); a missing file: ("", 0, {})."""
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return "", 0.0, {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a warm-up counts file of format {FORMAT}")
    counts = data.get("counts", {})
    clean: dict[str, dict[str, int]] = {}
    if isinstance(counts, dict):
        for address, per in counts.items():
            if isinstance(per, dict):
                clean[str(address)] = {
                    str(p): int(n) for p, n in per.items() if isinstance(n, int) and n >= 0
                }
    return str(data.get("day", "")), float(data.get("written_at", 0.0)), clean


def write_counts(
    path: Path, day: str, written_at: float, counts: Mapping[str, Mapping[str, int]]
) -> None:
    _write_json(
        path,
        {
            "format": FORMAT,
            "day": day,
            "written_at": written_at,
            "counts": {a: dict(per) for a, per in counts.items()},
        },
    )
