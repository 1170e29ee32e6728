"""``mailops guard``'s run: settings, the nodes' lines, the store, the actions."""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailops import config, exitcodes
from mailops.guard import core
from mailops.guard.limits import Limits, limits_for
from mailops.tenants.model import Tenants, load_tenants


def _err(text: str) -> None:
    print(f"mailops guard: {text}", file=sys.stderr)


def tenant_limits(tenants: Tenants, args: argparse.Namespace) -> dict[str, Limits]:
    base = Limits()
    changes: dict[str, Any] = {}
    if getattr(args, "min_delivered", None) is not None:
        changes["min_delivered"] = args.min_delivered
    if getattr(args, "min_sent", None) is not None:
        changes["min_sent"] = args.min_sent
    defaults = limits_for("*", changes, base)
    return {t.name: limits_for(t.name, t.limits, defaults) for t in tenants}


def days_of(start: float, end: float) -> list[dt.date]:
    """The local calendar days the window touches, oldest first."""
    first = dt.datetime.fromtimestamp(start).date()
    last = dt.datetime.fromtimestamp(end).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def log_groups(
    args: argparse.Namespace, data: Any, start: float, end: float, tmp: Path
) -> tuple[list[list[Path]], bool]:
    """One group of paths per host, and whether every node's lines came.  A fetch
    command runs once per day of the window; a host's files of those days are one
    group, oldest first."""
    from mailops.report import build
    from mailops.tenants import figures

    source = args.logs_from
    if source is None and not args.log and figures._is_command(figures.DEFAULT_FETCH):
        source = figures.DEFAULT_FETCH
    if source is None or Path(source).is_dir():
        return figures.log_groups(args, data, None, tmp)
    if not figures._is_command(source):
        raise build.LogError(f"--logs-from {source}: not a directory nor a command")
    complete = True
    hosts: dict[str, list[Path]] = {}
    for day in days_of(start, end):
        into = tmp / day.isoformat()
        into.mkdir()
        if figures.fetch(source, day, into) != 0:
            complete = False
            _err(f"{source} could not fetch every node's lines of {day}")
        for p in sorted(into.iterdir()):
            if p.is_file():
                hosts.setdefault(p.name, []).append(p)
    return [hosts[h] for h in sorted(hosts)], complete


def run(args: argparse.Namespace, now: float) -> int:
    from mailops.report import build
    from mailops.store.db import Store, StoreError
    from mailops.tenants.figures import class_map

    data = config.load(getattr(args, "config", None))
    tenants = load_tenants(data)
    limits = tenant_limits(tenants, args)
    classes = class_map(data)
    store_settings = config.table(data, "store", {"url": args.store})
    report = config.table(data, "report", {"syslog_name": args.syslog_name})
    ops = config.table(data, "mailops")["ops_address"]
    sendmail = args.sendmail or str(report["sendmail"])
    sender = str(report["mail_from"]) or f"mailops@{socket.getfqdn()}"
    start = now - args.window * 3600
    if not limits:
        _err("no tenants in the settings: nothing to guard")
        return exitcodes.OK
    with tempfile.TemporaryDirectory(prefix="mailops-guard-") as tmp:
        try:
            groups, complete = log_groups(args, data, start, now, Path(tmp))
            with Store.open(store_settings["url"], timeout=store_settings["timeout"]) as store:
                m = core.measure(
                    tenants, classes, groups, (start, now), store, report["syslog_name"]
                )
                levels = store.guard_levels()
                rs = core.readings(m, limits)
                code = exitcodes.OK
                if complete:
                    code = act(store, m, rs, levels, tenants, ops, sendmail, sender, args)
                    levels = store.guard_levels() if not args.dry_run else levels
        except build.LogError as exc:
            _err(str(exc))
            return exitcodes.NOINPUT
        except StoreError as exc:
            _err(f"the store: {exc}")
            return exitcodes.TEMPFAIL
    if args.print or args.dry_run:
        sys.stdout.write(table(rs))
    if args.prometheus_output:
        from mailops.queues.render import write_atomic

        text = core.prometheus(m, rs, limits, levels, time.time(), complete)
        try:
            write_atomic(args.prometheus_output, text)
        except OSError as exc:
            _err(f"cannot write {args.prometheus_output}: {exc.strerror or exc}")
            return exitcodes.CANTCREAT
    if code != exitcodes.OK:
        return code
    return exitcodes.OK if complete else 1


def act(
    store: Any,
    m: core.Measure,
    rs: list[core.Reading],
    levels: dict[tuple[str, str], int],
    tenants: Tenants,
    ops: str,
    sendmail: str,
    sender: str,
    args: argparse.Namespace,
) -> int:
    """Pause, mail and record each tenant's crossings; the levels that fell, silently.
    A tenant whose mail fails keeps its old levels, so the next run tries again."""
    crossings, changed = core.judge(rs, levels)
    by_tenant: dict[str, list[core.Crossing]] = {}
    for c in crossings:
        by_tenant.setdefault(c.reading.tenant, []).append(c)
    states = store.tenant_states()
    code = exitcodes.OK
    failed: set[str] = set()
    for name, cs in sorted(by_tenant.items()):
        pause = any(c.reading.level == 2 for c in cs)
        st = states.get(name)
        was_paused = st is not None and st.paused
        if args.dry_run:
            for c in cs:
                r = c.reading
                print(
                    f"would {'pause' if r.level == 2 else 'warn'} {name}: {r.key} "
                    f"{r.value:.6f} ({r.part}/{r.whole})"
                )
            continue
        paused_now = False
        if pause and not was_paused:
            paused_now = store.set_tenant_paused(
                name, True, reason=core.reason_text(cs), by="guard"
            )
        t = tenants.get(name)
        contact = t.contact if t is not None else ""
        recipients = list(dict.fromkeys(a for a in (ops, contact) if a))
        subject, body = core.alert_text(name, cs, m, paused_now, was_paused, socket.getfqdn())
        if not recipients:
            _err(f"{name}: {subject} (no ops_address nor contact to mail)")
            continue
        try:
            core.send_mail(sendmail, sender, recipients, subject, body)
        except core.MailError as exc:
            _err(f"{name}: cannot mail the alert: {exc}")
            failed.add(name)
            code = exitcodes.TEMPFAIL
    if not args.dry_run:
        for r, level in changed:
            if r.tenant not in failed:
                store.set_guard_level(r.tenant, r.key, level, r.value)
    return code


def table(rs: list[core.Reading]) -> str:
    out = [f"{'tenant':<12} {'address':<28} {'metric':<10} {'rate':>9} {'part':>7} "
           f"{'whole':>8} {'level':<8}"]  # fmt: skip
    for r in rs:
        level = core.LEVEL_NAMES[r.level] if r.judged else "(volume)"
        out.append(
            f"{r.tenant:<12} {r.address or '-':<28} {r.metric:<10} {100 * r.value:>8.3f}% "
            f"{r.part:>7} {r.whole:>8} {level:<8}"
        )
    return "\n".join(out) + "\n"
