"""The delivery lines of the mail log, per transport: throttle replies and deliveries.

A line counts when a transport's own SMTP client wrote it (the program name is
``postfix/<transport>/smtp``, from the ``-o syslog_name=postfix/<transport>`` every
per-destination and pool transport has in master.cf)::

    Dec  7 20:31:24 mail1 postfix/gmail/smtp[123]: 4Xyz: to=<a@gmail.test>,
        relay=inbox.test[198.51.100.40]:25, delay=0.1, delays=0/0/0/0, dsn=4.7.28,
        status=deferred (host inbox.test[198.51.100.40] said: 421 4.7.28 ... (in reply
        to RCPT TO command))

``status=deferred`` with a reply the classifier calls a throttle is a signal;
``status=sent`` is a delivery.  A deferral that only repeats an earlier one ("delivery
temporarily suspended: ..." when the queue manager has given up on the destination for
a while) is not a new signal.  The log is read with maillog's LineReader (whole lines,
bounded memory) and followed across runs with :func:`mailops.maillog.follow.follow`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailops.maillog.lines import LineReader
from mailops.maillog.stamps import TS, stamp_time
from mailops.throttle.classify import classify
from mailops.throttle.steps import Seen

_LINE = re.compile(
    TS
    + rb" [^\s\[\]]+ postfix[^\s/\[\]]*/(?P<transport>[^\s/\[\]]+)/smtp\[\d+\]: "
    + rb"[0-9A-Za-z]+: to=<[^>]*>, .*?\bdsn=[245]\.\d{1,3}\.\d{1,3}, "
    + rb"status=(?P<status>sent|deferred|bounced) \((?P<diag>.*)\)\s*\Z"
)
_REPEAT = "delivery temporarily suspended:"


class Reader(LineReader):
    """Feeds ``seen[transport]`` for the transports in ``wanted``."""

    def __init__(self, wanted: set[str], clock: float, on_seen: Callable[[str], Seen]) -> None:
        super().__init__()
        self.wanted = {t.encode() for t in wanted}
        self.clock = clock
        self.seen_for = on_seen
        self.signals = 0
        self.other_deferrals = 0
        self.deliveries = 0

    def block(self, block: bytes) -> None:  # LineReader's hook: a block of whole lines
        self.lines += block.count(b"\n")
        for line in block.split(b"\n"):
            if b"/smtp[" in line and b" status=" in line:
                self.line(line.rstrip(b"\r"))

    def line(self, line: bytes) -> None:
        m = _LINE.match(line)
        if m is None or m["transport"] not in self.wanted:
            return
        transport = m["transport"].decode()
        when = stamp_time(m["ts"], self.clock) or self.clock
        seen = self.seen_for(transport)
        seen.last_activity_at = max(seen.last_activity_at, when)
        status = m["status"]
        if status == b"sent":
            seen.delivered += 1
            self.deliveries += 1
            return
        if status != b"deferred":
            return
        diag = m["diag"].decode("utf-8", "replace")
        verdict = None if diag.startswith(_REPEAT) else classify(diag)
        if verdict is None or not verdict.throttle:
            self.other_deferrals += 1
            return
        self.signals += 1
        seen.add_signal(verdict.provider, verdict.rule, verdict.reply.text, when)
