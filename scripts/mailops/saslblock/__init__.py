"""``mailops saslblock``: block SASL password guessers from the mail log (cron, every 5 min).

Usage::

    mailops saslblock [--log FILE] [--map FILE] [--state FILE] [--threshold N]
                      [--window SECONDS] [--expire SECONDS] [--allow CIDR ...]
                      [--mynetworks CIDR ...] [--no-postmap] [--unblock ADDRESS ...]

Each run reads what Postfix logged since the last run (the state file remembers where it
stopped, across rotation and truncation, gzipped files included), counts ``SASL ...
authentication failed`` per client address, blocks a client after ``threshold`` failures
within ``window`` seconds for ``expire`` seconds, and rewrites the Postfix access table
(``ADDRESS REJECT text`` lines) atomically, only when it changes.  The postfix role checks
that table first in ``smtpd_client_restrictions`` with ``smtpd_delay_reject = no``, so a
blocked client is refused in the greeting, before it can try another password.

Defaults, and why (see docs/saslblock.md for more):

* ``threshold = 5`` failures within ``window = 600`` s.  A person who mistypes a
  password fails once or twice and then gets it right or stops; a phone with a stale
  password retries at each sync, every few minutes at most, and stays under 5 in 10
  minutes.  A guesser makes 5 tries in seconds (the role's anvil limit still lets a
  client try 30 times a minute), so it is caught on the first run after it starts.
  The window is two cron periods wide, and counts carry over between runs, so a burst
  cut in two by a run is still one burst.  ``--threshold 1`` is the strict behaviour
  some operators want: the first failure blocks (mind people who mistype).
* ``expire = 86400`` s.  Guessing campaigns move on within hours when refused; a day
  keeps a bot out for the rest of its run, and a person blocked by mistake is not locked
  out for longer than a day (``--unblock ADDRESS`` lifts a block at once).  A client
  that comes back and fails again is blocked again.

Only lines written by a Postfix smtpd (``postfix/smtpd``, ``postfix/submission/smtpd``,
``postfix-out/smtpd``...) count, and the address comes only from smtpd's own
``name[address]:`` field, never from text the client chose (its user name).  "Connection
lost to authentication server" is the server's failure and does not count.  Loopback,
Postfix's ``mynetworks`` and the ``allow`` networks are never blocked.

Output: one line per client newly blocked, expired or unblocked; nothing otherwise.
Exit codes: 0 done; 65 the state file is unusable; 66 the log cannot be read; 73 the
table or state cannot be written (or postmap failed; the previous table stays in force);
75 another run holds the lock; 78 bad settings or postmap not found.

Settings (table ``[saslblock]`` of the mailops settings file; flags override them,
``--allow`` and ``--mynetworks`` add to the lists)::

    log = "/var/log/mail.log"
    map = "/etc/postfix/access_dynamic"
    state = "/var/lib/mailops/saslblock.json"   # a lock file STATE.lock sits beside it
    threshold = 5
    window = 600          # seconds
    expire = 86400        # seconds
    allow = []            # ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
    mynetworks = []       # Postfix's mynetworks (the role copies it); [::1]/128 form is fine
    postmap = true        # index the table with postmap (false: text only, e.g. cidr:)
    postmap_command = "postmap"
    map_type = "hash"     # hash, btree, lmdb or cdb: what main.cf names the table with
    reject_text = "Too many failed authentication attempts from your address"
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from mailops import config, exitcodes, jobstate
from mailops.config import ConfigError
from mailops.maillog.files import LogError
from mailops.maillog.follow import follow
from mailops.maillog.stamps import stamp_time
from mailops.saslblock.accessmap import MapError, PostmapMissing, render, write_map
from mailops.saslblock.blocks import (
    ALWAYS_PROTECTED,
    Blocker,
    Network,
    StateError,
    canonical,
    parse_network,
)
from mailops.saslblock.logscan import Scanner

DEFAULTS: dict[str, Any] = config.defaults("saslblock")
LOCK_WAIT_SECONDS = 60.0


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the [saslblock] table, then the flags that were given, all checked by
    the settings reader that `mailops config check` runs."""
    keys = ("log", "map", "state", "threshold", "window", "expire")
    flags = {key: getattr(args, key, None) for key in keys}
    merged = config.table(config.load(getattr(args, "config", None)), "saslblock", flags)
    merged["allow"] = list(merged["allow"]) + list(getattr(args, "allow", None) or [])
    merged["mynetworks"] = list(merged["mynetworks"]) + list(
        getattr(args, "mynetworks", None) or []
    )
    if getattr(args, "no_postmap", False):
        merged["postmap"] = False
    return merged


def protected_networks(s: dict[str, Any], warn: Any) -> tuple[Network, ...]:
    nets: list[Network] = list(ALWAYS_PROTECTED)
    for key in ("mynetworks", "allow"):
        for entry in s[key]:
            if key == "mynetworks" and (":/" in entry or entry.startswith("/")):
                warn(
                    f"mynetworks entry {entry!r} is a lookup table, which saslblock does "
                    "not read; list its networks in allow"
                )
                continue
            try:
                nets.append(parse_network(entry))
            except ValueError as exc:
                raise ConfigError(
                    f"[saslblock] {key}: {entry!r} is not a network ({exc})"
                ) from None
    return tuple(nets)


def _utc(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _warn(message: str) -> None:
    print(f"mailops saslblock: {message}", file=sys.stderr)


def run(s: dict[str, Any], unblock: list[str], now: float | None = None) -> int:
    """One run with merged settings ``s``; prints changes, returns the exit code."""
    protected = protected_networks(s, _warn)
    state_path = Path(s["state"])
    lock = jobstate.hold(state_path, LOCK_WAIT_SECONDS)
    if lock is None:
        _warn(f"another run holds {state_path}.lock; try again later")
        return exitcodes.TEMPFAIL
    try:
        blocker = Blocker(
            threshold=int(s["threshold"]),
            window=float(s["window"]),
            expire=float(s["expire"]),
            protected=protected,
        )
        try:
            blocker.load(state_path)
        except StateError as exc:
            _warn(str(exc))
            return exitcodes.DATAERR
        clock = time.time() if now is None else now
        before = list(blocker.blocks)

        def on_failure(addr: bytes, ts: bytes) -> None:
            when = stamp_time(ts, clock)
            blocker.record(addr, clock if when is None else when)

        scanner = Scanner(on_failure)
        try:
            blocker.position = follow(Path(s["log"]), blocker.position, scanner, _warn)
        except LogError as exc:
            _warn(str(exc))
            return exitcodes.NOINPUT
        changes = blocker.finish(clock, before, unblock)
        content = render(blocker.blocks, s["reject_text"], int(s["threshold"]), int(s["window"]))
        try:
            write_map(
                Path(s["map"]),
                content,
                s["postmap_command"] if s["postmap"] else None,
                s["map_type"],
            )
        except MapError as exc:
            _warn(f"{exc}; the previous table stays in force")
            return exitcodes.CONFIG if isinstance(exc, PostmapMissing) else exitcodes.CANTCREAT
        try:
            blocker.save(state_path, clock)
        except StateError as exc:
            _warn(str(exc))
            return exitcodes.CANTCREAT
    finally:
        lock.close()
    for key in changes.blocked:
        b = blocker.blocks[key]
        span = max(0.0, b.since - b.first)
        print(f"blocked {key}: {b.failures} SASL failures in {span:.0f} s, until {_utc(b.until)}")
    for key in changes.expired:
        print(f"expired {key}")
    for key, why in changes.unblocked:
        print(f"unblocked {key} ({why})")
    return exitcodes.OK


def cmd(args: argparse.Namespace) -> int:
    s = settings(args)
    unblock = list(args.unblock or [])
    for entry in unblock:
        if canonical(entry) is None:
            print(f"mailops saslblock: --unblock {entry!r} is not an IP address", file=sys.stderr)
            return exitcodes.USAGE
    return run(s, unblock)


def _nonneg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _network(text: str) -> str:
    try:
        parse_network(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or network") from None
    return text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "saslblock",
        help="block clients that keep failing SMTP AUTH (reads the mail log)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--log", metavar="FILE", help="Postfix mail log (plain or gzipped)")
    parser.add_argument("--map", metavar="FILE", help="access table to write")
    parser.add_argument("--state", metavar="FILE", help="where the position and counts are kept")
    parser.add_argument("--threshold", type=_nonneg, metavar="N", help="failures that block (5)")
    parser.add_argument("--window", type=_nonneg, metavar="SECONDS", help="within (600)")
    parser.add_argument("--expire", type=_nonneg, metavar="SECONDS", help="block for (86400)")
    parser.add_argument(
        "--allow", nargs="+", action="extend", type=_network, metavar="CIDR", help="never block"
    )
    parser.add_argument(
        "--mynetworks",
        nargs="+",
        action="extend",
        type=_network,
        metavar="CIDR",
        help="Postfix's mynetworks (never blocked)",
    )
    parser.add_argument(
        "--no-postmap", action="store_true", help="write the text table only, do not index it"
    )
    parser.add_argument(
        "--unblock",
        nargs="+",
        action="extend",
        metavar="ADDRESS",
        help="lift these blocks and forget their failures",
    )
    parser.set_defaults(func=cmd)
