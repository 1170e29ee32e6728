"""``mailops tenants status``: each tenant's figures of one day, from the logs and the store.

Usage::

    mailops tenants status [--json | --format text|json|prometheus] [--day DAY]
                           [--log FILE ... [--rotated]] [--logs-from DIR|CMD]
                           [--store URL] [--output FILE] [--syslog-name NAME]

``DAY`` is ``today`` (the default), ``yesterday``, ``YYYY-MM-DD``, a log's own ``Dec 07``
(or ``Dec  7``; this year, or last year for a day still to come) or ``all``.

Where the lines come from: ``--log FILE`` (repeat; with ``--rotated`` also its rotated
files) is one host's log; ``--logs-from DIR`` takes every file in DIR as another host's
log, as ``mailops report --logs-from`` does; ``--logs-from CMD`` (an executable file, with
arguments if quoted) is run as ``CMD DAY TMPDIR`` and must write one file of that day's
lines per node into TMPDIR: on the monitor the queue_monitor role installs
``/usr/local/sbin/mailops-node-logs``, which fetches every node's lines of the day over
SSH (the cluster report's mechanism), and that command is the default when it exists
and no ``--log``/``--logs-from`` is given.  Otherwise the ``[report] logs`` are read.

The figures
-----------

A message belongs to a tenant by its envelope sender: the ``from=<...>`` of qmgr's
``from=<...>, size=N`` line of that queue id on the same host (``Tenants.for_address``:
the tenant owning the sender's domain or a parent of it).  A queue id is the same
message from its ``client=`` (or pickup) line to its ``removed`` line, and only on the
host that logged it: a queue id seen on two hosts is two messages.  The log lines are
read with the report's own grammar (``mailops.report.tally.line_pattern``).

Every figure is counted per recipient (a recipient: one address of one message), per
tenant, and per receiving provider: the provider class of the recipient's domain in
``[transport_classes]`` (the same table the bulk nodes' transports are chosen by), or
the recipient domain itself when no class lists it.

sent
    recipients with at least one delivery attempt logged on the day (``status=sent``,
    ``deferred`` or ``bounced``), each counted once however often it was tried.
delivered
    ``status=sent`` lines of the day (a receiving server took the message; a local
    ``forwarded as`` counts too).
deferred
    recipients with at least one ``status=deferred`` line on the day, each once.
bounced_hard, bounced_soft
    from the log: ``status=bounced`` lines of the day, hard when the DSN code is 5.x.x,
    soft otherwise (4.x.x: the queue lifetime ran out); plus, from the store, the rows of
    ``bounces`` with that tenant received on the day (the asynchronous bounces: a DSN
    that came back for mail the log says was sent), hard or soft by their ``hard``
    column.  A store row does not count when the log already counted a bounce of that
    tenant to the same address that day: for each (tenant, address) only the store rows
    beyond the log's bounces count, so a DSN of our own Postfix's bounce that reaches
    the store is not counted twice.  ``bounced`` = hard + soft.
complained
    rows of ``complaints`` with that tenant received on the day whose feedback type says
    the recipient did not want the mail (abuse, fraud, virus, other or none: not
    ``not-spam`` or ``auth-failure``).
unsubscribed
    rows of ``unsubscribes`` with that tenant received on the day.
bounce_rate
    bounced / sent (0 when nothing was sent).
complaint_rate
    complained / delivered (0 when nothing was delivered).
state
    ``paused`` or ``active``, from the store's ``tenant_state``.
ses (delivered, bounced, complained)
    rows of ``ses_events`` with that tenant received on the day, by type (Delivery,
    Bounce, Complaint): what Amazon SES reported about the tenant's mail relayed through
    it (docs/ses.md).  The log counts that mail as delivered when SES took it; SES's
    bounces and complaints are also rows of ``bounces`` and ``complaints``, so they are
    in bounced and complained already.  These say how much of each came from SES.

"On the day" is the date written in the log line (the hosts' local time) and, for the
store, local midnight to midnight of the host running the command.  A store row's
provider is its address's.  Lines of other days are still read for the sender of a
queue id (a delivery just after midnight of a message whose qmgr line came just before).

Exit codes: 0 done; 1 some node's lines could not be fetched (the figures of the others
are printed); 2 bad arguments; 66 a log cannot be read; 75 the store cannot be read;
78 bad settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops import config, exitcodes
from mailops.config import ConfigError
from mailops.maillog.files import blocks
from mailops.maillog.lines import LineBuffer
from mailops.maillog.stamps import MONTH_NAMES, STAMP_RE, stamp_time
from mailops.tenants.model import Tenants, load_tenants

DEFAULT_FETCH = "/usr/local/sbin/mailops-node-logs"
COUNTS = (
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "unsubscribed",
)
RATES = ("bounce_rate", "complaint_rate")
# SES's event types the figures count (ses_events.event_type -> the figure's name)
SES_TYPES = {"Delivery": "delivered", "Bounce": "bounced", "Complaint": "complained"}
# feedback types that are complaints (mailops.store.db.COMPLAINT_TYPES)
_COMPLAINT_TYPES = ("", "abuse", "fraud", "virus", "other")
_MONTH_DAY = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2})\Z")
_DSN = re.compile(rb", dsn=(\d)\.")
# the syslog name of a pool transport's delivery agent: pool_<pool>_<n>[_<class>]/smtp
_POOL_TRANSPORT = re.compile(rb"(pool_[a-z][a-z0-9]{0,20}_\d+)(?:_[0-9a-z]+)?/")


def sending_address(buf: bytes, m: re.Match[bytes]) -> bytes | None:
    """``node/pool_transport`` of a delivery line matched by the figures' line pattern
    (the node that logged it and its pool transport's syslog name); None when the line
    is not a pool transport's (no tenant sending address to judge)."""
    p = _POOL_TRANSPORT.match(m.group("cmd") or b"")
    if p is None:
        return None
    rest = m.start("rest")
    host = buf[buf.rfind(b" ", m.start(), rest - 1) + 1 : rest - 1]
    return host + b"/" + p.group(1)


def _log_time(stamp: bytes, end: float) -> float:
    """A log line's time as Unix time (maillog's reading and year rule); NaN when it
    cannot be read (the line is then outside every window)."""
    when = stamp_time(stamp, end)
    return float("nan") if when is None else when


# ---------------------------------------------------------------------- the figures


@dataclass
class Counts:
    sent: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    complained: int = 0
    unsubscribed: int = 0

    @property
    def bounced(self) -> int:
        return self.bounced_hard + self.bounced_soft

    def add(self, other: Counts) -> None:
        for name in ("sent", "delivered", "deferred", "bounced_hard", "bounced_soft"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.complained += other.complained
        self.unsubscribed += other.unsubscribed

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTS}
        out["bounce_rate"] = rate(self.bounced, self.sent)
        out["complaint_rate"] = rate(self.complained, self.delivered)
        return out


def rate(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


@dataclass
class Figures:
    """One tenant's figures of a day: per provider, and their sums."""

    tenant: str
    day: str
    state: str = "active"
    providers: dict[str, Counts] = field(default_factory=dict)
    ses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SES_TYPES.values(), 0))

    def provider(self, name: str) -> Counts:
        c = self.providers.get(name)
        if c is None:
            c = self.providers[name] = Counts()
        return c

    def total(self) -> Counts:
        t = Counts()
        for c in self.providers.values():
            t.add(c)
        return t

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tenant": self.tenant, "state": self.state, "day": self.day}
        out.update(self.total().as_dict())
        out["providers"] = {p: self.providers[p].as_dict() for p in sorted(self.providers)}
        out["ses"] = dict(self.ses)
        return out


def provider_of(domain: str, classes: Mapping[str, str]) -> str:
    """The provider class of a recipient domain (``[transport_classes]``, a parent domain
    listed counts too), else the domain itself."""
    d = domain.lower().rstrip(".")
    while True:
        c = classes.get(d)
        if c is not None:
            return c
        if "." not in d:
            return domain.lower().rstrip(".")
        d = d.split(".", 1)[1]


def class_map(data: Mapping[str, Any]) -> dict[str, str]:
    """``[transport_classes]`` (class -> domains) as domain -> class."""
    raw = data.get("transport_classes", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[transport_classes]: expected a table, got {raw!r}")
    out: dict[str, str] = {}
    for name, domains in raw.items():
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ConfigError(f"[transport_classes] {name}: expected a list of domains")
        for d in domains:
            out.setdefault(d.lower().rstrip("."), str(name))
    return out


# ---------------------------------------------------------------------- the log


class LogFigures(LineBuffer):
    """The log's part of every tenant's figures: feed it one host's log, or a file with
    several hosts' lines (a queue id is qualified by the host of its line).

    Memory: one entry per message in flight (dropped at ``removed``, the oldest tenth
    forgotten past ``state_cap``) and 8 to 16 bytes per distinct recipient counted
    (``tally.Distinct``)."""

    def __init__(
        self,
        tenants: Tenants,
        classes: Mapping[str, str],
        day: dt.date | None,
        syslog_name: str = "postfix",
        state_cap: int = 200_000,
        *,
        window: tuple[float, float] | None = None,
        per_address: bool = False,
    ) -> None:
        """``window`` (Unix times, start included, end not; with ``day`` None) counts
        only the outcome lines logged in it, for the guard's rolling window: a classic
        syslog time (no year) is taken in this host's local time, in the year that puts
        it at or before the window's end.  ``per_address`` also counts per sending
        address (``address_figures``)."""
        from mailops.report.tally import DaySpec, line_pattern

        self.tenants = tenants
        self.classes = classes
        # every day's lines: a sender line of the day before still names the tenant
        self.pattern = line_pattern(syslog_name, None)
        if day is None:
            self.days: frozenset[bytes] | None = None
        else:
            spec = DaySpec(day.year, day.month, day.day)
            self.days = frozenset((*spec.classic, spec.iso))
        self.state_cap = state_cap
        self.pending = b""
        # b"host qid" -> [tenant name or "", message serial]
        self.messages: dict[bytes, list[Any]] = {}
        self.serial = 0
        self.of_sender: dict[bytes, str] = {}  # sender address -> tenant ("" none)
        self.of_domain: dict[bytes, str] = {}  # recipient domain -> provider
        # (tenant, provider) -> [delivered, bounced hard, bounced soft]
        self.lines: dict[tuple[str, str], list[int]] = {}
        self.sent: dict[tuple[str, str], Any] = {}  # -> Distinct of recipients
        self.deferred: dict[tuple[str, str], Any] = {}
        # tenant -> Counter of recipient addresses bounced (for the store's rows)
        self.bounced_to: dict[str, Counter[str]] = {}
        self.window = window
        self._ts_cache: tuple[bytes, float] = (b"", 0.0)
        # per sending address ("HOST/pool_<pool>_<n>": the node and the pool transport
        # of the delivery line), when per_address: (tenant, address) -> Counts, the
        # recipients counted as sent and deferred, and for each tenant the address each
        # recipient was last delivered or bounced from (to place the store's complaints
        # and bounces)
        self.per_address = per_address
        self.address_figures: dict[tuple[str, str], Counts] = {}
        self._addr_sent: dict[tuple[str, str], Any] = {}
        self._addr_deferred: dict[tuple[str, str], Any] = {}
        self.recipient_address: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------ input
    def feed_paths(self, paths: Iterable[Path]) -> None:
        for path in paths:
            for block in blocks(path):
                self.feed_bytes(block)
            self.flush()

    # ------------------------------------------------------------------ the loop
    def _lines_of(self, buf: bytes, end: int) -> None:
        gi = self.pattern.groupindex
        i_sized, i_sent, i_more, i_fwd = gi["sized"], gi["sent"], gi["more"], gi["forwarded"]
        i_received, i_picked, i_removed = gi["received"], gi["picked"], gi["removed"]
        general = (gi["gen"], gi["qidp"], gi["qid"], gi["qid3"])
        g_fq, g_from, g_to, g_status = gi["fq"], gi["from"], gi["to"], gi["status"]
        g_rest, g_cmd = gi["rest"], gi["cmd"]
        messages = self.messages
        for m in self.pattern.finditer(buf, 0, end):
            li = m.lastindex
            if li == i_sized:
                self._sender(self._key(buf, m, m.group(g_fq)), m.group(g_from))
            elif li in (i_sent, i_fwd):
                self._outcome(buf, m, m.group(g_fq), m.group(g_to), b"sent", b"")
            elif li == i_more:
                status = m.group(g_status)
                if m.group(li) or status == b"sent":
                    self._general(buf, m, m.group(g_cmd), m.group(g_fq))
                elif status == b"deferred" or status == b"bounced":
                    line = buf[m.start(g_rest) : m.end()]
                    self._outcome(buf, m, m.group(g_fq), m.group(g_to), status, line)
            elif li in (i_received, i_picked):
                self._new(self._key(buf, m, m.group(g_fq)))
            elif li == i_removed:
                messages.pop(self._key(buf, m, m.group(g_fq)), None)
            elif li in general:
                qid = m.group(g_fq) if li == general[0] else m.group(li)
                self._general(buf, m, m.group(g_cmd), qid)

    @staticmethod
    def _key(buf: bytes, m: re.Match[bytes], qid: bytes) -> bytes:
        """``b"host qid"``: the host is the word before the program (group ``rest``)."""
        rest = m.start("rest")
        sp = buf.rfind(b" ", m.start(), rest - 1)
        return buf[sp + 1 : rest] + qid

    def _new(self, key: bytes) -> None:
        """A message arrives (client= or pickup): any earlier one of this queue id is gone."""
        self.serial += 1
        messages = self.messages
        if key not in messages and len(messages) >= self.state_cap:
            for old in list(messages)[: max(1, len(messages) // 10)]:
                del messages[old]
        messages[key] = ["", self.serial]

    def _sender(self, key: bytes, addr: bytes) -> None:
        tenant = self.of_sender.get(addr)
        if tenant is None:
            t = self.tenants.for_address(addr.decode("utf-8", "replace"))
            tenant = t.name if t is not None else ""
            if len(self.of_sender) >= 4096:
                self.of_sender.clear()
            self.of_sender[addr] = tenant
        msg = self.messages.get(key)
        if msg is None:
            self._new(key)
            msg = self.messages[key]
        msg[0] = tenant

    def _general(self, buf: bytes, m: re.Match[bytes], cmd: bytes | None, qid: bytes) -> None:
        """A line the fast shapes left to pflogsumm's chain of tests (tally._line)."""
        from mailops.report.tally import _CLIENT, _DELIVERY, _FROM_SIZE

        line = buf[m.start("rest") : m.end()]
        if cmd in (b"smtpd", b"postscreen"):
            if b"client=" in line and _CLIENT.search(line):
                self._new(self._key(buf, m, qid))
            return
        if b", size=" in line:
            f = _FROM_SIZE.search(line)
            if f is not None:
                self._sender(self._key(buf, m, qid), f.group(1))
                return
        if b"status=" in line:
            d = _DELIVERY.search(line)
            if d is not None:
                status = d.group(4)
                if status in (b"sent", b"deferred", b"bounced"):
                    self._outcome(buf, m, qid, d.group(1), status, line)
                return
        if cmd == b"pickup" and (b": sender=" in line or b": uid=" in line):
            self._new(self._key(buf, m, qid))
        elif line.endswith(b": removed"):
            self.messages.pop(self._key(buf, m, qid), None)

    def _outcome(
        self, buf: bytes, m: re.Match[bytes], qid: bytes, addr: bytes, status: bytes, line: bytes
    ) -> None:
        if self.days is not None:
            ts = m.group("ts")
            if ts[:-3] not in self.days and ts[:10] not in self.days:
                return
        if self.window is not None and not self._in_window(buf, m):
            return
        msg = self.messages.get(self._key(buf, m, qid))
        if msg is None or not msg[0]:
            return
        from mailops.report.tally import Distinct

        tenant, serial = msg
        at = addr.rfind(b"@")
        if at >= 0:
            addr = addr[:at] + addr[at:].lower()
        dom = addr[at + 1 :]
        provider = self.of_domain.get(dom)
        if provider is None:
            provider = provider_of(dom.decode("utf-8", "replace"), self.classes)
            if len(self.of_domain) >= 4096:
                self.of_domain.clear()
            self.of_domain[dom] = provider
        k = (tenant, provider)
        row = self.lines.get(k)
        if row is None:
            row = self.lines[k] = [0, 0, 0]
            self.sent[k] = Distinct()
            self.deferred[k] = Distinct()
        recipient = b"%d %s" % (serial, addr)
        self.sent[k].add(recipient)
        if status == b"sent":
            row[0] += 1
        elif status == b"deferred":
            self.deferred[k].add(recipient)
        else:
            d = _DSN.search(line)
            row[1 if d is not None and d.group(1) == b"5" else 2] += 1
            self.bounced_to.setdefault(tenant, Counter())[addr.decode("utf-8", "replace")] += 1
        if self.per_address:
            self._address(buf, m, tenant, recipient, addr, status, line)

    def _address(
        self,
        buf: bytes,
        m: re.Match[bytes],
        tenant: str,
        recipient: bytes,
        addr: bytes,
        status: bytes,
        line: bytes,
    ) -> None:
        """Count one outcome for the sending address (node and pool transport)."""
        from mailops.report.tally import Distinct

        node_pool = sending_address(buf, m)
        if node_pool is None:
            return  # not a pool transport: no tenant address to judge
        address = node_pool.decode("utf-8", "replace")
        k = (tenant, address)
        c = self.address_figures.get(k)
        if c is None:
            c = self.address_figures[k] = Counts()
            self._addr_sent[k] = Distinct()
            self._addr_deferred[k] = Distinct()
        self._addr_sent[k].add(recipient)
        if status == b"sent":
            c.delivered += 1
        elif status == b"deferred":
            self._addr_deferred[k].add(recipient)
            return
        else:
            d = _DSN.search(line)
            if d is not None and d.group(1) == b"5":
                c.bounced_hard += 1
            else:
                c.bounced_soft += 1
        self.recipient_address.setdefault(tenant, {})[addr.decode("utf-8", "replace").lower()] = (
            address
        )

    def address_counts(self) -> dict[tuple[str, str], Counts]:
        """(tenant, sending address) -> its figures from the log (``per_address``)."""
        for k, c in self.address_figures.items():
            c.sent = len(self._addr_sent[k])
            c.deferred = len(self._addr_deferred[k])
        return self.address_figures

    def _in_window(self, buf: bytes, m: re.Match[bytes]) -> bool:
        assert self.window is not None
        t = STAMP_RE.match(buf, m.start("ts"))
        key = t.group(0) if t is not None else b""
        cached = self._ts_cache
        if cached[0] == key:
            when = cached[1]
        else:
            when = _log_time(key, self.window[1])
            self._ts_cache = (key, when)
        return self.window[0] <= when < self.window[1]

    # ------------------------------------------------------------------ output
    def add_to(self, figures: Mapping[str, Figures]) -> None:
        """Add these figures to ``figures`` (tenant -> Figures); tenants not in it are
        left out."""
        for (tenant, provider), row in self.lines.items():
            f = figures.get(tenant)
            if f is None:
                continue
            c = f.provider(provider)
            c.sent += len(self.sent[tenant, provider])
            c.deferred += len(self.deferred[tenant, provider])
            c.delivered += row[0]
            c.bounced_hard += row[1]
            c.bounced_soft += row[2]


# ---------------------------------------------------------------------- the store


def day_window(day: dt.date | None) -> tuple[int, int]:
    """Unix times from local midnight of ``day`` to the next (None: all time)."""
    if day is None:
        return 0, 2**62
    start = dt.datetime.combine(day, dt.time())
    return int(start.timestamp()), int((start + dt.timedelta(days=1)).timestamp())


def _rows(store: Any, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    # a read-only query of our own, through the store's error handling and placeholders
    yield from store._stream(sql, params)


def add_store(
    store: Any,
    figures: Mapping[str, Figures],
    day: dt.date | None,
    classes: Mapping[str, str],
    log_bounces: Iterable[LogFigures] = (),
    *,
    window: tuple[int, int] | None = None,
) -> None:
    """Add the store's complaints, unsubscribes and bounces of the day (the bounces the
    logs did not already count: see the module's docstring) and each tenant's state.
    ``window`` (Unix times, start included, end not) replaces the day's."""
    start, end = window if window is not None else day_window(day)
    names = sorted(figures)
    if not names:
        return
    marks = ", ".join("?" for _ in names)
    between = "received_at >= ? AND received_at < ?"

    def where(extra: str = "") -> str:
        return f"tenant IN ({marks}) AND {between}{extra}"

    params = (*names, start, end)
    for tenant, address in _rows(
        store,
        f"SELECT tenant, address FROM complaints WHERE {where()}"  # noqa: S608 - placeholders
        f" AND feedback_type IN ({', '.join('?' for _ in _COMPLAINT_TYPES)})",
        (*params, *_COMPLAINT_TYPES),
    ):
        figures[tenant].provider(_provider_of_address(address, classes)).complained += 1
    for tenant, address in _rows(
        store,
        f"SELECT tenant, address FROM unsubscribes WHERE {where()}",  # noqa: S608
        params,
    ):
        figures[tenant].provider(_provider_of_address(address, classes)).unsubscribed += 1
    seen: dict[str, Counter[str]] = {}
    for log in log_bounces:
        for tenant, counter in log.bounced_to.items():
            seen.setdefault(tenant, Counter()).update(counter)
    for tenant, address, hard in _rows(
        store,
        f"SELECT tenant, address, hard FROM bounces WHERE {where()}"  # noqa: S608
        " ORDER BY received_at, id",
        params,
    ):
        already = seen.get(tenant)
        addr = str(address)
        if already is not None and already[addr] > 0:
            already[addr] -= 1  # that bounce is the log's, counted already
            continue
        c = figures[tenant].provider(_provider_of_address(addr, classes))
        if hard:
            c.bounced_hard += 1
        else:
            c.bounced_soft += 1
    for tenant, event_type, count in _rows(
        store,
        f"SELECT tenant, event_type, COUNT(*) FROM ses_events WHERE {where()}"  # noqa: S608
        f" AND event_type IN ({', '.join('?' for _ in SES_TYPES)}) GROUP BY tenant, event_type",
        (*params, *SES_TYPES),
    ):
        figures[tenant].ses[SES_TYPES[str(event_type)]] += int(count)
    for name, st in store.tenant_states().items():
        if name in figures:
            figures[name].state = "paused" if st.paused else "active"


def _provider_of_address(address: str, classes: Mapping[str, str]) -> str:
    _, _, domain = str(address).rpartition("@")
    return provider_of(domain, classes)


# ---------------------------------------------------------------------- one call


def compute(
    tenants: Tenants,
    classes: Mapping[str, str],
    groups: Sequence[Sequence[Path]],
    day: dt.date | None,
    store: Any | None,
    syslog_name: str = "postfix",
) -> list[Figures]:
    """Every tenant's figures: each group of paths is one host's log (its own queue ids);
    ``store`` None leaves out what only the store knows (and the state stays "active")."""
    label = day.isoformat() if day is not None else "all"
    figures = {t.name: Figures(t.name, label) for t in tenants}
    logs = []
    for group in groups:
        log = LogFigures(tenants, classes, day, syslog_name)
        log.feed_paths(group)
        log.add_to(figures)
        log.messages.clear()  # only the bounced addresses are needed from here on
        logs.append(log)
    if store is not None:
        add_store(store, figures, day, classes, logs)
    return [figures[n] for n in sorted(figures)]


# ---------------------------------------------------------------------- output


def as_json(rows: Sequence[Figures]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2) + "\n"


TEXT_HEADER = (
    f"{'tenant':<12} {'state':<7} {'sent':>8} {'delivered':>9} {'deferred':>8} "
    f"{'bounced':>8} {'hard':>6} {'soft':>6} {'complnt':>7} {'unsub':>6} "
    f"{'bounce%':>8} {'complnt%':>8}"
)


def text_line(name: str, state: str, c: dict[str, Any]) -> str:
    return (
        f"{name:<12} {state:<7} {c['sent']:>8} {c['delivered']:>9} {c['deferred']:>8} "
        f"{c['bounced']:>8} {c['bounced_hard']:>6} {c['bounced_soft']:>6} "
        f"{c['complained']:>7} {c['unsubscribed']:>6} "
        f"{100 * c['bounce_rate']:>8.2f} {100 * c['complaint_rate']:>8.3f}"
    )


def as_text(rows: Sequence[Figures]) -> str:
    day = rows[0].day if rows else ""
    out = [f"Tenants' figures for {day}", TEXT_HEADER]
    for r in rows:
        d = r.as_dict()
        out.append(text_line(r.tenant, r.state, d))
        for p, c in d["providers"].items():
            out.append(text_line(f"  {p}", "", c))
    if not rows:
        out.append("(no tenants configured)")
    return "\n".join(out) + "\n"


_HELP = {
    "sent": "Recipients of the tenant's mail with a delivery attempt today.",
    "delivered": "Recipients of the tenant's mail delivered today (status=sent).",
    "deferred": "Recipients of the tenant's mail deferred at least once today.",
    "bounced": "Bounces of the tenant's mail today (log and store, hard and soft).",
    "bounced_hard": "Hard bounces (5.x.x) of the tenant's mail today.",
    "bounced_soft": "Soft bounces of the tenant's mail today.",
    "complained": "Complaints about the tenant's mail received today.",
    "unsubscribed": "Unsubscribes from the tenant's mail received today.",
}


def prometheus(rows: Sequence[Figures], generated_ts: float, complete: bool = True) -> str:
    """Text exposition format 0.0.4.  Counts are counters of the day so far (they start
    again from 0 at local midnight, which rate() and increase() take as a reset)."""
    from mailops.queues.render import family

    lines: list[str] = []
    dicts = [(r, r.as_dict()) for r in rows]
    lines += family(
        "mailops_tenant_paused",
        "1 when the tenant is paused (its new mail is held), 0 when active.",
        [({"tenant": r.tenant}, 1 if r.state == "paused" else 0) for r in rows],
    )
    for name in COUNTS:
        lines += family(
            f"mailops_tenant_{name}_total",
            _HELP[name],
            [({"tenant": r.tenant}, d[name]) for r, d in dicts],
            kind="counter",
        )
    for name in RATES:
        lines += family(
            f"mailops_tenant_{name}",
            "Bounced / sent today." if name == "bounce_rate" else "Complaints / delivered today.",
            [({"tenant": r.tenant}, d[name]) for r, d in dicts],
        )
    for name in COUNTS:
        lines += family(
            f"mailops_tenant_provider_{name}_total",
            _HELP[name].rstrip(".") + ", per receiving provider.",
            [
                ({"tenant": r.tenant, "provider": p}, c[name])
                for r, d in dicts
                for p, c in d["providers"].items()
            ],
            kind="counter",
        )
    lines += family(
        "mailops_tenant_ses_events_total",
        "Amazon SES's events about the tenant's mail received today, by type.",
        [({"tenant": r.tenant, "type": kind}, r.ses[kind]) for r in rows for kind in r.ses],
        kind="counter",
    )
    lines += run_families(
        "mailops_tenant_figures",
        "1 when every node's log lines were read for these figures, 0 when some were not.",
        "Unix time at which the tenants' figures were computed.",
        complete,
        generated_ts,
    )
    return "\n".join(lines) + "\n"


def run_families(
    prefix: str, complete_help: str, time_help: str, complete: bool, generated_ts: float
) -> list[str]:
    """The two gauges that end the /metrics of a job reading the nodes' logs:
    ``PREFIX_complete`` and ``PREFIX_timestamp_seconds``."""
    from mailops.queues.render import family

    return [
        *family(f"{prefix}_complete", complete_help, [({}, 1 if complete else 0)]),
        *family(f"{prefix}_timestamp_seconds", time_help, [({}, round(generated_ts, 3))]),
    ]


# ---------------------------------------------------------------------- the command


def parse_day(text: str, today: dt.date | None = None) -> dt.date | None:
    """``today``, ``yesterday``, ``YYYY-MM-DD``, ``all`` or a log's ``Dec 07``."""
    from mailops.report import build

    today = today or dt.date.today()
    m = _MONTH_DAY.match(text.strip())
    if m and m.group(1) in MONTH_NAMES:
        month, mday = MONTH_NAMES.index(m.group(1)) + 1, int(m.group(2))
        year = today.year if (month, mday) <= (today.month, today.day) else today.year - 1
        try:
            return dt.date(year, month, mday)
        except ValueError:
            raise ValueError(f"--day: no such day: {text!r}") from None
    try:
        return build.parse_day(text, today)
    except ValueError:
        raise ValueError(
            f"--day: expected today, yesterday, YYYY-MM-DD, 'Dec 07' or all, not {text!r}"
        ) from None


def _err(text: str) -> None:
    print(f"mailops tenants status: {text}", file=sys.stderr)


def fetch(command: str, day: dt.date | None, into: Path) -> int:
    """Run ``COMMAND DAY DIR`` (the nodes' lines of the day, a file per node); its exit
    code (127 when it cannot be started)."""
    argv = [*shlex.split(command), day.isoformat() if day else "today", str(into)]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, check=False, timeout=3600).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        _err(f"cannot run {command}: {exc}")
        return 127


def _is_command(text: str) -> bool:
    first = shlex.split(text)[0] if text.strip() else ""
    p = Path(first)
    return not p.is_dir() and p.is_file() and os.access(p, os.X_OK)


def log_groups(
    args: argparse.Namespace, data: Mapping[str, Any], day: dt.date | None, tmp: Path
) -> tuple[list[list[Path]], bool]:
    """The groups of paths to read (one group per host) and whether every node's lines
    came (False when the fetch command failed for some)."""
    from mailops.report import build

    report = config.table(data, "report", {"rotated": args.rotated})
    source = args.logs_from
    if source is None and not args.log and _is_command(DEFAULT_FETCH):
        source = DEFAULT_FETCH
    complete = True
    if source is not None:
        directory = Path(source)
        if not directory.is_dir():
            if not _is_command(source):
                raise build.LogError(f"--logs-from {source}: not a directory nor a command")
            complete = fetch(source, day, tmp) == 0
            if not complete:
                _err(f"{source} could not fetch every node's lines; the figures leave them out")
            directory = tmp
            if not any(p.is_file() for p in tmp.iterdir()):
                return [], complete
        return [
            list(build.iter_paths([log], report["rotated"], day))
            for log in build.host_logs(directory)
        ], complete
    logs = args.log or report["logs"]
    return [list(build.iter_paths(logs, report["rotated"], day))], complete


def run(args: argparse.Namespace) -> int:
    from mailops.report import build
    from mailops.store.db import Store, StoreError

    fmt = "json" if args.json else (args.format or "text")
    try:
        day = parse_day(args.day or "today")
    except ValueError as exc:
        _err(str(exc))
        return exitcodes.USAGE
    data = config.load(getattr(args, "config", None))
    tenants = load_tenants(data)
    classes = class_map(data)
    store_settings = config.table(data, "store", {"url": args.store})
    syslog_name = config.table(data, "report", {"syslog_name": args.syslog_name})["syslog_name"]
    with tempfile.TemporaryDirectory(prefix="mailops-tenants-") as tmp:
        try:
            groups, complete = log_groups(args, data, day, Path(tmp))
            try:
                store = Store.open(store_settings["url"], timeout=store_settings["timeout"])
            except StoreError as exc:
                _err(f"cannot read the store: {exc}")
                return exitcodes.TEMPFAIL
            with store:
                rows = compute(tenants, classes, groups, day, store, syslog_name)
        except build.LogError as exc:
            _err(str(exc))
            return exitcodes.NOINPUT
        except StoreError as exc:
            _err(f"cannot read the store: {exc}")
            return exitcodes.TEMPFAIL
    if fmt == "json":
        out = as_json(rows)
    elif fmt == "prometheus":
        out = prometheus(rows, time.time(), complete)
    else:
        out = as_text(rows)
    if args.output:
        from mailops.queues.render import write_atomic

        try:
            write_atomic(args.output, out)
        except OSError as exc:
            _err(f"cannot write {args.output}: {exc.strerror or exc}")
            return exitcodes.CANTCREAT
    else:
        sys.stdout.write(out)
    return exitcodes.OK if complete else 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="each tenant's figures of a day (sent, delivered, bounced, complaints...)",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--format", choices=("text", "json", "prometheus"), help="default text")
    p.add_argument("--day", help="today (default), yesterday, YYYY-MM-DD, a log's 'Dec 07', or all")
    p.add_argument(
        "--log", action="append", metavar="FILE", help="a log to read (repeat: one host's)"
    )
    p.add_argument(
        "--rotated",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also read FILE.1, FILE.2.gz ... that may hold lines of the day",
    )
    p.add_argument(
        "--logs-from",
        metavar="DIR|CMD",
        help="every file in DIR is a node's log; or run CMD DAY TMPDIR, which writes "
        f"them (default on the monitor: {DEFAULT_FETCH})",
    )
    p.add_argument("--store", metavar="URL", help="the store (default: [store] url)")
    p.add_argument("--syslog-name", metavar="NAME", help="also count this Postfix syslog_name")
    p.add_argument("--output", metavar="FILE", help="write there atomically (mode 0644)")
    p.set_defaults(func=run)
