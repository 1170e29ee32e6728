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
    queue ids with at least one ``status=deferred`` line / all such lines.
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

Memory stays bounded where pflogsumm's grows with the log: per-queue-id state goes when
``qmgr`` logs ``removed`` (pflogsumm keeps every size forever), distinct counts keep an
8-byte hash per address in arrays instead of the address, and the per-domain and reason tables
are pruned to their largest entries once they grow past a cap (``truncated`` in the
output says so; counts in a pruned table are then lower bounds).  The one behaviour
that differs because of this: if Postfix reuses a short queue id within the log, the
second message is counted afresh; pflogsumm would skip its size and sender.
"""

from __future__ import annotations

import heapq
import re
from array import array
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

# ---------------------------------------------------------------------- line grammar
#
# One regular expression reads a whole buffer of lines (finditer, so the per-line loop
# runs in C and lines of other programs never reach Python).  Each match starts at the
# newline before a line, reads the timestamp (group ``ts``: the date and the hour, the
# key of the hourly buckets), the host and pflogsumm's program name (``cmd``), then:
#
# * a *fast* shape: ``[PID]: QUEUEID: `` followed by a delivery (``to=<...>,
#   relay=...status=...``), a ``from=<...>, size=N`` line, ``client=``, ``removed``,
#   or an smtpd ``reject:`` (also ``reject_warning``, ``hold``, ``discard``).  Lines
#   that cannot count (``message-id=<...>``, connect, TLS, lost connection...) do not
#   match at all.  The loop takes
#   these only from known Postfix programs, whose name, pid and queue id hold no ``<``,
#   ``=`` or space, so pflogsumm's unanchored patterns cannot match any earlier in the
#   line and the captures are the ones it gets.  It still checks pflogsumm's order of
#   tests (program, special queue ids) and hands the line to the general path when one
#   of them comes first; or
# * the *general* shape, pflogsumm's own split (``.*?: QUEUEID``), after which the line
#   goes through pflogsumm's chain of tests one by one (``Tally._line``).
#
# Timestamps: a classic one is read as pflogsumm reads it; an ISO one may also have a
# space for the ``T``, a comma for the decimal point, ``+hhmm`` or no offset.
#
# ``*+ ++ ?+`` follow a single character only (an optional group is ``(?>...|)``, a repeated one
# greedy where no retry can match): Python 3.11.0-3.11.4 (Debian 12 has 3.11.2) resume where a
# failed pass of a possessive group stopped, not where it began: ``(?:a(?:bc|x))?+(.*)`` on
# ``abd`` gives ``bd`` (CPython gh-100061).

_CLASSIC_TS = rb"[^\n]{3} [ \d]?\d \d\d"
_ISO_TS = rb"\d{4}-\d\d-\d\d[T ]\d\d"
_AFTER_TS = rb"(?:[\d:]{6} |[\d:]{6}[^\s]++ )\S++ "
_ADDR = rb"[^\s\[]*+\[[0-9a-fA-F.:]++\]"
# pflogsumm's program name, recognising the programs the fast shapes accept: those
# whose lines reach its last branch (from=, to=) and those it reads for client= and
# rejects.  "(?=\[)" makes the name whole, as pflogsumm's [^\[:]* takes it.
_DELIVERERS = (  # most frequent first: the names are tried in this order
    b"smtp",
    b"qmgr",
    b"local",
    b"lmtp",
    b"bounce",
    b"pickup",
    b"virtual",
    b"pipe",
    b"error",
    b"retry",
    b"discard",
    b"defer",
    b"trace",
    b"postsuper",
    b"oqmgr",
)
_CMD = (
    rb"(?>(?P<cmd>(?P<rcv>smtpd|postscreen)(?=\[)|(?P<dlv>"
    + b"|".join(_DELIVERERS)
    + rb")(?=\[)|[^\[:\n]*+))"
)
# After "[pid]: ", text that cannot count for any program: no special first word
# (pflogsumm's queue-id tests), no "<", no ":" except in or right after an address in
# brackets.  Every pattern pflogsumm counts with needs one of those (": header ",
# "from=<", "to=<", "]: word: client=", ": uid=", "]: word: reject: ").  Connects,
# disconnects, TLS, lost connections, postscreen's CONNECT/PASS/DISCONNECT... fail the
# whole pattern there.
_SPECIAL_FIRST = rb"(?:warning|fatal|panic|reject|reject_warning|hold|discard)(?![^:\s])"
_SKIP = rb"[^:<\[\]\n]*+(?:\[[0-9a-fA-F.:]*+\]:?+[^:<\[\]\n]*+)*(?=\n|\Z)"
# The fast shapes, after "QUEUEID: ".  A delivery's tail is read up to the first "="
# (a "from=<...>, size=" that pflogsumm would test first) or "forwarded as ": the
# loop sends a line with more than that (group ``smore``/``more``) to the general path.
_FAST = (
    rb"(?(dlv)|(?!))to=<(?P<to>[^@>\n]++@(?P<dom>[^>\n]*+)|[^>\n]*+)>, "
    rb"(?>orig_to=<[^>\n]*+>, |)relay=[^,\n]++, (?>conn_use=[^,\n]++, |)"
    rb"delay=(?P<delay>[^,\n]++), (?>delays=[^,\n]++, |)(?>dsn=[^,\n]++, |)status="
    rb"(?:sent(?!\S)[^\n=f]*+(?:f(?!orwarded as )[^\n=f]*+)*(?P<smore>[^\n]*+)"
    rb"|(?P<status>\S++)[^\n=]*+(?P<more>[^\n]*+))"
    rb"|(?(dlv)|(?!))from=<(?P<from>[^>\n]*+)>, size=(?P<size>\d++)(?P<frest>)"
    rb"|(?(rcv)|(?!))client=(?P<client>[^\n][^,\n]*+)(?P<crest>)"
    rb"|removed(?=\n|\Z)(?P<removed>)"
    rb"|(?(rcv)|(?!))(?P<rkind>reject|reject_warning|hold|discard): (?P<rstage>\S++) from "
    rb"\S+?: (?>\d{3} [\d.]++ |)(?><[^>\n]*+>: |)(?P<rtext>[^;,\n]*+)"
    rb"(?>[;,] (?:Client host|client) \[[^\]\n]*+\] blocked using (?P<rbl>[^;\s]++)|)"
    # no "[digits]: word: client=" after it, which pflogsumm would count as received
    rb"[^\]\n]*+(?:\](?!: )[^\]\n]*+)*(?=\n|\Z)(?P<rrest>)"
)
_SCRIPT = rb"(?P<cmd2>postfix(?:-script)?)(?:\[\d+\])?: (?P<qid2>[^:\s]+)"


def line_pattern(syslog_name: str = "postfix", dates: DaySpec | None = None) -> re.Pattern[bytes]:
    """The buffer pattern; with ``dates`` only lines of that day match (pflogsumm's -d).

    After "PROGRAM[pid]: " the first ": " is pflogsumm's, so its queue id comes next:
    a line that cannot count fails the whole pattern there (the search moves on in C);
    a queue id of letters and digits (``fq``) is followed by a fast shape or, failing
    that, goes to the general path (group ``gen``); anything else is pflogsumm's
    general split (``qidp``, ``qid``).  Without a pid, pflogsumm's own lazy search.
    """
    names = (
        b"postfix"
        if syslog_name == "postfix"
        else b"(?:postfix|%s)" % re.escape(syslog_name.encode())
    )
    if dates is None:
        ts = _CLASSIC_TS + b"|" + _ISO_TS
    else:
        classic = b"|".join(re.escape(d) for d in dates.classic)
        ts = b"(?:" + classic + rb") \d\d|" + re.escape(dates.iso) + rb"[T ]\d\d"
    return re.compile(
        rb"\n(?>(?P<ts>" + ts + b")" + _AFTER_TS + b")"
        + b"(?:" + names + rb"/(?>submission/|smtps/|)" + _CMD
        + rb"(?:\[\d++\]: (?>(?!" + _SPECIAL_FIRST + rb")(?:(?P<skip>" + _SKIP
        + rb")|(?P<fq>[0-9A-Za-z]++): (?>(?P<skipm>message-id=<[^\s>]*+>(?=\n|\Z))|))|)"
        + rb"(?(skip)(?!)|(?(skipm)(?!)|(?(fq)(?:" + _FAST + rb"|(?P<gen>))"
        + rb"|(?:(?P<qidp>[^:\s]++)|[^\n]*?: (?P<qid>[^:\s]++)))))"
        + rb"|(?!\[\d++\]: )[^\n]*?: (?P<qid3>[^:\s]++))"
        + b"|" + _SCRIPT + b")"
    )  # fmt: skip


class DaySpec:
    """The date prefixes of one day: ``Nov 23``/``Nov  3`` (and ``Nov 3``), ``2024-11-03``."""

    def __init__(self, year: int, month: int, day: int) -> None:
        mon = MONTH_NAMES[month - 1].encode()
        self.classic = tuple(dict.fromkeys([b"%s %2d" % (mon, day), b"%s %d" % (mon, day)]))
        self.iso = b"%04d-%02d-%02d" % (year, month, day)


MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RELAY = re.compile(rb">, relay=([^,\n]+), ")
_SOLARIS_ID = re.compile(rb": \[ID \d+ [^\]]+\] ")
_CLEANUP_ACTION = re.compile(
    rb"/cleanup\[\d+\]: [^\n]*?\b((?:milter-)?reject|warning|hold|discard): "
    rb"(header|body|END-OF-MESSAGE) ([^\n]*)$"
)
_CLIENT = re.compile(rb"\[\d+\]: \w+: client=([^\n]+?)(?:,|$)")
_SMTPD_ACTION = re.compile(rb"\[\d+\]: \w+: (reject(?:_warning)?|hold|discard): ")
_FROM_SIZE = re.compile(rb"from=<([^>]*)>, size=(\d+)")
_DELIVERY = re.compile(
    rb"to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=([^,\n]+), (?:conn_use=[^,\n]+, )?"
    rb"delay=([^,\n]+), (?:delays=[^,\n]+, )?(?:dsn=[^,\n]+, )?status=(\S+)([^\n]*)$"
)
_SASL = re.compile(rb"warning: [^\s\[]*\[([^\]\s]*)\]: SASL (\S+) authentication failed: ([^\n]*)")
_DEFER_REASON = re.compile(rb", status=deferred \(([^)\n]+)")
_BOUNCE_REASON = re.compile(rb", status=bounced \(([^\n]+)\)")
_NUMBER = re.compile(rb"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

# bytes read at a time: the lines of a block are counted together
CHUNK = 1 << 18
SPECIAL_QIDS = frozenset(
    (b"warning", b"fatal", b"panic", b"reject", b"reject_warning", b"hold", b"discard")
)
MONTHS = {m: i for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}
ROWS = ("received", "delivered", "deferred", "bounced", "rejected")
# indexes into a per-recipient-domain row
D_SENT, D_BYTES, D_DEFER, D_BOUNCE, D_DELAY_SUM, D_DELAY_MAX = range(6)


# ---------------------------------------------------------------------- helpers


def _recipient(addr: bytes, dom: bytes | None) -> tuple[bytes, bytes]:
    """pflogsumm's recipient and its domain: the domain part lower-cased (from the first
    ``@``); the domain is what follows that ``@``, or the whole address without one."""
    if dom is not None:
        low = dom.lower()
        return addr[: len(addr) - len(dom)] + low, low
    if addr.startswith(b"@"):
        addr = addr.lower()
    return addr, addr


def _line_of(buf: bytes, m: re.Match[bytes]) -> bytes:
    """The whole line a match started (without its newline)."""
    end = buf.find(b"\n", m.end())
    return buf[m.start() + 1 : end if end >= 0 else len(buf)]


def perl_number(text: bytes) -> float:
    """What Perl makes of a string used as a number: its leading numeric part, else 0."""
    try:
        return float(text)
    except ValueError:
        m = _NUMBER.match(text)
        return float(m.group().strip()) if m else 0.0


def perl_true(value: bytes | None) -> bool:
    """Perl's truth of a string: undef, "" and "0" are false."""
    return value is not None and value != b"" and value != b"0"


_GD_V4 = re.compile(rb"([^\[\n]*)\[((?:\d{1,3}\.){3}\d{1,3})\]")
_GD_SLASH = re.compile(rb"([^/\n]*)/([0-9a-f.:]+)", re.IGNORECASE)
_GD_ANY = re.compile(rb"([^\[(/\n]*)[\[(/]([^\])\n]+)[\])]:?\d*$")
_GD_TAIL = re.compile(rb"(?:[^\n]*)\.([^.\n]+)\.([^.\n]{3}|[^.\n]{2,3}\.[^.\n]{2})$")


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
    rb"\b(?:reject|reject_warning|hold|discard): (\S+) from \S+?: (?:\d{3} [\d.]+ )?"
    rb"(?:<[^>\n]*>: )?([^;,\n]*)(?:[;,] (?:Client host|client) \[[^\]\n]*\] blocked using "
    rb"([^;\s]+))?"
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


def prune(table: dict[Any, Any], keep: int, weight: Callable[[Any], float]) -> None:
    """Keep the ``keep`` heaviest entries of ``table`` (in place)."""
    best = heapq.nlargest(keep, table.items(), key=lambda kv: weight(kv[1]))
    table.clear()
    table.update(best)


# ---------------------------------------------------------------------- the tally


class Tally:
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
        self.pattern = line_pattern(syslog_name, day)
        self.day = day
        self.pending = b""
        self.cap = cap
        self.state_cap = state_cap
        self.lines = 0
        self.matched = 0
        self.received = self.delivered = self.forwarded = 0
        self.deferred = self.deferrals = self.bounced = 0
        self.rejected = self.reject_warnings = self.held = self.discarded = 0
        self.bytes_received = self.bytes_delivered = 0
        self.fatal = self.panic = 0
        self.sasl_failures = self.sasl_server_faults = 0
        self.senders = Distinct()
        self.sending_domains = Distinct()
        self.recipients = Distinct()
        self.recipient_domains = Distinct()
        # (day key, hour) -> [received, delivered, deferred, bounced, rejected]
        self.buckets: dict[bytes, list[int]] = {}
        self.rcpt_domains: dict[bytes, list[float]] = {}
        self.sender_domains: dict[bytes, list[int]] = {}
        self.bounce_reasons: dict[tuple[bytes, bytes], int] = {}
        self.defer_reasons: dict[tuple[bytes, bytes], int] = {}
        self.reject_reasons: dict[tuple[bytes, bytes, bytes], int] = {}
        self.sasl_clients: dict[bytes, int] = {}
        self.truncated: set[str] = set()
        # per queue id, until "removed"
        self.sizes: dict[bytes, int] = {}
        self.clients: dict[bytes, bytes | None] = {}
        self.domains_of: dict[bytes, bytes] = {}  # client -> gimme_domain(client), a cache
        self.delays: dict[bytes, float] = {}  # delay text -> number, a cache
        self.deferred_ids: dict[bytes, None] = {}
        self.evicted = 0

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

    def feed_bytes(self, data: bytes) -> None:
        """Count the complete lines in ``data``; keep a trailing partial line for later."""
        if not data:
            return
        buf = b"\n" + self.pending + data
        cut = buf.rfind(b"\n")
        self.pending = buf[cut + 1 :]
        if cut > 0:
            self._chunk(buf[: cut + 1])

    def flush(self) -> None:
        """Count a last line that had no newline (end of a file)."""
        if self.pending:
            self._chunk(b"\n" + self.pending)
            self.pending = b""

    # ------------------------------------------------------------------ the hot loop
    def _chunk(self, buf: bytes) -> None:
        """Count the lines of ``buf``: a newline, then lines each ending in a newline."""
        self.lines += buf.count(b"\n") - (buf[-1] == 0x0A)
        if b"[ID " in buf:  # Solaris syslog tags, removed per line as pflogsumm does
            buf = b"\n".join(_SOLARIS_ID.sub(b": ", ln, count=1) for ln in buf.split(b"\n"))
        gi = self.pattern.groupindex
        i_smore, i_more, i_frest, i_removed = gi["smore"], gi["more"], gi["frest"], gi["removed"]
        i_crest, i_rrest, i_gen, i_qidp = gi["crest"], gi["rrest"], gi["gen"], gi["qidp"]
        i_qid, i_qid3 = gi["qid"], gi["qid3"]
        g_ts, g_cmd, g_fq, g_to, g_dom = gi["ts"], gi["cmd"], gi["fq"], gi["to"], gi["dom"]
        g_delay, g_status, g_from, g_size = gi["delay"], gi["status"], gi["from"], gi["size"]
        g_client, g_rkind, g_rstage, g_rtext = gi["client"], gi["rkind"], gi["rstage"], gi["rtext"]
        g_rbl, g_cmd2, g_qid2 = gi["rbl"], gi["cmd2"], gi["qid2"]
        sizes = self.sizes
        clients = self.clients
        deferred_ids = self.deferred_ids
        buckets = self.buckets
        rcpt_domains = self.rcpt_domains
        # (the arrays stay the same until tidy(), after the loop)
        rparts = self.recipients.parts
        rdparts = self.recipient_domains.parts
        reasons = self.reject_reasons
        delays = self.delays
        state_cap = self.state_cap
        line_ = self._line
        from_ = self._from
        received = delivered = bytes_delivered = 0
        last_ts = b""
        bucket = [0, 0, 0, 0, 0]
        for m in self.pattern.finditer(buf):
            li = m.lastindex
            if li == i_smore:  # status=sent
                fq, ts, addr, dom, delay, more = m.group(g_fq, g_ts, g_to, g_dom, g_delay, li)
                if more:  # "=" or "forwarded as " after the status: pflogsumm's own tests
                    line_(_line_of(buf, m), m.group(g_cmd), fq, ts)
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
                size = sizes.get(fq)
                if size:
                    row[1] += size
                    bytes_delivered += size
            elif li == i_frest:  # qmgr: from=<sender>, size=N
                fq, addr, size_text = m.group(g_fq, g_from, g_size)
                if not sizes.get(fq):
                    from_(fq, addr, int(size_text))
            elif li == i_removed:
                fq = m.group(g_fq)
                sizes.pop(fq, None)
                if deferred_ids:
                    deferred_ids.pop(fq, None)
            elif li == i_crest:  # smtpd: client=
                fq, ts, client = m.group(g_fq, g_ts, g_client)
                received += 1
                if ts != last_ts:
                    bucket = buckets.get(ts) or buckets.setdefault(ts, [0, 0, 0, 0, 0])
                    last_ts = ts
                bucket[0] += 1
                if len(clients) >= state_cap:
                    self._evict(clients)
                clients[fq] = client
            elif li == i_more:  # status= other than sent
                more = m.group(li)
                cmd, fq, ts, addr, dom, delay, status = m.group(
                    g_cmd, g_fq, g_ts, g_to, g_dom, g_delay, g_status
                )
                if more:
                    line_(_line_of(buf, m), cmd, fq, ts)
                elif status == b"deferred":
                    self._bucket(ts)[2] += 1
                    self._deferred(cmd, fq, _recipient(addr, dom)[1], delay, _line_of(buf, m))
                elif status == b"bounced":
                    self._bucket(ts)[3] += 1
                    line = _line_of(buf, m)
                    relay = _RELAY.search(line)
                    self._bounced(relay.group(1) if relay else b"", _recipient(addr, dom)[1], line)
            elif li == i_rrest:  # smtpd, postscreen: NOQUEUE: reject: RCPT from ...
                ts, kind, stage, text, rbl = m.group(g_ts, g_rkind, g_rstage, g_rtext, g_rbl)
                if ts != last_ts:
                    bucket = buckets.get(ts) or buckets.setdefault(ts, [0, 0, 0, 0, 0])
                    last_ts = ts
                bucket[4] += 1
                if kind == b"reject":
                    self.rejected += 1
                elif kind == b"reject_warning":
                    self.reject_warnings += 1
                elif kind == b"hold":
                    self.held += 1
                else:
                    self.discarded += 1
                key = (kind, stage, reject_text(text, rbl))
                if key in reasons:
                    reasons[key] += 1
                else:
                    self._count(reasons, key, "reject_reasons")
            elif li == i_gen:  # a queue id, then no fast shape
                cmd, qid, ts = m.group(g_cmd, g_fq, g_ts)
                line_(_line_of(buf, m), cmd, qid, ts)
            elif li in (i_qidp, i_qid, i_qid3):  # pflogsumm's general split
                cmd, qid, ts = m.group(g_cmd, li, g_ts)
                line_(_line_of(buf, m), cmd, qid, ts)
            else:  # postfix-script
                cmd, qid, ts = m.group(g_cmd2, g_qid2, g_ts)
                line_(_line_of(buf, m), cmd, qid, ts)
        self.received += received
        self.delivered += delivered
        self.bytes_delivered += bytes_delivered
        for d in (self.senders, self.sending_domains, self.recipients, self.recipient_domains):
            d.tidy()

    def _delay(self, text: bytes) -> float:
        """A delay as a number (cached: the same few hundred strings come back)."""
        try:
            value = float(text)
        except ValueError:
            value = perl_number(text)
        if len(self.delays) >= 4096:
            self.delays.clear()
        self.delays[text] = value
        return value

    # ------------------------------------------------------------------ the general path
    def _line(self, line: bytes, cmd: bytes, qid: bytes, ts: bytes) -> None:
        """pflogsumm's chain of tests for one line (without its newline)."""
        if cmd == b"cleanup" and (
            b": header " in line or b": body " in line or b": END-OF-MESSAGE " in line
        ):
            a = _CLEANUP_ACTION.search(line)
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
                    self.received += 1
                    self._bucket(ts)[0] += 1
                    if len(self.clients) >= self.state_cap:
                        self._evict(self.clients)
                    self.clients[qid] = c.group(1)
                    return
            if b"reject" in line or b"hold: " in line or b"discard: " in line:
                a = _SMTPD_ACTION.search(line)
                if a is not None:
                    self._smtpd_action(a.group(1), line, ts)
            return
        if b", size=" in line:
            f = _FROM_SIZE.search(line)
            if f is not None:
                if not self.sizes.get(qid):
                    self._from(qid, f.group(1), int(f.group(2)))
                return
        if b"status=" in line:
            d = _DELIVERY.search(line)
            if d is not None:
                self._delivery(cmd, qid, ts, line, *d.group(1, 2, 3, 4, 5))
                return
        if cmd == b"pickup":
            if b": sender=" in line or b": uid=" in line:
                self.received += 1
                self._bucket(ts)[0] += 1
                if len(self.clients) >= self.state_cap:
                    self._evict(self.clients)
                self.clients[qid] = None  # pflogsumm's "pickup"
            return
        if line.endswith(b": removed"):
            self.sizes.pop(qid, None)
            self.clients.pop(qid, None)
            self.deferred_ids.pop(qid, None)

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
            dly = perl_number(delay)
            row[D_DELAY_SUM] += dly
            if dly > row[D_DELAY_MAX]:
                row[D_DELAY_MAX] = dly
            self.recipients.add(addr)
            self._bucket(ts)[1] += 1
            self.delivered += 1
            size = self.sizes.get(qid)
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
        row: list[float] = [0, 0, 0, 0, 0.0, 0.0]
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
        """A qmgr ``from=<...>, size=N`` line whose queue id has no size yet."""
        sizes = self.sizes
        if len(sizes) >= self.state_cap:
            self._evict(sizes)
        sizes[qid] = size
        if qid not in self.clients:  # not seen received: a bounce, a forward, an old message
            return
        client = self.clients.pop(qid)
        whence: bytes
        if client is None:
            whence = b"pickup"
        else:
            known = self.domains_of.get(client)
            if known is None:
                known = gimme_domain(client) or b""
                if len(self.domains_of) >= 4096:
                    self.domains_of.clear()
                self.domains_of[client] = known
            if known == b"" or known == b"0":  # false in Perl: pflogsumm counts nothing
                return
            whence = known
        at = addr.find(b"@")
        dom: bytes
        if at >= 0:
            addr = addr[:at] + addr[at:].lower()
            dom = addr[at + 1 :] if 0 < at < len(addr) - 1 else (addr if client is None else whence)
        elif addr:
            dom = addr if client is None else whence
        else:
            addr = b"from=<>"
            dom = addr if client is None else whence
        self.sending_domains.add(dom)
        self.senders.add(addr)
        self.bytes_received += size
        table = self.sender_domains
        row = table.get(dom)
        if row is None:
            if len(table) >= 2 * self.cap:
                prune(table, self.cap, lambda r: r[0])
                self.truncated.add("sender_domains")
            row = table[dom] = [0, 0]
        row[0] += 1
        row[1] += size

    def _deferred(self, cmd: bytes, qid: bytes, dom: bytes, delay: bytes, line: bytes) -> None:
        self.deferrals += 1
        if qid not in self.deferred_ids:
            self.deferred += 1
            if len(self.deferred_ids) >= self.state_cap:
                self._evict(self.deferred_ids)
            self.deferred_ids[qid] = None
        row = self.rcpt_domains.get(dom)
        if row is None:
            row = self._new_domain(dom)
        row[D_DEFER] += 1
        dly = perl_number(delay)
        if dly > row[D_DELAY_MAX]:
            row[D_DELAY_MAX] = dly
        m = _DEFER_REASON.search(line)
        reason = said_trim(m.group(1), 65) if m else b""
        if reason[:3].isdigit() and reason[3:4] == b" ":
            reason = reason[4:]
        reason = reason.removeprefix(b"connect to ")
        self._count(self.defer_reasons, (cmd, reason), "deferral_reasons")

    def _bounced(self, relay: bytes, dom: bytes, line: bytes) -> None:
        self.bounced += 1
        row = self.rcpt_domains.get(dom)
        if row is None:
            row = self._new_domain(dom)
        row[D_BOUNCE] += 1
        m = _BOUNCE_REASON.search(line)
        reason = said_trim(m.group(1), 66) if m else b""
        if reason[:3].isdigit() and reason[3:4] == b" ":
            reason = reason[4:]
        self._count(self.bounce_reasons, (relay, reason), "bounce_reasons")

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

    def _smtpd_action(self, kind: bytes, line: bytes, ts: bytes) -> None:
        if kind == b"reject":
            self.rejected += 1
        elif kind == b"reject_warning":
            self.reject_warnings += 1
        elif kind == b"hold":
            self.held += 1
        else:
            self.discarded += 1
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
