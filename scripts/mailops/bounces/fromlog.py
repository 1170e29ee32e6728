"""``mailops bounces from-log``: tenant mail's bounces from a bulk node's own mail log.

Usage (cron on the bulk nodes where there are tenants, every minute)::

    mailops bounces from-log [--log FILE] [--state FILE] [-v]

Why: a tenant's mail leaves the bulk nodes with the tenant's own envelope sender
(``news@alpha.test``), so the notice Postfix writes when a receiving server refuses a
recipient for good during the SMTP session (``550 5.1.1 ... User unknown`` at RCPT) goes
to the tenant's domain, never to our ``bounces@`` pipe.  The node's log has the bounce
anyway::

    ... mail1 postfix/pool_alpha_1_gmail/smtp[123]: 4Xyz: to=<nobody@gmail.test>,
        relay=..., delay=..., dsn=5.1.1, status=bounced (host inbox.outside.test[...]
        said: 550 5.1.1 <nobody@gmail.test>: ... User unknown (in reply to RCPT TO command))

and the message's envelope sender in qmgr's ``4Xyz: from=<news@alpha.test>, size=...``
line.  Each run reads the lines logged since the last run and, for every ``status=bounced``
recipient of a message whose sender belongs to a tenant (``Tenants.for_address``: the
tenant owning the sender's domain or a parent of it), stores the bounce as ``bounces
ingest`` stores a DSN (``Store.record_report``): the ``bounces`` row names the tenant
(whose mail it was), the suppression it causes is global (scope ''), so nobody on the
cluster mails that address again.  The status and the server's words go through the
bounce classifier (``mailops.bounceparse.reasons.classify``): ``5.1.1 ... User unknown``
is a hard ``userunknown`` and is suppressed at once; a ``4.4.7`` (the queue lifetime ran
out) is soft and counts towards the soft-bounce threshold; a 5.x.x the classifier does
not call hard (``5.7.1`` spam blocks, say) is stored as soft, as a DSN of it would be.

Skipped: bounces of mail whose sender belongs to no tenant (the company's own mail, with
a ``bounces@`` return path: its DSNs reach the pipe, which stores them), and bounces of
a message whose qmgr line this tool never read (it came before the first run).

Duplicates: a bounce's dedup key is made of the logging host, the queue id, the
recipient and the line's time stamp, so a line read twice (a run repeated after a
failure, a rotated file finished again) stores nothing twice.  The row's ``received_at``
and the suppression's times are the log line's time.

State (JSON, ``--state``, replaced atomically): where the log was left
(:mod:`mailops.maillog.follow`: survives rotation and truncation, and finishes the
rotated file ``LOG.1``/``LOG.1.gz``) and the sender of each tenant message still in the
queue (host and queue id, dropped at qmgr's ``removed``; at most ``MAX_OPEN`` of them,
none older than ``MAX_AGE`` seconds), so a bounce logged a run or a day after its qmgr
line is still attributed.  An unreadable state file is said on stderr and the log is
read again from its start (nothing is stored twice).

The store is opened only when there is something to store.  A store that cannot be
reached (or refuses the writes): the state stays as it was, so the next run reads the
same lines again; one line on stderr, exit 75.

Exit codes: 0 done (also when another run holds the lock); 66 the log cannot be read;
73 the state cannot be written; 75 the store cannot be reached; 78 bad settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops import config, exitcodes, jobstate
from mailops.bounceparse.model import Recipient, Report
from mailops.bounceparse.reasons import classify
from mailops.maillog.files import LogError
from mailops.maillog.follow import Position, follow, load_state
from mailops.maillog.lines import LineReader
from mailops.maillog.stamps import TS, stamp_time
from mailops.saslblock.blocks import StateError, write_atomic
from mailops.store import RawInfo, Store, StoreError, open_from_config, policy_from_config
from mailops.store.text import MAX_DIAGNOSTIC, clean, normalize_address
from mailops.tenants.model import Tenants, load_tenants

TOOL = "mailops bounces from-log"
DEFAULT_LOG = "/var/log/mail.log"
DEFAULT_STATE = "/var/lib/mailops/bounces-from-log.json"
STATE_FORMAT = 1
DETECTOR = "postfix-log"
# Tenant messages whose sender is remembered, at most (the oldest go first), and for
# how long after their qmgr line (Postfix's maximal_queue_lifetime is 5 days).
MAX_OPEN = 100_000
MAX_AGE = 7 * 86400

# The start of every line read: time stamp, host, a Postfix program (postfix/qmgr,
# postfix/pool_alpha_1_gmail/smtp, postfix-out/smtp...), its pid, a queue id.
_LINE = re.compile(
    TS
    + rb" (?P<host>[^\s\[\]]+) postfix[^\s/\[\]]*(?:/[^\s/\[\]]+)+\[\d+\]: "
    + rb"(?P<qid>[0-9A-Za-z]+): (?P<rest>.*)"
)
_SENDER = re.compile(rb"from=<(?P<sender>[^>]*)>, size=\d+")
_BOUNCE = re.compile(
    rb"to=<(?P<to>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]*), "
    rb"(?:conn_use=\d+, )?delay=[^,]*, (?:delays=[^,]*, )?"
    rb"dsn=(?P<dsn>[45]\.\d{1,3}\.\d{1,3}), status=bounced \((?P<diag>.*)\)\Z"
)
_RELAY_HOST = re.compile(r"([^\[\]:]+)")

Warn = Callable[[str], None]


def _warn(message: str) -> None:
    print(f"{TOOL}: {message}", file=sys.stderr)


@dataclass
class Bounce:
    """One ``status=bounced`` line of a tenant's message."""

    host: str
    qid: str
    stamp: str
    when: float
    tenant: str
    sender: str
    address: str
    dsn: str
    relay: str
    diagnostic: str

    def report(self) -> tuple[Report, RawInfo]:
        """The bounce as the store takes a DSN: a Report of one recipient, classified by
        the bounce classifier, and the dedup identity (host, queue id, recipient, time)."""
        diagnostic = clean(self.diagnostic, MAX_DIAGNOSTIC)
        status, reason, hard = classify(self.dsn, diagnostic, "failed")
        relay = _RELAY_HOST.match(self.relay)
        rcpt = Recipient(
            address=normalize_address(self.address),
            status=status,
            reason=reason,
            hard=hard,
            action="failed",
            remote_mta="" if relay is None or self.relay == "none" else relay.group(1),
            diagnostic=diagnostic,
        )
        report = Report(
            kind="bounce",
            detector=DETECTOR,
            recipients=(rcpt,),
            original_sender=normalize_address(self.sender),
        )
        identity = "\x00".join((DETECTOR, self.host, self.qid, rcpt.address, self.stamp))
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()
        return report, RawInfo(sha256=digest, size=0)


def _senders(data: dict[str, Any]) -> dict[str, list[Any]]:
    senders: dict[str, list[Any]] = {}
    raw_senders = data.get("senders", {})
    if not isinstance(raw_senders, dict):
        raise ValueError("senders must be an object")
    for key, value in raw_senders.items():
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not isinstance(value[1], int | float)
        ):
            raise ValueError(f"sender of {key!r} must be [address, time]")
        senders[str(key)] = [value[0], float(value[1])]
    return senders


@dataclass
class State:
    position: Position | None = None
    # "host qid" -> [sender, time of its qmgr line]; tenant messages only, oldest first
    senders: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, warn: Warn) -> State:
        loaded = load_state(path, STATE_FORMAT, warn, "reading the log from its start", _senders)
        return cls() if loaded is None else cls(*loaded)

    def save(self, path: Path, now: float) -> None:
        body = {
            "format": STATE_FORMAT,
            "written_at": int(now),
            "position": None if self.position is None else self.position.as_json(),
            "senders": self.senders,
        }
        write_atomic(path, json.dumps(body, separators=(",", ":")) + "\n", mode=0o600)


class Reader(LineReader):
    """maillog's LineReader (whole lines only: a live log's unfinished last line waits
    for the next run; over-long lines skipped; bounded memory), reading every line for
    qmgr's senders, ``removed`` and ``status=bounced``; a tenant's bounce goes to
    ``on_bounce`` as soon as it is read (it raises to stop the run)."""

    def __init__(
        self, tenants: Tenants, state: State, on_bounce: Callable[[Bounce], None], clock: float
    ) -> None:
        super().__init__()
        self.tenants = tenants
        self.senders = state.senders
        self.on_bounce = on_bounce
        self.clock = clock
        self.latest = 0.0  # the newest time stamp read
        self.bounces = 0  # status=bounced lines read (any sender)
        self.tenant_bounces = 0  # of them, of a tenant's message
        self.tenant_cache: dict[str, str] = {}

    def _tenant(self, sender: str) -> str:
        name = self.tenant_cache.get(sender)
        if name is None:
            t = self.tenants.for_address(sender)
            name = t.name if t is not None else ""
            if len(self.tenant_cache) >= 4096:
                self.tenant_cache.clear()
            self.tenant_cache[sender] = name
        return name

    def block(self, block: bytes) -> None:  # LineReader's hook: a block of whole lines
        self.lines += block.count(b"\n")
        for line in block.split(b"\n"):
            if b"status=bounced (" in line or b", size=" in line or line.endswith(b": removed"):
                self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        m = _LINE.match(line)
        if m is None:
            return
        rest = m["rest"]
        key = f"{m['host'].decode('utf-8', 'replace')} {m['qid'].decode('ascii')}"
        if rest == b"removed":
            self.senders.pop(key, None)
            return
        s = _SENDER.match(rest)
        if s is not None:
            sender = s["sender"].decode("utf-8", "surrogateescape")
            self.senders.pop(key, None)  # a queue id used again: forget the old message
            if self._tenant(sender):
                self.senders[key] = [sender, self._when(m["ts"])]
                if len(self.senders) > MAX_OPEN:
                    del self.senders[next(iter(self.senders))]
            return
        b = _BOUNCE.match(rest)
        if b is None:
            return
        self.bounces += 1
        known = self.senders.get(key)  # None: no tenant's (or its qmgr line was not read)
        tenant = self._tenant(known[0]) if known is not None else ""
        if known is None or not tenant:
            return
        self.tenant_bounces += 1
        self.on_bounce(
            Bounce(
                host=m["host"].decode("utf-8", "replace"),
                qid=m["qid"].decode("ascii"),
                stamp=m["ts"].decode("ascii", "replace"),
                when=self._when(m["ts"]),
                tenant=tenant,
                sender=known[0],
                address=b["to"].decode("utf-8", "surrogateescape"),
                dsn=b["dsn"].decode("ascii"),
                relay=b["relay"].decode("utf-8", "replace"),
                diagnostic=b["diag"].decode("utf-8", "replace"),
            )
        )

    def _when(self, ts: bytes) -> float:
        when = stamp_time(ts, self.clock)
        if when is None:
            when = self.clock
        self.latest = max(self.latest, when)
        return when

    def forget_old(self) -> None:
        """Drop the senders of messages older than MAX_AGE (by the log's own clock)."""
        if not self.latest:
            return
        limit = self.latest - MAX_AGE
        for key in [k for k, v in self.senders.items() if v[1] < limit]:
            del self.senders[key]


@dataclass
class Result:
    stored: int = 0
    duplicates: int = 0
    suppressed: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what -v prints


class Recorder:
    """Stores bounces one by one, opening the store at the first."""

    def __init__(self, data: dict[str, Any], result: Result) -> None:
        self.data = data
        self.result = result
        self.store: Store | None = None

    def __call__(self, bounce: Bounce) -> None:
        if self.store is None:
            self.store = open_from_config(self.data)
        report, raw = bounce.report()
        outcome = self.store.record_report(
            report, raw, tenant=bounce.tenant, scope="", now=bounce.when
        )
        self.result.stored += outcome.stored
        self.result.duplicates += outcome.duplicates
        self.result.suppressed.extend(outcome.suppressed)
        if outcome.stored:
            r = report.recipients[0]
            kind = "hard" if r.hard else "soft"
            self.result.lines.append(
                f"{bounce.host} {bounce.qid}: {r.address} {r.status} {r.reason} ({kind}),"
                f" tenant {bounce.tenant}"
                + (", suppressed" if r.address in outcome.suppressed else "")
            )

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def run(
    data: dict[str, Any],
    log: Path,
    state_path: Path,
    *,
    verbose: bool = False,
    now: float | None = None,
    warn: Warn = _warn,
) -> int:
    """One run: read the new lines of ``log``, store the tenants' bounces, save the
    state (only when everything read was stored).  Returns the exit code."""
    tenants = load_tenants(data)  # a broken [tenants] is a settings error (78), at once
    policy_from_config(data)  # so are broken [store] and [suppression] tables
    config.table(data, "store")
    clock = time.time() if now is None else now
    lock = jobstate.hold_or_skip(state_path, warn, verbose)
    if isinstance(lock, int):
        return lock
    try:
        state = State.load(state_path, warn)
        result = Result()
        recorder = Recorder(data, result)
        reader = Reader(tenants, state, recorder, clock)
        try:
            state.position = follow(log, state.position, reader, warn)
        except LogError as exc:
            warn(str(exc))
            return exitcodes.NOINPUT
        except StoreError as exc:
            warn(f"{exc}; the log will be read again from the same place next run")
            return exitcodes.TEMPFAIL
        finally:
            recorder.close()
        reader.forget_old()
        try:
            state.save(state_path, clock)
        except StateError as exc:
            warn(str(exc))
            return exitcodes.CANTCREAT
    finally:
        lock.close()
    if verbose:
        for line in result.lines:
            print(line)
        print(
            f"{reader.lines} lines, {reader.bounces} bounced recipients,"
            f" {reader.tenant_bounces} of tenant mail: {result.stored} stored,"
            f" {result.duplicates} stored before, {len(result.suppressed)} newly suppressed;"
            f" {len(state.senders)} tenant messages in the queue"
        )
    return exitcodes.OK


def cmd_from_log(args: argparse.Namespace) -> int:
    data = config.load(args.config)
    return run(data, Path(args.log), Path(args.state), verbose=args.verbose)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "from-log",
        help="bulk nodes (cron): store the bounces of tenant mail that the mail log holds",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--log", default=DEFAULT_LOG, metavar="FILE", help="the Postfix log")
    parser.add_argument(
        "--state", default=DEFAULT_STATE, metavar="FILE", help="where the run left off"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="say what was stored")
    parser.set_defaults(func=cmd_from_log)
