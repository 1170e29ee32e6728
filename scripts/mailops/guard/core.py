"""The guard's work: measure the window's rates, judge them, act once per crossing."""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from mailops.guard.limits import Limits
from mailops.tenants.figures import (
    _COMPLAINT_TYPES,
    Counts,
    Figures,
    LogFigures,
    _rows,
    add_store,
    provider_of,
    rate,
    run_families,
    sending_address,
)
from mailops.tenants.model import Tenants

METRICS = ("complaint", "bounce")
# A recorded level is left when the rate falls under this share of its threshold (a
# rate recorded at the 0.5 % pause level stays there down to 0.4 %): no new alert for
# a rate that wobbles around a threshold.
CLEAR = 0.8
LEVEL_NAMES = ("ok", "warning", "pause")
TOP = 5
# A provider that is no transport class is "other" in the per-address deferral rates,
# so that the series stay a handful per address whatever domains a tenant mails.
OTHER = "other"


# ---------------------------------------------------------------------- measure


@dataclass
class Measure:
    """Every tenant's window figures, per sending address too, and the recipient
    domains its complaints and bounces were about."""

    start: float
    end: float
    tenants: dict[str, Figures]
    addresses: dict[tuple[str, str], Counts] = field(default_factory=dict)
    complaint_domains: dict[str, Counter[str]] = field(default_factory=dict)
    bounce_domains: dict[str, Counter[str]] = field(default_factory=dict)
    # (tenant, address, provider class or OTHER) -> [recipients sent, deferred]
    address_providers: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)


class _AddressLog(LogFigures):
    """The tenants' figures of one host's log, also counting each sending address's
    recipients sent and deferred per receiving provider (for its deferral rates)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known = frozenset(self.classes.values())
        self.provider_sets: dict[tuple[str, str, str], tuple[Any, Any]] = {}

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
        super()._address(buf, m, tenant, recipient, addr, status, line)
        from mailops.report.tally import Distinct

        node_pool = sending_address(buf, m)
        if node_pool is None:
            return
        dom = addr[addr.rfind(b"@") + 1 :]
        provider = self.of_domain.get(dom) or provider_of(
            dom.decode("utf-8", "replace"), self.classes
        )
        k = (tenant, node_pool.decode("utf-8", "replace"),
             provider if provider in self.known else OTHER)  # fmt: skip
        sets = self.provider_sets.get(k)
        if sets is None:
            sets = self.provider_sets[k] = (Distinct(), Distinct())
        sets[0].add(recipient)
        if status == b"deferred":
            sets[1].add(recipient)

    def provider_counts(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        return {k: (len(s), len(d)) for k, (s, d) in self.provider_sets.items()}


def measure(
    tenants: Tenants,
    classes: Mapping[str, str],
    groups: Sequence[Sequence[Path]],
    window: tuple[float, float],
    store: Any,
    syslog_name: str = "postfix",
) -> Measure:
    """Count the window: each group of paths is one host's log (its own queue ids)."""
    start, end = window
    label = f"{_iso(start)}/{_iso(end)}"
    figures = {t.name: Figures(t.name, label) for t in tenants}
    out = Measure(start, end, figures)
    logs: list[LogFigures] = []
    where: dict[str, dict[str, str]] = {}  # tenant -> recipient -> sending address
    for group in groups:
        log = _AddressLog(tenants, classes, None, syslog_name, window=window, per_address=True)
        log.feed_paths(group)
        log.add_to(figures)
        log.messages.clear()
        for k, c in log.address_counts().items():
            if k[0] in figures:
                out.addresses.setdefault(k, Counts()).add(c)
        for pk, (sent, deferred) in log.provider_counts().items():
            if pk[0] in figures:
                row = out.address_providers.setdefault(pk, [0, 0])
                row[0] += sent
                row[1] += deferred
        for tenant, recipients in log.recipient_address.items():
            where.setdefault(tenant, {}).update(recipients)
        for tenant, bounced in log.bounced_to.items():
            for addr, n in bounced.items():
                _count_domain(out.bounce_domains, tenant, addr, n)
        logs.append(log)
    store_window = (int(start), int(end))
    add_store(store, figures, None, classes, logs, window=store_window)
    _store_by_address(store, out, logs, where, store_window)
    return out


def _count_domain(into: dict[str, Counter[str]], tenant: str, addr: str, n: int = 1) -> None:
    into.setdefault(tenant, Counter())[addr.rpartition("@")[2].lower()] += n


def _store_by_address(
    store: Any,
    out: Measure,
    logs: Sequence[LogFigures],
    where: Mapping[str, Mapping[str, str]],
    window: tuple[int, int],
) -> None:
    """The store's complaints and hard bounces of the window, placed at the address the
    log last delivered (or bounced) that recipient from; and their domains."""
    names = sorted(out.tenants)
    if not names:
        return
    marks = ", ".join("?" for _ in names)
    cond = f"tenant IN ({marks}) AND received_at >= ? AND received_at < ?"
    params = (*names, *window)
    for tenant, address in _rows(
        store,
        f"SELECT tenant, address FROM complaints WHERE {cond}"  # noqa: S608 - placeholders
        f" AND feedback_type IN ({', '.join('?' for _ in _COMPLAINT_TYPES)})",
        (*params, *_COMPLAINT_TYPES),
    ):
        _count_domain(out.complaint_domains, str(tenant), str(address))
        sender = where.get(str(tenant), {}).get(str(address).lower())
        if sender is not None:
            out.addresses.setdefault((str(tenant), sender), Counts()).complained += 1
    seen: dict[str, Counter[str]] = {}
    for log in logs:
        for tenant, counter in log.bounced_to.items():
            seen.setdefault(tenant, Counter()).update(counter)
    for tenant, address, hard in _rows(
        store,
        f"SELECT tenant, address, hard FROM bounces WHERE {cond}"  # noqa: S608
        " ORDER BY received_at, id",
        params,
    ):
        addr = str(address)
        already = seen.get(str(tenant))
        if already is not None and already[addr] > 0:
            already[addr] -= 1  # the log's bounce, counted already
            continue
        _count_domain(out.bounce_domains, str(tenant), addr)
        sender = where.get(str(tenant), {}).get(addr.lower())
        if hard and sender is not None:
            out.addresses.setdefault((str(tenant), sender), Counts()).bounced_hard += 1


# ---------------------------------------------------------------------- judge


@dataclass(frozen=True)
class Reading:
    """One rate of a tenant (address "" for the tenant's total) against its limits."""

    tenant: str
    address: str
    metric: str  # complaint | bounce
    part: int
    whole: int
    limits: Limits

    @property
    def value(self) -> float:
        return rate(self.part, self.whole)

    @property
    def judged(self) -> bool:
        return self.whole >= self.limits.minimum(self.metric) and self.whole > 0

    @property
    def level(self) -> int:
        warn, pause = self.limits.levels(self.metric)
        v = self.part / self.whole if self.whole else 0.0
        return 2 if v >= pause else 1 if v >= warn else 0

    @property
    def key(self) -> str:
        """The guard_state metric: ``complaint``, or ``complaint@mail1/pool_alpha_1``."""
        return f"{self.metric}@{self.address}" if self.address else self.metric


def _parts(metric: str, c: Counts) -> tuple[int, int]:
    if metric == "complaint":
        return c.complained, c.delivered
    return c.bounced_hard, c.sent


def readings(m: Measure, limits: Mapping[str, Limits]) -> list[Reading]:
    out: list[Reading] = []
    for name in sorted(m.tenants):
        total = m.tenants[name].total()
        for metric in METRICS:
            out.append(Reading(name, "", metric, *_parts(metric, total), limits[name]))
    for name, address in sorted(m.addresses):
        if name not in limits:
            continue
        c = m.addresses[name, address]
        for metric in METRICS:
            out.append(Reading(name, address, metric, *_parts(metric, c), limits[name]))
    return out


@dataclass
class Crossing:
    reading: Reading
    before: int


def settled(r: Reading, before: int) -> int:
    """The level to record for ``r`` when ``before`` was recorded: its own level when it
    rose or stayed; when it fell, a level is left only once the rate is under ``CLEAR``
    times that level's threshold.  A rate that hovers at a threshold (one more delivery
    takes it under, one more complaint over) would otherwise cross it again and again,
    one mail each time."""
    if r.level >= before:
        return r.level
    v = r.part / r.whole if r.whole else 0.0
    thresholds = (0.0, *r.limits.levels(r.metric))
    level = before
    while level > r.level and v < CLEAR * thresholds[level]:
        level -= 1
    return level


def judge(
    rs: Sequence[Reading], levels: Mapping[tuple[str, str], int]
) -> tuple[list[Crossing], list[tuple[Reading, int]]]:
    """(the readings that rose to a higher level than last recorded, each reading whose
    level to record changed with that level: see ``settled``).  A reading below its
    minimum volume is not judged: its recorded level stays."""
    crossings: list[Crossing] = []
    changed: list[tuple[Reading, int]] = []
    for r in rs:
        if not r.judged:
            continue
        before = levels.get((r.tenant, r.key), 0)
        after = settled(r, before)
        if after != before:
            changed.append((r, after))
        if after > before:
            crossings.append(Crossing(r, before))
    return crossings, changed


# ---------------------------------------------------------------------- alert


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _what(r: Reading) -> str:
    name = "complaint rate" if r.metric == "complaint" else "hard-bounce rate"
    return f"{name} of {r.address}" if r.address else name


def reason_text(crossings: Sequence[Crossing]) -> str:
    worst = max(crossings, key=lambda c: (c.reading.level, c.reading.value))
    r = worst.reading
    return f"guard: {_what(r)} {_pct(r.value)} >= pause level {_pct(r.limits.levels(r.metric)[1])}"


def alert_text(
    tenant: str,
    crossings: Sequence[Crossing],
    m: Measure,
    paused_now: bool,
    was_paused: bool,
    host: str,
) -> tuple[str, str]:
    """(subject, body) of a tenant's alert: plain text for a person."""
    pause = any(c.reading.level == 2 for c in crossings)
    word = "PAUSED" if pause else "warning"
    subject = f"[mailops guard] {tenant}: {word}: " + ", ".join(
        f"{_what(c.reading)} {_pct(c.reading.value)}" for c in crossings
    )
    hours = (m.end - m.start) / 3600
    lines = [
        f"The reputation guard on {host} found tenant {tenant}'s rates over its limits",
        f"in the {hours:g} hours from {_local(m.start)} to {_local(m.end)}.",
        "",
        "What crossed:",
    ]
    for c in crossings:
        r = c.reading
        warn, pause_at = r.limits.levels(r.metric)
        level = LEVEL_NAMES[r.level]
        counts = (
            f"{r.part} complaints / {r.whole} delivered"
            if r.metric == "complaint"
            else f"{r.part} hard bounces / {r.whole} sent"
        )
        lines.append(
            f"  - {_what(r)}: {_pct(r.value)} ({counts}); "
            f"warning at {_pct(warn)}, pause at {_pct(pause_at)}: now at the {level} level"
        )
    t = m.tenants[tenant].total()
    lines += [
        "",
        "The tenant's figures in the window:",
        f"  sent {t.sent}, delivered {t.delivered}, deferred {t.deferred}, "
        f"hard bounces {t.bounced_hard}, soft bounces {t.bounced_soft}, complaints {t.complained}",
        f"  complaint rate {_pct(rate(t.complained, t.delivered))}, "
        f"hard-bounce rate {_pct(rate(t.bounced_hard, t.sent))}",
    ]
    addrs = sorted(k for k in m.addresses if k[0] == tenant)
    if addrs:
        lines += ["", "Per sending address (node/transport):"]
        for k in addrs:
            a = m.addresses[k]
            lines.append(
                f"  {k[1]}: sent {a.sent}, delivered {a.delivered}, complaints {a.complained} "
                f"({_pct(rate(a.complained, a.delivered))}), hard bounces {a.bounced_hard} "
                f"({_pct(rate(a.bounced_hard, a.sent))})"
            )
    for title, counter in (
        ("Top complaining recipient domains:", m.complaint_domains.get(tenant)),
        ("Top bouncing recipient domains:", m.bounce_domains.get(tenant)),
    ):
        lines += ["", title]
        if counter:
            lines += [f"  {d}: {n}" for d, n in counter.most_common(TOP)]
        else:
            lines.append("  (none)")
    lines.append("")
    if paused_now:
        lines += [
            f"The guard has PAUSED {tenant}: the bulk nodes accept its new mail and hold it,",
            "with its queued mail; nothing is bounced or lost.  Once the cause is dealt with:",
            "",
            f"    mailops tenants resume {tenant}",
            "",
            "(on the monitor).  The guard never resumes a tenant by itself, and does not",
            f"pause it again until the rate has fallen under {CLEAR:.0%} of the pause level",
            "and crossed it again.",
        ]
    elif was_paused and pause:
        lines += [
            f"{tenant} was already paused; the guard left it so.  To resume it:",
            "",
            f"    mailops tenants resume {tenant}",
        ]
    else:
        lines += [
            f"{tenant} keeps sending.  At the pause level the guard pauses it; an operator",
            f"can pause it now with: mailops tenants pause {tenant} --reason TEXT",
        ]
    lines += ["", "This alert is sent once per crossing; see docs/guard.md."]
    return subject, "\n".join(lines) + "\n"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _local(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M %Z")


class MailError(Exception):
    pass


def send_mail(
    sendmail: str, sender: str, recipients: Sequence[str], subject: str, body: str
) -> None:
    """Hand one plain-text mail to sendmail(1), as ``mailops report --mail`` does."""
    msg = EmailMessage()
    msg["From"] = sender or f"mailops@{socket.getfqdn()}"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=(sender or "x@mailops").rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body, cte="8bit")  # readable as it is, lines never near 998
    try:
        proc = subprocess.run(
            [sendmail, "-oi", "--", *recipients],
            input=msg.as_bytes(),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MailError(f"{sendmail} failed: {exc}") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()
        raise MailError(f"{sendmail} exited {proc.returncode}: {detail}")


# ---------------------------------------------------------------------- metrics


def prometheus(
    m: Measure,
    rs: Sequence[Reading],
    limits: Mapping[str, Limits],
    levels: Mapping[tuple[str, str], int],
    generated_ts: float,
    complete: bool,
) -> str:
    """Gauges of the window (they are rates and counts over the last N hours, not
    counters: they go down as old lines leave the window)."""
    from mailops.queues.render import family

    lines: list[str] = []
    tenant_rs = [r for r in rs if not r.address]
    addr_rs = [r for r in rs if r.address]
    for metric, help_text in (
        ("complaint", "Complaints / delivered recipients of the tenant in the guard's window."),
        ("bounce", "Hard bounces / recipients sent of the tenant in the guard's window."),
    ):
        lines += family(
            f"mailops_guard_{metric}_rate",
            help_text,
            [({"tenant": r.tenant}, r.value) for r in tenant_rs if r.metric == metric],
        )
        lines += family(
            f"mailops_guard_address_{metric}_rate",
            help_text.replace("of the tenant", "of the tenant from one sending address"),
            [
                ({"tenant": r.tenant, "address": r.address}, r.value)
                for r in addr_rs
                if r.metric == metric
            ],
        )
    for name, attr in (
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("complaints", "complained"),
        ("hard_bounces", "bounced_hard"),
    ):
        lines += family(
            f"mailops_guard_{name}",
            f"Recipients counted as {name.replace('_', ' ')} in the guard's window.",
            [({"tenant": n}, getattr(m.tenants[n].total(), attr)) for n in sorted(m.tenants)],
        )
        lines += family(
            f"mailops_guard_address_{name}",
            f"Recipients counted as {name.replace('_', ' ')} in the guard's window, "
            "per sending address.",
            [
                ({"tenant": k[0], "address": k[1]}, getattr(m.addresses[k], attr))
                for k in sorted(m.addresses)
            ],
        )
    lines += family(
        "mailops_guard_deferral_rate",
        "Recipients deferred at least once / recipients sent, per tenant and receiving "
        "provider, in the guard's window.",
        [
            ({"tenant": n, "provider": p}, rate(c.deferred, c.sent))
            for n in sorted(m.tenants)
            for p, c in sorted(m.tenants[n].providers.items())
        ],
    )
    lines += family(
        "mailops_guard_address_deferral_rate",
        "Recipients deferred at least once / recipients sent, per tenant, sending address "
        f"and receiving provider class ({OTHER!r}: any other domain), in the guard's window.",
        [
            ({"tenant": k[0], "address": k[1], "provider": k[2]}, rate(deferred, sent))
            for k, (sent, deferred) in sorted(m.address_providers.items())
        ],
    )
    lines += family(
        "mailops_guard_threshold",
        "The tenant's limits: the rate at which the guard warns or pauses.",
        [
            ({"tenant": n, "metric": metric, "level": level}, value)
            for n in sorted(limits)
            for metric in METRICS
            for level, value in zip(("warning", "pause"), limits[n].levels(metric), strict=True)
        ],
    )
    lines += family(
        "mailops_guard_min_volume",
        "Below this many recipients (delivered for complaints, sent for bounces) no rate "
        "is judged.",
        [
            ({"tenant": n, "metric": metric}, limits[n].minimum(metric))
            for n in sorted(limits)
            for metric in METRICS
        ],
    )
    lines += family(
        "mailops_guard_level",
        "The guard's recorded level of a tenant's rate: 0 ok, 1 warning, 2 pause.",
        [
            ({"tenant": n, "metric": metric}, levels.get((n, metric), 0))
            for n in sorted(limits)
            for metric in METRICS
        ],
    )
    lines += family(
        "mailops_guard_window_seconds",
        "The length of the guard's rolling window.",
        [({}, round(m.end - m.start))],
    )
    lines += run_families(
        "mailops_guard",
        "1 when every node's log lines were read (the guard judged), 0 when some were not.",
        "Unix time of the guard's last run.",
        complete,
        generated_ts,
    )
    return "\n".join(lines) + "\n"
