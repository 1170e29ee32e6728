"""Read pflogsumm's printed Grand Totals, for the tests and the benchmark that compare
``mailops report`` with it.  pflogsumm prints figures above 512k in k or m, truncated;
``in_units`` writes one of our figures the same way, so that the two compare as text."""

from __future__ import annotations

import re

_LINE = re.compile(
    r"^ *(\d+)([ km]) +([a-z /]+?)(?: +\((\d+)%\))?(?: +\((\d+)([ km]) deferrals\))?$"
)


def grand_totals(text: str) -> dict[str, str]:
    """The Grand Totals section of pflogsumm's output, by label (``bytes_received``,
    ``sending_hosts_domains``...), plus ``rejected_percent``, ``discarded_percent`` and
    ``deferrals`` (printed beside ``deferred`` only when there were some: "0" otherwise)."""
    if "Grand Totals" not in text:
        raise ValueError("no Grand Totals section in pflogsumm's output")
    section = text.split("Grand Totals", 1)[1].split("\n\n\n", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        label = m.group(3).strip().replace(" ", "_").replace("/", "_")
        found[label] = m.group(1) + m.group(2).strip()
        if m.group(4) is not None:
            found[label + "_percent"] = m.group(4)
        if m.group(5) is not None:
            found["deferrals"] = m.group(5) + m.group(6).strip()
    found.setdefault("deferrals", "0")
    return found


def in_units(value: int) -> str:
    """pflogsumm's adj_int_units: above 512k in k, above 512m in m, truncated."""
    if value > 536870912:
        return f"{int(value / 1048576)}m"
    if value > 524288:
        return f"{int(value / 1024)}k"
    return str(value)
