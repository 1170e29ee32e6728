"""``mailops warmup``: start or stop an address's warm-up, and show each address's day,
today's cap and use per provider (on a bulk node: its addresses and its counts)."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import sys
from typing import Any

from mailops import config, exitcodes
from mailops.config import ConfigError
from mailops.warmup import caps, schedule, state


def _settings(args: argparse.Namespace) -> tuple[schedule.WarmupSettings, list[str]]:
    data = config.load(args.config)
    warm = schedule.read(data)
    problems = config.transport_class_problems(data.get("transport_classes", {}))
    if problems:
        raise ConfigError(*problems)
    providers = [*sorted(data.get("transport_classes", {})), schedule.OTHER]
    return warm, providers


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _day(text: str) -> str:
    try:
        return schedule.parse_day(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _start(args: argparse.Namespace) -> int:
    warm, _ = _settings(args)
    day = args.date or schedule.day_of(schedule.now()).isoformat()
    override = {
        k: v
        for k, v in (("start", args.start), ("factor", args.factor), ("steady", args.steady))
        if v is not None
    }
    found = schedule.curve_problems("warm-up curve", override)
    if found:
        raise ConfigError(*found)
    entry: dict[str, Any] = {"day1": day, "by": "operator"}
    if override:
        entry["curve"] = override

    def change(entries: dict[str, dict[str, Any]]) -> bool:
        entries[args.address] = entry
        return True

    state.change_starts(warm.starts, change)
    curve = warm.curve_for(args.address, override)
    print(
        f"{args.address}: warm-up day 1 is {day}; caps per provider"
        f" {curve.start}, x{curve.factor:g} a day, until {curve.steady}"
    )
    return exitcodes.OK


def _stop(args: argparse.Namespace) -> int:
    warm, _ = _settings(args)

    def change(entries: dict[str, dict[str, Any]]) -> bool:
        if args.address in warm.planned:
            # The inventory warms it up: an entry keeps the daemon from starting it anew.
            entries[args.address] = {"stopped": True, "by": "operator"}
            return True
        return entries.pop(args.address, None) is not None

    state.change_starts(warm.starts, change)
    print(f"{args.address}: no warm-up cap from now on (steady)")
    return exitcodes.OK


def status(
    warm: schedule.WarmupSettings, providers: list[str], when: float
) -> list[dict[str, Any]]:
    """One object per address this node knows: its transports, warm-up state, day, day 1,
    today's cap per provider (None: no cap) and today's use per provider."""
    today = schedule.day_of(when)
    starts = state.read_starts(warm.starts)
    counts_day, written_at, counts = state.read_counts(warm.counts)
    if counts_day != today.isoformat():
        counts = {}
    transports: dict[str, list[str]] = {}
    for name, address in warm.transports.items():
        transports.setdefault(address, []).append(name)
    addresses = sorted(
        set(transports) | set(warm.planned) | set(starts) | set(counts),
        key=lambda a: ipaddress.ip_address(a),
    )
    rows: list[dict[str, Any]] = []
    for address in addresses:
        entry = starts.get(address)
        cap, day, curve = caps.today_cap(warm, address, entry, today)
        if entry is not None and entry.get("stopped"):
            phase = "stopped"
        elif curve is None:
            phase = "steady"
        elif cap is None:
            phase = "done"
        elif entry is None:
            phase = "not started"  # the inventory warms it up; day 1 is its first mail
        else:
            phase = "warming"
        use = counts.get(address, {})
        rows.append(
            {
                "address": address,
                "transports": sorted(transports.get(address, [])),
                "phase": phase,
                "day1": entry.get("day1") if entry else None,
                "by": entry.get("by") if entry else None,
                "day": day or None,
                "cap": cap,
                "curve": curve.as_dict() if curve else None,
                "use": {p: use.get(p, 0) for p in providers} | dict(use),
                "counts_written_at": written_at or None,
            }
        )
    return rows


def _status(args: argparse.Namespace) -> int:
    warm, providers = _settings(args)
    when = schedule.now()
    try:
        rows = status(warm, providers, when)
    except (OSError, ValueError) as exc:
        print(f"mailops warmup status: {exc}", file=sys.stderr)
        return exitcodes.FAIL
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return exitcodes.OK
    print(f"warm-up on {dt.datetime.fromtimestamp(when):%Y-%m-%d %H:%M} (caps per provider)")
    if not rows:
        print("no sending address known here")
    for row in rows:
        what = row["phase"]
        if row["day"]:
            what += f", day {row['day']} (day 1: {row['day1'] or 'today'})"
        cap = "no cap" if row["cap"] is None else f"cap {row['cap']}"
        print(f"{row['address']:<16} {' '.join(row['transports']) or '-':<18} {what}, {cap}")
        used = "  ".join(f"{p} {n}" for p, n in sorted(row["use"].items()))
        print(f"{'':<16} use today: {used}")
    return exitcodes.OK


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "warmup",
        help="warm-up of new sending addresses: start, stop, status",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    acts = parser.add_subparsers(dest="warmup_command", metavar="ACTION")
    acts.required = True
    p = acts.add_parser("start", help="start (or restart) an address's warm-up at day 1")
    p.add_argument("address", type=_address)
    p.add_argument("--date", type=_day, help="its day 1 (YYYY-MM-DD; default: today)")
    p.add_argument("--start", type=int, help="day 1's cap per provider (default: the curve's)")
    p.add_argument("--factor", type=float, help="growth per day (default: the curve's)")
    p.add_argument("--steady", type=int, help="the daily volume where it ends")
    p.set_defaults(func=_start)
    p = acts.add_parser("stop", help="end an address's warm-up now (no cap from now on)")
    p.add_argument("address", type=_address)
    p.set_defaults(func=_stop)
    p = acts.add_parser("status", help="each address's day, today's cap and use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)
