"""The policy daemon's side of the warm-up: today's count per address and provider, and
the decision for one more recipient.

One :class:`Counter` lives in the daemon (one per node), so the counts are the node's:
caps are per node, as the issue asks (each node's addresses are its own).  It starts
from the counts file when that is of today, starts again from zero when the day
changes, and is written back by :meth:`Counter.flush` (the daemon calls it every
``flush_every`` seconds while something changed, and when it stops).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mailops.warmup import state
from mailops.warmup.schedule import Curve, WarmupSettings, day_number, parse_day


class Counter:
    def __init__(self, path: Path, today: str) -> None:
        self.path = path
        self.day = today
        self.counts: dict[str, dict[str, int]] = {}
        self.dirty = False
        self.written_at = 0.0

    @classmethod
    def load(cls, path: Path, today: str, warn: Callable[[str], None]) -> Counter:
        counter = cls(path, today)
        try:
            day, _, counts = state.read_counts(path)
        except (OSError, ValueError) as exc:
            warn(f"{path}: cannot read the warm-up counts ({exc}); counting from zero")
            return counter
        if day == today:
            counter.counts = counts
        return counter

    def roll(self, today: str) -> None:
        if today != self.day:
            self.day = today
            self.counts = {}
            self.dirty = True

    def used(self, address: str, provider: str) -> int:
        return self.counts.get(address, {}).get(provider, 0)

    def add(self, address: str, provider: str) -> None:
        per = self.counts.setdefault(address, {})
        per[provider] = per.get(provider, 0) + 1
        self.dirty = True

    def flush(self, when: float, *, force: bool = False) -> bool:
        """Write the counts when they changed (or ``force``); True when written."""
        if not (self.dirty or force):
            return False
        state.write_counts(self.path, self.day, when, self.counts)
        self.dirty = False
        self.written_at = when
        return True


def today_cap(
    settings: WarmupSettings,
    address: str,
    entry: Mapping[str, Any] | None,
    today: dt.date,
) -> tuple[int | None, int, Curve | None]:
    """(today's cap or None, the day number or 0, the curve or None) of ``address``,
    given its ``starts`` entry.  An entry with no day 1 of an address the inventory
    warms up is the caller's to record (day 1 is today)."""
    if entry is not None and entry.get("stopped"):
        return None, 0, None
    if entry is not None and isinstance(entry.get("day1"), str):
        try:
            first = parse_day(entry["day1"])
        except ValueError:
            first = today
        override = entry.get("curve")
        curve = settings.curve_for(address, override if isinstance(override, dict) else None)
        day = day_number(first, today)
        return curve.cap(day), day, curve
    if address in settings.planned:
        curve = settings.planned[address]
        named = settings.planned_day1.get(address)
        day = 1 if named is None else day_number(named, today)
        return curve.cap(day), day, curve
    return None, 0, None


def reply(address: str, provider: str, cap: int, day: int) -> str:
    """The 4xx smtpd gives for a recipient over today's cap (never a 5xx)."""
    return (
        f"450 4.7.1 sending address {address} is warming up (day {day}): today's cap of"
        f" {cap} recipients at {provider} is reached; try again later"
    )
