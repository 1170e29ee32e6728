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

Speed: the log is read in blocks (:class:`mailops.maillog.lines.LineReader`) and searched
with ``bytes.find`` for the fixed text ``" authentication failed: "``; only the lines
containing it go through the regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailops.maillog.lines import CHUNK as CHUNK  # re-exported: the tests cut blocks by it
from mailops.maillog.lines import LineReader
from mailops.maillog.stamps import TS

NEEDLE = b" authentication failed: "

FAILURE_RE = re.compile(
    TS
    + rb" [^\s\[\]]+"  # the logging host
    # postfix/smtpd, postfix/submission/smtpd, postfix-out/smtps/smtpd, ...
    + rb" postfix[^\s/\[\]]*(?:/[^\s/\[\]]+)*/smtpd\[\d+\]: warning: "
    + rb"[^\s\[\]]+\[(?P<addr>[0-9A-Fa-f:.]+)\]: "
    + rb"SASL [A-Za-z0-9_-]+ authentication failed: (?P<reason>[^\r\n]*)"
)

# Reasons that say the authentication server failed, not the client.
SERVER_FAULTS: tuple[bytes, ...] = (b"Connection lost to authentication server",)

OnFailure = Callable[[bytes, bytes], None]


def is_client_fault(reason: bytes) -> bool:
    return not reason.startswith(SERVER_FAULTS)


class Scanner(LineReader):
    """Feed it byte streams; it calls ``on_failure(address, timestamp)`` per failure."""

    def __init__(self, on_failure: OnFailure) -> None:
        super().__init__()
        self.on_failure = on_failure
        self.failures = 0
        self.server_faults = 0

    def block(self, block: bytes) -> None:
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
