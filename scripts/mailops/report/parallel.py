"""Count one large plain log file on several cores at once, with the same figures.

The file is cut at line ends into as many parts as there are workers.  The first part
is counted here, in the tally that has counted everything before it; each later part
in a forked child, in a fresh tally that knows nothing of the lines before its part.
That tally counts what it can count alone and keeps waiting the lines whose figures
depend on earlier lines: those of a queue id it has not seen start (a ``client=`` or
``pickup`` line) since its part began.  A message that spans a cut is the usual case:
its delivery lines wait, and are counted here after the earlier parts, with their
sizes.  ``Tally.absorb`` then adds the part's figures, in order.

pflogsumm never forgets a queue id (tally.py), so a part's figures for a queue id it
takes as new are right only if no earlier line gave that queue id a size.  A child
therefore first reads the bytes before its part for the queue ids of size lines (one
pass, about an eighth of what counting them costs, for which the later parts are
shorter: ``shares``) and takes none of those, nor one the tally held a size for before the
file, nor one whose lines it already keeps waiting, for new: a queue id used again, by
Postfix later in the day or by another host in the same file, waits like a message
across the cut.  Should a size line of another shape still give one of its new queue
ids a size earlier, or should a child fail, that part is counted again here, alone,
and nothing of the child's count is added: the figures are always those of one tally
reading the whole file.

Each child is a fork of this process: the compiled pattern and the interpreter are
shared with it, page by page, until either writes to them, and its ``hash()`` of a
byte string is this process's (the distinct counts keep hashes; a process started
afresh would have another hash seed).  Below ``MIN_PART`` bytes per part a file is
counted here alone (a fork and a merge cost more than they save).
"""

from __future__ import annotations

import bisect
import itertools
import os
import pickle
from array import array
from collections.abc import Callable
from typing import Any, BinaryIO

from mailops.forkwork import MAX_JOBS as MAX_JOBS  # re-exported
from mailops.forkwork import default_jobs as default_jobs  # re-exported
from mailops.forkwork import fork_to_file
from mailops.report.tally import CHUNK, Tally

MIN_PART = 16 << 20


# what reading a byte for the queue ids of size lines costs a child (sized_before), as a
# share of what counting it costs: the later parts are made that much shorter
SCAN_COST = 0.13


def shares(parts: int, scan: float = SCAN_COST) -> list[float]:
    """Where ``parts`` parts start, as shares of the file, so that each part's count plus
    its child's reading of all the bytes before it take about as long as the first
    part's count: part k is ``first - scan * start_k`` long."""
    lo, hi = 1 / parts, 1.0
    for _ in range(40):  # bisection on the first part's length
        first = (lo + hi) / 2
        at, starts = 0.0, []
        for _k in range(parts):
            starts.append(at)
            at += max(first - scan * at, 0.0)
        lo, hi = (first, hi) if at < 1 else (lo, first)
    return starts


def cuts(fh: BinaryIO, size: int, parts: int, scan: float = SCAN_COST) -> list[int]:
    """Offsets that cut ``fh`` into ``parts`` ranges (``shares``), each starting right
    after a newline (or at 0); fewer where lines are longer than a range."""
    offsets = [0]
    for share in shares(parts, scan)[1:]:
        fh.seek(max(int(size * share) - 1, 0))
        fh.readline()  # to the end of the line the byte before the cut is on
        at = fh.tell()
        if offsets[-1] < at < size:
            offsets.append(at)
    offsets.append(size)
    return offsets


def _count_range(tally: Tally, fd: int, start: int, stop: int) -> None:
    """Count the bytes ``[start, stop)`` of a file (pread: a forked child shares the
    file's offset with its parent, so neither may move it)."""
    at = start
    while at < stop:
        block = os.pread(fd, min(CHUNK, stop - at), at)
        if not block:
            break
        at += len(block)
        tally.feed_bytes(block)
    tally.flush()


def sized_before(fd: int, stop: int) -> array[int]:
    """The sorted hashes of the queue ids of the size lines (``QUEUEID: from=<``, the
    queue id being the word before) in the bytes ``[0, stop)``.  (A size line of another
    shape that escapes this is caught by Tally.absorb, which then counts the part again;
    a word taken that is no queue id only makes a message wait.)"""
    found = array("q")
    at, pending = 0, b""
    while at < stop:
        block = os.pread(fd, min(CHUNK, stop - at), at)
        if not block:
            break
        at += len(block)
        buf = pending + block
        cut = buf.rfind(b"\n") + 1
        pending = buf[cut:]
        _sized_in(buf, cut, found)
    _sized_in(pending, len(pending), found)
    return array("q", sorted(found))


def _sized_in(buf: bytes, end: int, found: array[int]) -> None:
    # (bytes.find and a loop: a third faster than a regular expression's findall here)
    i = buf.find(b": from=<", 0, end)
    while i >= 0:
        found.append(hash(buf[buf.rfind(b" ", 0, i) + 1 : i]))
        i = buf.find(b": from=<", i + 8, end)


def _blocker(prior: Tally, sized: array[int]) -> Callable[[bytes, int], bool]:
    """Whether a queue id may have had a size before a part: a size line in an earlier
    part (``sized``), or a size the tally held before the file (``prior``)."""

    def blocked(qid: bytes, h: int) -> bool:
        i = bisect.bisect_left(sized, h)
        if i < len(sized) and sized[i] == h:
            return True
        return qid in prior.sizes or (bool(prior.retired) and prior.retired.get(qid) > 0)

    return blocked


def _fork_part(tally: Tally, fd: int, start: int, stop: int) -> tuple[int, BinaryIO]:
    """Count ``[start, stop)`` in a child; returns its pid and the file its figures go to
    (:func:`mailops.forkwork.fork_to_file`)."""

    def work(out: BinaryIO) -> None:
        # (the same pattern: re's cache hands back the one compiled already)
        part = Tally(tally.syslog_name, tally.day, tally.cap, tally.state_cap)
        # (read here, in the child, while the parent counts the first part)
        part.begin_part(_blocker(tally, sized_before(fd, start)))
        _count_range(part, fd, start, stop)
        pickle.dump(part.export(), out, protocol=pickle.HIGHEST_PROTOCOL)

    return fork_to_file(work, "mailops report: a worker failed ({exc}); counting alone")


def _collect(pid: int | None, out: BinaryIO | None) -> dict[str, Any] | None:
    """The figures of a child, once it has exited; None if it failed or never ran."""
    if pid is None or out is None:
        return None
    _, status = os.waitpid(pid, 0)
    part: dict[str, Any] | None = None
    try:
        if os.waitstatus_to_exitcode(status) == 0:
            out.seek(0)
            part = pickle.load(out)  # noqa: S301 - written by our own child, just now
    except (OSError, EOFError, pickle.UnpicklingError):
        part = None
    finally:
        out.close()
    return part


def feed_file_parallel(tally: Tally, fh: BinaryIO, jobs: int, min_part: int | None = None) -> bool:
    """Count a seekable plain file with up to ``jobs`` processes, each part at least
    ``min_part`` bytes (default ``MIN_PART``); False if it is too small to be worth it or
    cannot be seeked (the caller then reads it alone)."""
    try:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        fh.seek(0)
    except (OSError, AttributeError, ValueError):
        return False
    parts = min(jobs, size // (MIN_PART if min_part is None else max(1, min_part)))
    if parts < 2:
        return False
    offsets = cuts(fh, size, parts)
    fh.seek(0)
    if len(offsets) < 3:
        return False
    tally.flush()
    children: list[tuple[int, int, int | None, BinaryIO | None]] = []
    try:
        for start, stop in itertools.pairwise(offsets[1:]):
            try:
                children.append((start, stop, *_fork_part(tally, fd, start, stop)))
            except OSError:  # no temporary file, no fork: this process counts the part
                children.append((start, stop, None, None))
        _count_range(tally, fd, offsets[0], offsets[1])
    except BaseException:
        for _, _, pid, out in children:
            _collect(pid, out)
        raise
    # one part at a time, in order: each is added to all that came before it
    for start, stop, pid, out in children:
        part = _collect(pid, out)
        if part is None or not tally.absorb(part):
            _count_range(tally, fd, start, stop)
        del part
    return True
