"""Warm-up of new sending addresses: a daily cap per receiving provider that grows day by
day (docs/warmup.md).

:mod:`mailops.warmup.schedule` is the curve, the ``[warmup]`` settings and the clock;
:mod:`mailops.warmup.state` the node's files (when each address's day 1 was, and the
policy daemon's counts of the day); :mod:`mailops.warmup.cli` the ``mailops warmup``
command.  The caps themselves are applied by the tenants policy daemon
(:mod:`mailops.tenants.policy`), which counts what it routes.
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    from mailops.warmup.cli import register as register_cli

    register_cli(sub)
