"""Text helpers for the classifier: bounded decoding, addresses, header blocks.

Cleaning a line and reading an address are :mod:`mailops.text`'s, used from here.

Everything here is total: no function raises on odd input, and every function bounds
the work it does by the ``*_LIMIT`` constants.
"""

from __future__ import annotations

import base64
import binascii
import re

from mailops.text import ADDRESS_SPEC_MAX
from mailops.text import LINE_MAX as LINE_MAX  # re-exported for the classifier's modules
from mailops.text import address_spec as address_spec
from mailops.text import clean as clean

# How much of each thing we look at.  A bounce is classified from its first part and the
# headers of the returned message, so these are generous for real mail and still keep a
# hostile message to a few milliseconds of work.
ENCODED_LIMIT = 256 * 1024  # encoded characters of one part that we decode
TEXT_LIMIT = 64 * 1024  # decoded characters of one part that detectors read
HEADER_LIMIT = 8 * 1024  # characters of one header value
MAX_HEADERS = 500  # header lines of one header block
MAX_FIELDS = 400  # fields of one DSN / feedback report

# Longest value kept in each kind of output field.
ADDRESS_MAX = ADDRESS_SPEC_MAX
STATUS_MAX = 16
SHORT_MAX = 64
DIAGNOSTIC_MAX = 1000

_SURROGATES = re.compile("[\ud800-\udfff]")


def unescape(value: str) -> str:
    """Turn the parser's surrogate-escaped bytes back into text (UTF-8, else Latin-1)."""
    if not _SURROGATES.search(value):
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return _SURROGATES.sub("\ufffd", value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset; unknown or lying charsets fall back to UTF-8."""
    name = (charset or "").strip().strip("\"'").lower()[:40]
    if not name or name in ("us-ascii", "ascii", "utf-8", "utf8", "unknown-8bit", "x-unknown"):
        name = "utf-8"
    try:
        return data.decode(name)
    except Exception:  # noqa: S110 - LookupError, UnicodeError, non-text codecs
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")


def b64decode_lenient(data: bytes) -> bytes:
    """Base64 that ignores junk characters and a broken tail instead of failing."""
    clean_data = _NOT_B64.sub(b"", data)
    rest = len(clean_data) % 4
    if rest == 1:
        clean_data = clean_data[:-1]
    elif rest:
        clean_data += b"=" * (4 - rest)
    try:
        return base64.b64decode(clean_data)
    except (binascii.Error, ValueError):
        return b""


def decode_transfer(payload: str, cte: str) -> bytes:
    """Undo a Content-Transfer-Encoding on (the first ENCODED_LIMIT characters of) a body."""
    raw = payload[:ENCODED_LIMIT].encode("utf-8", "surrogateescape")
    cte = cte.strip().lower()
    if cte == "base64":
        return b64decode_lenient(raw)
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(raw)
        except (binascii.Error, ValueError):
            return raw
    return raw


_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,60})\?([bBqQ])\?([^?\s]{0,2000})\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?)")


def _decode_word(match: re.Match[str]) -> str:
    charset = match.group(1).split("*", 1)[0]
    data = match.group(3).encode("ascii", "replace")
    if match.group(2) in "bB":
        raw = b64decode_lenient(data)
    else:
        try:
            raw = binascii.a2b_qp(data, header=True)
        except (binascii.Error, ValueError):
            raw = data
    return decode_bytes(raw, charset)


def decode_header(value: str) -> str:
    """A header value as text: 8-bit bytes and RFC 2047 encoded words decoded, unfolded."""
    text = unescape(value[:HEADER_LIMIT])
    if "=?" in text:
        text = _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub(r"\1\2", text))
    return " ".join(text.split())


_ADDR = r"[^\s<>\"'(),;:\[\]@]{1,128}@[A-Za-z0-9_\[\]\.:-]{1,200}"
_ANGLE_ADDR = re.compile(r"<\s*(" + _ADDR + r")\s*>")
_BARE_ADDR = re.compile(r"(?<![^\s<>\"'(),;:\[])(" + _ADDR + r")")


def first_address(text: str) -> str:
    """The first address in a header or a line: <angle> form first, else a bare one."""
    text = text[:HEADER_LIMIT]
    match = _ANGLE_ADDR.search(text) or _BARE_ADDR.search(text)
    return address_spec(match.group(1)) if match else ""


def all_addresses(text: str, limit: int = 50) -> list[str]:
    """Every distinct address in a text, in order (bounded)."""
    found: list[str] = []
    for match in _BARE_ADDR.finditer(text[:HEADER_LIMIT]):
        address = address_spec(match.group(1))
        if address and address not in found:
            found.append(address)
            if len(found) >= limit:
                break
    return found


def parse_fields(text: str, limit: int = MAX_FIELDS) -> list[tuple[str, str]]:
    """Header-style ``Name: value`` lines with continuation lines, in order.

    Lines that are neither a field nor a continuation are skipped (a DSN written by a
    careless MTA still yields the fields it has).
    """
    fields: list[tuple[str, str]] = []
    name = ""
    parts: list[str] = []
    for line in text.splitlines():
        if line[:1] in (" ", "\t"):
            if name and len(parts) < 50:
                parts.append(line.strip())
            continue
        if name:
            fields.append((name, " ".join(p for p in parts if p)))
            name, parts = "", []
            if len(fields) >= limit:
                return fields
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and len(key) <= 80 and " " not in key:
            name, parts = key.lower(), [value.strip()]
    if name:
        fields.append((name, " ".join(p for p in parts if p)))
    return fields


def parse_blocks(text: str, limit: int = MAX_FIELDS) -> list[list[tuple[str, str]]]:
    """DSN-style groups of fields separated by blank lines."""
    blocks: list[list[tuple[str, str]]] = []
    total = 0
    for chunk in re.split(r"\n[ \t]*\r?\n", text.replace("\r\n", "\n")):
        fields = parse_fields(chunk, limit - total)
        if fields:
            blocks.append(fields)
            total += len(fields)
            if total >= limit:
                break
    return blocks


_BREAKS = re.compile(r"(?i)<\s*(?:br|/p|p|/div|div|/tr|tr|/li|li|/h\d|hr|pre|/pre)\b[^>]{0,500}>")
_TAGS = re.compile(r"<[^>]{0,2000}>")
_SCRIPTS = re.compile(r"(?is)<(script|style|head)\b.{0,20000}?</\1\s*>")


def html_to_text(markup: str) -> str:
    """Rough plain text of an HTML body: enough for the phrases detectors look for."""
    text = _SCRIPTS.sub(" ", markup[:TEXT_LIMIT])
    text = _BREAKS.sub("\n", text)
    text = _TAGS.sub(" ", text)
    import html  # (here: only an HTML notice needs it, and it costs 2 ms to import)

    text = html.unescape(text)
    return "\n".join(" ".join(line.split()) for line in text.splitlines())
