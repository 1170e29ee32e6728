"""``mailops throttle``: back a bulk node's transport off when a receiver says "slow down".

Usage (cron on the bulk nodes, every minute, as root)::

    mailops throttle run [--settings FILE] [--dry-run] [-v]
    mailops throttle status [--settings FILE] [--json]
    mailops throttle check-settings FILE|-    (the role's preflight, on the controller)

Each run reads the mail log lines written since the last run (maillog's follower:
rotation, truncation and gzip handled), counts per transport the deferrals whose reply
the classifier (:mod:`mailops.throttle.classify`) calls a throttle and the deliveries,
decides each transport's step (:mod:`mailops.throttle.steps`), and makes main.cf say
that step's ``<transport>_destination_concurrency_limit`` and
``<transport>_destination_rate_delay``: ``postconf -e`` and one ``postfix reload``,
only when a value differs.  Each change leaves one line in the mail log (``postlog``,
tag ``mailops/throttle``) naming the transport, the old and new settings and why.  The
state file keeps the log position and each transport's step; the queue collector reads
it for /metrics.  docs/throttle.md has the design.

The transports and their inventory values come from the settings file the throttle
role writes (JSON: ``transports``, ``steps``, timings).  The first run starts at the
log's end: old replies must not slow a transport down on the day the tool arrives.

Exit codes: 0 done (also when another run holds the lock); 66 the log cannot be read;
73 the state cannot be written; 75 a Postfix command failed (the next run tries
again); 78 bad settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops import exitcodes, jobstate
from mailops.maillog.files import LogError
from mailops.maillog.follow import LogFile, follow
from mailops.saslblock.blocks import StateError
from mailops.throttle.postfix import Postfix, PostfixError, parameters, wanted_values
from mailops.throttle.reader import Reader
from mailops.throttle.state import Entry, State
from mailops.throttle.steps import (
    Decision,
    Seen,
    Settings,
    SettingsError,
    TransportState,
    decide,
    parse_settings,
)

TOOL = "mailops throttle"
DEFAULT_SETTINGS = "/etc/mailops/throttle.json"

Warn = Callable[[str], None]


def _warn(message: str) -> None:
    print(f"{TOOL}: {message}", file=sys.stderr)


def load_settings(path: Path) -> Settings:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such file (the throttle role writes it)") from None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: unreadable ({exc})") from None
    return parse_settings(data)


@dataclass
class Change:
    transport: str
    decision: Decision
    old: dict[str, str]
    new: dict[str, str]

    def line(self, top: int) -> str:
        conc, delay = parameters(self.transport)
        if self.decision.new != self.decision.old:
            what = f"step {self.decision.old} -> {self.decision.new} of {top}"
            why = self.decision.why
        else:
            what = f"step {self.decision.new} of {top} set again"
            why = "main.cf did not say this step's values (a converge or a hand edit)"
        return (
            f"transport {self.transport}: {what}, "
            f"concurrency {self.old.get(conc, '?')} -> {self.new[conc]}, "
            f"rate_delay {self.old.get(delay, '?')} -> {self.new[delay]}: {why}"
        )


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)
    reloaded: bool = False
    lines: int = 0
    signals: int = 0
    deliveries: int = 0


def _same(a: str | None, b: str) -> bool:
    """Postfix values equal: ``1s`` and ``1``, ``0s`` and ``0``."""
    if a is None:
        return False
    strip = str.maketrans("", "", " ")
    a, b = a.translate(strip), b.translate(strip)
    if a == b:
        return True
    return a.rstrip("s") == b.rstrip("s") and a.rstrip("s").isdigit()


def step_all(
    settings: Settings,
    state: State,
    seen: dict[str, Seen],
    postfix: Postfix,
    now: float,
    *,
    dry_run: bool = False,
) -> Outcome:
    """Decide every transport's step and make main.cf say it (the pure part of a run
    after the log is read; ``postfix`` is where the commands go)."""
    out = Outcome()
    names = {t.name for t in settings.transports}
    for gone in [n for n in state.transports if n not in names]:
        del state.transports[gone]
    decisions: dict[str, tuple[Decision, int]] = {}
    for t in settings.transports:
        ladder = settings.ladder(t)
        entry = state.transports.setdefault(t.name, Entry(TransportState()))
        top = len(ladder) - 1
        decision = decide(entry.state, seen.get(t.name, Seen()), top, now, settings.params)
        entry.top = top
        entry.rung = ladder[entry.state.step]
        decisions[t.name] = (decision, top)
    # Only transports the throttle has touched are compared with main.cf: at step 0,
    # once restored, main.cf is the postfix role's.
    watched = [
        t
        for t in settings.transports
        if state.transports[t.name].state.step > 0
        or state.transports[t.name].applied_step != state.transports[t.name].state.step
        or decisions[t.name][0].new != decisions[t.name][0].old
    ]
    if not watched:
        return out
    current = postfix.current([p for t in watched for p in parameters(t.name)])
    wanted: dict[str, str] = {}
    for t in watched:
        entry = state.transports[t.name]
        assert entry.rung is not None
        values = wanted_values(t.name, entry.rung)
        decision = decisions[t.name][0]
        if all(_same(current.get(k), v) for k, v in values.items()):
            # main.cf already says it (a converge put the inventory back just as the
            # step went up to 0): nothing to set, but a step change is still logged
            if decision.new != decision.old:
                out.changes.append(Change(t.name, decision, current, values))
            if not dry_run:
                entry.applied_step = entry.state.step
            continue
        wanted.update(values)
        out.changes.append(Change(t.name, decision, current, values))
    if not out.changes or dry_run:
        return out
    if wanted:
        postfix.set(wanted)
        postfix.reload()
        out.reloaded = True
    for change in out.changes:
        entry = state.transports[change.transport]
        entry.applied_step = entry.state.step
        postfix.log(change.line(entry.top))
    return out


def run(
    settings: Settings,
    *,
    postfix: Postfix | None = None,
    now: float | None = None,
    dry_run: bool = False,
    verbose: bool = False,
    warn: Warn = _warn,
) -> int:
    clock = time.time() if now is None else now
    pf = postfix or Postfix()
    state_path, log_path = Path(settings.state), Path(settings.log)
    lock = jobstate.hold_or_skip(state_path, warn, verbose)
    if isinstance(lock, int):
        return lock
    try:
        state = State.load(state_path, warn)
        seen: dict[str, Seen] = {}
        reader = Reader(
            {t.name for t in settings.transports}, clock, lambda n: seen.setdefault(n, Seen())
        )
        try:
            if state.position is None:  # first run: from the log's end
                with LogFile(log_path) as log:
                    state.position = log.position(log.size if not log.gz else 0, None)
            state.position = follow(log_path, state.position, reader, warn)
        except LogError as exc:
            warn(str(exc))
            return exitcodes.NOINPUT
        code = exitcodes.OK
        try:
            outcome = step_all(settings, state, seen, pf, clock, dry_run=dry_run)
        except PostfixError as exc:
            warn(f"{exc}; the next run tries again")
            outcome, code = Outcome(), exitcodes.TEMPFAIL
        if not dry_run:
            try:
                state.save(state_path, clock)
            except StateError as exc:
                warn(str(exc))
                return exitcodes.CANTCREAT
    finally:
        lock.close()
    if verbose:
        for change in outcome.changes:
            top = state.transports[change.transport].top
            print(("would set: " if dry_run else "") + change.line(top))
        print(
            f"{reader.lines} lines: {reader.signals} throttle replies, {reader.deliveries}"
            f" deliveries, {reader.other_deferrals} other deferrals on the transports;"
            f" {len(outcome.changes)} changed" + (", postfix reloaded" if outcome.reloaded else "")
        )
    return code


def status_rows(settings: Settings, state: State) -> list[dict[str, Any]]:
    rows = []
    for t in settings.transports:
        ladder = settings.ladder(t)
        entry = state.transports.get(t.name, Entry(TransportState()))
        step = min(entry.state.step, len(ladder) - 1)
        rung = ladder[step]
        rows.append(
            {
                "transport": t.name,
                "class": t.klass,
                "step": step,
                "top": len(ladder) - 1,
                "concurrency": rung.concurrency,
                "rate_delay_seconds": rung.rate_delay,
                "signals_total": entry.state.signals_total,
                "changed_at": entry.state.changed_at,
                "reason": entry.state.reason,
            }
        )
    return rows


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Path(args.settings))
    except SettingsError as exc:
        _warn(str(exc))
        return exitcodes.CONFIG
    return run(settings, dry_run=args.dry_run, verbose=args.verbose)


def cmd_check_settings(args: argparse.Namespace) -> int:
    """Exit 0 when the settings are good; 78 with every word of the fault otherwise."""
    try:
        if args.file == "-":
            data = json.loads(sys.stdin.read())
        else:
            data = json.loads(Path(args.file).read_bytes())
        settings = parse_settings(data)
    except (OSError, ValueError) as exc:  # SettingsError is a ValueError
        _warn(str(exc))
        return exitcodes.CONFIG
    for t in settings.transports:
        ladder = settings.ladder(t)
        print(f"{t.name}: " + "; ".join(r.describe() for r in ladder))
    return exitcodes.OK


def cmd_status(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Path(args.settings))
    except SettingsError as exc:
        _warn(str(exc))
        return exitcodes.CONFIG
    rows = status_rows(settings, State.load(Path(settings.state), _warn))
    if args.json:
        print(json.dumps(rows, indent=2))
        return exitcodes.OK
    print(f"{'transport':28} {'step':>6} {'conc':>5} {'delay':>7} {'signals':>8}  last change")
    for r in rows:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["changed_at"]))
            if r["changed_at"]
            else "-"
        )
        print(
            f"{r['transport']:28} {r['step']:>2}/{r['top']:<3} {r['concurrency']:>5}"
            f" {r['rate_delay_seconds']:>6}s {r['signals_total']:>8}  {when} {r['reason']}"
        )
    return exitcodes.OK


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "throttle",
        help="bulk nodes (cron): back transports off when receivers answer 421/4.7.x",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    tsub = parser.add_subparsers(dest="throttle_command", required=True)
    p_run = tsub.add_parser("run", help="read the new log lines, step transports down or up")
    p_run.add_argument("--settings", default=DEFAULT_SETTINGS, metavar="FILE")
    p_run.add_argument("--dry-run", action="store_true", help="change nothing, save nothing")
    p_run.add_argument("-v", "--verbose", action="store_true", help="say what was done")
    p_run.set_defaults(func=cmd_run)
    p_status = tsub.add_parser("status", help="each transport's step and figures")
    p_status.add_argument("--settings", default=DEFAULT_SETTINGS, metavar="FILE")
    p_status.add_argument("--json", action="store_true")
    p_status.set_defaults(func=cmd_status)
    p_check = tsub.add_parser("check-settings", help="validate a settings file (- for stdin)")
    p_check.add_argument("file", metavar="FILE")
    p_check.set_defaults(func=cmd_check_settings)
