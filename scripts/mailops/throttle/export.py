"""The throttle's figures for the monitor: read on the node, rendered on the monitor.

``node_section`` runs inside ``mailops queues local`` (the queue collector's forced
command on every node) and adds the transports' steps to the JSON the collector fetches
over SSH; ``families`` turns what every node sent into Prometheus families for the
monitor's /metrics.  A node without the throttle (the MX) sends nothing and gets no
samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mailops.throttle.state import DEFAULT_STATE

Sample = tuple[dict[str, str], float]
_NUMBERS = ("step", "top", "concurrency", "rate_delay_seconds", "signals_total", "changed_at")


def node_section(path: str = DEFAULT_STATE) -> list[dict[str, Any]] | None:
    """The transports' figures from the state file; None when there is none (or it
    cannot be read: the queue figures must not fail because of it)."""
    try:
        data = json.loads(Path(path).read_bytes())
        raw = data["transports"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(raw, dict):
        return None
    out: list[dict[str, Any]] = []
    for name, item in sorted(raw.items()):
        if not isinstance(item, dict):
            continue
        row: dict[str, Any] = {"transport": str(name)}
        for key in _NUMBERS:
            value = item.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[key] = value
        by = item.get("signals_by_provider")
        if isinstance(by, dict):
            row["signals_by_provider"] = {
                str(k): v for k, v in by.items() if isinstance(v, int) and not isinstance(v, bool)
            }
        out.append(row)
    return out


FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    # name, kind, help, the row's key
    (
        "mailops_throttle_step",
        "gauge",
        "Back-off step of the transport on the node (0: the inventory's limits).",
        "step",
    ),
    (
        "mailops_throttle_top_step",
        "gauge",
        "The transport's last step (its suspend step).",
        "top",
    ),
    (
        "mailops_throttle_concurrency",
        "gauge",
        "The transport's destination concurrency limit the throttle set.",
        "concurrency",
    ),
    (
        "mailops_throttle_rate_delay_seconds",
        "gauge",
        "The transport's destination rate delay the throttle set.",
        "rate_delay_seconds",
    ),
    (
        "mailops_throttle_changed_timestamp_seconds",
        "gauge",
        "Unix time of the transport's last step change (0: never).",
        "changed_at",
    ),
)
SIGNALS = "mailops_throttle_signals_total"
SIGNALS_HELP = (
    "Throttle replies (421/4.7.x 'slow down') read in the log, per transport and provider."
)


def families(reports: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, list[Sample]]]:
    """(name, kind, help, samples) for every family, samples labelled by host and
    transport; an empty list when no node sent throttle figures."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for host in sorted(reports):
        section = reports[host].get("throttle")
        if isinstance(section, list):
            rows += [(host, r) for r in section if isinstance(r, dict)]
    if not rows:
        return []
    out: list[tuple[str, str, str, list[Sample]]] = []
    for name, kind, help_text, key in FAMILIES:
        samples: list[Sample] = [
            ({"host": h, "transport": str(r["transport"])}, r[key]) for h, r in rows if key in r
        ]
        out.append((name, kind, help_text, samples))
    signals: list[Sample] = []
    for h, r in rows:
        for provider, n in sorted(_items(r.get("signals_by_provider"))):
            signals.append(({"host": h, "transport": str(r["transport"]), "provider": provider}, n))
    out.append((SIGNALS, "counter", SIGNALS_HELP, signals))
    return out


def _items(value: Any) -> Iterable[tuple[str, float]]:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                yield str(k), v
