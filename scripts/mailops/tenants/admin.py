"""``mailops tenants pause|resume|list``: the operator's switch for one tenant's mail.

Usage (on the monitor, or any host whose mailops.toml names the store and the tenants)::

    mailops tenants pause NAME [--reason TEXT]   hold NAME's mail on every bulk node
    mailops tenants resume NAME                  release it
    mailops tenants list [--json]                every configured tenant and its state

The state lives in the store (table ``tenant_state``); ``mailops tenants sync`` on each
bulk node reads it within the minute: a paused tenant's new mail is accepted and put on
hold, its queued mail is held too, and ``resume`` releases all of it (docs/tenants.md).
``changed_by`` records who did it: $SUDO_USER, else the user running the command.

Exit status: 0 done (also when the tenant already was in that state); 2 for a name that
is not a tenant of ``[tenants]``; 75 when the store cannot be reached (one line on
stderr); 78 for broken settings or no ``[tenants]`` at all.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any

from mailops import config, exitcodes

TOOL = "mailops tenants"


def _err(text: str) -> None:
    print(f"{TOOL}: {text}", file=sys.stderr)


def operator() -> str:
    """Who runs the command: the user behind sudo first, else the current user."""
    who = os.environ.get("SUDO_USER", "").strip()
    if who:
        return who
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry and no LOGNAME/USER: a container
        return f"uid {os.getuid()}"


def iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _tenants(args: argparse.Namespace) -> tuple[dict[str, Any], Any] | int:
    """The settings and the tenants, or an exit status after saying what is wrong."""
    from mailops.tenants.model import load_tenants

    data = config.load(args.config)
    tenants = load_tenants(data)  # ConfigError: the caller prints it, exit 78
    if not len(tenants):
        path, _ = config.config_path(args.config)
        _err(f"no tenants in {path}: [tenants.NAME] tables are rendered from mail_tenants")
        return exitcodes.CONFIG
    name = getattr(args, "name", None)
    if name is not None and tenants.get(name) is None:
        known = ", ".join(sorted(t.name for t in tenants))
        _err(f"{name!r} is not a tenant (configured: {known})")
        return exitcodes.USAGE
    return data, tenants


def _describe(state: Any) -> str:
    """'paused since 2026-12-07T17:00:00Z by ops: complaints' for a TenantState."""
    text = "paused" if state.paused else "active"
    text += f" since {iso(state.changed_at)}"
    if state.changed_by:
        text += f" by {state.changed_by}"
    if state.reason:
        text += f": {state.reason}"
    return text


def cmd_switch(args: argparse.Namespace) -> int:
    """pause or resume one tenant."""
    from mailops.store import StoreError, open_from_config

    found = _tenants(args)
    if isinstance(found, int):
        return found
    data, _ = found
    pause = args.tenants_command == "pause"
    reason = " ".join((args.reason or "").split()) if pause else ""
    try:
        with open_from_config(data) as store:
            before = store.tenant_states().get(args.name)
            changed = store.set_tenant_paused(args.name, pause, reason=reason, by=operator())
            after = store.tenant_states().get(args.name)
    except StoreError as exc:
        _err(str(exc))
        return exitcodes.TEMPFAIL
    if not changed:
        was = _describe(before) if before is not None else "active"
        print(f"{args.name} already {was}")
        return exitcodes.OK
    was = _describe(before) if before is not None else "active"
    line = f"{args.name} {'paused' if pause else 'resumed'} (was {was})"
    if pause and after is not None and after.reason:
        line += f"; reason: {after.reason}"
    print(line)
    return exitcodes.OK


def listing(tenants: Any, states: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configured tenant, by name."""
    rows: list[dict[str, Any]] = []
    for tenant in sorted(tenants, key=lambda t: t.name):
        state = states.get(tenant.name)
        rows.append(
            {
                "name": tenant.name,
                "state": "paused" if state is not None and state.paused else "active",
                "reason": state.reason if state is not None else "",
                "since": iso(state.changed_at) if state is not None else None,
                "by": state.changed_by if state is not None else "",
                "domains": list(tenant.domains),
                "pool": tenant.pool,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    from mailops.store import StoreError, open_from_config

    found = _tenants(args)
    if isinstance(found, int):
        return found
    data, tenants = found
    try:
        with open_from_config(data) as store:
            states = store.tenant_states()
    except StoreError as exc:
        _err(str(exc))
        return exitcodes.TEMPFAIL
    rows = listing(tenants, states)
    if args.json:
        print(json.dumps(rows, indent=2))
        return exitcodes.OK
    table = [("TENANT", "STATE", "SINCE", "BY", "POOL", "DOMAINS", "REASON")]
    for row in rows:
        table.append(
            (
                row["name"],
                row["state"],
                row["since"] or "-",
                row["by"] or "-",
                row["pool"],
                ",".join(row["domains"]),
                row["reason"] or "-",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]).rstrip())
    return exitcodes.OK


def register(sub: Any) -> None:
    p = sub.add_parser("pause", help="hold a tenant's mail on every bulk node (within a minute)")
    p.add_argument("name", metavar="NAME", help="a tenant of [tenants]")
    p.add_argument("--reason", metavar="TEXT", help="why (shown by list and in the hold reason)")
    p.set_defaults(func=cmd_switch)
    p = sub.add_parser("resume", help="release a paused tenant's held mail and let new mail go")
    p.add_argument("name", metavar="NAME", help="a tenant of [tenants]")
    p.set_defaults(func=cmd_switch)
    p = sub.add_parser("list", help="every tenant: state, since, by whom, why, domains, pool")
    p.add_argument("--json", action="store_true", help="a JSON array of objects")
    p.set_defaults(func=cmd_list)
