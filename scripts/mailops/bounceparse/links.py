"""Links from a report back to what we sent: the original Message-ID, the application's
X-Message-ID, and the token of a VERP return path (``bounces+TOKEN@domain``)."""

from __future__ import annotations

import re
from email.message import Message

from mailops.bounceparse import _text
from mailops.bounceparse._mime import (
    ORIGINAL_HEADERS_TYPES,
    ORIGINAL_MESSAGE_TYPES,
    Context,
    payload_of,
    raw_headers,
)

_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_INLINE = re.compile(
    r"(?im)^[ \t>]*(message-id|x-message-id|return-path|from)[ \t]*:[ \t]*([^\r\n]{1,1000})$"
)


def original_headers(ctx: Context) -> list[tuple[str, str]]:
    """Headers of the returned message: an attached message/rfc822, else a
    text/rfc822-headers part, else [] (computed once per message)."""
    if ctx.original is None:
        ctx.original = _find_original(ctx)
    return ctx.original


def _find_original(ctx: Context) -> list[tuple[str, str]]:
    for part in ctx.parts_of(ORIGINAL_MESSAGE_TYPES):
        payload = payload_of(part.msg)
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return raw_headers(payload[0])
    for part in ctx.parts_of(ORIGINAL_HEADERS_TYPES):
        return _text.parse_fields(part.text(), _text.MAX_HEADERS)
    return []


def inline_headers(text: str) -> dict[str, str]:
    """Message-ID, X-Message-ID, Return-Path and From: lines quoted in a notice's text
    (qmail, Yahoo, Exim, Exchange and Gmail put the returned headers there)."""
    found: dict[str, str] = {}
    for match in _INLINE.finditer(text):
        found.setdefault(match.group(1).lower(), match.group(2))
        if len(found) == 4:
            break
    return found


def message_id(value: str) -> str:
    """A Message-ID as written (<local@domain>), from a header value."""
    text = _text.decode_header(value)
    match = _MSGID.search(text)
    if match:
        return _text.clean(match.group(0))
    token = text.split()
    return _text.clean(token[0]) if token else ""


def last_reference(value: str) -> str:
    """The last Message-ID of a References header: the message replied to."""
    ids = _MSGID.findall(value[: _text.HEADER_LIMIT])
    return _text.clean(ids[-1]) if ids else ""


def verp_pattern(prefixes: tuple[str, ...]) -> re.Pattern[str]:
    names = "|".join(re.escape(p) for p in prefixes if p) or "bounces"
    return re.compile(r"(?i)(?:^|[\s<:,;\"'(])(?:" + names + r")\+([^@\s<>\"'(),;:]{1,200})@")


def verp_token(candidates: list[str], pattern: re.Pattern[str]) -> str:
    for value in candidates:
        match = pattern.search(_text.decode_header(value) if value else "")
        if match:
            return _text.clean(match.group(1), 200)
    return ""
