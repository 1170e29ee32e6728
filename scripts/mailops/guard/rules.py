"""Prometheus alerting rules for the guard's thresholds (``mailops guard rules``).

For operators who run Alertmanager: the same limits as the guard's own alerts, over
the gauges the guard writes to /metrics (``mailops_guard_*``).  One rule per tenant,
rate and level, for the tenant and for each of its sending addresses; the warning fires
from the warning level up to (not including) the pause level, the pause rule at and
above it; neither below the minimum volume.  And one rule for a guard that stopped
running.  Written by hand (no YAML library at run time): every scalar is a JSON string,
which YAML reads as a double-quoted scalar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mailops.guard.limits import Limits

# the gauge each rule's minimum volume is read from
VOLUME = {"complaint": "delivered", "bounce": "sent"}
TITLE = {"complaint": "complaint rate", "bounce": "hard-bounce rate"}


def _q(text: str) -> str:
    return json.dumps(text)


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def rule_list(limits: Mapping[str, Limits], hold: str = "5m") -> list[dict[str, object]]:
    """The rules as dicts (alert, expr, for, labels, annotations), in output order."""
    out: list[dict[str, object]] = []
    for tenant in sorted(limits):
        lim = limits[tenant]
        sel = f'{{tenant="{tenant}"}}'
        for scope in ("tenant", "address"):
            prefix = "mailops_guard_" if scope == "tenant" else "mailops_guard_address_"
            join = " and on(tenant) " if scope == "tenant" else " and "
            for metric in ("complaint", "bounce"):
                warn, pause = lim.levels(metric)
                volume = f"{prefix}{VOLUME[metric]}{sel} >= {lim.minimum(metric)}"
                series = f"{prefix}{metric}_rate{sel}"
                for level, cond in (
                    ("warning", f">= {_num(warn)} < {_num(pause)}"),
                    ("pause", f">= {_num(pause)}"),
                ):
                    name = (
                        f"Mailops{'Tenant' if scope == 'tenant' else 'Address'}"
                        f"{metric.capitalize()}Rate{level.capitalize()}"
                    )
                    where = (
                        f"tenant {tenant}"
                        if scope == "tenant"
                        else f"tenant {tenant} from {{{{ $labels.address }}}}"
                    )
                    out.append(
                        {
                            "alert": name,
                            "expr": f"{series} {cond}{join}{volume}",
                            "for": hold,
                            "labels": {
                                "severity": "critical" if level == "pause" else "warning",
                                "tenant": tenant,
                                "metric": metric,
                                "level": level,
                            },
                            "annotations": {
                                "summary": f"{TITLE[metric]} of {where} at "
                                f"{{{{ $value | humanizePercentage }}}} ({level} level "
                                f"{_num(warn if level == 'warning' else pause)})",
                                "description": (
                                    f"The mailops guard pauses {tenant} at a {TITLE[metric]} "
                                    f"of {_num(pause)} (it warns at {_num(warn)}). "
                                    f"Resume with: mailops tenants resume {tenant}"
                                ),
                            },
                        }
                    )
    out.append(
        {
            "alert": "MailopsGuardNotRunning",
            "expr": "time() - mailops_guard_timestamp_seconds > 1800",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "The mailops guard has not measured the tenants' rates for 30 minutes",
                "description": "Check the guard's cron job on the monitor (docs/guard.md).",
            },
        }
    )
    return out


def rules_yaml(limits: Mapping[str, Limits], hold: str = "5m") -> str:
    """A rule file for Prometheus's ``rule_files`` (promtool check rules reads it)."""
    lines = ["# Written by `mailops guard rules` (docs/guard.md).", "groups:"]
    lines += ["  - name: mailops-guard", "    rules:"]
    rules = rule_list(limits, hold)
    for r in rules:
        lines.append(f"      - alert: {_q(str(r['alert']))}")
        lines.append(f"        expr: {_q(str(r['expr']))}")
        lines.append(f"        for: {_q(str(r['for']))}")
        for section in ("labels", "annotations"):
            body = r[section]
            assert isinstance(body, dict)
            lines.append(f"        {section}:")
            lines += [f"          {k}: {_q(str(v))}" for k, v in body.items()]
    return "\n".join(lines) + "\n"
