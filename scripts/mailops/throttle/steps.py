"""The settings of ``mailops throttle`` and the step-down/step-up rule, free of I/O.

A **ladder** is what one transport steps through: rung 0 is the inventory's own
concurrency and rate delay; each further rung is one entry of the step table, taken
no looser than the rung before it (concurrency never above, rate delay never below).
Rungs that would change nothing for this transport are dropped, so every step down
changes a setting (a transport that already has a rate delay gains nothing from a lower
concurrency: Postfix then delivers one message at a time to the destination anyway).
The last rung is the **suspend** rung: one connection, a long rate delay (one delivery
attempt per period, which is also the probe that tells us the receiver is back).

The rule, per transport, on each run (``decide``):

* **down** one rung when the run read at least ``min_signals`` throttle replies for the
  transport and its last change is at least ``hold_seconds`` old (the previous change
  must have had time to show);
* **up** one rung when it is not at rung 0, no throttle reply came for ``quiet_seconds``,
  its last change is that old too, and since that change either ``min_delivered``
  messages were delivered through it or nothing at all happened on it for
  ``idle_seconds`` (an empty queue must not keep a transport slow for ever);
* otherwise it stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
TIME = re.compile(r"(\d+)([smhdw]?)\Z")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

DEFAULT_STEPS: tuple[dict[str, Any], ...] = (
    {"concurrency": 5, "rate_delay": "1s"},
    {"concurrency": 2, "rate_delay": "5s"},
    {"concurrency": 1, "rate_delay": "30s"},
    {"concurrency": 1, "rate_delay": "10m"},
)


class SettingsError(ValueError):
    """The settings are wrong; the message says where and how."""


def seconds(value: Any, where: str) -> int:
    """A Postfix time value (``30s``, ``10m``, ``1h``, a bare number of seconds)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = TIME.match(str(value).strip()) if isinstance(value, str) else None
    if m is None:
        raise SettingsError(f"{where}: {value!r} is not a time (like 0s, 30s, 10m, 1h)")
    return int(m[1]) * UNITS[m[2]]


@dataclass(frozen=True)
class Rung:
    concurrency: int
    rate_delay: int  # seconds

    def describe(self) -> str:
        return f"concurrency {self.concurrency}, rate_delay {self.rate_delay}s"


@dataclass(frozen=True)
class Transport:
    name: str
    klass: str  # the provider class (gmail, microsoft...): which step table applies
    base: Rung  # the inventory's values


@dataclass(frozen=True)
class Params:
    min_signals: int = 3
    hold_seconds: int = 60
    quiet_seconds: int = 600
    min_delivered: int = 1
    idle_seconds: int = 3600


@dataclass(frozen=True)
class Settings:
    log: str
    state: str
    params: Params
    transports: tuple[Transport, ...]
    steps: dict[str, tuple[Rung, ...]]  # class (or "default") -> step table

    def ladder(self, t: Transport) -> tuple[Rung, ...]:
        table = self.steps.get(t.klass, self.steps["default"])
        rungs = [t.base]
        for step in table:
            prev = rungs[-1]
            rung = Rung(
                min(step.concurrency, prev.concurrency), max(step.rate_delay, prev.rate_delay)
            )
            if rung != prev:
                rungs.append(rung)
        return tuple(rungs)


def _int(data: dict[str, Any], key: str, where: str, default: int, low: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SettingsError(f"{where}.{key}: {value!r} must be a whole number >= {low}")
    return value


def _table(raw: Any, where: str) -> tuple[Rung, ...]:
    if not isinstance(raw, list) or not raw:
        raise SettingsError(f"{where}: must be a non-empty list of {{concurrency, rate_delay}}")
    out: list[Rung] = []
    for i, step in enumerate(raw, 1):
        here = f"{where}[{i}]"
        if not isinstance(step, dict) or set(step) != {"concurrency", "rate_delay"}:
            raise SettingsError(f"{here}: must have exactly concurrency and rate_delay")
        rung = Rung(_int(step, "concurrency", here, 1, 1), seconds(step["rate_delay"], here))
        if out and (rung.concurrency > out[-1].concurrency or rung.rate_delay < out[-1].rate_delay):
            raise SettingsError(
                f"{here}: each step must be no looser than the one before it "
                "(concurrency not higher, rate_delay not shorter)"
            )
        if out and rung == out[-1]:
            raise SettingsError(f"{here}: the same as the step before it")
        out.append(rung)
    return tuple(out)


def parse_settings(data: Any) -> Settings:
    """Settings from the JSON the throttle role writes; SettingsError names each fault."""
    if not isinstance(data, dict):
        raise SettingsError("the settings must be a JSON object")
    where = "settings"
    log = data.get("log", "/var/log/mail.log")
    state = data.get("state", "/var/lib/mailops-throttle/state.json")
    if not isinstance(log, str) or not log.startswith("/"):
        raise SettingsError(f"{where}.log: must be an absolute path")
    if not isinstance(state, str) or not state.startswith("/"):
        raise SettingsError(f"{where}.state: must be an absolute path")
    d = Params()
    params = Params(
        min_signals=_int(data, "min_signals", where, d.min_signals, 1),
        hold_seconds=_int(data, "hold_seconds", where, d.hold_seconds, 0),
        quiet_seconds=_int(data, "quiet_seconds", where, d.quiet_seconds, 0),
        min_delivered=_int(data, "min_delivered", where, d.min_delivered, 0),
        idle_seconds=_int(data, "idle_seconds", where, d.idle_seconds, 0),
    )
    raw_steps = data.get("steps", {"default": list(DEFAULT_STEPS)})
    if not isinstance(raw_steps, dict) or "default" not in raw_steps:
        raise SettingsError(f"{where}.steps: must be an object with a 'default' table")
    steps = {str(k): _table(v, f"{where}.steps.{k}") for k, v in raw_steps.items()}
    raw_transports = data.get("transports", [])
    if not isinstance(raw_transports, list):
        raise SettingsError(f"{where}.transports: must be a list")
    transports: list[Transport] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_transports, 1):
        here = f"{where}.transports[{i}]"
        if not isinstance(raw, dict):
            raise SettingsError(f"{here}: must be an object")
        name, klass = raw.get("name"), raw.get("class")
        if not isinstance(name, str) or not NAME.match(name):
            raise SettingsError(f"{here}.name: {name!r} is not a master.cf service name")
        if name in seen:
            raise SettingsError(f"{here}.name: {name} is listed twice")
        seen.add(name)
        if not isinstance(klass, str) or not NAME.match(klass):
            raise SettingsError(f"{here}.class: {klass!r} is not a provider class name")
        base = Rung(_int(raw, "concurrency", here, 0, 1), seconds(raw.get("rate_delay"), here))
        transports.append(Transport(name, klass, base))
    classes = {t.klass for t in transports}
    unknown = sorted(k for k in steps if k != "default" and k not in classes)
    if transports and unknown:
        raise SettingsError(
            f"{where}.steps: {', '.join(unknown)} is not the class of any transport "
            f"(classes here: {', '.join(sorted(classes))})"
        )
    return Settings(log, state, params, tuple(transports), steps)


@dataclass
class TransportState:
    """What the tool remembers of one transport between runs."""

    step: int = 0
    changed_at: float = 0.0
    last_signal_at: float = 0.0
    last_activity_at: float = 0.0
    delivered_since_change: int = 0
    signals_total: int = 0
    signals_by_provider: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "changed_at": self.changed_at,
            "last_signal_at": self.last_signal_at,
            "last_activity_at": self.last_activity_at,
            "delivered_since_change": self.delivered_since_change,
            "signals_total": self.signals_total,
            "signals_by_provider": dict(sorted(self.signals_by_provider.items())),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> TransportState:
        if not isinstance(data, dict):
            raise ValueError("a transport's state must be an object")
        out = cls()
        for key in ("step", "delivered_since_change", "signals_total"):
            value = data.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer")
            setattr(out, key, value)
        for key in ("changed_at", "last_signal_at", "last_activity_at"):
            value = data.get(key, 0.0)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{key} must be a number")
            setattr(out, key, float(value))
        by = data.get("signals_by_provider", {})
        if not isinstance(by, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in by.values()
        ):
            raise ValueError("signals_by_provider must map providers to counts")
        out.signals_by_provider = {str(k): v for k, v in by.items()}
        reason = data.get("reason", "")
        out.reason = reason if isinstance(reason, str) else ""
        return out


@dataclass
class Seen:
    """What one run read in the log for one transport."""

    signals: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)
    last_signal_at: float = 0.0
    delivered: int = 0
    last_activity_at: float = 0.0
    sample: str = ""  # one throttle reply, for the log line

    def add_signal(self, provider: str, rule: str, reply: str, when: float) -> None:
        self.signals += 1
        self.by_provider[provider] = self.by_provider.get(provider, 0) + 1
        self.last_signal_at = max(self.last_signal_at, when)
        self.last_activity_at = max(self.last_activity_at, when)
        if not self.sample:
            self.sample = f"{rule}: {reply[:120]}"


@dataclass(frozen=True)
class Decision:
    old: int
    new: int
    why: str


def decide(st: TransportState, seen: Seen, top: int, now: float, p: Params) -> Decision:
    """Fold one run's reading into ``st`` and choose the transport's step (0..top)."""
    st.signals_total += seen.signals
    for provider, n in seen.by_provider.items():
        st.signals_by_provider[provider] = st.signals_by_provider.get(provider, 0) + n
    if seen.signals:
        st.last_signal_at = max(st.last_signal_at, seen.last_signal_at or now)
    st.last_activity_at = max(st.last_activity_at, seen.last_activity_at)
    st.delivered_since_change += seen.delivered
    old = min(st.step, top)
    new, why = old, ""
    held = st.changed_at > 0 and now - st.changed_at < p.hold_seconds
    if seen.signals >= p.min_signals and old < top and not held:
        new = old + 1
        why = f"{seen.signals} throttle replies ({seen.sample})"
    elif (
        old > 0
        and seen.signals == 0
        and now - st.last_signal_at >= p.quiet_seconds
        and now - st.changed_at >= p.quiet_seconds
    ):
        if st.delivered_since_change >= p.min_delivered:
            new = old - 1
            why = (
                f"no throttle reply for {int(now - st.last_signal_at)} s,"
                f" {st.delivered_since_change} delivered since the last change"
            )
        elif now - max(st.last_activity_at, st.changed_at) >= p.idle_seconds:
            new = old - 1
            why = f"nothing sent for {int(now - max(st.last_activity_at, st.changed_at))} s"
    if new != old:
        st.step = new
        st.changed_at = now
        st.delivered_since_change = 0
        st.reason = why
    else:
        st.step = old
    return Decision(old, new, why)
