"""Generate realistic Postfix mail logs, deterministically from a seed.

The log is what a busy MX/relay writes in a day: SMTP sessions (connect, ``client=``,
``disconnect``), submissions with SASL, local ``pickup``, ``cleanup`` message-ids and
header/body actions (reject, warning, hold, discard), ``qmgr`` ``from=<...>, size=...``
lines (logged again each time a deferred message comes back to the active queue),
deliveries by ``smtp``/``local``/``lmtp`` with ``relay=``, ``delay=``, ``delays=``,
``dsn=`` and ``status=sent|deferred|bounced`` (retries, non-delivery notifications,
``forwarded as``), ``removed``, ``NOQUEUE: reject`` and ``reject_warning`` lines from
``smtpd`` and ``postscreen``, SASL authentication failures (IPv4 and IPv6, usernames that
look like addresses), warnings, and some lines from other programs.

Events are simulated on one clock and written in time order, as syslog would write them.
The same seed and options always give the same bytes.

    python bench/loggen.py --lines 1000000 --out /tmp/mail.log [--seed 1]
        [--format syslog|iso] [--start 2024-11-23T00:00:00] [--span 86400] [--host mx1]

``--out`` ending in ``.gz`` writes a gzip file.  Import :func:`generate` (an iterator of
lines with their trailing newline) or :func:`write` from tests and benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import heapq
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Destinations with their MX host and address; the first ones carry most of the mail.
DOMAINS: tuple[tuple[str, str, str], ...] = (
    ("gmail.test", "mx.gmail.test", "198.51.100.40"),
    ("outlook.test", "mx.outlook.test", "198.51.100.41"),
    ("yahoo.test", "mx.yahoo.test", "198.51.100.42"),
    ("icloud.test", "mx.icloud.test", "198.51.100.43"),
    ("gmx.test", "mx.gmx.test", "198.51.100.44"),
    ("web.test", "mx.web.test", "198.51.100.45"),
    ("orange.test", "smtp-in.orange.test", "198.51.100.46"),
    ("example.test", "mail.example.test", "198.51.100.47"),
    ("mail.example.test", "mx.mail.example.test", "198.51.100.48"),
    ("company.com", "aspmx.workspace.test", "198.51.100.49"),
)
DOMAIN_WEIGHTS = (40, 20, 12, 8, 5, 4, 3, 3, 2, 3)

DEFER_REASONS: tuple[tuple[str, str], ...] = (
    ("4.4.1", "connect to {mx}[{ip}]:25: Connection timed out"),
    ("4.7.28", "host {mx}[{ip}] said: 421-4.7.28 Unusual rate of unsolicited mail, try later"),
    (
        "4.2.0",
        "host {mx}[{ip}] said: 450 4.2.0 <{rcpt}>: Recipient address rejected: "
        "Greylisted, see http://postgrey.example.test/ (in reply to RCPT TO command)",
    ),
    ("4.4.2", "lost connection with {mx}[{ip}] while receiving the initial server greeting"),
    (
        "4.7.0",
        "host {mx}[{ip}] said: 421 4.7.0 [TSS04] Messages temporarily deferred "
        "due to unexpected volume (in reply to end of DATA command)",
    ),
)
BOUNCE_REASONS: tuple[tuple[str, str], ...] = (
    (
        "5.1.1",
        "host {mx}[{ip}] said: 550 5.1.1 <{rcpt}>: Recipient address rejected: "
        "User unknown in virtual mailbox table (in reply to RCPT TO command)",
    ),
    ("5.2.2", "host {mx}[{ip}] said: 552 5.2.2 Mailbox full (in reply to RCPT TO command)"),
    (
        "5.7.1",
        "host {mx}[{ip}] said: 550 5.7.1 Message rejected as spam (in reply to end "
        "of DATA command)",
    ),
    (
        "5.4.4",
        "Host or domain name not found. Name service error for name={dom} type=MX: Host not found",
    ),
)
RCPT_REJECTS: tuple[str, ...] = (
    "554 5.7.1 <{rcpt}>: Relay access denied",
    "450 4.1.8 <{sender}>: Sender address rejected: Domain not found",
    "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table",
    "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.dnsbl.test; "
    "https://dnsbl.test/query/ip/{ip}",
    "450 4.7.1 Client host rejected: cannot find your hostname, [{ip}]",
    "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.example.test/",
    "550 5.7.23 <{rcpt}>: Recipient address rejected: Message rejected due to: SPF fail - "
    "not authorized. Please see https://spf.test/why",
    "504 5.5.2 <{helo}>: Helo command rejected: need fully-qualified hostname",
)
HEADER_ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("reject", "header", "Subject: You have WON a prize"),
    ("warning", "header", "X-Mailer: BulkBlaster 3.1"),
    ("hold", "header", "Subject: invoice overdue, open attachment"),
    ("discard", "body", "click here to unsubscribe from nothing"),
)
USERNAMES = ("admin", "info", "test", "support@company.com", "x[203.0.113.7]", "sales", "root")
LOCAL_PARTS = ("alice", "bob", "carol", "dave", "erin", "frank", "Grace", "heidi", "ivan")


@dataclass
class Options:
    """Knobs of the mix.  Weights are relative frequencies of session kinds."""

    seed: int = 1
    lines: int = 10_000
    start: dt.datetime = field(default_factory=lambda: dt.datetime(2024, 11, 23, 0, 0, 0))
    span: float = 86400.0  # seconds the log should cover (arrival pacing)
    host: str = "mx1"
    fmt: str = "syslog"  # or "iso"
    company: str = "company.test"
    recipients: int = 200_000  # size of the recipient address pool
    long_queue_ids: bool = False
    local_time: bool = False  # stamp in local time, as syslog does (default: UTC)
    kinds: dict[str, float] = field(
        default_factory=lambda: {
            "relay": 52.0,  # app servers relaying with SASL on 587, VERP senders
            "inbound": 14.0,  # the Internet to the company domain on 25
            "pickup": 4.0,  # local cron mail, some forwarded by an alias
            "reject": 12.0,  # NOQUEUE rejects at RCPT
            "postscreen": 4.0,  # DNSBL rejects before smtpd
            "sasl": 1.0,  # password guessing, mistyped passwords, auth server faults
            "header": 3.0,  # cleanup header/body actions
            "noise": 6.0,  # warnings, anvil, other programs
        }
    )


Emit = Callable[[], list[tuple[float, Any]]]


class SaslLine(str):
    """A SASL failure line that remembers its client, whether it counts, what it hides."""

    ip: str
    counts: bool
    injected: str

    def __new__(cls, text: str, ip: str, counts: bool, injected: str) -> SaslLine:
        obj = super().__new__(cls, text)
        obj.ip, obj.counts, obj.injected = ip, counts, injected
        return obj


@dataclass
class LogStats:
    """What a generated log holds about SASL failures (for saslblock's checks).

    ``guessers`` are the clients with ``threshold`` counted failures within ``window``
    seconds (the saslblock defaults); ``failures`` and ``server_faults`` count lines per
    client; ``injected`` are addresses written only inside user names.
    """

    failures: dict[str, int] = field(default_factory=dict)
    server_faults: dict[str, int] = field(default_factory=dict)
    injected: set[str] = field(default_factory=set)
    guessers: set[str] = field(default_factory=set)
    auth_failed_lines: int = 0
    lines: int = 0
    times: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def note(self, line: SaslLine, t: float) -> None:
        self.auth_failed_lines += 1
        if line.injected:
            self.injected.add(line.injected)
        if line.counts:
            self.failures[line.ip] = self.failures.get(line.ip, 0) + 1
            self.times.setdefault(line.ip, []).append(t)
        else:
            self.server_faults[line.ip] = self.server_faults.get(line.ip, 0) + 1

    def finish(self, threshold: int = 5, window: float = 600.0) -> LogStats:
        for ip, times in self.times.items():
            times.sort()
            if any(
                int(times[i + threshold - 1]) - int(times[i]) <= window
                for i in range(len(times) - threshold + 1)
            ):
                self.guessers.add(ip)
        return self


class Generator:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.heap: list[tuple[float, int, Any]] = []
        self.seq = 0
        self.qseq = 0
        self.t0 = opts.start.timestamp() if opts.start.tzinfo else _naive_epoch(opts.start)
        lines_per_session = 7.4
        self.gap = opts.span / max(1.0, opts.lines / lines_per_session)
        kinds = list(opts.kinds.items())
        self.kind_names = [k for k, _ in kinds]
        self.kind_weights = [w for _, w in kinds]
        self.domain_pick = [d for d in DOMAINS]
        self.clients = [f"10.0.{i // 250}.{i % 250 + 2}" for i in range(40)]
        self.attackers = [f"203.0.113.{i}" for i in range(1, 150)] + [
            f"2001:db8:bad::{i:x}" for i in range(1, 24)
        ]
        # addresses that only ever appear inside user names (must never be blocked)
        self.innocent = [f"203.0.113.{i}" for i in range(200, 255)] + ["2001:db8:cafe::7"]
        self.faulty = [f"100.127.0.{i}" for i in range(1, 20)]
        self.legit = 0
        self.stats = LogStats()

    # ------------------------------------------------------------------ helpers
    def push(self, t: float, item: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, item))

    def pid(self) -> int:
        return self.rng.randrange(1000, 65000)

    def qid(self) -> str:
        """Unique queue ids: a bijection of a counter onto 10 hex digits (or long ids)."""
        self.qseq += 1
        n = (self.qseq * 0x9E3779B1 + 0x5A5A5) % (1 << 40)
        if self.o.long_queue_ids:
            alphabet = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
            s = ""
            for _ in range(9):
                n, r = divmod(n, 52)
                s += alphabet[r]
            return "4" + s + "z" + alphabet[self.qseq % 52]
        return f"{n:010X}"

    def rcpt(self) -> tuple[str, str, str, str]:
        dom, mx, ip = self.rng.choices(DOMAINS, DOMAIN_WEIGHTS)[0]
        if self.rng.random() < 0.02:  # long tail of small domains
            n = self.rng.randrange(3000)
            dom, mx, ip = f"d{n}.example.test", f"mx.d{n}.example.test", f"192.0.2.{n % 250}"
        user = f"u{self.rng.randrange(self.o.recipients)}"
        if self.rng.random() < 0.03:  # mixed case, as people type them
            dom = dom.upper() if self.rng.random() < 0.5 else dom.capitalize()
            user = user.capitalize()
        return f"{user}@{dom}", dom, mx, ip

    def delay(self, low: float, high: float) -> tuple[str, str]:
        a = self.rng.uniform(0.01, 0.4)
        b = self.rng.uniform(0.0, 0.05)
        c = self.rng.uniform(0.01, 1.0)
        d = self.rng.uniform(low, high)
        total = a + b + c + d
        return _fmt_delay(total), "/".join(_fmt_part(x) for x in (a, b, c, d))

    def stamp(self, t: float) -> str:
        when = dt.datetime.fromtimestamp(t, None if self.o.local_time else dt.UTC)
        if self.o.fmt == "iso":
            return when.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        return f"{MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S}"

    def line(self, prog: str, pid: int, text: str) -> str:
        return f"{self.o.host} {prog}[{pid}]: {text}"

    # ------------------------------------------------------------------ message flow
    def deliver(
        self,
        t: float,
        qid: str,
        sender: str,
        size: int,
        rcpts: list[tuple[str, str, str, str]],
        attempt: int = 0,
        done_cb: Callable[[float], None] | None = None,
    ) -> None:
        """qmgr activates the message; each recipient is sent, deferred or bounced."""
        rng = self.rng
        qpid = 501
        self.push(
            t,
            self.line(
                "postfix/qmgr",
                qpid,
                f"{qid}: from=<{sender}>, size={size}, nrcpt={len(rcpts)} (queue active)",
            ),
        )
        t += rng.uniform(0.05, 0.5)
        spid = self.pid()
        later: list[tuple[str, str, str, str]] = []
        bounced: list[str] = []
        for rcpt, dom, mx, ip in rcpts:
            t += rng.uniform(0.05, 1.5)
            if dom.lower() == self.o.company:
                r = rng.random()
                if r < 0.15:
                    # an alias that forwards elsewhere
                    orig = rcpt
                    fwd = self.qid()
                    d, ds = self.delay(0.0, 0.2)
                    self.push(
                        t,
                        self.line(
                            "postfix/local",
                            self.pid(),
                            f"{qid}: to=<{rcpt}>, orig_to=<{orig}>, relay=local, "
                            f"delay={d}, delays={ds}, dsn=2.0.0, "
                            f"status=sent (forwarded as {fwd})",
                        ),
                    )
                    self.new_message(
                        t + 0.01, fwd, sender, size + 400, [self.rcpt()], via="forward"
                    )
                else:
                    d, ds = self.delay(0.0, 0.3)
                    self.push(
                        t,
                        self.line(
                            "postfix/lmtp",
                            self.pid(),
                            f"{qid}: to=<{rcpt}>, relay=mail.{self.o.company}"
                            f"[private/dovecot-lmtp], delay={d}, delays={ds}, "
                            f"dsn=2.0.0, status=sent (250 2.0.0 <{rcpt}> "
                            "Saved)",
                        ),
                    )
                continue
            r = rng.random()
            bounce_now = r < 0.035 or (attempt >= 3 and r < 0.5)
            defer_now = not bounce_now and (r < 0.12 if attempt == 0 else r < 0.35)
            if bounce_now:
                dsn, why = BOUNCE_REASONS[rng.randrange(len(BOUNCE_REASONS))]
                d, ds = self.delay(0.1, 2.0 + attempt * 900)
                relay = "none" if dsn == "5.4.4" else f"{mx}[{ip}]:25"
                self.push(
                    t,
                    self.line(
                        "postfix/smtp",
                        spid,
                        f"{qid}: to=<{rcpt}>, relay={relay}, delay={d}, "
                        f"delays={ds}, dsn={dsn}, status=bounced ("
                        + why.format(mx=mx, ip=ip, rcpt=rcpt, dom=dom)
                        + ")",
                    ),
                )
                bounced.append(rcpt)
            elif defer_now:
                dsn, why = DEFER_REASONS[rng.randrange(len(DEFER_REASONS))]
                d, ds = self.delay(0.5, 30.0 + attempt * 1800)
                relay = "none" if dsn == "4.4.1" else f"{mx}[{ip}]:25"
                if dsn == "4.4.1":
                    self.push(
                        t - 0.001,
                        self.line(
                            "postfix/smtp", spid, f"connect to {mx}[{ip}]:25: Connection timed out"
                        ),
                    )
                self.push(
                    t,
                    self.line(
                        "postfix/smtp",
                        spid,
                        f"{qid}: to=<{rcpt}>, relay={relay}, delay={d}, "
                        f"delays={ds}, dsn={dsn}, status=deferred ("
                        + why.format(mx=mx, ip=ip, rcpt=rcpt, dom=dom)
                        + ")",
                    ),
                )
                later.append((rcpt, dom, mx, ip))
            else:
                d, ds = self.delay(0.05, 3.0 + attempt * 900)
                self.push(
                    t,
                    self.line(
                        "postfix/smtp",
                        spid,
                        f"{qid}: to=<{rcpt}>, relay={mx}[{ip}]:25, delay={d}, "
                        f"delays={ds}, dsn=2.0.0, status=sent (250 2.0.0 OK "
                        f"{rng.randrange(10**9)} - gsmtp)",
                    ),
                )
        if bounced and sender:
            ndr = self.qid()
            t += 0.05
            self.push(
                t,
                self.line(
                    "postfix/bounce", self.pid(), f"{qid}: sender non-delivery notification: {ndr}"
                ),
            )
            self.new_message(
                t + 0.01, ndr, "", 2500 + size // 10, [self.sender_as_rcpt(sender)], via="bounce"
            )
        if later:
            retry = t + rng.uniform(300, 1800) * (attempt + 1)

            def again(retry: float = retry) -> list[tuple[float, Any]]:
                self.deliver(retry, qid, sender, size, later, attempt + 1)
                return []

            self.push(retry, again)
        else:
            self.push(t + 0.01, self.line("postfix/qmgr", qpid, f"{qid}: removed"))

    def sender_as_rcpt(self, sender: str) -> tuple[str, str, str, str]:
        dom = sender.rsplit("@", 1)[-1]
        if dom == self.o.company or "@" not in sender:
            return sender, self.o.company, "", ""
        return sender, dom, f"mx.{dom}", "192.0.2.200"

    def new_message(
        self,
        t: float,
        qid: str,
        sender: str,
        size: int,
        rcpts: list[tuple[str, str, str, str]],
        via: str,
    ) -> None:
        """A message the system made itself (NDR, forward): cleanup, then qmgr."""
        self.push(
            t,
            self.line(
                "postfix/cleanup",
                self.pid(),
                f"{qid}: message-id=<{qid}.{via}@{self.o.host}.{self.o.company}>",
            ),
        )
        self.deliver(t + self.rng.uniform(0.01, 0.2), qid, sender, size, rcpts)

    # ------------------------------------------------------------------ sessions
    def session(self, t: float) -> None:
        kind = self.rng.choices(self.kind_names, self.kind_weights)[0]
        getattr(self, f"s_{kind}")(t)

    def smtp_in(
        self,
        t: float,
        name: str,
        ip: str,
        sender: str,
        rcpts: list[tuple[str, str, str, str]],
        prog: str = "postfix/smtpd",
        sasl: str = "",
        header: tuple[str, str, str] | None = None,
        warn_first: bool = False,
    ) -> None:
        rng = self.rng
        pid = self.pid()
        self.push(t, self.line(prog, pid, f"connect from {name}[{ip}]"))
        t += rng.uniform(0.01, 0.2)
        if rng.random() < 0.6:
            self.push(
                t,
                self.line(
                    prog,
                    pid,
                    f"Anonymous TLS connection established from "
                    f"{name}[{ip}]: TLSv1.3 with cipher "
                    "TLS_AES_256_GCM_SHA384 (256/256 bits)",
                ),
            )
        if warn_first:
            r0 = rcpts[0][0]
            self.push(
                t,
                self.line(
                    prog,
                    pid,
                    f"NOQUEUE: reject_warning: RCPT from {name}[{ip}]: 450 4.7.1 "
                    "Client host rejected: cannot find your reverse hostname, "
                    f"[{ip}]; from=<{sender}> to=<{r0}> proto=ESMTP "
                    f"helo=<{name}>",
                ),
            )
        qid = self.qid()
        t += rng.uniform(0.01, 0.3)
        extra = f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else ""
        self.push(t, self.line(prog, pid, f"{qid}: client={name}[{ip}]{extra}"))
        t += rng.uniform(0.01, 0.3)
        cpid = self.pid()
        self.push(
            t,
            self.line(
                "postfix/cleanup", cpid, f"{qid}: message-id=<{rng.randrange(16**12):012x}@{name}>"
            ),
        )
        size = int(rng.lognormvariate(8.5, 1.0)) + 300
        t += rng.uniform(0.01, 0.2)
        if rng.random() < 0.3:
            self.push(
                t,
                f"{self.o.host} opendkim[812]: {qid}: DKIM-Signature field added "
                f"(s=mail2024, d={self.o.company})",
            )
        done = "quit=1 commands=5"
        if header is not None:
            action, part, text = header
            self.push(
                t,
                self.line(
                    "postfix/cleanup",
                    cpid,
                    f"{qid}: {action}: {part} {text} from {name}[{ip}]; "
                    f"from=<{sender}> to=<{rcpts[0][0]}> proto=ESMTP "
                    f"helo=<{name}>: 5.7.1 message content rejected"
                    if action == "reject"
                    else f"{qid}: {action}: {part} {text} from {name}[{ip}]; "
                    f"from=<{sender}> to=<{rcpts[0][0]}> proto=ESMTP "
                    f"helo=<{name}>",
                ),
            )
            if action in ("reject", "discard"):
                t += 0.05
                self.push(
                    t,
                    self.line(
                        prog,
                        pid,
                        f"disconnect from {name}[{ip}] ehlo=1 "
                        "mail=1 rcpt=1 data=0/1 quit=1 commands=4/5",
                    ),
                )
                return
            if action == "hold":
                t += 0.05
                self.push(t, self.line(prog, pid, f"disconnect from {name}[{ip}] {done}"))
                if rng.random() < 0.5:  # an operator releases it later
                    when = t + rng.uniform(600, 7200)
                    self.push(
                        when,
                        self.line("postfix/postsuper", self.pid(), f"{qid}: released from hold"),
                    )
                    self.deliver(when + 0.5, qid, sender, size, rcpts)
                return
        self.deliver(t + rng.uniform(0.01, 0.2), qid, sender, size, rcpts)
        t += rng.uniform(0.01, 0.2)
        self.push(
            t,
            self.line(
                prog,
                pid,
                f"disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt={len(rcpts)} data=1 {done}",
            ),
        )

    def s_relay(self, t: float) -> None:
        rng = self.rng
        i = rng.randrange(len(self.clients))
        name = f"app{i % 7 + 1}.{self.o.company}"
        sender = rng.choice(("news", "noreply", "billing", "alerts"))
        if rng.random() < 0.3:  # VERP: a distinct sender per message
            sender = f"bounce+{rng.randrange(10**8)}-{rng.randrange(10**5)}"
        sender = f"{sender}@{self.o.company}"
        n = 1 if rng.random() < 0.8 else rng.randrange(2, 6)
        self.smtp_in(
            t,
            name,
            self.clients[i],
            sender,
            [self.rcpt() for _ in range(n)],
            prog="postfix/submission/smtpd",
            sasl=f"app{i % 7 + 1}",
        )

    def s_inbound(self, t: float) -> None:
        rng = self.rng
        dom = rng.choices(DOMAINS, DOMAIN_WEIGHTS)[0][0]
        name = f"mail-{rng.randrange(999)}.{dom}"
        if rng.random() < 0.15:
            name = "unknown"
        sender = f"{rng.choice(LOCAL_PARTS)}{rng.randrange(500)}@{dom}"
        if rng.random() < 0.05:
            sender = ""
        user = rng.choice(LOCAL_PARTS).lower()
        rcpts = [(f"{user}@{self.o.company}", self.o.company, "", "")]
        peer = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        self.smtp_in(t, name, peer, sender, rcpts, warn_first=rng.random() < 0.1)

    def s_pickup(self, t: float) -> None:
        rng = self.rng
        qid = self.qid()
        who = rng.choice(("root", "www-data", "backup"))
        uid = {"root": 0, "www-data": 33, "backup": 34}[who]
        self.push(t, self.line("postfix/pickup", self.pid(), f"{qid}: uid={uid} from=<{who}>"))
        t += rng.uniform(0.01, 0.1)
        self.push(
            t,
            self.line(
                "postfix/cleanup",
                self.pid(),
                f"{qid}: message-id=<{qid}@{self.o.host}.{self.o.company}>",
            ),
        )
        sender = f"{who}@{self.o.host}.{self.o.company}" if rng.random() < 0.8 else who
        rcpts = [(f"admin@{self.o.company}", self.o.company, "", "")]
        if rng.random() < 0.4:
            rcpts.append(self.rcpt())
        self.deliver(t + rng.uniform(0.01, 0.2), qid, sender, rng.randrange(600, 9000), rcpts)

    def s_reject(self, t: float) -> None:
        rng = self.rng
        pid = self.pid()
        ip = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        name = "unknown" if rng.random() < 0.5 else f"host-{ip.replace('.', '-')}.isp.test"
        helo = rng.choice(("localhost", name, "[" + ip + "]", "mail"))
        self.push(t, self.line("postfix/smtpd", pid, f"connect from {name}[{ip}]"))
        for _ in range(1 if rng.random() < 0.8 else rng.randrange(2, 5)):
            t += rng.uniform(0.05, 0.5)
            sender = f"{rng.choice(LOCAL_PARTS)}@{rng.choice(('spam.test', 'nx.invalid'))}"
            rcpt = (
                f"{rng.choice(LOCAL_PARTS)}@{self.o.company}"
                if rng.random() < 0.6
                else self.rcpt()[0]
            )
            why = rng.choice(RCPT_REJECTS).format(rcpt=rcpt, sender=sender, ip=ip, helo=helo)
            self.push(
                t,
                self.line(
                    "postfix/smtpd",
                    pid,
                    f"NOQUEUE: reject: RCPT from {name}[{ip}]: {why}; "
                    f"from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{helo}>",
                ),
            )
        t += rng.uniform(0.05, 0.5)
        self.push(
            t,
            self.line(
                "postfix/smtpd",
                pid,
                f"disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
            ),
        )

    def s_postscreen(self, t: float) -> None:
        rng = self.rng
        pid = 600
        ip = f"192.0.2.{rng.randrange(1, 255)}"
        port = rng.randrange(1024, 65535)
        self.push(
            t,
            self.line(
                "postfix/postscreen", pid, f"CONNECT from [{ip}]:{port} to [198.51.100.10]:25"
            ),
        )
        t += 0.01
        self.push(
            t,
            self.line(
                "postfix/dnsblog",
                self.pid(),
                f"addr {ip} listed by domain zen.dnsbl.test as 127.0.0.2",
            ),
        )
        t += rng.uniform(0.5, 6.0)
        self.push(t, self.line("postfix/postscreen", pid, f"DNSBL rank 3 for [{ip}]:{port}"))
        rcpt = f"{rng.choice(LOCAL_PARTS).lower()}@{self.o.company}"
        self.push(
            t + 0.2,
            self.line(
                "postfix/postscreen",
                pid,
                f"NOQUEUE: reject: RCPT from [{ip}]:{port}: 550 5.7.1 "
                f"Service unavailable; client [{ip}] blocked using "
                f"zen.dnsbl.test; from=<x@spam.test>, to=<{rcpt}>, "
                "proto=ESMTP, helo=<spam.test>",
            ),
        )
        self.push(t + 0.3, self.line("postfix/postscreen", pid, f"DISCONNECT [{ip}]:{port}"))

    def s_sasl(self, t: float) -> None:
        """Password guessing bursts, people who mistype, and server-side AUTH faults."""
        rng = self.rng
        pid = self.pid()
        r = rng.random()
        prog = rng.choice(("postfix/submission/smtpd", "postfix/smtps/smtpd", "postfix/smtpd"))
        if r < 0.3:  # a guesser: many tries within a minute
            ip = rng.choice(self.attackers)
            tries = rng.randrange(6, 20)
            gap = (0.2, 3.0)
            server_fault = False
        elif r < 0.85:  # a person who mistypes once or twice, from an address of their own
            self.legit += 1
            ip = f"100.{64 + (self.legit >> 16) % 64}.{(self.legit >> 8) & 255}.{self.legit & 255}"
            tries = rng.randrange(1, 3)
            gap = (5.0, 40.0)
            server_fault = False
        else:  # the auth server is away: not the client's fault, however many lines
            ip = rng.choice(self.faulty)
            tries = rng.randrange(1, 9)
            gap = (0.5, 2.0)
            server_fault = True
        self.push(t, self.line(prog, pid, f"connect from unknown[{ip}]"))
        for _ in range(tries):
            t += rng.uniform(*gap)
            why = (
                "Connection lost to authentication server"
                if server_fault
                else rng.choice(("UGFzc3dvcmQ6", "authentication failure"))
            )
            user = rng.choice(USERNAMES)
            injected = ""
            if not server_fault and rng.random() < 0.2:
                injected = rng.choice(self.innocent)
                user = rng.choice(("x[{a}]", "unknown[{a}]:", "{a}", "admin@[{a}]")).format(
                    a=injected
                )
            mech = rng.choice(("LOGIN", "PLAIN"))
            text = self.line(
                prog,
                pid,
                f"warning: unknown[{ip}]: SASL {mech} authentication failed: "
                f"{why}, sasl_username={user}",
            )
            self.push(t, SaslLine(text, ip, not server_fault, injected))
        t += rng.uniform(0.1, 1.0)
        self.push(t, self.line(prog, pid, f"lost connection after AUTH from unknown[{ip}]"))
        self.push(
            t + 0.01,
            self.line(
                prog,
                pid,
                f"disconnect from unknown[{ip}] ehlo=1 auth=0/{tries} commands=1/{tries + 1}",
            ),
        )

    def s_header(self, t: float) -> None:
        rng = self.rng
        dom, _, _ = rng.choices(DOMAINS, DOMAIN_WEIGHTS)[0]
        peer = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        sender = f"{rng.choice(LOCAL_PARTS)}@{dom}"
        rcpts = [(f"{rng.choice(LOCAL_PARTS).lower()}@{self.o.company}", self.o.company, "", "")]
        header = HEADER_ACTIONS[rng.randrange(len(HEADER_ACTIONS))]
        self.smtp_in(t, f"mail.{dom}", peer, sender, rcpts, header=header)

    def s_noise(self, t: float) -> None:
        rng = self.rng
        r = rng.randrange(8)
        ip = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if r == 0:
            text = self.line(
                "postfix/smtpd",
                self.pid(),
                f"warning: hostname host-{ip.replace('.', '-')}.isp.test does not "
                f"resolve to address {ip}: Name or service not known",
            )
        elif r == 1:
            text = self.line(
                "postfix/anvil",
                777,
                f"statistics: max connection rate 3/60s for (smtp:{ip}) at {self.stamp(t)}",
            )
        elif r == 2:
            text = f"{self.o.host} dovecot: imap-login: Login: user=<alice@{self.o.company}>"
        elif r == 3:
            text = f"{self.o.host} CRON[{self.pid()}]: (root) CMD (mailops saslblock)"
        elif r == 4:
            text = self.line(
                "postfix/smtpd", self.pid(), f"lost connection after CONNECT from unknown[{ip}]"
            )
        elif r == 5:
            text = self.line(
                "postfix/smtp",
                self.pid(),
                "warning: TLS library problem: error:0A000126:SSL routines::"
                "unexpected eof while reading",
            )
        elif r == 6:
            text = self.line(
                "postfix/smtpd",
                self.pid(),
                f"improper command pipelining after EHLO from unknown[{ip}]: QUIT",
            )
        else:
            text = self.line("postfix/scache", 900, "statistics: start interval Nov 23 10:00:01")
        self.push(t, text)

    # ------------------------------------------------------------------ main loop
    def lines(self) -> Iterator[str]:
        o = self.o
        out = 0
        # the log starts with a restart, as after a package upgrade
        self.push(self.t0, f"{o.host} postfix/postfix-script[90]: starting the Postfix mail system")
        self.push(
            self.t0 + 0.01,
            self.line(
                "postfix/master", 91, "daemon started -- version 3.7.11, configuration /etc/postfix"
            ),
        )
        next_arrival = self.t0 + self.rng.expovariate(1.0 / self.gap)
        while out < o.lines:
            while not self.heap or next_arrival <= self.heap[0][0]:
                self.session(next_arrival)
                next_arrival += self.rng.expovariate(1.0 / self.gap)
            t, _, item = heapq.heappop(self.heap)
            if callable(item):
                item()
                continue
            if type(item) is SaslLine:
                self.stats.note(item, t)
            yield f"{self.stamp(t)} {item}\n"
            out += 1
        self.stats.lines = out


def _naive_epoch(when: dt.datetime) -> float:
    """A naive start time is taken as UTC, so the output does not depend on TZ."""
    return when.replace(tzinfo=dt.UTC).timestamp()


def _fmt_delay(x: float) -> str:
    if x < 10:
        return f"{x:.2g}" if x >= 1 else f"{x:.2f}".rstrip("0").rstrip(".") or "0"
    return f"{x:.0f}"


def _fmt_part(x: float) -> str:
    if x < 0.005:
        return "0"
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def write_log(
    path: Path,
    lines: int,
    start: float,
    end: float,
    seed: int = 1,
    append: bool = False,
    **kwargs: Any,
) -> LogStats:
    """Write (or append) ``lines`` lines stamped in local time from ``start`` towards
    ``end`` (epoch seconds), as syslog would; return what the log holds about SASL."""
    opts = Options(
        seed=seed,
        lines=lines,
        start=dt.datetime.fromtimestamp(start, dt.UTC),
        span=max(1.0, end - start),
        local_time=True,
        **kwargs,
    )
    gen = Generator(opts)
    with open(path, "a" if append else "w", encoding="utf-8") as fh:
        _write_lines(fh, gen.lines())
    return gen.stats.finish()


def _write_lines(fh: IO[str], lines: Iterator[str]) -> None:
    buf: list[str] = []
    for ln in lines:
        buf.append(ln)
        if len(buf) >= 4096:
            fh.write("".join(buf))
            buf.clear()
    fh.write("".join(buf))


def generate(lines: int, seed: int = 1, **kwargs: Any) -> Iterator[str]:
    """``lines`` log lines (each ending in a newline) for ``seed`` and Options fields."""
    return Generator(Options(seed=seed, lines=lines, **kwargs)).lines()


def write(path: Path, lines: int, seed: int = 1, **kwargs: Any) -> Path:
    """Write a generated log to ``path`` (gzip when it ends in .gz); return the path."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        _write_lines(fh, generate(lines, seed, **kwargs))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate a realistic Postfix mail log.")
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--out", default="-", help="file to write (.gz = gzip), - for stdout")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=["syslog", "iso"], default="syslog")
    ap.add_argument("--start", default="2024-11-23T00:00:00", help="UTC start time")
    ap.add_argument("--span", type=float, default=86400.0, help="seconds the log covers")
    ap.add_argument("--host", default="mx1")
    ap.add_argument("--long-queue-ids", action="store_true")
    args = ap.parse_args(argv)
    try:
        start = dt.datetime.fromisoformat(args.start)
    except ValueError:
        ap.error(f"--start: not an ISO date/time: {args.start!r}")
    kwargs: dict[str, Any] = {
        "fmt": args.format,
        "start": start,
        "span": args.span,
        "host": args.host,
        "long_queue_ids": args.long_queue_ids,
    }
    if args.out == "-":
        for ln in generate(args.lines, args.seed, **kwargs):
            sys.stdout.write(ln)
        return 0
    write(Path(args.out), args.lines, args.seed, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
