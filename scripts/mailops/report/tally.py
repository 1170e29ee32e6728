"""Count a Postfix log the way pflogsumm 1.1.5 counts it, in one streaming pass.

Every grand total means exactly what it means in pflogsumm (the Debian package's
``/usr/sbin/pflogsumm``, read line by line to write this):

received
    ``smtpd``/``postscreen`` lines ``QUEUEID: client=...`` plus ``pickup`` lines with
    ``sender=`` or ``uid=``.  A message whose session ended before DATA still counts.
delivered
    recipient lines ``to=<...>, relay=..., delay=..., status=sent`` from any delivery
    agent, except those whose text says ``forwarded as`` (those are **forwarded**).
deferred / deferrals
    distinct queue ids with at least one ``status=deferred`` line / all such lines.
bounced
    ``status=bounced`` lines (one per recipient).
rejected, reject warnings, held, discarded
    ``reject``, ``reject_warning``, ``hold`` and ``discard`` lines of ``smtpd`` and
    ``postscreen`` (``NOQUEUE: reject: RCPT from ...``) and the ``reject``/
    ``milter-reject``, ``warning``, ``hold`` and ``discard`` lines of ``cleanup`` about a
    header, body or END-OF-MESSAGE.  The percentage is rejected / (delivered + rejected
    + discarded), truncated.
bytes received
    sizes from ``qmgr`` ``from=<...>, size=N`` lines, counted once per queue id, for
    messages seen being received (client= or pickup).
bytes delivered
    that size once per delivered recipient.
senders, sending hosts/domains
    distinct sender addresses (domain part lower-cased, ``from=<>`` for the null
    sender) and their domains (the client's host or address when the sender has none)
    of received messages.
recipients, recipient hosts/domains
    distinct addresses and domains (everything after the first ``@``) with a delivery.

Timestamps: classic syslog (``Nov 23 10:00:01 host ...``, which is also what Postfix's
own ``maillog_file`` writes) and RFC 3339 / ISO 8601 (``2024-11-23T10:00:01.123+01:00
host ...``).  pflogsumm skips ISO lines whose offset is not ``Z`` or ``+hh:mm``; we also
read ``+hhmm`` and no offset (journald's ``short-iso``), so on such logs we count more.

Queue ids are pflogsumm's: not qualified by host.  A queue id seen again (another host
writing to the same file, or the same host using it again later) is the same message
to it: its first size stays (later ``size=`` lines are skipped, so its sender is not
counted again, and its deliveries count that size), and it is one deferred message
however many hosts deferred it.  We count the same.  (``mailops report --cluster`` keeps
each host's log apart, where a queue id of two hosts is two messages: build.py.)

Memory stays bounded where pflogsumm's grows with the log, but for 16 bytes a message:
a size goes from the per-queue-id table to a compact archive (``SizeArchive``) when
``qmgr`` logs ``removed``, distinct counts (addresses, deferred queue ids) keep an 8-byte
hash each in arrays, and the per-domain and reason tables are pruned to their largest
entries once they grow past a cap (``truncated`` in the output says so; counts in a
pruned table are then lower bounds).
"""

from __future__ import annotations

import gc
import heapq
import math
import re
from array import array
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

# bytes read at a time (the lines of a block are counted together)
from mailops.maillog.files import CHUNK as CHUNK
from mailops.maillog.lines import LineBuffer
from mailops.maillog.stamps import MONTH_NAMES

# ---------------------------------------------------------------------- line grammar
#
# One regular expression reads a whole buffer of lines (finditer, so the per-line loop
# runs in C and lines that cannot count never reach Python).  Each match starts at the
# newline before a line, reads the timestamp (group ``ts``: the date and the hour, the
# key of the hourly buckets), the host and pflogsumm's program name (``cmd``), then,
# after "[pid]: ":
#
# * a queue id of letters and digits and ": " (group ``fq``), then a *fast* shape: a
#   delivery (``to=<...>, relay=...status=...``), a ``from=<...>, size=N`` line,
#   ``client=``, ``removed``, pickup's ``uid=``, cleanup's header and body actions, or
#   an smtpd ``reject:`` (also ``reject_warning``, ``hold``, ``discard``).  The loop
#   takes these only from programs whose name holds no ``<``, ``=``, ``,`` or space, so
#   pflogsumm's unanchored patterns cannot match any earlier in the line and the
#   captures are the ones it gets.  It still checks pflogsumm's order of tests and
#   hands the line to the general path when one of them comes first; or
# * the *general* shape, pflogsumm's own split (``.*?: QUEUEID``), after which the line
#   goes through pflogsumm's chain of tests one by one (``Tally._line``); or
# * nothing, for a line that cannot count: the rest of it lacks every piece that the
#   patterns pflogsumm counts with need (``_danger``: "client=", "reject", "="...), or
#   it is a ``message-id=<...>`` without a space, or a warning but a SASL failure.  The
#   match fails there and the search moves on in C.
#
# Timestamps: a classic one is read as pflogsumm reads it; an ISO one may also have a
# space for the ``T``, a comma for the decimal point, ``+hhmm`` or no offset.
#
# Speed, in CPython's ``re``: a class that leaves out two bytes or more, such as ``[^,\n]``,
# is written as ranges (``_but``), which ``re`` tests as a bitmap, three times faster; ``.``
# is the fastest way to the end of a line; a lookahead such as ``(?!.*=)`` runs to the
# end of the line and back; a pid commits the match to its branch, so a line that
# cannot count fails at once; branches start with a literal where they can.
#
# ``*+ ++ ?+`` follow a single character only (an optional group is ``(?>...|)``, a repeated
# one greedy where no retry can match): Python 3.11.0-3.11.4 (Debian 12 has 3.11.2) resume
# where a failed pass of a possessive group stopped, not where it began:
# ``(?:a(?:bc|x))?+(.*)`` on ``abd`` gives ``bd`` (CPython gh-100061).


def _but(chars: bytes) -> bytes:
    """A class of every byte but ``chars``, written as ranges: ``re`` compiles a class of
    three ranges or more to a bitmap, tested in one step, where ``[^,\\n]`` is tested
    against each byte it leaves out."""
    runs: list[list[int]] = []
    for byte in range(256):
        if byte not in chars:
            if runs and runs[-1][1] == byte - 1:
                runs[-1][1] = byte
            else:
                runs.append([byte, byte])
    return b"[%s]" % b"".join(
        b"\\x%02x-\\x%02x" % (lo, hi) if lo != hi else b"\\x%02x" % lo for lo, hi in runs
    )


_SPACE = b" \t\n\r\x0b\x0c"  # \s
_WORD = _but(_SPACE)  # \S
_NOT_COMMA = _but(b",\n")
_NOT_GT = _but(b">\n")
_CLASSIC_TS = rb".{3} [ \d]\d \d\d|.{3} \d \d\d"
_ISO_TS = rb"\d{4}-\d\d-\d\d[T ]\d\d"
_AFTER_TS = rb"[0-:]{6}(?: |" + _WORD + rb"++ )" + _WORD + rb"++ "
# pflogsumm's program name ("(?=\[)" makes it whole, as pflogsumm's [^\[:]* takes it):
# smtpd and postscreen (read for client= and rejects), cleanup (header and body actions),
# pickup (sender=, uid=), master (never counted) and, for every other name made of
# letters, digits and "._/-", the programs whose lines reach pflogsumm's last branch
# (from=<...>, size=, to=<...>).  A name with other bytes could hold a piece of the
# patterns pflogsumm searches for: its lines always go to the general path.
_CMD = (
    rb"(?>(?P<cmd>(?:smtpd|postscreen)(?=\[)(?P<rcv>)|cleanup(?=\[)(?P<cln>)"
    rb"|pickup(?=\[)(?P<pck>)|master(?=\[)|[0-9A-Z_a-z./-]*+(?=\[)(?P<dlv>)|"
    + _but(b"[:\n") + rb"*+))"
)  # fmt: skip
_SPECIAL_FIRST = (
    rb"(?:warning|fatal|panic|reject|reject_warning|hold|discard)(?!" + _but(b":" + _SPACE) + b")"
)


def _danger(rcv_before: bytes) -> bytes:
    """What the rest of a line needs for pflogsumm's tests to count it: for smtpd and
    postscreen "]: word: client=" or "]: word: reject: " (hold, discard), ``rcv_before``
    coming before "client=" ("(?:.*: |)" right after a queue id, which may be pflogsumm's
    "word"); for the programs whose lines reach pflogsumm's last branch an "=" (every
    pattern there has one: from=<...>, size=, to=<...>) or ": removed" at the end (the
    loop forgets a queue id on that); for cleanup also a header or body action; for any
    other program (pickup, master, a name the loop does not read) nothing: its lines are
    always read."""
    return (
        rb"(?(rcv)" + rcv_before + rb"(?:client=|reject|hold: |discard: )"
        rb"|(?(dlv)(?:.*=|.*: removed(?=\n|\Z))|(?(cln)(?:.*=|.*: removed(?=\n|\Z)"
        rb"|.*: (?:header|body|END-OF-MESSAGE) )|)))"
    )


# The fast shapes, after "QUEUEID: ".  A delivery's tail is read up to the first "=" (a
# "from=<...>, size=" that pflogsumm would test first) or "forwarded as ": the loop sends
# a line with more than that (group ``more``, or status "sent") to the general path.
_FAST = (
    rb"(?(dlv)|(?!))to=<(?P<to>" + _but(b"@>\n") + rb"++@(?P<dom>" + _NOT_GT + rb"*+)|"
    + _NOT_GT + rb"*+)>, (?>orig_to=<" + _NOT_GT + rb"*+>, |)relay=" + _NOT_COMMA
    + rb"++, (?>conn_use=" + _NOT_COMMA + rb"++, |)delay=(?P<delay>" + _NOT_COMMA
    + rb"++), (?>delays=" + _NOT_COMMA + rb"++, |)(?>dsn=" + _NOT_COMMA + rb"++, |)status="
    rb"(?:sent(?!" + _WORD + b")" + _but(b"\n=f") + rb"*+(?:f(?!orwarded as )"
    + _but(b"\n=f") + rb"*+)*(?:(?=\n|\Z)(?P<sent>)|forwarded as " + _but(b"\n=")
    + rb"*+(?=\n|\Z)(?P<forwarded>))"
    rb"|(?P<status>" + _WORD + rb"++)" + _but(b"\n=") + rb"*+(?P<more>.*+))"
    rb"|(?(dlv)|(?!))from=<(?P<from>" + _NOT_GT + rb"*+)>, size=(?P<size>\d++)(?P<sized>)"
    rb"|(?(rcv)|(?!))client=(?P<client>." + _NOT_COMMA + rb"*+)(?P<received>)"
    rb"|(?(dlv)|(?(cln)|(?!)))removed(?=\n|\Z)(?P<removed>)"
    # pickup's "uid=N from=<...>" or "sender=<...>", with no from=<...>, size= or to=<...>
    rb"|(?(pck)|(?!))(?:uid|sender)=(?!.*, size=)(?!.*to=<).*+(?P<picked>)"
    # cleanup's header and body actions (_CLEANUP_ACTION reads them from the queue id on)
    rb"|(?(cln)|(?!))(?=(?:milter-|)(?:reject|warning|hold|discard): "
    rb"(?:header|body|END-OF-MESSAGE) ).*+(?P<action>)"
    # (with no "[digits]: word: client=" in the line, which pflogsumm would count as received)
    rb"|(?(rcv)|(?!))(?!.*: client=)(?P<rkind>reject|reject_warning|hold|discard): (?P<rstage>"
    + _WORD + rb"++) from " + _WORD + rb"+?: (?>\d{3} [\d.]++ |)(?><" + _NOT_GT + rb"*+>: |)"
    rb"(?P<rtext>" + _but(b";,\n") + rb"*+)(?>[;,] (?:Client host|client) \["
    + _but(b"]\n") + rb"*+\] blocked using (?P<rbl>" + _but(b";" + _SPACE) + rb"++)|).*+"
    rb"(?P<rejected>)"
)  # fmt: skip


def line_pattern(syslog_name: str = "postfix", dates: DaySpec | None = None) -> re.Pattern[bytes]:
    """The buffer pattern; with ``dates`` only lines of that day match (pflogsumm's -d).

    After "PROGRAM[pid]: " the first ": " is pflogsumm's, so its queue id comes next: a
    line that cannot count fails the whole pattern there (the search moves on in C); a
    queue id of letters and digits (``fq``) is followed by a fast shape or, if the line
    may count, goes to the general path (group ``gen``); anything else is pflogsumm's
    general split (``qidp``, ``qid``).  A pid commits to that branch (the atomic group is
    not tried again without it); without one, pflogsumm's own lazy search (``qid3``).
    """
    if dates is None:
        ts = _CLASSIC_TS + b"|" + _ISO_TS
    else:
        classic = b"|".join(re.escape(d) for d in dates.classic)
        ts = b"(?:" + classic + rb") \d\d|" + re.escape(dates.iso) + rb"[T ]\d\d"
    # "postfix" comes once: the branches after it start with different bytes
    script = rb"(?P<cmd2>-script|)(?:\[\d++\]|): (?P<qid2>[^:\s]+).*+"
    if syslog_name == "postfix":
        start, script = b"postfix(?:", b"|" + script + b")"
    else:
        name = re.escape(syslog_name.encode())
        start, script = b"(?:(?:postfix|" + name + b")", b"|postfix" + script + b")"
    return re.compile(
        rb"\n(?>(?P<ts>" + ts + b")" + _AFTER_TS + b")(?P<rest>)"
        + start + rb"/(?>submission/|smtps/|)" + _CMD
        + rb"(?>\[\d++\]: (?P<pid>)|)(?(pid)"
        + rb"(?>(?!" + _SPECIAL_FIRST + rb")(?:"
        + rb"(?P<fq>[0-9A-Za-z]++): (?>(?(cln)message-id=<(?!.* )(?P<skipm>)|(?!))|)"
        + rb"|(?=" + _but(b":" + _SPACE) + rb")(?!" + _danger(b".*: ") + rb")(?P<skip>))"
        + rb"|warning: (?:(?(rcv)(?!.*authentication failed)|(?(cln)(?!)|))(?P<skipw>)"
        + rb"|(?(rcv)(?P<sasl>)|(?!)))|)"
        + rb"(?(skip)(?!)|(?(skipw)(?!)|(?(skipm)(?!)|(?(sasl).*+|(?(fq)(?:" + _FAST
        + rb"|(?=" + _danger(b"(?:.*: |)") + rb").*+(?P<gen>))"
        + rb"|(?:(?P<qidp>[^:\s]++)|.*?: (?P<qid>[^:\s]++)).*+)))))"
        + rb"|.*?: (?P<qid3>[^:\s]++).*+)"
        + script
    )  # fmt: skip


class DaySpec:
    """The date prefixes of one day: ``Nov 23``/``Nov  3`` (syslog's, and pflogsumm's),
    ``Nov 3``, ``Nov 03`` (what Postfix's own ``maillog_file`` writes), ``2024-11-03``."""

    def __init__(self, year: int, month: int, day: int) -> None:
        mon = MONTH_NAMES[month - 1].encode()
        self.classic = tuple(
            dict.fromkeys([b"%s %2d" % (mon, day), b"%s %d" % (mon, day), b"%s %02d" % (mon, day)])
        )
        self.iso = b"%04d-%02d-%02d" % (year, month, day)


_RELAY = re.compile(rb">, relay=(" + _NOT_COMMA + rb"+), ")
_SOLARIS_ID = re.compile(rb": \[ID \d+ [^\]]+\] ")
# pflogsumm's "/cleanup\[\d+\]: .*?\b(...): (header|body|END-OF-MESSAGE) (.*)$", searched
# as two patterns: the lazy ".*?" tries the rest at every byte, a search skips ahead
_CLEANUP_AT = re.compile(rb"/cleanup\[\d+\]: ")
_CLEANUP_ACTION = re.compile(
    rb"\b((?:milter-)?reject|warning|hold|discard): (header|body|END-OF-MESSAGE) (.*)$"
)
_CLIENT = re.compile(rb"\[\d+\]: \w+: client=(.+?)(?:,|$)")
_SMTPD_ACTION = re.compile(rb"\[\d+\]: \w+: (reject(?:_warning)?|hold|discard): ")
_FROM_SIZE = re.compile(rb"from=<([^>]*)>, size=(\d+)")
_DELIVERY = re.compile(
    rb"to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=(" + _NOT_COMMA + rb"+), (?:conn_use="
    + _NOT_COMMA + rb"+, )?delay=(" + _NOT_COMMA + rb"+), (?:delays=" + _NOT_COMMA
    + rb"+, )?(?:dsn=" + _NOT_COMMA + rb"+, )?status=(" + _WORD + rb"+)(.*)$"
)  # fmt: skip
_SASL = re.compile(
    rb"warning: " + _but(_SPACE + b"[") + rb"*\[(" + _but(_SPACE + b"]") + rb"*)\]: SASL ("
    + _WORD + rb"+) authentication failed: (.*)"
)  # fmt: skip
_DEFER_REASON = re.compile(rb", status=deferred \((" + _but(b")\n") + rb"+)")
_BOUNCE_REASON = re.compile(rb", status=bounced \((.+)\)")
_NUMBER = re.compile(rb"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

_NL = re.compile(rb"\n")
SPECIAL_QIDS = frozenset(
    (b"warning", b"fatal", b"panic", b"reject", b"reject_warning", b"hold", b"discard")
)
ROWS = ("received", "delivered", "deferred", "bounced", "rejected")
# indexes into a per-recipient-domain row (the delays in microseconds, ints: see micro)
D_SENT, D_BYTES, D_DEFER, D_BOUNCE, D_DELAY_SUM, D_DELAY_MAX = range(6)


# ---------------------------------------------------------------------- helpers


def _keep(
    waiting: bytearray, waited: set[int], qid: bytes, buf: bytes, m: re.Match[bytes], end: int
) -> None:
    """Add the line a match of the buffer pattern starts on to ``waiting``, with a newline,
    and the hash of its queue id to ``waited``."""
    waited.add(hash(qid))
    stop = buf.find(b"\n", m.end(), end)
    if stop >= 0:
        waiting += buf[m.start() + 1 : stop + 1]
    else:
        waiting += buf[m.start() + 1 : end]
        waiting += b"\n"


def _recipient(addr: bytes, dom: bytes | None) -> tuple[bytes, bytes]:
    """pflogsumm's recipient and its domain: the domain part lower-cased (from the first
    ``@``); the domain is what follows that ``@``, or the whole address without one."""
    if dom is not None:
        low = dom.lower()
        return addr[: len(addr) - len(dom)] + low, low
    if addr.startswith(b"@"):
        addr = addr.lower()
    return addr, addr


def perl_number(text: bytes) -> float:
    """What Perl makes of a string used as a number: its leading numeric part, else 0."""
    try:
        return float(text)
    except ValueError:
        m = _NUMBER.match(text)
        return float(m.group().strip()) if m else 0.0


def micro(text: bytes) -> float:
    """A delay in microseconds, as a whole number (an int): sums of them are exact, so
    the same in any order, as when parts of a log are counted apart (an infinite or
    NaN delay, which only a made-up log has, stays a float)."""
    try:
        value = float(text)
    except ValueError:
        value = perl_number(text)
    return round(value * 1_000_000) if math.isfinite(value) else value


def perl_true(value: bytes | None) -> bool:
    """Perl's truth of a string: undef, "" and "0" are false."""
    return value is not None and value != b"" and value != b"0"


_GD_V4 = re.compile(rb"(" + _but(b"[\n") + rb"*)\[(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\]")
_GD_SLASH = re.compile(rb"([^/\n]*)/([0-9a-f.:]+)", re.IGNORECASE)
_GD_ANY = re.compile(rb"(" + _but(b"[(/\n") + rb"*)[\[(/](" + _but(b"])\n") + rb"+)[\])]:?\d*$")
_NOT_DOT = _but(b".\n")
_GD_TAIL = re.compile(
    rb".*\.("
    + _NOT_DOT
    + rb"+)\.("
    + _NOT_DOT
    + rb"{3}|"
    + _NOT_DOT
    + rb"{2,3}\."
    + _NOT_DOT
    + rb"{2})$"
)


def gimme_domain(client: bytes) -> bytes | None:
    """pflogsumm's ``gimme_domain``: "host.dom.ain[addr]" -> "dom.ain", or the address.

    Its quirks are kept, since the sending-domain count depends on them: only a
    three-letter or ``xx.yy`` top level is shortened (``mail.gmail.com`` becomes
    ``gmail.com`` but ``mail.gmail.test`` stays), ``unknown`` becomes the address.
    """
    m = _GD_V4.match(client) or _GD_SLASH.match(client) or _GD_ANY.match(client)
    domain, addr = (m.group(1), m.group(2)) if m else (None, None)
    if not domain or domain == b"unknown":
        return addr
    t = _GD_TAIL.match(domain)
    if t:
        return (t.group(1) + b"." + t.group(2)).lower()
    return domain


def said_trim(text: bytes, limit: int) -> bytes:
    """pflogsumm's ``said_string_trimmer``: drop "host ... said: " and "xxx: " prefixes."""
    while len(text) > limit:
        if b" said: " in text:
            text = text.rpartition(b" said: ")[2]
        elif b":" in text:
            text = text.split(b":", 1)[1].lstrip(b" ")
        else:
            return text[: limit - 3] + b"..."
    return text


def trim(text: bytes, limit: int) -> bytes:
    return text[: limit - 3] + b"..." if len(text) > limit else text


_REJECT_DETAIL = re.compile(
    rb"\b(?:reject|reject_warning|hold|discard): ("
    + _WORD
    + rb"+) from "
    + _WORD
    + rb"+?: (?:\d{3} [\d.]+ )?(?:<"
    + _NOT_GT
    + rb"*>: )?("
    + _but(b";,\n")
    + rb"*)(?:[;,] "
    rb"(?:Client host|client) \["
    + _but(b"]\n")
    + rb"*\] blocked using ("
    + _but(b";" + _SPACE)
    + rb"+))?"
)
_REJECT_TEXTS: dict[tuple[bytes, bytes | None], bytes] = {}


def reject_text(text: bytes, rbl: bytes | None) -> bytes:
    """The reason of a reject, shortened the way pflogsumm shortens it (not byte for byte).

    ``text`` is what follows the status codes and any ``<address>:`` up to the first
    ``;`` or ``,``; a DNSBL reject becomes ``blocked using LIST``; "Recipient address
    rejected: X: more" keeps "Recipient address rejected: X".
    """
    key = (text, rbl)
    known = _REJECT_TEXTS.get(key)
    if known is not None:
        return known
    if rbl is not None:
        reason = b"blocked using " + rbl
    elif text.startswith((b"Sender address rejected: ", b"Recipient address rejected: ")):
        head, _, tail = text.partition(b": ")
        reason = head + b": " + tail.split(b":", 1)[0]
    else:
        reason = trim(text, 66)
    if len(_REJECT_TEXTS) >= 4096:
        _REJECT_TEXTS.clear()
    _REJECT_TEXTS[key] = reason
    return reason


class Distinct:
    """Exact count of distinct byte strings, keeping only their 64-bit hashes, 8 bytes each.

    A hash goes to one of 16 arrays by its low bits (``add``; hot loops write
    ``parts[h & 15].append(h)``), and an array that doubled since its repeats were last
    dropped drops them again (``tidy``, between blocks of lines): 8 to 16 bytes per
    distinct string, where a set of hashes takes about 70.  Two different strings share
    a hash with probability about n**2 / 2**65 (one in 10**8 for a million addresses);
    that would undercount by one.
    """

    __slots__ = ("kept", "parts")

    def __init__(self) -> None:
        self.parts = [array("q") for _ in range(16)]
        self.kept = [0] * 16

    def add(self, key: bytes) -> None:
        h = hash(key)
        self.parts[h & 15].append(h)

    def tidy(self, force: bool = False) -> None:
        """Drop the repeats of every array that doubled (of every array, with ``force``)."""
        for n, part in enumerate(self.parts):
            if force or len(part) > 2 * self.kept[n] + 1024:
                self.parts[n] = array("q", set(part))
                self.kept[n] = len(self.parts[n])

    def __len__(self) -> int:
        self.tidy(force=True)
        return sum(self.kept)


class SizeArchive:
    """The sizes of messages that went (``removed``), by a 40-bit hash of the queue id:
    pflogsumm never forgets a queue id's size, so a queue id used again (by the same host
    later, or by another host writing to the same file) keeps the first message's size,
    and its ``from=<...>, size=`` lines are skipped.

    An open-addressing table in one array, at most two thirds full: each slot holds the
    hash (40 bits) and the size (24 bits; a size of 16 MiB or more goes to ``big``), 0 a
    free slot, so 12 to 24 bytes a message where a dict of them takes about 100.  Two
    queue ids share a 40-bit hash with probability about n/2**40 per look-up (one in ten
    million for 100,000 messages): that one would take the other's size."""

    __slots__ = ("big", "count", "mask", "table")
    BIG = (1 << 24) - 1

    def __init__(self, slots: int = 1024) -> None:
        self.table = array("Q", bytes(8 * slots))
        self.mask = slots - 1
        self.count = 0
        self.big: dict[int, int] = {}

    def __bool__(self) -> bool:
        return self.count > 0

    @staticmethod
    def key(h: int) -> int:
        """The 40 bits of ``hash(qid)`` kept (never 0, which marks a free slot)."""
        return (h >> 24) & 0xFFFFFFFFFF or 1

    def add(self, qid: bytes, size: int) -> None:
        """Keep ``size`` (non-zero) for ``qid``, which must have none yet (a queue id with
        a size kept never gets another: its size lines are skipped)."""
        k = self.key(hash(qid))
        if size >= self.BIG:
            self.big[k] = size
            size = self.BIG
        self._put(k << 24 | size)

    def _put(self, packed: int) -> None:
        table, mask = self.table, self.mask
        k = packed >> 24
        i = k & mask
        while table[i]:
            if table[i] >> 24 == k:
                return
            i = (i + 1) & mask
        table[i] = packed
        self.count += 1
        if 3 * self.count > 2 * mask:
            old = self.table
            self.table = array("Q", bytes(16 * (mask + 1)))
            self.mask = 2 * mask + 1
            self.count = 0
            for packed in old:
                if packed:
                    self._put(packed)

    def _find(self, k: int) -> int:
        table, mask = self.table, self.mask
        i = k & mask
        packed = table[i]
        while packed:
            if packed >> 24 == k:
                size = packed & self.BIG
                return self.big[k] if size == self.BIG else size
            i = (i + 1) & mask
            packed = table[i]
        return 0

    def get(self, qid: bytes) -> int:
        """The size kept for ``qid``, 0 if none."""
        return self._find(self.key(hash(qid)))

    def holds_any(self, hashes: Iterable[int]) -> bool:
        """Whether a size is kept for any of these queue id hashes (``hash(qid)``)."""
        return any(self._find(self.key(h)) for h in hashes)

    def export(self) -> tuple[array[int], dict[int, int]]:
        """What it holds, compactly (for ``update``)."""
        return array("Q", (p for p in self.table if p)), self.big

    def update(self, held: tuple[array[int], dict[int, int]]) -> None:
        """Add what another archive (``export``) holds."""
        packed, big = held
        self.big.update(big)
        for p in packed:
            self._put(p)


def prune(table: dict[Any, Any], keep: int, weight: Callable[[Any], float]) -> None:
    """Keep the ``keep`` heaviest entries of ``table`` (in place)."""
    best = heapq.nlargest(keep, table.items(), key=lambda kv: weight(kv[1]))
    table.clear()
    table.update(best)


# ---------------------------------------------------------------------- the tally


class Tally(LineBuffer):
    """Feed it log lines (bytes); read the totals and tables afterwards.

    ``day`` limits the count to the lines of that day (pflogsumm's ``-d``).  ``cap`` bounds each
    per-domain, per-client and per-reason table; ``state_cap`` bounds the queue ids
    remembered for messages still in flight.
    """

    def __init__(
        self,
        syslog_name: str = "postfix",
        day: DaySpec | None = None,
        cap: int = 5000,
        state_cap: int = 200_000,
    ) -> None:
        self.syslog_name = syslog_name
        self.pattern = line_pattern(syslog_name, day)
        self.day = day
        self.pending = b""
        self.cap = cap
        self.state_cap = state_cap
        self.lines = 0
        self.received = self.delivered = self.forwarded = 0
        self.deferrals = self.bounced = 0
        self.rejected = self.reject_warnings = self.held = self.discarded = 0
        self.bytes_received = self.bytes_delivered = 0
        self.fatal = self.panic = 0
        self.sasl_failures = self.sasl_server_faults = 0
        self.senders = Distinct()
        self.sending_domains = Distinct()
        self.recipients = Distinct()
        self.recipient_domains = Distinct()
        self.deferred_ids = Distinct()  # queue ids with a deferral (pflogsumm never forgets one)
        # (day key, hour) -> [received, delivered, deferred, bounced, rejected]
        self.buckets: dict[bytes, list[int]] = {}
        self.rcpt_domains: dict[bytes, list[float]] = {}
        self.sender_domains: dict[bytes, list[int]] = {}
        self.bounce_reasons: dict[tuple[bytes, bytes], int] = {}
        self.defer_reasons: dict[tuple[bytes, bytes], int] = {}
        self.reject_reasons: dict[tuple[bytes, bytes, bytes], int] = {}
        self.sasl_clients: dict[bytes, int] = {}
        self.truncated: set[str] = set()
        # per queue id: sizes until "removed" (then in ``retired``, for good); clients
        # until the message's size line (or never: pflogsumm keeps them)
        self.sizes: dict[bytes, int] = {}
        self.retired = SizeArchive()
        self.clients: dict[bytes, bytes | None] = {}
        self.evicted = 0
        # caches, each emptied when it reaches 4096 entries
        self.domains_of: dict[bytes, bytes] = {}  # client -> gimme_domain(client) or b""
        self.hosts: dict[bytes, bytes] = {}  # host of "host[IPv4]" -> gimme_domain(client)
        # sender with a domain -> (hash of it as counted, hash of its domain, domain's row)
        self.senders_of: dict[bytes, tuple[int, int, list[int]]] = {}
        self.delays: dict[bytes, float] = {}  # delay text -> micro(text)
        self.reasons: dict[tuple[int, bytes], bytes] = {}  # reason text -> trimmed
        # A tally of a later part of a log (parallel.py), started without the state the
        # earlier part leaves: ``known`` holds the queue ids whose state it has from its
        # own lines (a client= or pickup line, which starts a message afresh), and the
        # lines of every other queue id wait in ``waiting``, in order, to be counted after
        # the earlier part; ``assumed`` keeps a hash of each queue id taken as new, to
        # check that the earlier part left no state for it.  None: the whole log.
        self.known: set[bytes] | None = None
        self.waiting = bytearray()
        self.assumed = array("q")
        self.waited: set[int] = set()  # hashes of the queue ids of the lines kept waiting
        self.blocked: Callable[[bytes, int], bool] | None = None

    @property
    def deferred(self) -> int:
        """Distinct queue ids with a deferral, as pflogsumm counts them: the same queue id
        (of another host in the same file, or used again later) counts once."""
        return len(self.deferred_ids)

    # ------------------------------------------------------------------ input
    def feed(self, lines: Iterable[bytes]) -> None:
        """Count complete lines (each ending in a newline, as a file yields them)."""
        batch: list[bytes] = []
        size = 0
        for line in lines:
            batch.append(line)
            size += len(line)
            if size >= CHUNK:
                self.feed_bytes(b"".join(batch))
                batch.clear()
                size = 0
        self.feed_bytes(b"".join(batch))

    def feed_file(self, fh: BinaryIO) -> None:
        """Count a whole binary stream, read in blocks of ``CHUNK`` bytes."""
        while block := fh.read(CHUNK):
            self.feed_bytes(block)
        self.flush()

    def begin_part(self, blocked: Callable[[bytes, int], bool] | None = None) -> None:
        """Count from here on as a later part of a log (see ``known``).  ``blocked(qid,
        hash(qid))`` says whether a queue id may already have a size from before the
        part: one that may is never taken for new, its lines wait."""
        self.known = set()
        self.blocked = blocked

    def count_waiting(self, data: bytes | bytearray) -> None:
        """Count the lines a later part kept waiting (each with its newline; read once
        already: they are not counted as lines again, and their Solaris tags are gone)."""
        before = self.lines
        at = 0
        while at < len(data):
            cut = data.rfind(b"\n", at, at + CHUNK) + 1 or data.find(b"\n", at) + 1 or len(data)
            buf = b"\n" + data[at:cut]
            self._lines_of(buf, len(buf), retag=False)
            at = cut
        self.lines = before

    # what a later part hands back (parallel.py pickles it)
    _SUMS = (
        "lines", "received", "delivered", "forwarded", "deferrals", "bounced",
        "rejected", "reject_warnings", "held", "discarded", "bytes_received",
        "bytes_delivered", "fatal", "panic", "sasl_failures", "sasl_server_faults", "evicted",
    )  # fmt: skip
    # (table, its name in ``truncated``)
    _TABLES = (
        ("bounce_reasons", "bounce_reasons"), ("defer_reasons", "deferral_reasons"),
        ("reject_reasons", "reject_reasons"), ("sasl_clients", "sasl_clients"),
    )  # fmt: skip
    _DISTINCT = ("senders", "sending_domains", "recipients", "recipient_domains", "deferred_ids")

    def export(self) -> dict[str, Any]:
        """What ``absorb`` needs of this tally of a later part (the caches stay behind)."""
        self.flush()
        out: dict[str, Any] = {name: getattr(self, name) for name in self._SUMS}
        for name in (*(t for t, _ in self._TABLES), "buckets", "rcpt_domains", "sender_domains"):
            out[name] = getattr(self, name)
        for name in self._DISTINCT:
            out[name] = getattr(self, name).parts
        out.update(
            truncated=self.truncated, sizes=self.sizes, retired=self.retired.export(),
            clients=self.clients, waiting=self.waiting, assumed=self.assumed,
        )  # fmt: skip
        return out

    def absorb(self, part: dict[str, Any]) -> bool:
        """Add the tally of the next part of the log (``export``) to this one, which has
        counted everything before it; as if one tally had read both, in order.

        The part took each queue id it saw received (``assumed``), none of whose lines it
        had kept waiting, as one that never had a size before.  If this tally holds a size
        for one of them (live or retired), the part's figures for it may be wrong: nothing
        is added and False is returned (the caller then counts that part again, in this
        tally).  Otherwise the part's state is added (its queue ids' sizes and clients:
        the lines it kept waiting of a queue id it knew are later than its own), then the
        lines it kept waiting are counted here, then its figures are added.
        """
        assumed = part["assumed"]
        if assumed:  # (an array of hashes, gone through without a set of them)
            if self.sizes:
                live = {hash(q) for q in self.sizes}
                if any(h in live for h in assumed):
                    return False
            if self.retired and self.retired.holds_any(assumed):
                return False
        if assumed and self.clients:
            # a client= line replaces a client this tally kept for a queue id
            mine = {hash(q): q for q in self.clients}
            if mine:
                theirs = part["clients"]
                for h in assumed:
                    q = mine.get(h)
                    if q is not None and q not in theirs:
                        self.clients.pop(q, None)
        self.sizes.update(part["sizes"])
        self.retired.update(part["retired"])
        self.clients.update(part["clients"])
        self.count_waiting(part["waiting"])
        for name in self._SUMS:
            setattr(self, name, getattr(self, name) + part[name])
        for name in self._DISTINCT:
            ours = getattr(self, name)
            for n, arr in enumerate(part[name]):
                ours.parts[n].extend(arr)
            ours.tidy()
        for key, counts in part["buckets"].items():
            bucket = self.buckets.get(key)
            if bucket is None:
                self.buckets[key] = counts
            else:
                for i, v in enumerate(counts):
                    bucket[i] += v
        for dom, row in part["rcpt_domains"].items():
            rcpt = self.rcpt_domains.get(dom)
            if rcpt is None:
                rcpt = self._new_domain(dom)
            for i in (D_SENT, D_BYTES, D_DEFER, D_BOUNCE, D_DELAY_SUM):
                rcpt[i] += row[i]
            if row[D_DELAY_MAX] > rcpt[D_DELAY_MAX]:
                rcpt[D_DELAY_MAX] = row[D_DELAY_MAX]
        for dom, pair in part["sender_domains"].items():
            sender = self.sender_domains.get(dom) or self._new_sender_domain(dom)
            sender[0] += pair[0]
            sender[1] += pair[1]
        for name, shown in self._TABLES:
            table = getattr(self, name)
            for key, n in part[name].items():
                if key in table:
                    table[key] += n
                else:
                    self._count(table, key, shown)  # (prunes the table if it is full)
                    table[key] += n - 1
        self.truncated |= part["truncated"]
        for table in (self.sizes, self.clients):
            while len(table) > self.state_cap:
                self._evict(table)
        return True

    def _lines_of(self, buf: bytes, end: int, retag: bool = True) -> None:
        """``_chunk`` with the cycle collector paused: the loop makes no reference cycles,
        only many small tuples and lists, which would set the collector off again and
        again for nothing (about 3% of the time)."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._chunk(buf, end, retag)
        finally:
            if collecting:
                gc.enable()

    # ------------------------------------------------------------------ the hot loop
    def _chunk(self, buf: bytes, end: int, retag: bool = True) -> None:
        """Count the lines of ``buf[:end]``: a newline, then lines each ending in a newline
        but maybe the last."""
        # (findall counts newlines twice as fast as bytes.count, which goes byte by byte)
        self.lines += len(_NL.findall(buf, 1, end)) + (buf[end - 1] != 0x0A)
        # Solaris syslog tags, removed as pflogsumm does
        if retag and buf.find(b"[ID ", 0, end) >= 0:
            buf = b"\n".join(_SOLARIS_ID.sub(b": ", ln, count=1) for ln in buf[:end].split(b"\n"))
            end = len(buf)
        gi = self.pattern.groupindex
        i_sent, i_sized, i_removed, i_received = (
            gi["sent"],
            gi["sized"],
            gi["removed"],
            gi["received"],
        )
        i_more, i_forwarded, i_picked, i_action = (
            gi["more"],
            gi["forwarded"],
            gi["picked"],
            gi["action"],
        )
        i_sasl, i_rejected, i_gen, i_qidp = gi["sasl"], gi["rejected"], gi["gen"], gi["qidp"]
        new_message = (i_received, i_picked)
        i_qid, i_qid3 = gi["qid"], gi["qid3"]
        g_ts, g_cmd, g_fq, g_to, g_dom = gi["ts"], gi["cmd"], gi["fq"], gi["to"], gi["dom"]
        g_delay, g_status, g_from, g_size = gi["delay"], gi["status"], gi["from"], gi["size"]
        g_client, g_rkind, g_rstage, g_rtext = gi["client"], gi["rkind"], gi["rstage"], gi["rtext"]
        g_rbl, g_cmd2, g_qid2, g_rest = gi["rbl"], gi["cmd2"], gi["qid2"], gi["rest"]
        sizes = self.sizes
        clients = self.clients
        buckets = self.buckets
        rcpt_domains = self.rcpt_domains
        # (the arrays stay the same until tidy(), after the loop)
        rparts = self.recipients.parts
        rdparts = self.recipient_domains.parts
        sparts = self.senders.parts
        sdparts = self.sending_domains.parts
        domains_of = self.domains_of
        senders_of = self.senders_of
        reasons = self.reject_reasons
        delays = self.delays
        line_ = self._line
        part = self.known is not None  # a later part of a log: unknown queue ids' lines wait
        known: set[bytes] = self.known if self.known is not None else set()
        waiting = self.waiting
        waited = self.waited
        blocked = self.blocked
        assumed = self.assumed
        retired = self.retired
        received = delivered = bytes_delivered = bytes_received = forwarded = 0
        last_ts = b""
        bucket = [0, 0, 0, 0, 0]
        for m in self.pattern.finditer(buf, 0, end):
            li = m.lastindex
            if li == i_sent:  # status=sent
                fq, ts, addr, dom, delay = m.group(g_fq, g_ts, g_to, g_dom, g_delay)
                if part and fq not in known:
                    _keep(waiting, waited, fq, buf, m, end)
                    continue
                if ts != last_ts:
                    bucket = buckets.get(ts) or buckets.setdefault(ts, [0, 0, 0, 0, 0])
                    last_ts = ts
                # a row found under the domain as written means it is lower case
                row = rcpt_domains.get(dom) if dom is not None else None
                if row is None:
                    addr, dom = _recipient(addr, dom)
                    row = rcpt_domains.get(dom) or self._new_domain(dom)
                if not row[0]:
                    h = hash(dom)
                    rdparts[h & 15].append(h)
                row[0] += 1
                dly = delays.get(delay)
                if dly is None:
                    dly = self._delay(delay)
                row[4] += dly
                if dly > row[5]:
                    row[5] = dly
                h = hash(addr)
                rparts[h & 15].append(h)
                bucket[1] += 1
                delivered += 1
                size = sizes.get(fq) or (retired.get(fq) if retired else 0)
                if size:
                    row[1] += size
                    bytes_delivered += size
            elif li == i_sized:  # qmgr: from=<sender>, size=N (as _from does)
                fq, addr, size_text = m.group(g_fq, g_from, g_size)
                if part and fq not in known:
                    _keep(waiting, waited, fq, buf, m, end)
                    continue
                if sizes.get(fq) or (retired.get(fq) if retired else 0):
                    continue
                size = sizes[fq] = int(size_text)
                if fq not in clients:  # not seen received: a bounce, a forward, an old message
                    continue
                client = clients.pop(fq)
                whence = b"pickup"
                if client is not None:
                    whence = domains_of.get(client) or self._domain_of(client)
                    if not whence:  # false in Perl: pflogsumm counts nothing
                        continue
                sender = senders_of.get(addr) or self._sender(addr, client is None, whence)
                h = sender[0]
                sparts[h & 15].append(h)
                h = sender[1]
                sdparts[h & 15].append(h)
                bytes_received += size
                row_s = sender[2]
                row_s[0] += 1
                row_s[1] += size
            elif li == i_removed:  # forget the queue id, as _line does
                fq = m.group(g_fq)
                if part:
                    if fq not in known:  # counted later
                        _keep(waiting, waited, fq, buf, m, end)
                        continue
                    # its later lines wait: counted after this part's state is added
                    known.discard(fq)
                size = sizes.pop(fq, 0)
                if size:
                    retired.add(fq, size)
            elif li in new_message:  # smtpd: client=; pickup: uid=, sender=
                # (a pickup line has no client: None, pflogsumm's "pickup")
                fq, ts, client = m.group(g_fq, g_ts, g_client)
                if part and fq not in known:  # a new message (checked in Tally.absorb)
                    h = hash(fq)
                    # unless its lines already wait, or it may have had a size before
                    if h in waited or (blocked is not None and blocked(fq, h)):
                        _keep(waiting, waited, fq, buf, m, end)
                        continue
                    known.add(fq)
                    assumed.append(h)
                received += 1
                if ts != last_ts:
                    bucket = buckets.get(ts) or buckets.setdefault(ts, [0, 0, 0, 0, 0])
                    last_ts = ts
                bucket[0] += 1
                clients[fq] = client
            elif li == i_more:  # status= other than sent, or sent with more after it
                cmd, fq, ts, addr, dom, delay, status, more = m.group(
                    g_cmd, g_fq, g_ts, g_to, g_dom, g_delay, g_status, li
                )
                if more or status == b"sent":  # "=" or "forwarded as ": pflogsumm's tests
                    if part and fq not in known:
                        _keep(waiting, waited, fq, buf, m, end)
                        continue
                    line_(buf[m.start(g_rest) : m.end()], cmd, fq, ts)
                    continue
                # (a deferral or a bounce needs no earlier line: counted in any part)
                line = buf[m.start(g_rest) : m.end()]
                if status == b"deferred":
                    self._bucket(ts)[2] += 1
                    self._deferred(cmd, fq, _recipient(addr, dom)[1], delay, line)
                elif status == b"bounced":
                    self._bucket(ts)[3] += 1
                    relay = _RELAY.search(line)
                    self._bounced(relay.group(1) if relay else b"", _recipient(addr, dom)[1], line)
            elif li == i_forwarded:  # status=sent (forwarded as ...)
                forwarded += 1
            elif li == i_action:  # cleanup: reject: header ...
                ts = m.group(g_ts)
                a = _CLEANUP_ACTION.match(buf, m.end(g_fq) + 2, m.end())
                if a is None:  # (cannot be: the pattern looked ahead for it)
                    continue
                if ts != last_ts:
                    bucket = buckets.get(ts) or buckets.setdefault(ts, [0, 0, 0, 0, 0])
                    last_ts = ts
                bucket[4] += 1
                self._cleanup_action(a.group(1), a.group(2), a.group(3))
            elif li == i_sasl:  # smtpd, postscreen: warning: ... SASL LOGIN authentication failed
                cmd, ts = m.group(g_cmd, g_ts)
                self._special(cmd, b"warning", buf[m.start(g_rest) : m.end()], ts)
            elif li == i_rejected:  # smtpd, postscreen: NOQUEUE: reject: RCPT from ...
                ts, kind, stage, text, rbl = m.group(g_ts, g_rkind, g_rstage, g_rtext, g_rbl)
                if ts != last_ts:
                    bucket = buckets.get(ts) or buckets.setdefault(ts, [0, 0, 0, 0, 0])
                    last_ts = ts
                bucket[4] += 1
                self._action(kind)
                key = (kind, stage, reject_text(text, rbl))
                if key in reasons:
                    reasons[key] += 1
                else:
                    self._count(reasons, key, "reject_reasons")
            elif li == i_gen:  # a queue id, then no fast shape
                cmd, qid, ts = m.group(g_cmd, g_fq, g_ts)
                if part and qid not in known:
                    _keep(waiting, waited, qid, buf, m, end)
                    continue
                line_(buf[m.start(g_rest) : m.end()], cmd, qid, ts)
            elif li in (i_qidp, i_qid, i_qid3):  # pflogsumm's general split
                cmd, qid, ts = m.group(g_cmd, li, g_ts)
                if part and qid not in known:
                    _keep(waiting, waited, qid, buf, m, end)
                    continue
                line_(buf[m.start(g_rest) : m.end()], cmd, qid, ts)
            else:  # postfix-script, or "postfix" alone
                cmd, qid, ts = m.group(g_cmd2, g_qid2, g_ts)
                if part and qid not in known:
                    _keep(waiting, waited, qid, buf, m, end)
                    continue
                line_(buf[m.start(g_rest) : m.end()], b"postfix" + cmd, qid, ts)
        self.received += received
        self.delivered += delivered
        self.bytes_delivered += bytes_delivered
        self.bytes_received += bytes_received
        self.forwarded += forwarded
        for d in (
            self.senders, self.sending_domains, self.recipients, self.recipient_domains,
            self.deferred_ids,
        ):  # fmt: skip
            d.tidy()
        for table in (sizes, clients):  # the loop leaves their cap to here
            while len(table) > self.state_cap:
                self._evict(table)

    def _delay(self, text: bytes) -> float:
        """``micro(text)``, cached: the same few hundred strings come back."""
        value = micro(text)
        if len(self.delays) >= 4096:
            self.delays.clear()
        self.delays[text] = value
        return value

    # ------------------------------------------------------------------ the general path
    def _line(self, line: bytes, cmd: bytes, qid: bytes, ts: bytes) -> None:
        """pflogsumm's chain of tests for one line's ``$logRmdr``: from the program to the
        end of the line (the timestamp and host are not part of what it searches)."""
        if cmd == b"cleanup" and (
            b": header " in line or b": body " in line or b": END-OF-MESSAGE " in line
        ):
            a = _CLEANUP_AT.search(line)
            if a is not None:
                a = _CLEANUP_ACTION.search(line, a.end())
            if a is not None:
                self._cleanup_action(a.group(1), a.group(2), a.group(3))
                self._bucket(ts)[4] += 1
                return
        if qid in SPECIAL_QIDS:
            self._special(cmd, qid, line, ts)
            return
        if cmd == b"master":
            return
        if cmd == b"smtpd" or cmd == b"postscreen":
            if b"client=" in line:
                c = _CLIENT.search(line)
                if c is not None:
                    self._received(qid, ts, c.group(1))
                    return
            if b"reject" in line or b"hold: " in line or b"discard: " in line:
                a = _SMTPD_ACTION.search(line)
                if a is not None:
                    self._smtpd_action(a.group(1), line, ts)
            return
        if b", size=" in line:
            f = _FROM_SIZE.search(line)
            if f is not None:
                if not (self.sizes.get(qid) or self.retired.get(qid)):
                    self._from(qid, f.group(1), int(f.group(2)))
                return
        if b"status=" in line:
            d = _DELIVERY.search(line)
            if d is not None:
                self._delivery(cmd, qid, ts, line, *d.group(1, 2, 3, 4, 5))
                return
        if cmd == b"pickup":
            if b": sender=" in line or b": uid=" in line:
                self._received(qid, ts, None)  # None: pflogsumm's "pickup"
            return
        if line.endswith(b": removed"):
            size = self.sizes.pop(qid, 0)
            if size:
                self.retired.add(qid, size)

    def _received(self, qid: bytes, ts: bytes, client: bytes | None) -> None:
        """A new message: from an smtpd client, or (``None``) picked up locally."""
        self.received += 1
        self._bucket(ts)[0] += 1
        if len(self.clients) >= self.state_cap:
            self._evict(self.clients)
        self.clients[qid] = client

    def _delivery(
        self, cmd: bytes, qid: bytes, ts: bytes, line: bytes,
        addr: bytes, relay: bytes, delay: bytes, status: bytes, rest: bytes,
    ) -> None:  # fmt: skip
        at = addr.find(b"@")
        if at >= 0:
            addr = addr[:at] + addr[at:].lower()
        dom = addr[at + 1 :] if at > 0 else addr
        if status == b"sent":
            if b"forwarded as " in rest:
                self.forwarded += 1
                return
            row = self.rcpt_domains.get(dom)
            if row is None:
                row = self._new_domain(dom)
            row[D_SENT] += 1
            self.recipient_domains.add(dom)
            dly = micro(delay)
            row[D_DELAY_SUM] += dly
            if dly > row[D_DELAY_MAX]:
                row[D_DELAY_MAX] = dly
            self.recipients.add(addr)
            self._bucket(ts)[1] += 1
            self.delivered += 1
            size = self.sizes.get(qid) or self.retired.get(qid)
            if size:
                row[D_BYTES] += size
                self.bytes_delivered += size
        elif status == b"deferred":
            self._bucket(ts)[2] += 1
            self._deferred(cmd, qid, dom, delay, line)
        elif status == b"bounced":
            self._bucket(ts)[3] += 1
            self._bounced(relay, dom, line)

    # ------------------------------------------------------------------ the rarer paths
    def _bucket(self, ts: bytes) -> list[int]:
        b = self.buckets.get(ts)
        if b is None:
            b = self.buckets[ts] = [0, 0, 0, 0, 0]
        return b

    def _evict(self, table: dict[bytes, Any]) -> None:
        """Forget the oldest tenth of a per-queue-id table that reached its cap."""
        for key in list(table)[: max(1, len(table) // 10)]:
            del table[key]
        self.evicted += 1
        self.truncated.add("queue_ids")

    def _new_domain(self, dom: bytes) -> list[float]:
        table = self.rcpt_domains
        if len(table) >= 2 * self.cap:
            prune(table, self.cap, lambda r: r[D_SENT] + r[D_DEFER] + r[D_BOUNCE])
            self.truncated.add("recipient_domains")
        row: list[float] = [0, 0, 0, 0, 0, 0]  # delays in microseconds
        table[dom] = row
        return row

    def _count(self, table: dict[Any, int], key: Any, name: str) -> None:
        if key in table:
            table[key] += 1
            return
        if len(table) >= 2 * self.cap:
            prune(table, self.cap, lambda v: v)
            self.truncated.add(name)
        table[key] = 1

    def _from(self, qid: bytes, addr: bytes, size: int) -> None:
        """A qmgr ``from=<...>, size=N`` line whose queue id has no size yet (the hot
        loop has its own copy of this)."""
        sizes = self.sizes
        if len(sizes) >= self.state_cap:
            self._evict(sizes)
        sizes[qid] = size
        if qid not in self.clients:  # not seen received: a bounce, a forward, an old message
            return
        client = self.clients.pop(qid)
        whence = b"pickup"
        if client is not None:
            whence = self.domains_of.get(client) or self._domain_of(client)
            if not whence:  # false in Perl: pflogsumm counts nothing
                return
        sender = self.senders_of.get(addr) or self._sender(addr, client is None, whence)
        self.senders.parts[sender[0] & 15].append(sender[0])
        self.sending_domains.parts[sender[1] & 15].append(sender[1])
        self.bytes_received += size
        row = sender[2]
        row[0] += 1
        row[1] += size

    def _domain_of(self, client: bytes) -> bytes:
        """gimme_domain(client), empty where Perl finds it false ("" or "0"); cached, and
        for "host[IPv4]" (most clients) by host, all the answer depends on then."""
        m = _GD_V4.match(client)
        host = m.group(1) if m is not None else b""
        if host and host != b"unknown":
            known = self.hosts.get(host)
            if known is None:
                known = gimme_domain(client) or b""
                if len(self.hosts) >= 4096:
                    self.hosts.clear()
                self.hosts[host] = known
        else:
            known = gimme_domain(client) or b""
        if known == b"0":
            known = b""
        if len(self.domains_of) >= 4096:
            self.domains_of.clear()
        self.domains_of[client] = known
        return known

    def _sender(self, addr: bytes, pickup: bool, whence: bytes) -> tuple[int, int, list[int]]:
        """The hash of the sender as pflogsumm counts it (domain part lower-cased,
        ``from=<>`` for the null sender), the hash of its domain (the client's or, from
        pickup, the sender itself when it has none) and the domain's row of
        ``sender_domains``; cached for senders with a domain of their own, which do not
        depend on the client (the cache goes when that table is pruned)."""
        at = addr.find(b"@")
        if at >= 0:
            name = addr[:at] + addr[at:].lower()
            if 0 < at < len(addr) - 1:
                dom = name[at + 1 :]
                row = self.sender_domains.get(dom) or self._new_sender_domain(dom)
                sender = (hash(name), hash(dom), row)
                if len(self.senders_of) >= 4096:
                    self.senders_of.clear()
                self.senders_of[addr] = sender
                return sender
        else:
            name = addr or b"from=<>"
        dom = name if pickup else whence
        return hash(name), hash(dom), self.sender_domains.get(dom) or self._new_sender_domain(dom)

    def _new_sender_domain(self, dom: bytes) -> list[int]:
        table = self.sender_domains
        if len(table) >= 2 * self.cap:
            prune(table, self.cap, lambda r: r[0])
            self.truncated.add("sender_domains")
            self.senders_of.clear()  # it holds rows
        row = table[dom] = [0, 0]
        return row

    def _deferred(self, cmd: bytes, qid: bytes, dom: bytes, delay: bytes, line: bytes) -> None:
        self.deferrals += 1
        self.deferred_ids.add(qid)
        row = self.rcpt_domains.get(dom)
        if row is None:
            row = self._new_domain(dom)
        row[D_DEFER] += 1
        dly = micro(delay)
        if dly > row[D_DELAY_MAX]:
            row[D_DELAY_MAX] = dly
        reason = self._reason(_DEFER_REASON, line, 65, b"connect to ")
        self._count(self.defer_reasons, (cmd, reason), "deferral_reasons")

    def _bounced(self, relay: bytes, dom: bytes, line: bytes) -> None:
        self.bounced += 1
        row = self.rcpt_domains.get(dom)
        if row is None:
            row = self._new_domain(dom)
        row[D_BOUNCE] += 1
        reason = self._reason(_BOUNCE_REASON, line, 66)
        self._count(self.bounce_reasons, (relay, reason), "bounce_reasons")

    def _reason(
        self, pattern: re.Pattern[bytes], line: bytes, limit: int, drop: bytes = b""
    ) -> bytes:
        """The reason ``pattern`` finds in a deferral or bounce line, trimmed as pflogsumm
        trims it to ``limit`` characters, without a leading status code or ``drop``;
        cached by (limit, text), since the same few reasons come back (deferrals use 65,
        bounces 66, so the limit also tells the two apart)."""
        m = pattern.search(line)
        raw = m.group(1) if m else b""
        reason = self.reasons.get((limit, raw))
        if reason is not None:
            return reason
        reason = said_trim(raw, limit)
        if reason[:3].isdigit() and reason[3:4] == b" ":
            reason = reason[4:]
        reason = reason.removeprefix(drop) if drop else reason
        if len(self.reasons) >= 4096:
            self.reasons.clear()
        self.reasons[limit, raw] = reason
        return reason

    def _cleanup_action(self, kind: bytes, part: bytes, rest: bytes) -> None:
        if kind in (b"reject", b"milter-reject"):
            self.rejected += 1
            kind = b"reject"
        elif kind == b"warning":
            self.reject_warnings += 1
        elif kind == b"hold":
            self.held += 1
        else:
            self.discarded += 1
        i = rest.find(b"; from=<")
        if i >= 0:
            rest = rest[:i]
            j = rest.rfind(b" from ")
            if j >= 0 and b" " not in rest[j + 6 :] and len(rest) > j + 6:
                rest = rest[:j]
        self._count(self.reject_reasons, (kind, part, trim(rest, 64)), "reject_reasons")

    def _action(self, kind: bytes) -> None:
        """Count an smtpd or postscreen action in its total (pflogsumm's four)."""
        if kind == b"reject":
            self.rejected += 1
        elif kind == b"reject_warning":
            self.reject_warnings += 1
        elif kind == b"hold":
            self.held += 1
        else:
            self.discarded += 1

    def _smtpd_action(self, kind: bytes, line: bytes, ts: bytes) -> None:
        self._action(kind)
        self._bucket(ts)[4] += 1
        d = _REJECT_DETAIL.search(line)
        if d is None:
            key = (kind, b"", b"")
        else:
            key = (kind, d.group(1), reject_text(d.group(2), d.group(3)))
        self._count(self.reject_reasons, key, "reject_reasons")

    def _special(self, cmd: bytes, qid: bytes, line: bytes, ts: bytes) -> None:
        if qid == b"warning":
            if b"authentication failed" in line and cmd == b"smtpd":
                m = _SASL.search(line)
                if m is not None:
                    if m.group(3).startswith(b"Connection lost to authentication server"):
                        self.sasl_server_faults += 1
                    else:
                        self.sasl_failures += 1
                        self._count(self.sasl_clients, m.group(1), "sasl_clients")
        elif qid == b"fatal":
            self.fatal += 1
        elif qid == b"panic":
            self.panic += 1
        else:
            self._smtpd_action(qid, line, ts)
