"""The report's per-tenant section: one line per tenant with its figures of the day
(``mailops.tenants.figures``, whose docstring defines each one), when the settings name
tenants.

The lines are read a second time for it (the report's own pass stays as fast as it
was, and costs nothing more without tenants).  What only the store knows (complaints,
unsubscribes, the asynchronous bounces, whether a tenant is paused) comes from the
``[store]`` of the same settings; a store that cannot be read leaves those at 0 and the
section says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STORE_TIMEOUT = 10.0


def section(
    data: Mapping[str, Any],
    groups: Sequence[Sequence[Path]],
    day: dt.date | None,
    syslog_name: str = "postfix",
) -> dict[str, Any] | None:
    """``{"store_error": "", "rows": [...]}`` (rows as ``tenants status --json``), or None
    when no tenant is configured."""
    from mailops import config
    from mailops.store.db import Store, StoreError
    from mailops.tenants import figures
    from mailops.tenants.model import load_tenants

    tenants = load_tenants(data)
    if not len(tenants):
        return None
    classes = figures.class_map(data)
    store_error = ""
    try:
        url = config.table(data, "store", {})["url"]
        with Store.open(url, timeout=STORE_TIMEOUT) as store:
            rows = figures.compute(tenants, classes, groups, day, store, syslog_name)
    except StoreError as exc:
        store_error = str(exc)
        rows = figures.compute(tenants, classes, groups, day, None, syslog_name)
        for r in rows:
            r.state = "unknown"
    return {"store_error": store_error, "rows": [r.as_dict() for r in rows]}


def text_lines(part: Mapping[str, Any]) -> list[str]:
    from mailops.tenants.figures import TEXT_HEADER, text_line

    out = [TEXT_HEADER]
    out += [text_line(r["tenant"], r["state"], r) for r in part["rows"]]
    out += ses_lines(part)
    if part["store_error"]:
        out.append(f"note: the store could not be read ({part['store_error']}): no complaints,")
        out.append("unsubscribes, asynchronous bounces or pause states in these figures")
    return out


def ses_lines(part: Mapping[str, Any]) -> list[str]:
    """What Amazon SES reported about each tenant's mail (docs/ses.md), for the tenants
    it reported on; nothing when no tenant's mail went through SES that day."""
    out = []
    for r in part["rows"]:
        ses = r.get("ses") or {}
        if any(ses.values()):
            out.append(
                f"{r['tenant']}: through Amazon SES {ses.get('delivered', 0)} delivered, "
                f"{ses.get('bounced', 0)} bounced, {ses.get('complained', 0)} complained "
                "(counted in the columns above too)"
            )
    return out


HTML_HEADERS = [
    "tenant",
    "state",
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "hard",
    "soft",
    "complaints",
    "unsubscribes",
    "bounce rate",
    "complaint rate",
]


def html_rows(part: Mapping[str, Any]) -> list[list[Any]]:
    from mailops.tenants.figures import COUNTS  # the figures' own list, in their order

    return [
        [
            r["tenant"],
            r["state"],
            *(f"{r[k]:,}" for k in COUNTS),
            f"{100 * r['bounce_rate']:.2f}%",
            f"{100 * r['complaint_rate']:.3f}%",
        ]
        for r in part["rows"]
    ]
