"""The throttle's state file: where the log was left and each transport's step.

One JSON file, replaced atomically, readable by everyone (it holds no secret): the queue
collector's forced command on the node (``mailops queues local``, run as the postfix
user) reads the transports' part of it for the monitor's /metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops.maillog.follow import Position, load_state
from mailops.saslblock.blocks import write_atomic
from mailops.throttle.steps import Rung, TransportState

FORMAT = 1
DEFAULT_STATE = "/var/lib/mailops-throttle/state.json"

Warn = Callable[[str], None]


@dataclass
class Entry:
    """One transport: the remembered state plus what the run applied, for readers."""

    state: TransportState
    applied_step: int = 0
    top: int = 0
    rung: Rung | None = None


def _transports(data: dict[str, Any]) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    raw = data.get("transports", {})
    if not isinstance(raw, dict):
        raise ValueError("transports must be an object")
    for name, item in raw.items():
        if not isinstance(item, dict):
            raise ValueError(f"transport {name!r} must be an object")
        applied = item.get("applied_step", 0)
        if not isinstance(applied, int) or isinstance(applied, bool) or applied < 0:
            raise ValueError(f"transport {name!r}: applied_step must be >= 0")
        entries[str(name)] = Entry(TransportState.from_json(item), applied)
    return entries


@dataclass
class State:
    position: Position | None = None
    transports: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, warn: Warn) -> State:
        loaded = load_state(
            path, FORMAT, warn, "starting at the log's end, every step at 0", _transports
        )
        return cls() if loaded is None else cls(*loaded)

    def as_json(self, now: float) -> dict[str, Any]:
        transports: dict[str, Any] = {}
        for name, e in sorted(self.transports.items()):
            item = e.state.as_json()
            item["applied_step"] = e.applied_step
            item["top"] = e.top
            if e.rung is not None:
                item["concurrency"] = e.rung.concurrency
                item["rate_delay_seconds"] = e.rung.rate_delay
            transports[name] = item
        return {
            "format": FORMAT,
            "written_at": round(now, 3),
            "position": None if self.position is None else self.position.as_json(),
            "transports": transports,
        }

    def save(self, path: Path, now: float) -> None:
        text = json.dumps(self.as_json(now), separators=(",", ":"), sort_keys=False) + "\n"
        write_atomic(path, text, mode=0o644)
