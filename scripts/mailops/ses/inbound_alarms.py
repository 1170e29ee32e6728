"""The inbound bridge's gauges for /metrics and its three alarms, mailed when they change.

The alarms are the write-up's: the dead-letter queue holds a message (above 0), the
oldest message a pass received waited longer than 300 s, and consumer errors (temporary
failures: relay, S3, SQS) above 5 in 5 minutes.  Each is a gauge (1 firing, 0 not) on
/metrics; with ``--alert-to`` a mail goes out when one starts firing and when it stops.
The state (what fired, the recent errors' times) is kept in a small JSON file, so cron
runs and a restarted daemon mail a change once.  A mail that cannot be handed to
sendmail leaves the state as it was: the next pass tries again.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailops.queues.render import family, write_atomic
from mailops.ses.inbound import OUTCOMES, Pass

DLQ, OLDEST, ERRORS = "dead-letter", "oldest-message", "consumer-errors"
ALARMS = (DLQ, OLDEST, ERRORS)


@dataclass(frozen=True)
class Limits:
    oldest_seconds: float = 300.0
    errors: int = 5
    window_seconds: float = 300.0


@dataclass
class Gauges:
    """Everything /metrics shows, totals since the process started."""

    totals: dict[str, int]
    queue: int | None
    dlq: int | None
    oldest_age: float
    errors_in_window: int
    ok: bool
    now: float
    last_refusal: str = ""


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"firing": {}, "errors": []}
    if not isinstance(data, dict):
        return {"firing": {}, "errors": []}
    firing = data.get("firing") if isinstance(data.get("firing"), dict) else {}
    errors = [t for t in data.get("errors", []) if isinstance(t, int | float)]
    return {"firing": firing, "errors": errors}


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    write_atomic(str(path), json.dumps(state, sort_keys=True) + "\n")


def note_errors(state: dict[str, Any], done: Pass, now: float, limits: Limits) -> int:
    """Record the pass's errors; the number within the window."""
    recent = [t for t in state["errors"] if t > now - limits.window_seconds]
    recent += [now] * done.errors
    state["errors"] = recent[-1000:]
    return len(recent)


def firing(g: Gauges, limits: Limits) -> dict[str, str]:
    """The alarms that fire now, each with a line saying why."""
    out: dict[str, str] = {}
    if g.dlq:
        out[DLQ] = f"{g.dlq} message(s) in the dead-letter queue"
    if g.oldest_age > limits.oldest_seconds:
        out[OLDEST] = f"a message waited {g.oldest_age:.0f} s, over {limits.oldest_seconds:.0f} s"
    if g.errors_in_window > limits.errors:
        out[ERRORS] = (
            f"{g.errors_in_window} consumer errors in {limits.window_seconds:.0f} s,"
            f" over {limits.errors}"
        )
    return out


def alert_text(
    started: Mapping[str, str], stopped: list[str], g: Gauges, host: str
) -> tuple[str, str]:
    """(subject, body) of one alert mail."""
    names = [*started, *(f"{n} resolved" for n in stopped)]
    subject = f"[mailops ses inbound] {', '.join(names)}"
    lines = [f"The SES inbound bridge on {host}:", ""]
    lines += [f"  FIRING   {name}: {why}" for name, why in started.items()]
    lines += [f"  RESOLVED {name}" for name in stopped]
    lines += [
        "",
        f"Queue: {g.queue if g.queue is not None else '?'} message(s); dead-letter queue:"
        f" {g.dlq if g.dlq is not None else '?'}.",
        "Since the bridge started: "
        + ", ".join(f"{k} {g.totals.get(k, 0)}" for k in OUTCOMES)
        + ".",
    ]
    if g.last_refusal:
        lines += ["", f"Last refusal: {g.last_refusal}"]
    lines += [
        "",
        "What the dead-letter queue holds keeps its reason in the message attributes",
        "mailops-outcome and mailops-reason (docs/ses_inbound.md, 'The dead-letter queue').",
    ]
    return subject, "\n".join(lines) + "\n"


def update(
    path: Path,
    state: dict[str, Any],
    g: Gauges,
    limits: Limits,
    mail: Callable[[str, str], None] | None,
) -> dict[str, str]:
    """Compare with the last state; mail the change; save.  The alarms firing now."""
    now_firing = firing(g, limits)
    before: dict[str, Any] = state["firing"]
    started = {k: v for k, v in now_firing.items() if k not in before}
    stopped = [k for k in before if k not in now_firing]
    if (started or stopped) and mail is not None:
        subject, body = alert_text(started, stopped, g, socket.getfqdn())
        mail(subject, body)  # raises: the state stays, the next pass tries again
    state["firing"] = {k: before.get(k, g.now) for k in now_firing}
    save_state(path, state)
    return now_firing


def metrics(g: Gauges, alarms: Mapping[str, str]) -> str:
    """Prometheus text (starts with '# HELP ', as the collector's include wants)."""
    depths = [("main", g.queue), ("dead-letter", g.dlq)]
    lines = [
        *family(
            "mailops_ses_inbound_messages_total",
            "SQS messages the inbound bridge settled, by outcome, since it started.",
            [({"outcome": k}, g.totals.get(k, 0)) for k in OUTCOMES],
            kind="counter",
        ),
        *family(
            "mailops_ses_inbound_queue_messages",
            "Messages (visible or in flight) after the last pass, in the queue and its DLQ.",
            [({"queue": q}, v) for q, v in depths if v is not None],
        ),
        *family(
            "mailops_ses_inbound_oldest_message_age_seconds",
            "Age of the oldest message the last pass received (0: none).",
            [({}, round(g.oldest_age, 1))],
        ),
        *family(
            "mailops_ses_inbound_errors_window",
            "Consumer errors (relay, S3, SQS) in the alarm's window.",
            [({}, g.errors_in_window)],
        ),
        *family(
            "mailops_ses_inbound_alarm",
            "1 when the alarm fires: dead-letter, oldest-message, consumer-errors.",
            [({"alarm": a}, 1 if a in alarms else 0) for a in ALARMS],
        ),
        *family(
            "mailops_ses_inbound_last_pass_success",
            "1 when the last pass reached SQS, 0 when it did not.",
            [({}, 1 if g.ok else 0)],
        ),
        *family(
            "mailops_ses_inbound_last_pass_timestamp_seconds",
            "When the last pass ended.",
            [({}, int(g.now))],
        ),
    ]
    return "\n".join(lines) + "\n"
