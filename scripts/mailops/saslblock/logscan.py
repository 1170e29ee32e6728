"""Find Postfix smtpd's SASL authentication failures in a mail log, fast and safely.

A failure is one line of this shape (syslog's file, or Postfix's own ``maillog_file``
written by postlogd, with a classic or an ISO 8601 time stamp)::

    Nov 23 10:00:01 mx1 postfix/smtpd[123]: warning: unknown[203.0.113.9]: SASL LOGIN
        authentication failed: UGFzc3dvcmQ6
    2026-11-23T10:00:01.123456+00:00 mx1 postfix/submission/smtpd[9]: warning:
        host.example[2001:db8::9]: SASL PLAIN authentication failed: authentication
        failure, sasl_username=alice@example.com

(each one line in the log).  The client address is taken only from the ``name[address]:``
field that smtpd itself writes right after ``warning:``; the pattern is anchored at the
start of the line, through the time stamp, the host name and the program name, so text
the client controls (the SASL user name, which comes later on the line) can never
supply an address.  Host names that smtpd logs never contain ``[``, ``]`` or blanks, and
the address must be a literal IPv4 or IPv6 address (checked again by the caller with
:mod:`ipaddress`).

``Connection lost to authentication server`` is logged the same way when Dovecot or
saslauthd goes away; that is the server's fault, not the client's, and is not counted.

Speed: the log is read in 1 MiB blocks and searched with ``bytes.find`` for the fixed
text ``" authentication failed: "``; only the lines containing it go through the regular
expression, so a million ordinary lines cost little more than reading them.  Memory is
one block plus one partial line, whatever the size of the log.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1 << 20
# Longer lines are skipped unread: smtpd's warnings are far shorter (Postfix cuts log
# records at a few KiB), so such a line cannot be one we count.
MAX_LINE = 1 << 16
NEEDLE = b" authentication failed: "

_TIMESTAMP = (
    rb"(?P<ts>[A-Z][a-z]{2} [ 0-3]?\d \d\d:\d\d:\d\d(?:\.\d+)?"
    rb"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
)
FAILURE_RE = re.compile(
    _TIMESTAMP
    + rb" [^\s\[\]]+"  # the logging host
    # postfix/smtpd, postfix/submission/smtpd, postfix-out/smtps/smtpd, ...
    + rb" postfix[^\s/\[\]]*(?:/[^\s/\[\]]+)*/smtpd\[\d+\]: warning: "
    + rb"[^\s\[\]]+\[(?P<addr>[0-9A-Fa-f:.]+)\]: "
    + rb"SASL [A-Za-z0-9_-]+ authentication failed: (?P<reason>[^\r\n]*)"
)

# Reasons that say the authentication server failed, not the client.
SERVER_FAULTS: tuple[bytes, ...] = (b"Connection lost to authentication server",)

_MONTHS = {
    name: i + 1 for i, name in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
}
# A classic time stamp has no year: it is this year's, unless that is more than this far
# in the future (a December line read in January).
_FUTURE_SLACK = 2 * 86400

OnFailure = Callable[[bytes, bytes], None]


def parse_time(ts: bytes, now: float) -> float | None:
    """Seconds since the epoch for a log time stamp; ``None`` when it cannot be read.

    ISO 8601 stamps carry their offset; without one, and for the classic
    ``Mmm dd HH:MM:SS`` form, the time is local (as syslog and postlogd write it).
    """
    try:
        if ts[:1].isdigit():
            stamp = dt.datetime.fromisoformat(ts.decode("ascii"))
            return stamp.timestamp()
        mon, day_text, clock = ts.split()
        month = _MONTHS[mon]
        day = int(day_text)
        hms, _, frac = clock.decode("ascii").partition(".")
        hour, minute, second = (int(x) for x in hms.split(":"))
        fraction = float("0." + frac) if frac else 0.0
        year = time.localtime(now).tm_year
        for y in (year, year - 1):
            when = time.mktime((y, month, day, hour, minute, second, 0, 0, -1)) + fraction
            if when <= now + _FUTURE_SLACK:
                return when
        return None
    except (KeyError, ValueError, OverflowError, UnicodeDecodeError):
        return None


def is_client_fault(reason: bytes) -> bool:
    return not reason.startswith(SERVER_FAULTS)


class Scanner:
    """Feed it byte streams; it calls ``on_failure(address, timestamp)`` per failure.

    Only complete lines are consumed from a live log: a last line without its newline is
    being written and is left for the next run (``final=False``).  A rotated or gzipped
    file is finished (``final=True``): its last line counts even without a newline.
    """

    def __init__(self, on_failure: OnFailure) -> None:
        self.on_failure = on_failure
        self.lines = 0
        self.failures = 0
        self.server_faults = 0
        self.long_lines = 0
        self.consumed = 0  # bytes consumed by the current (or last) feed()

    def _block(self, block: bytes) -> None:
        """Scan a block of whole lines (it ends with a newline, or is a final line)."""
        self.lines += block.count(b"\n")
        find = block.find
        pos = find(NEEDLE)
        while pos != -1:
            start = block.rfind(b"\n", 0, pos) + 1
            end = find(b"\n", pos)
            if end == -1:
                end = len(block)
            m = FAILURE_RE.match(block, start, end)
            if m is not None:
                if is_client_fault(m["reason"]):
                    self.failures += 1
                    self.on_failure(m["addr"], m["ts"])
                else:
                    self.server_faults += 1
            pos = find(NEEDLE, end)

    def feed(self, stream: BinaryIO, final: bool) -> int:
        """Scan ``stream`` to its end; return the number of bytes consumed.

        If the stream raises (damaged gzip data), ``self.consumed`` still says how many
        bytes were scanned before that.
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
            self._block(buf[:cut] if cut < len(buf) else buf)
            self.consumed += cut
            carry = buf[cut:]
        if final and carry:
            self._block(carry)
            self.lines += 1
            self.consumed += len(carry)
        return self.consumed
