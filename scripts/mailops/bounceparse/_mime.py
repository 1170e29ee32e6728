"""One parsed message as the detectors see it: headers, leaf parts, decoded text.

Parsing follows the standard library's compat32 parser (it records defects instead of
raising), which reads every message _split_node does not; compat32 is the default
policy of Message, Parser and FeedParser, so email.policy (and the header registry it
imports, a few milliseconds) is never loaded.  Before parsing, the input is cut to
MAX_INPUT bytes and to at most MAX_NESTING multipart boundaries / message parts, so deep
nesting cannot exhaust the recursion limit and a huge attachment cannot cost more than
one bounded read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import errors, feedparser
from email.feedparser import FeedParser
from email.message import Message
from email.parser import Parser
from typing import Any

from mailops.bounceparse import _text

MAX_INPUT = 1024 * 1024  # bytes of a message that we parse; the rest is ignored
MAX_SCAN = 8 * MAX_INPUT  # bytes examined for over-long lines before the cut
LONG_LINE = 64 * 1024  # longer lines are cut to this many bytes
MAX_NESTING = 64  # multipart boundaries and message/* parts
MAX_PARTS = 200  # leaf parts we keep
MAX_DEPTH = 16  # multipart levels we walk

_NESTING = re.compile(rb"(?i)boundary\s*=|content-type:\s*message/")

# Parts that hold reports or returned messages: leaves for the walker.
REPORT_TYPES = frozenset(
    [
        "message/delivery-status",
        "message/global-delivery-status",
        "message/feedback-report",
    ]
)
ORIGINAL_MESSAGE_TYPES = frozenset(["message/rfc822", "message/global", "message/partial"])
ORIGINAL_HEADERS_TYPES = frozenset(
    [
        "text/rfc822-headers",
        "text/rfc822-header",
        "message/rfc822-headers",
        "message/global-headers",
    ]
)


def bound_input(raw: bytes) -> tuple[bytes, list[str]]:
    """Cut the input to what we parse; say what was cut.

    Lines longer than LONG_LINE are cut first (within the first MAX_SCAN bytes), so a
    megabyte header does not push the report parts out of the MAX_INPUT we parse."""
    notes: list[str] = []
    if len(raw) > LONG_LINE:
        if len(raw) > MAX_SCAN:
            raw = raw[:MAX_SCAN]
        lines = raw.split(b"\n")
        if max(map(len, lines)) > LONG_LINE:
            raw = b"\n".join(line[:LONG_LINE] for line in lines)
            notes.append(f"lines cut to {LONG_LINE} bytes")
    if len(raw) > MAX_INPUT:
        raw = raw[:MAX_INPUT]
        notes.append(f"input truncated to {MAX_INPUT} bytes")
    lowered = raw.lower()
    if lowered.count(b"boundary") + lowered.count(b"message/") <= MAX_NESTING:
        return raw, notes
    for count, match in enumerate(_NESTING.finditer(raw), start=1):
        if count > MAX_NESTING:
            cut = raw.rfind(b"\n", 0, match.start())
            raw = raw[: max(cut, 0)]
            notes.append(f"input cut after {MAX_NESTING} nested parts")
            break
    return raw, notes


class IndexedMessage(Message):
    """A compat32 Message whose header lookups go through a name index.

    The stdlib parser looks up the parent's Content-Type once for every child part, and
    Message.get() scans every header: a message with 60,000 headers and 20,000 parts
    would take minutes.  The index is rebuilt whenever the number of headers changed, so
    it is never stale while the parser adds headers (nothing looks them up meanwhile).
    """

    def get(self, name: str, failobj: Any = None) -> Any:
        headers: list[tuple[str, Any]] = self._headers  # type: ignore[attr-defined]
        cached = self.__dict__.get("_header_index")
        if cached is None or cached[0] != len(headers):
            index: dict[str, tuple[str, Any]] = {}
            for key, value in headers:
                index.setdefault(key.lower(), (key, value))
            cached = (len(headers), index)
            self.__dict__["_header_index"] = cached
        found = cached[1].get(name.lower())
        if found is None:
            return failobj
        return self.policy.header_fetch_parse(found[0], found[1])

    def get_content_type(self) -> str:
        """Message.get_content_type(), kept while the headers and the default type stay
        (the detectors and the walk ask each part for it about twenty times)."""
        key = (len(self._headers), self.get_default_type())  # type: ignore[attr-defined]
        cached = self.__dict__.get("_content_type")
        if cached is None or cached[0] != key:
            cached = (key, super().get_content_type())
            self.__dict__["_content_type"] = cached
        return cached[1]


def payload_of(msg: Message) -> Any:
    """msg.get_payload(), which for a body with 8-bit bytes decodes it with the charset
    parameter and lets a codec lookup's ValueError through ("utf-8\\0"): then the body
    is read as ASCII, as the standard library does for an unknown charset."""
    try:
        return msg.get_payload()
    except (LookupError, ValueError, UnicodeError):
        raw = getattr(msg, "_payload", "")
        if not isinstance(raw, str):
            return raw
        try:
            return raw.encode("ascii", "surrogateescape").decode("ascii", "replace")
        except UnicodeError:
            return raw


def parse_bytes(raw: bytes) -> Message:
    """The message as the standard library's compat32 parser reads it.

    A message whose lines end in LF or CRLF (no lone CR) and whose multiparts have a
    boundary parameter, a start boundary and a 7bit/8bit/binary encoding (and are not
    multipart/digest) is split here instead (see _split_node): the same tree, without
    the feed parser's line-by-line reading of every body and without a regular
    expression compiled for every boundary (re's cache never hits: boundaries are
    unique).  Anything else goes to the standard library's parser."""
    # (the standard library's BytesParser reads bytes as ASCII with surrogateescape)
    text = raw.decode("ascii", "surrogateescape")
    if "\r" not in text or text.count("\r") == text.count("\r\n"):
        try:
            return _split_node(text)[0]
        except _Unusual:
            pass
    return _std_parser().parsestr(text)


def _std_parser() -> Parser:
    return Parser(_class=IndexedMessage)


class _Unusual(Exception):
    """A shape _split_node leaves to the standard library's parser."""


_CTE_OK = ("7bit", "8bit", "binary")


def _split_node(text: str) -> tuple[Message, Message]:
    """Parse ``text`` (lines ending in LF or CRLF) the way the compat32 feed parser does, splitting
    multiparts at their boundary lines with string operations; return the message and
    the last message the feed parser would have created while reading it (the one whose
    trailing newline belongs to the boundary that follows, RFC 2046).

    The rules, as the feed parser applies them (tests compare the trees):

    - headers as in _header_block and _read_headers;

    - a boundary line is ``--BOUNDARY``, ``--`` more for the close boundary, then spaces
      or tabs only; the preamble is what comes before the first, without its last
      newline; a run of boundary lines separates nothing; a part is what lies between
      two boundary lines, or the last one and the end of the text when the close
      boundary is missing (a returned message cut short); the epilogue is everything
      after the close boundary;
    - message/delivery-status parts go to the standard library's parser whole (header
      blocks), other message/* parts hold the one message their body is.

    Raises _Unusual for a multipart without a start boundary, without a boundary
    parameter, with another transfer encoding, or of type multipart/digest
    (whose parts default to message/rfc822): those defects the standard library's
    parser records, and reads around, its own way."""
    msg = IndexedMessage()
    lines, body_start, separated = _header_block(text)
    if not separated:  # a body line where a header was due
        msg.defects.append(errors.MissingHeaderBodySeparatorDefect())
    body = _read_headers(msg, lines) + text[body_start:]
    msg.set_payload(body)
    maintype = msg.get_content_maintype()
    if maintype == "multipart":
        _split_multipart(msg)
        return msg, msg
    if maintype != "message":
        return msg, msg
    if msg.get_content_type() == "message/delivery-status":
        feed = FeedParser(IndexedMessage)
        feed.feed(text)
        whole = feed.close()
        last: Message = getattr(feed, "_last")  # noqa: B009 - the feed parser's own record
        return whole, last
    inner, last = _split_node(body)
    msg.set_payload([inner])
    return msg, last


# The feed parser's own test for a header line (or a continuation, or a "From " line).
_HEADER_LINE: re.Pattern[str] = getattr(feedparser, "headerRE")  # noqa: B009


def _header_block(text: str) -> tuple[list[str], int, bool]:
    """The header lines of a message, where its body starts, and whether a blank line
    or the end of the text ended the headers, as the feed parser reads them: headers
    run to the first line that is no header line (nor a continuation); a blank line
    there is the separator, any other line is the body's first."""
    lines: list[str] = []
    pos, size = 0, len(text)
    while pos < size:
        newline = text.find("\n", pos)
        end = size if newline < 0 else newline + 1
        line = text[pos:end]
        if not _HEADER_LINE.match(line):
            if line[0] in "\r\n":
                return lines, end, True
            return lines, pos, False
        lines.append(line)
        pos = end
    return lines, size, True


def _read_headers(msg: Message, lines: list[str]) -> str:
    """Set the headers ``lines`` on ``msg`` as the feed parser does: continuation lines
    join the header before them, a "From " line is the envelope line when it comes
    first, goes back to the body when it comes last, and is a defect in between.
    Returns what goes back to the body ("" or that last line)."""
    name = ""
    value: list[str] = []
    for number, line in enumerate(lines):
        if line[0] in " \t":
            if name:
                value.append(line)
            else:
                msg.defects.append(errors.FirstHeaderLineIsContinuationDefect(line))
            continue
        if name:
            msg.set_raw(*msg.policy.header_source_parse(value))
            name, value = "", []
        if line.startswith("From "):
            if number == 0:
                msg.set_unixfrom(_chomp(line))
            elif number == len(lines) - 1:
                return line
            else:
                msg.defects.append(errors.MisplacedEnvelopeHeaderDefect(line))
            continue
        colon = line.find(":")
        if colon == 0:
            msg.defects.append(errors.InvalidHeaderDefect("Missing header name."))
            continue
        name, value = line[:colon], [line]
    if name:
        msg.set_raw(*msg.policy.header_source_parse(value))
    return ""


def _split_multipart(msg: Message) -> None:
    """Replace the body of a multipart (read headersonly) by its parts, preamble and
    epilogue; raise _Unusual for what _split_node leaves to the standard library."""
    boundary = msg.get_boundary()
    if boundary is None or msg.get_content_type() == "multipart/digest":
        raise _Unusual
    if "\n" in boundary or "\r" in boundary:  # (a folded parameter: no line matches it)
        raise _Unusual
    if str(msg.get("content-transfer-encoding", "8bit")).lower() not in _CTE_OK:
        raise _Unusual
    body = _body(msg)
    if not isinstance(body, str):
        raise _Unusual
    marks = _boundary_lines(body, "--" + boundary)
    if not marks or marks[0][2]:
        raise _Unusual  # no start boundary
    if marks[0][0]:
        msg.preamble = _chomp(body[: marks[0][0]])
    parts: list[Any] = []
    k = 0
    while True:
        if marks[k][2]:
            msg.epilogue = body[marks[k][1] :]
            break
        start = marks[k][1]
        k += 1
        while k < len(marks) and marks[k][0] == start:  # a run of boundary lines
            start = marks[k][1]
            k += 1
        stop = marks[k][0] if k < len(marks) else len(body)
        part, last = _split_node(body[start:stop])
        _strip_boundary_newline(last)
        parts.append(part)
        if k >= len(marks):  # the text ended without the close boundary
            msg.defects.append(errors.CloseBoundaryNotFoundDefect())
            break
    msg.set_payload(parts)


def _boundary_lines(body: str, sep: str) -> list[tuple[int, int, bool]]:
    """(start, end, is the close boundary) of each boundary line of ``body``: ``sep``
    at the start of a line, ``--`` more for the close boundary, then spaces or tabs up
    to the line end.  (str.find, not a loop over lines: a megabyte of short lines
    nested sixty deep must not cost a Python loop per line per level.)"""
    marks: list[tuple[int, int, bool]] = []
    pos = body.find(sep)
    while pos >= 0:
        after = pos + 1
        if pos == 0 or body[pos - 1] == "\n":
            newline = body.find("\n", pos)
            end = len(body) if newline < 0 else newline + 1
            rest = body[pos + len(sep) : end]
            close = rest.startswith("--")
            if not _chomp(rest[2:] if close else rest).strip(" \t"):
                marks.append((pos, end, close))
            after = end
        pos = body.find(sep, after)
    return marks


def _strip_boundary_newline(last: Message) -> None:
    """The newline before a boundary line belongs to the boundary (RFC 2046): off the
    payload (or a multipart's epilogue) of the last message read before it."""
    if last.get_content_maintype() == "multipart":
        if last.epilogue == "":
            last.epilogue = None
        elif last.epilogue is not None:
            last.epilogue = _chomp(last.epilogue)
    else:
        payload = _body(last)
        if isinstance(payload, str):
            last.set_payload(_chomp(payload))


def _chomp(line: str) -> str:
    """Without its one line end (CRLF or LF), if it has one."""
    if line.endswith("\n"):
        return line[:-2] if line.endswith("\r\n") else line[:-1]
    return line


def _body(msg: Message) -> Any:
    """The payload as the parser left it (get_payload() would decode 8-bit text)."""
    return msg.__dict__.get("_payload")


def raw_headers(msg: Message, limit: int = _text.MAX_HEADERS) -> list[tuple[str, str]]:
    """(lower-cased name, raw value) of a message's headers, bounded in count and size."""
    out: list[tuple[str, str]] = []
    for name, value in msg.raw_items():
        if len(out) >= limit:
            break
        if not isinstance(value, str):
            value = str(value)
        out.append((str(name).strip().lower(), value[: _text.HEADER_LIMIT]))
    return out


_PARAM = re.compile(r";\s*([A-Za-z0-9_.*-]{1,40})\s*=\s*(\"(?:[^\"\\]|\\.){0,500}\"|[^;\s]{0,500})")


def content_params(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value[:4096]):
        key = match.group(1).lower().split("*", 1)[0]
        params.setdefault(key, match.group(2).strip('"'))
    return params


@dataclass
class Part:
    """One leaf part (or a report / returned-message part, which we do not descend into)."""

    msg: Message
    ctype: str
    params: dict[str, str]
    index: int
    _text: str | None = field(default=None, repr=False)
    _headers: dict[str, str] | None = field(default=None, repr=False)

    def header(self, name: str) -> str:
        """First value of one of the part's own headers, decoded ("" when absent)."""
        if self._headers is None:
            self._headers = {}
            for key, value in raw_headers(self.msg, 100):
                self._headers.setdefault(key, value)
        found = self._headers.get(name, "")
        return _text.decode_header(found) if found else ""

    @property
    def is_attachment(self) -> bool:
        return self.header("content-disposition").lower().startswith("attachment")

    def text(self) -> str:
        """The decoded text of the part (at most TEXT_LIMIT characters), cached."""
        if self._text is None:
            self._text = _decode_part(self)
        return self._text


def _raw_body(msg: Message) -> str:
    """The undecoded body of a part; for message/* parts the parser split into
    sub-messages, their headers and bodies put back together."""
    payload = payload_of(msg)
    if isinstance(payload, str):
        return payload
    if isinstance(payload, list):
        chunks: list[str] = []
        size = 0
        for sub in payload[: _text.MAX_FIELDS]:
            if not isinstance(sub, Message):
                continue
            lines = [f"{name}: {value}" for name, value in sub.raw_items()]
            body = payload_of(sub)
            chunk = "\n".join(lines) + "\n" + (body if isinstance(body, str) else "")
            chunks.append(chunk)
            size += len(chunk)
            if size > _text.ENCODED_LIMIT:
                break
        return "\n\n".join(chunks)
    return ""


def _decode_part(part: Part) -> str:
    body = _raw_body(part.msg)
    data = _text.decode_transfer(body, part.header("content-transfer-encoding"))
    text = _text.decode_bytes(data[: _text.TEXT_LIMIT * 4], part.params.get("charset"))
    text = text[: _text.TEXT_LIMIT].replace("\r\n", "\n").replace("\r", "\n")
    if part.ctype == "text/html":
        text = _text.html_to_text(text)
    return text


class Context:
    """What detectors read: the top headers, the leaf parts, the main human text."""

    def __init__(self, msg: Message, envelope_to: str = "") -> None:
        self.msg = msg
        self.envelope_to = envelope_to
        self.headers = raw_headers(msg)
        top_ctype = _ctype(msg)
        self.ctype = top_ctype
        self.params = content_params(_header_str(msg, "content-type"))
        self.parts: list[Part] = []
        self._walk(msg)
        self._primary: str | None = None
        self._decoded: dict[str, str] = {}
        self.original: list[tuple[str, str]] | None = None  # see links.original_headers

    def _walk(self, top: Message) -> None:
        stack: list[tuple[Message, int]] = [(top, 0)]
        while stack and len(self.parts) < MAX_PARTS:
            msg, depth = stack.pop()
            ctype = _ctype(msg)
            payload = payload_of(msg)
            if ctype.startswith("multipart/"):
                if isinstance(payload, list):
                    if depth < MAX_DEPTH:
                        children = [p for p in payload[:MAX_PARTS] if isinstance(p, Message)]
                        stack.extend((child, depth + 1) for child in reversed(children))
                    continue
                ctype = "text/plain"  # a multipart without its boundary: read it as text
            params = content_params(_header_str(msg, "content-type"))
            self.parts.append(Part(msg, ctype, params, len(self.parts)))

    def header(self, name: str) -> str:
        """First value of a top-level header, decoded and unfolded ("" when absent)."""
        if name not in self._decoded:
            value = next((v for k, v in self.headers if k == name), None)
            self._decoded[name] = "" if value is None else _text.decode_header(value)
        return self._decoded[name]

    def header_all(self, name: str) -> list[str]:
        return [_text.decode_header(v) for k, v in self.headers if k == name]

    def parts_of(self, types: frozenset[str]) -> list[Part]:
        return [p for p in self.parts if p.ctype in types]

    def primary_text(self) -> str:
        """The human-readable notice: the first inline text/plain part, else the first
        text/html part as text, else ""."""
        if self._primary is None:
            plain = [p for p in self.parts if p.ctype == "text/plain" and not p.is_attachment]
            if not plain:
                plain = [p for p in self.parts if p.ctype == "text/plain"]
            if not plain:
                plain = [p for p in self.parts if p.ctype == "text/html"]
            self._primary = plain[0].text() if plain else ""
        return self._primary

    def texts(self) -> list[str]:
        """The decoded text of every text/* part, in order."""
        return [p.text() for p in self.parts if p.ctype in ("text/plain", "text/html")]


def _header_str(msg: Message, name: str) -> str:
    value = msg.get(name)
    return "" if value is None else str(value)[: _text.HEADER_LIMIT]


def _ctype(msg: Message) -> str:
    try:
        ctype = msg.get_content_type()
    except Exception:  # a header object that does not stringify: treat as text
        return "text/plain"
    if not isinstance(ctype, str):
        return "text/plain"
    # "text/plain charset=..." (a parameter without its ";"): the type is the first word.
    words = ctype[:100].split()
    return words[0].rstrip(";") if words else "text/plain"
