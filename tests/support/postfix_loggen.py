"""Postfix logs of many shapes, for comparing ``mailops report`` with pflogsumm.

``generate(seed)`` draws a shape from the seed (how many hosts write into the one file,
classic or ISO timestamps, short or long queue ids or both, how often a queue id is
reused, by the same host after its message went or by another host while it is still
queued, how long and how often deliveries are deferred) and writes a log of it: every
message with its ``client=`` or ``pickup`` line, cleanup's ``message-id``, qmgr's
``from=<...>, size=N`` at each pass through the active queue, one line per delivery
attempt per recipient (smtp, local, virtual, pipe, lmtp; sent, forwarded, deferred again
and again for hours, bounced, expired) and ``removed``; rejects at every stage
(postscreen, smtpd before and after the queue file, cleanup's header, body and milter
actions, with warnings, holds and discards); SASL failures and other noise.  Lines are
in time order across hosts, as one syslog file collecting several hosts has them; a
message still queued when the log ends has no ``removed`` line.

The sizes are small (at most ``MAX_SIZE`` bytes) so that the byte totals of a log of
some ten thousand lines stay under 512k, below which pflogsumm prints exact figures.
``Shape.hosts`` and the counters in ``Stats`` say what a log holds, so a test can check
that a shape it relies on is really there.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_SIZE = 120
HOSTS = ("mail1", "mail2", "mx1")
SHORT_ID = "0123456789ABCDEF"
LONG_ID = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
RCPT_DOMAINS = ("gmail.test", "Outlook.test", "yahoo.test", "company.test", "gmx.test")
SENDERS = ("news@shop.example", "Alerts@Bank.example", "noreply@app.example", "", "billing")
CLIENTS = (
    "app1.company.test[198.51.100.30]",
    "app2.mail.company.com[198.51.100.31]",
    "unknown[203.0.113.9]",
    "relay.partner.co.uk[198.51.100.40]",
    "localhost[127.0.0.1]",
)
DEFER_REASONS = (
    "connect to mx.{dom}[198.51.100.80]:25: Connection timed out",
    "host mx.{dom}[198.51.100.80] said: 421 4.7.0 Try again later (in reply to RCPT TO command)",
    "host mx.{dom}[198.51.100.80] said: 450 4.2.1 Mailbox busy, (rate) try later "
    "(in reply to end of DATA command)",
    "delivery temporarily suspended: connect to mx.{dom}[198.51.100.80]:25: Connection refused",
)
BOUNCE_REASONS = (
    "host mx.{dom}[198.51.100.80] said: 550 5.1.1 <{addr}>: User unknown (in reply to RCPT TO "
    "command)",
    "host mx.{dom}[198.51.100.80] said: 552 5.2.2 Mailbox full (in reply to end of DATA command)",
)


@dataclass
class Shape:
    seed: int
    hosts: tuple[str, ...]
    iso: bool
    long_ids: float  # share of messages with a long queue id
    reuse_other: float  # share taking a queue id another host holds or held
    reuse_same: float  # share taking a queue id this host used before
    defer: float  # share of recipients deferred at least once
    max_tries: int  # deferrals of one recipient, at most
    retry: int  # seconds before the first retry (doubling up to an hour)
    messages: int
    hours: float  # length of the log
    senders: tuple[str, ...] = SENDERS  # envelope senders drawn from


@dataclass(frozen=True)
class Delivery:
    """One delivery line the log holds (``Stats.deliveries``): when, where, which message
    (a number of its own, whatever its queue id), from whom, to whom, how it ended."""

    t: float
    host: str
    message: int
    sender: str
    addr: str
    status: str  # sent (also "forwarded as"), deferred, bounced
    dsn: str


@dataclass
class Stats:
    lines: int = 0
    messages: int = 0
    reused_other: int = 0
    reused_same: int = 0
    deferrals: int = 0
    most_deferrals: int = 0  # of one recipient
    longest_defer: float = 0.0  # seconds from a message's arrival to its last deferral
    agents: set[str] = field(default_factory=set)
    queued_at_end: int = 0
    deliveries: list[Delivery] = field(default_factory=list)


def shape_of(seed: int, lines: int = 12_000) -> Shape:
    rnd = random.Random(seed * 7919 + 1)
    hosts = HOSTS[: 1 + seed % 3] if seed % 5 else HOSTS[:2]
    return Shape(
        seed=seed,
        hosts=hosts,
        iso=seed % 4 == 3,
        long_ids=(0.0, 1.0, 0.5)[seed % 3],
        # (every fourth shape reuses none: its parts are all added up, none counted again)
        reuse_other=rnd.choice((0.02, 0.05, 0.15)) if len(hosts) > 1 and seed % 4 != 1 else 0.0,
        reuse_same=rnd.choice((0.0, 0.03, 0.1)) if seed % 4 != 1 else 0.0,
        defer=rnd.choice((0.05, 0.15, 0.3)),
        max_tries=rnd.choice((6, 12, 25)),
        retry=rnd.choice((300, 600, 900)),
        messages=lines // 9,
        hours=rnd.choice((6.0, 20.0, 30.0)),
    )


class _Gen:
    def __init__(self, shape: Shape, start: float) -> None:
        self.s = shape
        self.rnd = random.Random(shape.seed)
        self.start = start
        self.end = start + shape.hours * 3600
        self.events: list[tuple[float, int, str, str]] = []  # time, order, host, text
        self.order = 0
        self.stats = Stats()
        # queue id -> time its message went (inf: never, in this log), per host
        self.used: dict[str, dict[str, float]] = {h: {} for h in shape.hosts}
        self.pids = {h: self.rnd.randrange(1000, 30000) for h in shape.hosts}
        self.current: tuple[int, str] = (0, "")  # the message being made: number, sender

    def emit(self, t: float, host: str, prog: str, text: str) -> None:
        if t > self.end:
            return
        self.order += 1
        self.pids[host] = self.pids[host] % 32000 + 1 + self.rnd.randrange(3)
        self.events.append((t, self.order, host, f"postfix/{prog}[{self.pids[host]}]: {text}"))

    def new_id(self, host: str, t: float) -> str:
        rnd, s = self.rnd, self.s
        others = [h for h in s.hosts if h != host and self.used[h]]
        if others and rnd.random() < s.reuse_other:
            qid = rnd.choice(list(self.used[rnd.choice(others)]))
            if self.used[host].get(qid, -1.0) < t:  # this host holds no message by it now
                self.stats.reused_other += 1
                return qid
        gone = [q for q, until in self.used[host].items() if until < t]
        if gone and rnd.random() < s.reuse_same:
            self.stats.reused_same += 1
            return rnd.choice(gone)
        if rnd.random() < s.long_ids:
            return rnd.choice("123456789") + "".join(rnd.choices(LONG_ID, k=rnd.choice((13, 14))))
        return "".join(rnd.choices(SHORT_ID, k=rnd.choice((8, 10, 11, 12))))

    def message(self) -> None:
        rnd, s = self.rnd, self.s
        host = rnd.choice(s.hosts)
        t = rnd.uniform(self.start, self.end)
        qid = self.new_id(host, t)
        self.used[host][qid] = float("inf")
        self.stats.messages += 1
        sender = rnd.choice(s.senders)
        kind = rnd.random()
        if kind < 0.7:
            client = rnd.choice(CLIENTS)
            prog = rnd.choice(("smtpd", "smtpd", "submission/smtpd"))
            self.emit(t, host, prog, f"connect from {client}")
            sasl = ", sasl_method=PLAIN, sasl_username=app" if rnd.random() < 0.3 else ""
            self.emit(t + 0.01, host, prog, f"{qid}: client={client}{sasl}")
            if rnd.random() < 0.05:  # a recipient refused after the queue file exists
                self.emit(
                    t + 0.02, host, prog,
                    f"{qid}: reject: RCPT from {client}: 550 5.1.1 <x@company.test>: Recipient "
                    f"address rejected: User unknown in local recipient table; from=<{sender}> "
                    "to=<x@company.test> proto=ESMTP helo=<app1>",
                )  # fmt: skip
        elif kind < 0.9:
            client = ""
            uid = rnd.choice((0, 33, 1000))
            self.emit(t, host, "pickup", f"{qid}: uid={uid} from=<{sender or 'www-data'}>")
        else:  # made here: a bounce notice, a forward's copy (no client=, no pickup)
            client = ""
            sender = ""
        self.current = (self.stats.messages, sender)
        self.emit(t + 0.05, host, "cleanup", f"{qid}: message-id=<{qid}.{t:.0f}@{host}.test>")
        action = rnd.random()
        if action < 0.04:
            what = rnd.choice(
                (
                    "reject: header Subject: win big from app1[198.51.100.30]",
                    "milter-reject: END-OF-MESSAGE from app1[198.51.100.30]: 5.7.1 DKIM "
                    "signature missing",
                    "discard: body spam spam from unknown[203.0.113.9]",
                )
            )
            self.emit(
                t + 0.06, host, "cleanup",
                f"{qid}: {what}; from=<{sender}> to=<u@gmail.test> proto=ESMTP helo=<app1>",
            )  # fmt: skip
            self.used[host][qid] = t + 0.06
            return
        if action < 0.07:
            verb = rnd.choice(("warning", "hold"))
            self.emit(
                t + 0.06, host, "cleanup",
                f"{qid}: {verb}: header X-Spam: yes from app1[198.51.100.30]; "
                f"from=<{sender}> to=<u@gmail.test> proto=ESMTP helo=<app1>",
            )  # fmt: skip
        size = rnd.randint(1, MAX_SIZE)
        rcpts = rnd.choice((1, 1, 1, 2, 3))
        from_line = f"{qid}: from=<{sender}>, size={size}, nrcpt={rcpts} (queue active)"
        self.emit(t + 0.1, host, "qmgr", from_line)
        ends = []
        for _ in range(rcpts):
            ends.append(self.recipient(host, qid, t + 0.2, from_line))
        if all(e is not None for e in ends):
            done = max(e for e in ends if e is not None) + 0.01
            self.emit(done, host, "qmgr", f"{qid}: removed")
            self.used[host][qid] = done if done <= self.end else float("inf")
        if any(e is None or e > self.end for e in ends):
            self.stats.queued_at_end += 1

    def recipient(self, host: str, qid: str, t: float, from_line: str) -> float | None:
        """Every attempt for one recipient; when it was done (None: still queued)."""
        rnd, s = self.rnd, self.s
        dom = rnd.choice(RCPT_DOMAINS)
        user = rnd.choice(("bob", "Carol", "dave", "erin", "frank", "grace", "heidi"))
        addr = f"{user}{rnd.randrange(40)}@{dom}"
        agent = rnd.choice(("smtp", "smtp", "smtp", "local", "virtual", "pipe", "lmtp"))
        self.stats.agents.add(agent)
        relay = {
            "smtp": f"mx.{dom.lower()}[198.51.100.80]:25",
            "local": "local",
            "virtual": "virtual",
            "pipe": "mailops",
            "lmtp": "imap.company.test[private/dovecot-lmtp]",
        }[agent]
        if agent == "local":
            addr = f"{user}@{host}.company.test"
        orig = f"orig_to=<{user}>, " if agent == "local" and rnd.random() < 0.5 else ""
        tries = 0
        if rnd.random() < s.defer:
            tries = s.max_tries if rnd.random() < 0.1 else rnd.randint(1, s.max_tries)
        wait = s.retry
        arrival = t
        for n in range(tries):
            delay = t - arrival + rnd.uniform(0.1, 30)
            reason = rnd.choice(DEFER_REASONS).format(dom=dom.lower())
            self.emit(
                t, host, agent,
                f"{qid}: to=<{addr}>, {orig}relay={relay if n % 2 else 'none'}, "
                f"delay={delay:.1f}, delays=0.1/0/{delay:.0f}/0, dsn=4.4.1, "
                f"status=deferred ({reason})",
            )  # fmt: skip
            self.record(t, host, addr, "deferred", "4.4.1")
            if t <= self.end:
                self.stats.deferrals += 1
                self.stats.longest_defer = max(self.stats.longest_defer, t - arrival)
            self.stats.most_deferrals = max(self.stats.most_deferrals, n + 1)
            t += wait + rnd.uniform(0, 60)
            wait = min(wait * 2, 3600)
            if t > self.end:
                return None
            self.emit(t - 0.5, host, "qmgr", from_line)  # back in the active queue
        took = f"{t - arrival + rnd.uniform(0.01, 3):.{rnd.choice((1, 2))}f}"
        end = rnd.random()
        prog = agent
        if end < 0.08:
            reason = rnd.choice(BOUNCE_REASONS).format(dom=dom.lower(), addr=addr)
            status = f"dsn=5.1.1, status=bounced ({reason})"
            self.record(t, host, addr, "bounced", "5.1.1")
        elif end < 0.1 and tries:
            self.emit(t, host, "qmgr", f"{qid}: from=<{addr}>, status=expired, returned to sender")
            status = "dsn=4.4.7, status=bounced (message expired)"
            self.record(t, host, addr, "bounced", "4.4.7")
        elif end < 0.13 and agent == "local":
            status = f"dsn=2.0.0, status=sent (forwarded as {qid[:4]}F00D)"
            self.record(t, host, addr, "sent", "2.0.0")
        else:
            said = {
                "smtp": "250 2.0.0 OK queued",
                "local": "delivered to mailbox",
                "virtual": "delivered to maildir",
                "pipe": "delivered via mailops service",
                "lmtp": f"250 2.0.0 <{addr}> Saved",
            }[agent]
            status = f"dsn=2.0.0, status=sent ({said})"
            self.record(t, host, addr, "sent", "2.0.0")
        conn = "conn_use=2, " if agent == "smtp" and rnd.random() < 0.2 else ""
        self.emit(
            t, host, prog,
            f"{qid}: to=<{addr}>, {orig}relay={relay}, {conn}delay={took}, "
            f"delays=0.01/0/0.1/0.2, {status}",
        )  # fmt: skip
        return t

    def record(self, t: float, host: str, addr: str, status: str, dsn: str) -> None:
        """Note a delivery line of the message being made (one ``emit`` writes)."""
        if t <= self.end:
            message, sender = self.current
            self.stats.deliveries.append(Delivery(t, host, message, sender, addr, status, dsn))

    def noise(self) -> None:
        """Rejects before a queue file, SASL failures, lines that count nothing."""
        rnd = self.rnd
        host = rnd.choice(self.s.hosts)
        t = rnd.uniform(self.start, self.end)
        pick = rnd.randrange(8)
        ip = f"203.0.113.{rnd.randrange(1, 250)}"
        if pick == 0:
            self.emit(
                t, host, "postscreen",
                f"NOQUEUE: reject: RCPT from [{ip}]:4567: 550 5.7.1 Service unavailable; client "
                f"[{ip}] blocked using zen.dnsbl.test; from=<a@b.example>, to=<u@company.test>, "
                "proto=ESMTP, helo=<x>",
            )  # fmt: skip
        elif pick == 1:
            verb = rnd.choice(("reject", "reject", "reject_warning", "hold", "discard"))
            self.emit(
                t, host, "smtpd",
                f"NOQUEUE: {verb}: RCPT from unknown[{ip}]: 450 4.1.8 <s@nowhere.example>: "
                "Sender address rejected: Domain not found; from=<s@nowhere.example> "
                "to=<u@company.test> proto=ESMTP helo=<x>",
            )  # fmt: skip
        elif pick == 2:
            self.emit(
                t, host, "smtpd",
                f"warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
            )  # fmt: skip
        elif pick == 3:
            self.emit(t, host, "smtpd", f"disconnect from unknown[{ip}] ehlo=1 quit=1 commands=2")
        elif pick == 4:
            self.emit(t, host, "anvil", f"statistics: max connection rate 3/60s for (smtp:{ip})")
        elif pick == 5:
            self.emit(
                t, host, "smtp",
                "connect to mx.yahoo.test[198.51.100.82]:25: Connection refused",
            )  # fmt: skip
        elif pick == 6:
            self.emit(t, host, "smtpd", f"lost connection after DATA from unknown[{ip}]")
        else:
            self.emit(
                t, host, "smtpd",
                f"NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service unavailable; "
                f"Client host [{ip}] blocked using bl.dnsbl.test; from=<a@b.example> "
                "to=<u@company.test> proto=ESMTP helo=<x>",
            )  # fmt: skip

    def stamp(self, t: float) -> str:
        if self.s.iso:
            utc = dt.datetime.fromtimestamp(t, dt.UTC)
            return utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"
        when = dt.datetime.fromtimestamp(t)  # (syslog writes classic stamps in local time)
        return when.strftime("%b ") + f"{when.day:2d}" + when.strftime(" %H:%M:%S")

    def lines(self) -> list[str]:
        for _ in range(self.s.messages):
            self.message()
        for _ in range(self.s.messages // 2):
            self.noise()
        self.events.sort()
        out = [f"{self.stamp(t)} {host} {text}\n" for t, _, host, text in self.events]
        self.stats.lines = len(out)
        return out


def generate(
    seed: int,
    path: Path,
    lines: int = 12_000,
    start: float | None = None,
    iso: bool | None = None,
    hosts: tuple[str, ...] | None = None,
    senders: tuple[str, ...] | None = None,
) -> Stats:
    """Write the log of ``shape_of(seed, lines)`` to ``path`` (about ``lines`` lines);
    ``start`` (a Unix time) is when it begins, by default a fixed day of this year;
    ``iso``, ``hosts`` and ``senders`` override the shape's timestamps, hosts and envelope
    senders.  ``Stats.deliveries`` records every delivery line written."""
    shape = shape_of(seed, lines)
    if iso is not None:
        shape.iso = iso
    if senders is not None:
        shape.senders = senders
    if hosts is not None:
        shape.hosts = hosts
        if len(hosts) == 1:
            shape.reuse_other = 0.0
    if start is None:
        year = dt.datetime.now(dt.UTC).year  # pflogsumm takes classic stamps as this year's
        start = dt.datetime(year, 3, 9, 17, tzinfo=dt.UTC).timestamp()
    gen = _Gen(shape, start)
    text = gen.lines()
    with path.open("w", encoding="ascii") as fh:
        fh.writelines(text)
    return gen.stats


_QID_LINE = re.compile(
    r"postfix/[\w/-]+\[\d+\]: ([0-9A-Za-z]+): (?:client=|uid=|message-id=|from=<|to=<|removed)"
)


def queue_ids(text: str) -> list[str]:
    """The queue ids of a generated log, in order of first appearance."""
    return list(dict.fromkeys(m.group(1) for m in _QID_LINE.finditer(text)))


def take_queue_ids(text: str, ids: list[str]) -> str:
    """``text`` with its queue ids replaced, in order of first appearance, by ``ids``
    (as far as there are): another host's log that uses the same queue ids."""
    mapping = dict(zip(queue_ids(text), ids, strict=False))
    return re.sub(
        r"(postfix/[\w/-]+\[\d+\]: )([0-9A-Za-z]+)(: )",
        lambda m: m.group(1) + mapping.get(m.group(2), m.group(2)) + m.group(3),
        text,
    )
