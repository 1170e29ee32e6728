"""Text from outside made safe to keep: one line, bounded, valid UTF-8; mail addresses.

The one place for it: the store, Postfix maps, bounce classification and the command
lines all clean text with :func:`clean`.  Addresses come in two kinds:

* :func:`normalize_address` lower-cases what a caller says is an address and drops angle
  brackets and blanks; whether it is usable is :func:`mailops.store.text.valid_address`'s
  call (the store keeps addresses up to ``MAX_ADDRESS``, RFC 5321's 64 + 1 + 255);
* :func:`address_spec` reads an address out of a field of a bounce or a report (a DSN
  address type, quotes and punctuation around it) and answers ``""`` when what is left
  is not an address of at most ``ADDRESS_SPEC_MAX`` characters (RFC 5321's path limit).

Everything here is total: no function raises on odd input, and each bounds its work.
"""

from __future__ import annotations

import re

MAX_ADDRESS = 320
ADDRESS_SPEC_MAX = 254
LINE_MAX = 255

# C0 controls, DEL and C1 controls become spaces; whitespace runs are then collapsed by
# str.split(), which also takes care of U+2028/U+2029 and the other Unicode separators.
_CONTROLS = {c: " " for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]}
# Lone surrogates (from surrogateescape decoding) cannot be encoded.
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(value: object, limit: int = LINE_MAX) -> str:
    """One line of printable text: no CR, LF, NUL or other control, no lone surrogate;
    runs of blanks one space, at most ``limit`` characters."""
    if not isinstance(value, str):
        value = "" if value is None else str(value)
    if (
        len(value) <= limit
        and value.isprintable()
        and "  " not in value
        and value[:1] != " "
        and value[-1:] != " "
    ):
        return value  # already one clean line: the common case
    text = value[: limit * 4 + 64]
    text = _SURROGATES.sub("\ufffd", text.translate(_CONTROLS))
    return " ".join(text.split())[:limit].rstrip()


def normalize_address(value: object) -> str:
    """Lower-cased address without angle brackets or blanks ('' when there is none)."""
    text = clean(value, MAX_ADDRESS + 2).strip("<> ").lower()
    return text[:MAX_ADDRESS]


_ADDRESS_SPEC = re.compile(r"^[^\s@<>]{1,128}@[^\s@<>]{1,200}$")


def address_spec(value: str) -> str:
    """Lower-cased addr-spec read from a report's field, or "" when it is not an address."""
    text = clean(value, 600).strip().strip("<>").strip()
    if ";" in text[:40]:  # a DSN address type: "rfc822; user@example.com"
        text = text.split(";", 1)[1].strip().strip("<>").strip()
    text = text.strip("\"'.,:;").lower()
    if not _ADDRESS_SPEC.match(text) or len(text) > ADDRESS_SPEC_MAX:
        return ""
    local, _, domain = text.rpartition("@")
    if not local or not domain or domain.startswith(".") or ".." in domain:
        return ""
    return text
