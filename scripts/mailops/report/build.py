"""Read log files (plain, gzip, rotated sets) into a Tally; turn it into the report.

The report is a plain dict, the documented JSON of ``mailops report --format json``
(schema ``mailops.report/1``, described in docs/report.md).  Text and HTML are rendered
from it, so all three always agree.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mailops.maillog.files import LogError as LogError  # re-exported for the commands
from mailops.maillog.files import host_logs as host_logs  # re-exported for the commands
from mailops.maillog.files import open_log as open_log  # re-exported for the commands
from mailops.maillog.files import rotated_set as rotated_set  # re-exported
from mailops.maillog.stamps import MONTHS, pflogsumm_year
from mailops.report import parallel
from mailops.report.tally import (
    CHUNK,
    D_BOUNCE,
    D_BYTES,
    D_DEFER,
    D_DELAY_MAX,
    D_DELAY_SUM,
    D_SENT,
    DaySpec,
    Distinct,
    SizeArchive,
    Tally,
)

SCHEMA = "mailops.report/1"
TOTALS = (
    "received",
    "delivered",
    "forwarded",
    "deferred",
    "deferrals",
    "bounced",
    "rejected",
    "reject_warnings",
    "held",
    "discarded",
    "bytes_received",
    "bytes_delivered",
    "senders",
    "sending_hosts_domains",
    "recipients",
    "recipient_hosts_domains",
)
HOURLY = ("received", "delivered", "deferred", "bounced", "rejected")


# ---------------------------------------------------------------------- choosing files


def parse_day(text: str, today: dt.date | None = None) -> dt.date | None:
    """``today``, ``yesterday``, ``YYYY-MM-DD`` -> a date; ``all`` -> None."""
    today = today or dt.date.today()
    if text == "all":
        return None
    if text == "today":
        return today
    if text == "yesterday":
        return today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--day: expected today, yesterday, all or YYYY-MM-DD, not {text!r}"
        ) from None


def tally_files(
    paths: Sequence[Path],
    day: dt.date | None = None,
    syslog_name: str = "postfix",
    cap: int = 5000,
    jobs: int | None = None,
    min_part: int | None = None,
) -> tuple[Tally, list[dict[str, Any]]]:
    """Count every file in turn (as one stream, the way pflogsumm reads several files);
    a large plain file with up to ``jobs`` processes (None: one per core, at most 4),
    each part at least ``min_part`` bytes (None: ``parallel.MIN_PART``)."""
    if jobs is None:
        jobs = parallel.default_jobs()
    tally = Tally(
        syslog_name=syslog_name,
        day=DaySpec(day.year, day.month, day.day) if day else None,
        cap=cap,
    )
    sources: list[dict[str, Any]] = []
    for path in paths:
        before = tally.lines
        fh = open_log(path)
        try:
            if jobs > 1 and parallel.feed_file_parallel(tally, fh, jobs, min_part):
                sources.append({"path": str(path), "lines": tally.lines - before})
                continue
            while block := fh.read(CHUNK):
                tally.feed_bytes(block)
            # a file that does not end in a newline ends its last line anyway
            tally.flush()
        except OSError as exc:
            raise LogError(f"{path}: {exc.strerror or exc}") from None
        finally:
            fh.close()
        sources.append({"path": str(path), "lines": tally.lines - before})
    return tally, sources


def tally_cluster(
    groups: Sequence[Sequence[Path]],
    day: dt.date | None = None,
    syslog_name: str = "postfix",
    cap: int = 5000,
    jobs: int | None = None,
    min_part: int | None = None,
) -> tuple[Tally, list[dict[str, Any]]]:
    """One tally for several hosts' logs, each group of files one host's (its log and
    rotations): every host's files are counted apart, so a queue id of one host never
    meets the same queue id of another (two messages, where one file holding both hosts'
    lines is counted as pflogsumm counts it, one message), and the figures are added up."""
    total: Tally | None = None
    sources: list[dict[str, Any]] = []
    for host, group in enumerate(groups):
        tally, found = tally_files(group, day, syslog_name, cap, jobs, min_part)
        sources += found
        if total is None:
            total = tally
            continue
        part = tally.export()
        del tally
        # the queue ids' state is of no use past its own host's log, and the deferred
        # queue ids are this host's: salted with its number, none is another host's
        part.update(sizes={}, retired=SizeArchive(1).export(), clients={})
        salted = Distinct()
        for arr in part["deferred_ids"]:
            for h in arr:
                h = hash((host, h))
                salted.parts[h & 15].append(h)
        part["deferred_ids"] = salted.parts
        total.sizes.clear()
        total.retired = SizeArchive()
        total.clients.clear()
        assert total.absorb(part)
    if total is None:
        return tally_files([], day, syslog_name, cap, jobs, min_part)
    return total, sources


def nothing_of_the_day(tally: Tally, day: dt.date | None) -> str | None:
    """A warning when a day was asked for and not one line of it counted (a wrong day, a
    log that rotated, the wrong file), rather than a report of zeros that says nothing."""
    if day is None or tally.buckets or tally.sasl_failures or tally.forwarded:
        return None
    return (
        f"no line of {day.isoformat()} counted in {tally.lines:,} lines read: "
        "check --day and which log was read"
    )


# ---------------------------------------------------------------------- the report


def bucket_time(key: bytes, year: int | None, now: dt.date) -> tuple[str, int] | None:
    """A bucket key (``Nov 23 10`` or ``2024-11-23T10``) -> (ISO date, hour)."""
    try:
        if key[:1].isdigit():
            return key[:10].decode(), int(key[11:13])
        mon, day, hour = key.split()
        month = MONTHS[mon]
        when = dt.date(year or pflogsumm_year(month, now), month, int(day))
        return when.isoformat(), int(hour)
    except (KeyError, ValueError):
        return None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _round(value: float) -> float:
    return round(value, 3)


def report(
    tally: Tally,
    sources: list[dict[str, Any]],
    day: dt.date | None,
    top: int = 20,
    year: int | None = None,
    now: dt.datetime | None = None,
    host: str | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The documented report dict (schema ``mailops.report/1``)."""
    now = now or dt.datetime.now(dt.UTC)
    today = now.date()
    t = tally
    total = t.delivered + t.rejected + t.discarded
    totals = {
        "received": t.received,
        "delivered": t.delivered,
        "forwarded": t.forwarded,
        "deferred": t.deferred,
        "deferrals": t.deferrals,
        "bounced": t.bounced,
        "rejected": t.rejected,
        "rejected_percent": int(t.rejected / total * 100) if total else 0,
        "reject_warnings": t.reject_warnings,
        "held": t.held,
        "discarded": t.discarded,
        "discarded_percent": int(t.discarded / total * 100) if total else 0,
        "bytes_received": t.bytes_received,
        "bytes_delivered": t.bytes_delivered,
        "senders": len(t.senders),
        "sending_hosts_domains": len(t.sending_domains),
        "recipients": len(t.recipients),
        "recipient_hosts_domains": len(t.recipient_domains),
    }
    hourly = [dict.fromkeys(HOURLY, 0) for _ in range(24)]
    daily: dict[str, dict[str, int]] = {}
    for key, counts in t.buckets.items():
        when = bucket_time(key, year, today)
        if when is None:
            continue
        date, hour = when
        day_row = daily.setdefault(date, dict.fromkeys(HOURLY, 0))
        for name, value in zip(HOURLY, counts, strict=True):
            hourly[hour % 24][name] += value
            day_row[name] += value
    rcpt = sorted(
        t.rcpt_domains.items(),
        key=lambda kv: (kv[1][D_SENT], kv[1][D_BYTES], kv[0]),
        reverse=True,
    )
    senders = sorted(
        t.sender_domains.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]), reverse=True
    )

    def top_counts(table: dict[Any, int]) -> list[tuple[Any, int]]:
        return sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    return {
        "schema": SCHEMA,
        "generated_at": now.isoformat(timespec="seconds"),
        "host": host or socket.getfqdn(),
        "day": day.isoformat() if day else "all",
        "sources": sources,
        "lines": t.lines,
        "totals": totals,
        "hourly": [{"hour": h, **row} for h, row in enumerate(hourly)],
        "daily": [{"date": d, **daily[d]} for d in sorted(daily)],
        "recipient_domains": [
            {
                "domain": _text(dom),
                "delivered": int(row[D_SENT]),
                "bytes": int(row[D_BYTES]),
                "deferred": int(row[D_DEFER]),
                "bounced": int(row[D_BOUNCE]),
                "avg_delay": _round(row[D_DELAY_SUM] / 1e6 / row[D_SENT]) if row[D_SENT] else 0.0,
                "max_delay": _round(row[D_DELAY_MAX] / 1e6),
            }
            for dom, row in rcpt[:top]
        ],
        "sender_domains": [
            {"domain": _text(dom), "messages": row[0], "bytes": row[1]}
            for dom, row in senders[:top]
        ],
        "bounce_reasons": [
            {"relay": _text(relay), "reason": _text(reason), "count": n}
            for (relay, reason), n in top_counts(t.bounce_reasons)
        ],
        "deferral_reasons": [
            {"program": _text(cmd), "reason": _text(reason), "count": n}
            for (cmd, reason), n in top_counts(t.defer_reasons)
        ],
        "reject_reasons": [
            {"action": _text(kind), "stage": _text(stage), "reason": _text(reason), "count": n}
            for (kind, stage, reason), n in top_counts(t.reject_reasons)
        ],
        "sasl": {
            "failures": t.sasl_failures,
            "server_faults": t.sasl_server_faults,
            "clients": [
                {"client": _text(ip), "failures": n} for ip, n in top_counts(t.sasl_clients)
            ],
        },
        "problems": {"fatal": t.fatal, "panic": t.panic},
        "truncated": sorted(t.truncated),
        "warnings": list(warnings),
    }


def iter_paths(logs: Sequence[str], rotated: bool, day: dt.date | None) -> Iterator[Path]:
    """The files to read for these --log arguments, in reading order."""
    for name in logs:
        path = Path(name).expanduser()
        if rotated:
            yield from rotated_set(path, since=day)
        else:
            yield path
