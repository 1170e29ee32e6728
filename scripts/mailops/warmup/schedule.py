"""The warm-up curve, the ``[warmup]`` settings and the clock the caps are reckoned by.

A sending address in warm-up may send, on its day ``d`` (day 1 is the first), at most
``floor(start * factor ** (d - 1))`` recipients to each receiving provider; the first
day that figure reaches ``steady`` the warm-up is over and the address has no cap.
The default curve (200, x1.5, until 50,000 a day) caps 14 days: docs/warmup.md says
why.  Providers are the ``[transport_classes]`` (gmail, microsoft, ...), every other
domain together is ``other``.

``[warmup]`` in mailops.toml (written by the mailops role on the bulk nodes)::

    [warmup]
    starts = "/var/lib/mailops/warmup-starts.json"   # day 1 of each address
    counts = "/var/lib/mailops/warmup-counts.json"   # the policy daemon's counts
    flush_every = 2.0                                # seconds between two writes
    curve = {start = 200, factor = 1.5, steady = 50000}
    transports = {pool_alpha_1 = "203.0.113.121"}    # this node's pool transports
    [warmup.addresses."203.0.113.121"]               # warms up (the inventory says so);
    start = 100                                      # its own curve's keys, if any

An address with no ``[warmup.addresses]`` entry is steady unless an operator started a
warm-up for it (``mailops warmup start``).

The clock: :func:`now` is ``time.time()`` unless ``MAILOPS_NOW`` holds a time (seconds
since the epoch, or an ISO date or date and time, local time), so tests and an
operator's dry run can stand on any day.  Days are the node's local dates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops.config import ConfigError, show

OTHER = "other"  # the provider of every domain no transport class names
_TRANSPORT = re.compile(r"^[a-z][a-z0-9_]{0,60}$")
KEYS = ("starts", "counts", "flush_every", "curve", "transports", "addresses")
DEFAULT_STARTS = Path("/var/lib/mailops/warmup-starts.json")
DEFAULT_COUNTS = Path("/var/lib/mailops/warmup-counts.json")


@dataclass(frozen=True)
class Curve:
    """Day 1's cap, the growth per day, and the daily volume where the warm-up ends."""

    start: int = 200
    factor: float = 1.5
    steady: int = 50_000

    def cap(self, day: int) -> int | None:
        """The cap per provider on day ``day`` (1 = the first); None once steady."""
        day = max(day, 1)
        if self.factor <= 1:
            value = float(self.start)
        else:
            # No float overflow for a day far past the end of the curve.
            exponent = min(
                day - 1, math.ceil(math.log(max(self.steady, 1)) / math.log(self.factor)) + 1
            )
            value = self.start * self.factor**exponent
        if value >= self.steady:
            return None
        return int(value)

    def days(self) -> int:
        """How many days of caps the curve has (the day after the last is steady)."""
        day = 1
        while self.cap(day) is not None and day < 10_000:
            day += 1
        return day - 1

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "factor": self.factor, "steady": self.steady}


DEFAULT_CURVE = Curve()


def curve_problems(where: str, raw: Any, *, day1: bool = False) -> list[str]:
    """Problems of a table of curve keys (``day1``: an address's may name its day 1)."""
    if not isinstance(raw, Mapping):
        return [f"{where}: expected a table of start, factor, steady, got {show(raw)}"]
    found: list[str] = []
    for key, value in raw.items():
        if key == "day1" and day1:
            if not isinstance(value, str | dt.date) or not _is_day(value):
                found.append(f"{where} day1: expected a date (YYYY-MM-DD), got {show(value)}")
        elif key == "start" or key == "steady":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                found.append(f"{where} {key}: expected an integer >= 1, got {show(value)}")
        elif key == "factor":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (1 <= value <= 10)
            ):
                found.append(f"{where} factor: expected a number from 1 to 10, got {show(value)}")
        else:
            found.append(f"{where}: unknown key {key!r}; expected start, factor, steady")
    return found


def _is_day(value: Any) -> bool:
    if isinstance(value, dt.date):
        return True
    try:
        dt.date.fromisoformat(str(value))
    except ValueError:
        return False
    return True


def make_curve(raw: Mapping[str, Any], base: Curve = DEFAULT_CURVE) -> Curve:
    """``base`` with the keys ``raw`` gives (already checked)."""
    return Curve(
        start=int(raw.get("start", base.start)),
        factor=float(raw.get("factor", base.factor)),
        steady=int(raw.get("steady", base.steady)),
    )


def _address(text: Any) -> bool:
    try:
        ipaddress.ip_address(text)
    except (ValueError, TypeError):
        return False
    return True


def problems(raw: Any) -> list[str]:
    """Every problem of a ``[warmup]`` table (``mailops config check`` runs this)."""
    if not isinstance(raw, Mapping):
        return [f"[warmup]: expected a table, got {show(raw)}"]
    found: list[str] = []
    for key in raw:
        if key not in KEYS:
            found.append(f"[warmup]: unknown key {key!r}; expected one of {', '.join(KEYS)}")
    for key in ("starts", "counts"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            found.append(f"[warmup] {key}: expected a file name, got {show(raw[key])}")
    every = raw.get("flush_every", 2.0)
    if isinstance(every, bool) or not isinstance(every, int | float) or not (0.1 <= every <= 300):
        found.append(f"[warmup] flush_every: expected seconds from 0.1 to 300, got {show(every)}")
    if "curve" in raw:
        found.extend(curve_problems("[warmup] curve", raw["curve"]))
    transports = raw.get("transports", {})
    if not isinstance(transports, Mapping):
        found.append(f"[warmup] transports: expected a table, got {show(transports)}")
    else:
        for name, address in transports.items():
            if not _TRANSPORT.match(name) or not _address(address):
                found.append(
                    f'[warmup] transports: expected transport = "address", got'
                    f" {name} = {show(address)}"
                )
    addresses = raw.get("addresses", {})
    if not isinstance(addresses, Mapping):
        found.append(f"[warmup] addresses: expected a table, got {show(addresses)}")
    else:
        for address, body in addresses.items():
            if not _address(address):
                found.append(f"[warmup] addresses: {address!r} is not an IP address")
            else:
                found.extend(curve_problems(f"[warmup.addresses.{address!r}]", body, day1=True))
    return found


@dataclass(frozen=True)
class WarmupSettings:
    starts: Path
    counts: Path
    flush_every: float
    curve: Curve
    transports: Mapping[str, str]  # pool transport (base name) -> its address
    planned: Mapping[str, Curve]  # addresses the inventory warms up -> their curve
    planned_day1: Mapping[str, dt.date] = field(default_factory=dict)  # day 1 it names

    def curve_for(self, address: str, override: Mapping[str, Any] | None = None) -> Curve:
        base = self.planned.get(address, self.curve)
        return make_curve(override, base) if override else base


def read(data: Mapping[str, Any]) -> WarmupSettings:
    """``[warmup]`` of a parsed mailops.toml (absent: every default, nothing warms up)."""
    raw = data.get("warmup", {})
    found = problems(raw)
    if found:
        raise ConfigError(*found)
    curve = make_curve(raw.get("curve", {}))
    return WarmupSettings(
        starts=Path(raw.get("starts", DEFAULT_STARTS)),
        counts=Path(raw.get("counts", DEFAULT_COUNTS)),
        flush_every=float(raw.get("flush_every", 2.0)),
        curve=curve,
        transports={k: str(ipaddress.ip_address(v)) for k, v in raw.get("transports", {}).items()},
        planned={
            str(ipaddress.ip_address(a)): make_curve(body, curve)
            for a, body in raw.get("addresses", {}).items()
        },
        planned_day1={
            str(ipaddress.ip_address(a)): _day(body["day1"])
            for a, body in raw.get("addresses", {}).items()
            if "day1" in body
        },
    )


def _day(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def dns_weight(
    weight: int | None, warmup: Any, address: str | None, when: float, steady_weight: int
) -> int | None:
    """A bulk host's Route53 weight in the cluster name, following the warm-up of its
    address: on day d, the steady weight (its ``dns_weight``, else ``steady_weight``)
    times day d's cap over the curve's ``steady``, at least 1.  An address the inventory
    does not warm up with a ``day1`` (``mail_warmup.addresses.ADDRESS.day1``: the
    controller cannot see the node's own record of it) keeps ``weight``."""
    if not isinstance(warmup, Mapping) or not address:
        return weight
    if problems({k: v for k, v in warmup.items() if k in ("curve", "addresses")}):
        return weight
    entry = (warmup.get("addresses") or {}).get(address)
    if not isinstance(entry, Mapping) or "day1" not in entry:
        return weight
    curve = make_curve(entry, make_curve(warmup.get("curve") or {}))
    cap = curve.cap(day_number(_day(entry["day1"]), day_of(when)))
    full = steady_weight if weight is None else weight
    if cap is None:
        return full
    return max(1, min(full, round(full * cap / curve.steady)))


# --------------------------------------------------------------------------- the clock


def parse_time(text: str) -> float:
    """Seconds since the epoch from ``1765065600``, ``2026-12-07`` or
    ``2026-12-07T10:30`` (local time)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: seconds since the epoch or an ISO date (YYYY-MM-DD)"
        ) from None


def now() -> float:
    """The time the caps are reckoned by: $MAILOPS_NOW when set, else the real one."""
    fixed = os.environ.get("MAILOPS_NOW", "")
    return parse_time(fixed) if fixed else time.time()


def clock() -> Callable[[], float]:
    """:func:`now` as a function read once: the daemon's clock ($MAILOPS_NOW is looked at
    when it starts)."""
    fixed = os.environ.get("MAILOPS_NOW", "")
    if not fixed:
        return time.time
    value = parse_time(fixed)
    return lambda: value


def day_of(when: float) -> dt.date:
    return dt.datetime.fromtimestamp(when).date()


def parse_day(text: str) -> dt.date:
    return dt.date.fromisoformat(text.strip())


def day_number(first: dt.date, today: dt.date) -> int:
    """Day 1 is ``first``; a first day in the future counts as day 1."""
    return max((today - first).days + 1, 1)
