"""Whole lines of a mail log, block by block, in bounded memory.

A :class:`LineReader` is fed byte streams (a live log from where we stopped, a rotated or
gzipped file to its end) and hands blocks of whole lines to :meth:`LineReader.block`,
which a subclass overrides to look for what it wants (with ``bytes.find`` for a fixed
text first: a million ordinary lines then cost little more than reading them).

Only complete lines are consumed from a live log: a last line without its newline is
being written and is left for the next run (``final=False``).  A rotated or gzipped file
is finished (``final=True``): its last line counts even without a newline.  Lines longer
than :data:`MAX_LINE` are skipped unread (Postfix cuts log records at a few KiB, so no
line we look for is that long).  Memory is one block plus one partial line.
"""

from __future__ import annotations

from typing import BinaryIO

CHUNK = 1 << 20
MAX_LINE = 1 << 16


class LineReader:
    """Counts what it reads; :meth:`block` is the subclass's hook."""

    def __init__(self) -> None:
        self.lines = 0
        self.long_lines = 0
        self.consumed = 0  # bytes consumed by the current (or last) feed()

    def block(self, block: bytes) -> None:
        """A block of whole lines (it ends with a newline, or is a final line)."""
        self.lines += block.count(b"\n")

    def feed(self, stream: BinaryIO, final: bool) -> int:
        """Read ``stream`` to its end; return the number of bytes consumed.

        If the stream raises (damaged gzip data), ``self.consumed`` still says how many
        bytes were read before that.
        """
        self.consumed = 0
        carry = b""
        skipping = False  # inside an over-long line, dropping bytes up to its newline
        while True:
            data = stream.read(CHUNK)
            if not data:
                break
            if skipping:
                nl = data.find(b"\n")
                if nl == -1:
                    self.consumed += len(data)
                    continue
                self.consumed += nl + 1
                data = data[nl + 1 :]
                skipping = False
            buf = carry + data if carry else data
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                if len(buf) > MAX_LINE:
                    self.consumed += len(buf)
                    self.long_lines += 1
                    carry = b""
                    skipping = True
                else:
                    carry = buf
                continue
            self.block(buf[:cut] if cut < len(buf) else buf)
            self.consumed += cut
            carry = buf[cut:]
        if final and carry:
            self.block(carry)
            self.lines += 1
            self.consumed += len(carry)
        return self.consumed


class LineBuffer:
    """Blocks of bytes in, runs of whole lines out, for counters that read a whole
    buffer in one pass (one regular expression over many lines).

    :meth:`feed_bytes` hands ``_lines_of(buf, end)`` a buffer that starts with a newline
    and holds whole lines up to ``end``; a partial last line waits in ``pending`` for
    the next block, or for :meth:`flush` at the end of a file (its last line may have no
    newline).  Unlike :class:`LineReader`, no line is too long: the counters bound what
    they keep, not what they read.
    """

    pending: bytes = b""

    def _lines_of(self, buf: bytes, end: int) -> None:
        raise NotImplementedError

    def feed_bytes(self, data: bytes) -> None:
        """Count the complete lines in ``data``; keep a trailing partial line for later."""
        if not data:
            return
        buf = b"\n" + self.pending + data
        cut = buf.rfind(b"\n")
        self.pending = buf[cut + 1 :]
        if cut > 0:
            self._lines_of(buf, cut + 1)

    def flush(self) -> None:
        """Count a last line that had no newline (end of a file)."""
        if self.pending:
            buf = b"\n" + self.pending
            self.pending = b""
            self._lines_of(buf, len(buf))
