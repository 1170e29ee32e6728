"""Queue sizes of the Postfix instance on this host, by queue files or by ``postqueue -j``.

Two methods, one result shape (:class:`HostReport`):

``files``
    Walks Postfix's queue directories with ``os.scandir`` and counts regular files; never
    holds a listing in memory.  Every subdirectory is descended (to a bounded depth), so
    hashed queues are counted whatever ``hash_queue_names``/``hash_queue_depth`` say now
    or said when the files were written (Postfix moves files lazily after a change).
    Needs read access to the queue directories: root or the ``postfix`` user.

    The age of the oldest deferred message comes from each deferred queue file's arrival
    time record (``T``, the first few dozen bytes), not from the file's mtime: the queue
    manager sets a deferred file's mtime (and atime) to its *next retry* time
    (``qmgr_active_defer``), so mtime says when Postfix will try again, not how old the
    message is.

    Destinations come from the per-message defer logfiles in the ``defer`` queue
    (``bounce(8)``: records of ``name=value`` lines separated by blank lines, with
    ``recipient``, ``status``, ``reason``...).  At most ``sample`` logfiles are read, chosen
    uniformly (reservoir sampling) when there are more; the result then says
    ``"sampled": true``.

``postqueue``
    Streams ``postqueue -j`` (one JSON object per line, served by showq(8)), which any
    user may run: exact per-destination figures, no privileges, but slower on huge
    queues because showq reads every queue file in full.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

QUEUES: tuple[str, ...] = ("incoming", "active", "deferred", "hold", "maildrop", "corrupt")
DEFAULT_QUEUE_DIRECTORY = "/var/spool/postfix"
MAX_DEPTH = 8  # Postfix allows hash_queue_depth up to a handful; a loop guard, not a limit
HEAD_BYTES = 512  # the arrival time record sits in the first records of a queue file
DEFER_LOG_BYTES = 64 * 1024  # read at most this much of one defer logfile
REASON_CHARS = 300

Method = Literal["auto", "files", "postqueue"]

_DSN_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class Destination(TypedDict):
    domain: str
    messages: int
    recipients: int
    last_status: str | None
    last_reason: str | None


class Destinations(TypedDict):
    sampled: bool
    sample_size: int
    total_logs: int
    top: list[Destination]


class HostReport(TypedDict, total=False):
    host: str
    method: str
    queue_directory: str | None
    generated_at: str
    duration_seconds: float
    queues: dict[str, int | None]
    oldest_deferred_seconds: float | None
    oldest_deferred_arrival: str | None
    destinations: Destinations
    warnings: list[str]
    error: str
    throttle: list[dict[str, Any]]  # mailops throttle's transports (bulk nodes only)


class QueueError(Exception):
    """The queue could not be read at all (no directory, no permission, postqueue failed)."""


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def queue_directory(postconf: str = "postconf") -> str:
    """Ask Postfix where its queue lives; the compiled-in default when postconf is absent."""
    exe = shutil.which(postconf)
    if exe is None:
        return DEFAULT_QUEUE_DIRECTORY
    try:
        out = subprocess.run(
            [exe, "-h", "queue_directory"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_QUEUE_DIRECTORY
    return out or DEFAULT_QUEUE_DIRECTORY


def walk_files(top: str) -> Iterator[os.DirEntry[str]]:
    """Yield the regular files under ``top``, depth first, one directory open at a time.

    A directory that vanishes mid-walk is skipped; a missing or unreadable ``top`` raises.
    """
    stack: list[tuple[str, int]] = [(top, 0)]
    first = True
    while stack:
        path, depth = stack.pop()
        try:
            it = os.scandir(path)
        except FileNotFoundError:
            if first:
                raise
            continue
        first = False
        with it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        yield entry
                    elif entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                        stack.append((entry.path, depth + 1))
                except OSError:
                    continue


def parse_arrival(head: bytes) -> float | None:
    """Arrival time from the first records of a queue file (record ``T``: "sec usec").

    A queue file is a stream of records: one type byte, the length in 7-bit groups
    (low-order first, high bit set on all but the last), then the data (rec_put(3)).
    """
    # Fast path: the size record (C, fixed width, short) then the time record (T).
    if len(head) > 4 and head[0] == 0x43 and head[1] < 0x80:
        pos = 2 + head[1]
        if pos + 2 < len(head) and head[pos] == 0x54 and head[pos + 1] < 0x80:
            data = head[pos + 2 : pos + 2 + head[pos + 1]]
            if len(data) == head[pos + 1]:
                return _time_value(data)
    pos = 0
    end = len(head)
    for _ in range(16):
        if pos >= end:
            return None
        rtype = head[pos]
        pos += 1
        length = 0
        shift = 0
        while True:
            if pos >= end or shift > 28:
                return None
            byte = head[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        data = head[pos : pos + length]
        pos += length
        if rtype == 0x54:  # 'T'
            return _time_value(data) if len(data) == length else None
    return None


def _time_value(data: bytes) -> float | None:
    sec, _, usec = data.partition(b" ")
    try:
        return int(sec) + (int(usec) / 1e6 if usec.strip() else 0.0)
    except ValueError:
        return None


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)


def _open(path: str) -> int | None:
    """Open a queue file read-only; None when it went away meanwhile.

    O_NOATIME where permitted (owner or root) leaves the queue's time stamps alone.
    """
    global _NOATIME
    try:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError:
            if not _NOATIME:
                raise
            _NOATIME = 0
            return os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None


def _read_head(path: str, size: int) -> bytes | None:
    fd = _open(path)
    if fd is None:
        return None
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_with_mtime(path: str, size: int) -> tuple[bytes, float] | None:
    fd = _open(path)
    if fd is None:
        return None
    try:
        return os.read(fd, size), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


@dataclass
class DeferRecord:
    recipient: str
    status: str | None
    reason: str | None


def parse_defer_log(lines: Iterable[str]) -> Iterator[DeferRecord]:
    """Recipient records of a bounce/defer logfile (bounce_log.c), old and new style.

    New style: ``name=value`` lines, one record per recipient, records separated by
    blank lines.  Old style (Postfix < 2.3, or ``backwards_bounce_logfile_compatibility``):
    ``<recipient>: reason``; when both appear in one record the ``name=value`` ones win.
    """
    rec: dict[str, str] = {}

    def flush() -> DeferRecord | None:
        rcpt = rec.get("recipient")
        if rcpt is None:
            return None
        return DeferRecord(rcpt, rec.get("status") or None, rec.get("reason") or None)

    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            done = flush()
            if done:
                yield done
            rec = {}
            continue
        if line[0].isalnum():
            name, sep, value = line.partition("=")
            if sep:
                rec[name.strip()] = value.strip()
        elif line.startswith("<"):
            rcpt, sep, reason = line[1:].partition(">: ")
            if sep:
                rec.setdefault("recipient", rcpt)
                rec.setdefault("reason", reason.strip())
    done = flush()
    if done:
        yield done


def domain_of(address: str) -> str:
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at and domain else "(local)"


@dataclass
class _DomainStat:
    messages: int = 0
    recipients: int = 0
    last_time: float = float("-inf")
    last_status: str | None = None
    last_reason: str | None = None


@dataclass
class DestinationTally:
    """Per-domain counts of deferred messages and recipients, with the freshest error."""

    stats: dict[str, _DomainStat] = field(default_factory=dict)

    def add_message(
        self, when: float, records: Iterable[tuple[str, str | None, str | None]]
    ) -> None:
        seen: set[str] = set()
        for address, status, reason in records:
            dom = domain_of(address)
            st = self.stats.setdefault(dom, _DomainStat())
            st.recipients += 1
            if dom not in seen:
                seen.add(dom)
                st.messages += 1
            if reason is not None and when >= st.last_time:
                st.last_time = when
                st.last_reason = reason[:REASON_CHARS]
                if status is None:
                    m = _DSN_RE.search(reason)
                    status = m.group(1) if m else None
                st.last_status = status

    def top(self, n: int) -> list[Destination]:
        best = heapq.nsmallest(
            n, self.stats.items(), key=lambda kv: (-kv[1].messages, -kv[1].recipients, kv[0])
        )
        return [
            Destination(
                domain=dom,
                messages=st.messages,
                recipients=st.recipients,
                last_status=st.last_status,
                last_reason=st.last_reason,
            )
            for dom, st in best
        ]


def _sample_paths(top: str, k: int, rng: random.Random) -> tuple[list[str], int]:
    """A uniform sample of at most k file paths under top, and how many there are.

    Reservoir sampling, Li's algorithm L: it draws random numbers only when an item is
    taken (about k * log(n/k) times), not once per file.
    """
    sample: list[str] = []
    total = 0
    if k <= 0:
        return sample, sum(1 for _ in walk_files(top))

    def u() -> float:
        return 1.0 - rng.random()  # in (0, 1]

    w = math.exp(math.log(u()) / k)
    take = k + _skip(u(), w)
    for entry in walk_files(top):
        if total < k:
            sample.append(entry.path)
        elif total == take:
            sample[rng.randrange(k)] = entry.path
            w *= math.exp(math.log(u()) / k)
            take += 1 + _skip(u(), w)
        total += 1
    return sample, total


def _skip(u: float, w: float) -> int:
    if w >= 1.0:
        return 0
    if w <= 0.0:
        return 1 << 62
    return int(math.log(u) / math.log1p(-w))


def _scan_deferred(path: str) -> tuple[int, float | None, int]:
    """Count deferred files and find the oldest arrival: (files, oldest, unreadable).

    One open and one short read per message is the cost.  (Threads over the hash
    directories were measured slower, not faster: the parsing holds the GIL.)
    """
    files = unknown = 0
    oldest: float | None = None
    flags = _OPEN_FLAGS | _NOATIME
    for entry in walk_files(path):
        files += 1
        try:
            fd = os.open(entry.path, flags)  # inlined _read_head(): this loop is the cost
        except FileNotFoundError:
            continue
        except PermissionError:
            head = _read_head(entry.path, HEAD_BYTES)  # O_NOATIME refused: retry without
            flags = _OPEN_FLAGS
            if head is None:
                continue
        else:
            try:
                head = os.read(fd, HEAD_BYTES)
            finally:
                os.close(fd)
        arrival = parse_arrival(head)
        if arrival is None:
            unknown += 1
        elif oldest is None or arrival < oldest:
            oldest = arrival
    return files, oldest, unknown


def scan_files(queue_dir: str, *, top: int = 10, sample: int = 1000) -> HostReport:
    """Count queue files under ``queue_dir``; see the module docstring."""
    start = time.monotonic()
    now = time.time()
    if not Path(queue_dir).is_dir():
        raise QueueError(f"{queue_dir}: no such queue directory")
    warnings: list[str] = []
    counts: dict[str, int | None] = {}
    oldest: float | None = None
    unknown_age = 0
    for name in QUEUES:
        path = str(Path(queue_dir, name))
        n = 0
        try:
            if name == "deferred":
                n, oldest, unknown_age = _scan_deferred(path)
            else:
                for _ in walk_files(path):
                    n += 1
        except FileNotFoundError:
            counts[name] = None if name == "corrupt" else 0
            if name != "corrupt":
                warnings.append(f"{path}: missing")
            continue
        except PermissionError as exc:
            raise QueueError(
                f"{path}: {exc.strerror}; run as root or postfix, or use --method postqueue"
            ) from None
        counts[name] = n
    if unknown_age:
        warnings.append(f"{unknown_age} deferred file(s) without a readable arrival time")

    tally = DestinationTally()
    defer_dir = str(Path(queue_dir, "defer"))
    paths: list[str] = []
    total_logs = 0
    try:
        paths, total_logs = _sample_paths(defer_dir, max(sample, 0), random.Random())  # noqa: S311 (sampling)
    except FileNotFoundError:
        warnings.append(f"{defer_dir}: missing")
    except PermissionError as exc:
        warnings.append(f"{defer_dir}: {exc.strerror}")
    for path in paths:
        try:
            got = _read_with_mtime(path, DEFER_LOG_BYTES)
        except OSError:
            continue
        if got is None:
            continue
        text = got[0].decode("utf-8", "replace")
        records = [(r.recipient, r.status, r.reason) for r in parse_defer_log(text.splitlines())]
        tally.add_message(got[1], records)

    return HostReport(
        host=socket.gethostname(),
        method="files",
        queue_directory=queue_dir,
        generated_at=iso(now),
        duration_seconds=round(time.monotonic() - start, 3),
        queues=counts,
        oldest_deferred_seconds=None if oldest is None else round(max(now - oldest, 0.0), 3),
        oldest_deferred_arrival=None if oldest is None else iso(oldest),
        destinations=Destinations(
            sampled=total_logs > len(paths),
            sample_size=len(paths),
            total_logs=total_logs,
            top=tally.top(top),
        ),
        warnings=warnings,
    )


def scan_postqueue_lines(lines: Iterable[bytes | str], *, top: int = 10) -> HostReport:
    """Fold a ``postqueue -j`` stream (one JSON object per line) into a report."""
    start = time.monotonic()
    now = time.time()
    counts: dict[str, int | None] = {q: 0 for q in QUEUES}
    counts["corrupt"] = None  # showq does not list the corrupt queue
    oldest: float | None = None
    tally = DestinationTally()
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            msg: Any = json.loads(line)
            qname = str(msg["queue_name"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        counts[qname] = (counts.get(qname) or 0) + 1
        if qname != "deferred":
            continue
        arrival = msg.get("arrival_time")
        if isinstance(arrival, int | float) and (oldest is None or arrival < oldest):
            oldest = float(arrival)
        rcpts = msg.get("recipients") or []
        records = [
            (str(r.get("address", "")), None, r.get("delay_reason") or None)
            for r in rcpts
            if isinstance(r, dict)
        ]
        tally.add_message(float(arrival) if isinstance(arrival, int | float) else 0.0, records)
    warnings = [f"{bad} unparsable line(s) from postqueue -j"] if bad else []
    return HostReport(
        host=socket.gethostname(),
        method="postqueue",
        queue_directory=None,
        generated_at=iso(now),
        duration_seconds=round(time.monotonic() - start, 3),
        queues=counts,
        oldest_deferred_seconds=None if oldest is None else round(max(now - oldest, 0.0), 3),
        oldest_deferred_arrival=None if oldest is None else iso(oldest),
        destinations=Destinations(
            sampled=False,
            sample_size=counts.get("deferred") or 0,
            total_logs=counts.get("deferred") or 0,
            top=tally.top(top),
        ),
        warnings=warnings,
    )


def scan_postqueue(
    postqueue: str = "postqueue", *, top: int = 10, timeout: float = 300
) -> HostReport:
    """Run ``postqueue -j`` and stream its output; raise QueueError when it fails."""
    exe = shutil.which(postqueue)
    if exe is None:
        raise QueueError(f"{postqueue}: not found")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([exe, "-j"], stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            report = scan_postqueue_lines(proc.stdout, top=top)
        finally:
            proc.stdout.close()
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc != 0:
            err.seek(0)
            msg = err.read(2000).decode("utf-8", "replace").strip()
            raise QueueError(f"postqueue -j exited {rc}: {msg}")
    return report


def scan(
    method: Method,
    *,
    queue_dir: str | None = None,
    postqueue: str = "postqueue",
    postconf: str = "postconf",
    top: int = 10,
    sample: int = 1000,
) -> HostReport:
    """Pick the method: ``auto`` counts files when the queue is readable, else postqueue."""
    if method == "postqueue":
        return scan_postqueue(postqueue, top=top)
    qdir = queue_dir or queue_directory(postconf)
    unreadable = not os.access(Path(qdir, "deferred"), os.R_OK | os.X_OK)
    if method == "auto" and queue_dir is None and unreadable:
        return scan_postqueue(postqueue, top=top)
    return scan_files(qdir, top=top, sample=sample)
