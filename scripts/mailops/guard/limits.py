"""The guard's thresholds: defaults, and a tenant's own from ``[tenants.NAME.limits]``.

Defaults and why:

complaint_warn = 0.001, complaint_pause = 0.005
    SES's two complaint thresholds (review at 0.1%, pause at 0.5%).  Gmail asks for
    under 0.3% and prefers under 0.1%: the warning is Gmail's "better" figure; a tenant
    that sends mostly to Gmail sets ``complaint_pause = 0.003``.
bounce_warn = 0.05, bounce_pause = 0.10
    SES's hard-bounce thresholds (review at 5%, pause at 10%).
min_delivered = 1000
    No complaint rate is judged below 1000 delivered recipients in the window: one
    complaint in 1000 is exactly the warning level, so a single complaint can never
    pause a tenant (that takes 5 at 1000, more above), and a handful of test mails
    cannot raise an alarm.
min_sent = 200
    No hard-bounce rate is judged below 200 recipients sent: the warning then needs 10
    hard bounces, the pause 20, more than one stale address or a typo.

The same limits apply to each of the tenant's sending addresses, each with its own
counts (the minimum volume is the address's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from mailops.config import ConfigError


@dataclass(frozen=True)
class Limits:
    complaint_warn: float = 0.001
    complaint_pause: float = 0.005
    bounce_warn: float = 0.05
    bounce_pause: float = 0.10
    min_delivered: int = 1000
    min_sent: int = 200

    def levels(self, metric: str) -> tuple[float, float]:
        """(warning, pause) of ``complaint`` or ``bounce``."""
        if metric == "complaint":
            return self.complaint_warn, self.complaint_pause
        return self.bounce_warn, self.bounce_pause

    def minimum(self, metric: str) -> int:
        return self.min_delivered if metric == "complaint" else self.min_sent


KEYS = tuple(f.name for f in fields(Limits))


def limits_for(name: str, raw: Mapping[str, Any], defaults: Limits | None = None) -> Limits:
    """A tenant's limits: ``defaults`` with the keys its ``limits`` table sets.  Keys
    the guard does not know are left to other tools (the warm-up's, later)."""
    base = defaults or Limits()
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key in KEYS:
        if key not in raw:
            continue
        value = raw[key]
        kind = int if key.startswith("min_") else float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"[tenants.{name}.limits] {key}: expected a number, got {value!r}")
            continue
        if kind is int and value != int(value):
            problems.append(f"[tenants.{name}.limits] {key}: expected a whole number")
            continue
        if value < 0 or (kind is float and value > 1):
            problems.append(
                f"[tenants.{name}.limits] {key}: expected "
                + ("a count >= 0" if kind is int else "a rate from 0 to 1")
                + f", got {value!r}"
            )
            continue
        changes[key] = kind(value)
    out = replace(base, **changes)
    for metric in ("complaint", "bounce"):
        warn, pause = out.levels(metric)
        if warn > pause:
            problems.append(
                f"[tenants.{name}.limits] {metric}_warn ({warn}) is above {metric}_pause ({pause})"
            )
    if problems:
        raise ConfigError(*problems)
    return out
