"""``mailops guard``: each tenant's complaint and hard-bounce rates over a rolling window;
a mail at the warning level, a pause at the pause level, once per crossing.

Usage::

    mailops guard [--window HOURS] [--log FILE ... | --logs-from DIR|CMD] [--store URL]
                  [--prometheus-output FILE] [--min-delivered N] [--min-sent N]
                  [--sendmail PATH] [--now TIME] [--dry-run] [--print]
    mailops guard rules [--for DURATION]
    mailops guard forget NAME

The window
    The last ``--window`` hours (default 24) up to now.  With a fetch command (the
    monitor's ``/usr/local/sbin/mailops-node-logs``, the default there) the guard fetches
    every node's lines of each calendar day the window touches (today and yesterday for
    24 h) and counts only the delivery lines logged inside the window; the store's
    complaints and bounces count by their ``received_at``.  ``--log``/``--logs-from DIR``
    read the given files, cut the same way.

The rates (figures as ``mailops tenants status`` counts them: mailops.tenants.figures)
    complaint rate = complaints / delivered recipients; hard-bounce rate = hard bounces /
    recipients sent; per tenant, and per sending address (the node and the pool
    transport ``pool_<pool>_<n>`` whose delivery agent logged the line, written
    ``mail1/pool_alpha_1``: a store's complaint or bounce counts at the address that
    recipient was last delivered from in the window).  Deferral rate = recipients
    deferred at least once / sent, per tenant and receiving provider: exported on
    /metrics, not acted upon.

The limits
    ``[tenants.NAME.limits]`` (from ``mail_tenants[].limits``): ``complaint_warn``,
    ``complaint_pause``, ``bounce_warn``, ``bounce_pause``, ``min_delivered``,
    ``min_sent``; defaults and why in mailops.guard.limits (0.1%/0.5%, 5%/10%, 1000
    delivered, 200 sent).  ``--min-delivered``/``--min-sent`` change the defaults of
    every tenant that sets none (the lab's low minimum volume).

What it does
    Below the minimum volume a rate is not judged and its recorded level stays.  A rate
    at or above a level it was not at before (the store's ``guard_state``) is a
    crossing: one plain-text mail per tenant and run to ``[mailops] ops_address`` and
    the tenant's ``contact`` naming every crossing, the figures, the top complaining
    and bouncing recipient domains and how to resume; at the pause level the tenant is
    paused first (``mailops tenants pause``'s hold).  A rate that falls is recorded
    silently, so the next rise mails again; a level is left only once the rate is under
    80% of its threshold (mailops.guard.core.CLEAR), so that a rate hovering at a
    threshold does not mail on every other run.  The guard never resumes a tenant.  When
    some node's lines could not be fetched nothing is judged (missing deliveries would
    inflate the rates): the metrics say ``mailops_guard_complete 0``.

Exit codes: 0 done; 1 some node's lines could not be fetched; 2 bad arguments; 66 a log
cannot be read; 75 the store cannot be read or written, or sendmail failed (the crossing
is mailed again on the next run); 78 bad settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from mailops import exitcodes

DEFAULT_WINDOW_HOURS = 24.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "guard",
        help="tenants' complaint and bounce rates: alert and pause once per crossing",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
    )
    p.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW_HOURS,
        metavar="HOURS",
        help="the rolling window (default 24)",
    )
    p.add_argument("--log", action="append", metavar="FILE", help="a log to read (one host's)")
    p.add_argument(
        "--logs-from",
        metavar="DIR|CMD",
        help="every file in DIR is a node's log; or CMD DAY TMPDIR writes them "
        "(default on the monitor: /usr/local/sbin/mailops-node-logs)",
    )
    p.add_argument("--store", metavar="URL", help="the store (default: [store] url)")
    p.add_argument("--syslog-name", metavar="NAME", help="also count this Postfix syslog_name")
    p.add_argument(
        "--prometheus-output", metavar="FILE", help="write the rates as Prometheus gauges there"
    )
    p.add_argument("--min-delivered", type=int, metavar="N", help="default minimum (1000)")
    p.add_argument("--min-sent", type=int, metavar="N", help="default minimum (200)")
    p.add_argument("--sendmail", metavar="PATH", help="default: [report] sendmail")
    p.add_argument("--now", metavar="TIME", help="end of the window: Unix time or ISO 8601")
    p.add_argument(
        "--dry-run", action="store_true", help="judge and print; no mail, pause or record"
    )
    p.add_argument("--print", action="store_true", help="print every rate, judged or not")
    p.set_defaults(func=_run, rotated=False)
    rs = p.add_subparsers(dest="guard_command", metavar="rules")
    r = rs.add_parser("rules", help="print Prometheus alerting rules for the same thresholds")
    r.add_argument("--for", dest="hold", default="5m", help="each rule's for: (default 5m)")
    r.set_defaults(func=_rules)
    f = rs.add_parser(
        "forget",
        help="drop a tenant's recorded levels: its rates count as new crossings again",
    )
    f.add_argument("tenant", metavar="NAME")
    f.set_defaults(func=_forget)


def parse_now(text: str | None) -> float:
    if text is None:
        return dt.datetime.now().timestamp()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--now: expected Unix time or ISO 8601, not {text!r}") from None
    return when.timestamp()


def _run(args: argparse.Namespace) -> int:
    from mailops.guard.run import run

    try:
        now = parse_now(args.now)
    except ValueError as exc:
        print(f"mailops guard: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    if not 0 < args.window <= 24 * 7:
        print("mailops guard: --window: expected 0 < HOURS <= 168", file=sys.stderr)
        return exitcodes.USAGE
    return run(args, now)


def _rules(args: argparse.Namespace) -> int:
    from mailops import config
    from mailops.guard.rules import rules_yaml
    from mailops.guard.run import tenant_limits
    from mailops.tenants.model import load_tenants

    data = config.load(getattr(args, "config", None))
    limits = tenant_limits(load_tenants(data), args)
    sys.stdout.write(rules_yaml(limits, args.hold))
    return exitcodes.OK


def _forget(args: argparse.Namespace) -> int:
    from mailops import config
    from mailops.store.db import Store, StoreError

    settings = config.table(
        config.load(getattr(args, "config", None)), "store", {"url": args.store}
    )
    try:
        with Store.open(settings["url"], timeout=settings["timeout"]) as store:
            n = store.forget_guard_levels(args.tenant)
    except StoreError as exc:
        print(f"mailops guard forget: the store: {exc}", file=sys.stderr)
        return exitcodes.TEMPFAIL
    print(f"{args.tenant}: {n} recorded level(s) dropped")
    return exitcodes.OK
