"""Make text safe to store and to write into a Postfix map: one line, bounded, valid UTF-8."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What a suppressible address looks like: no whitespace, quotes, angle brackets or commas;
# not starting with '#' (a comment in a Postfix map); exactly one '@' with text on both
# sides.  Quoted local parts are not accepted: the Postfix map key cannot carry them.
_ADDRESS = re.compile(r"[^\s@<>()\[\]\\\",;:#][^\s@<>()\\\",;:]*@[^\s@<>()\\\",;:]+")
# Words that may stand as a reason (they end up in the text of a 550 reply).
_REASON = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

MAX_ADDRESS = 320
MAX_FIELD = 255
MAX_DIAGNOSTIC = 1000


def clean(value: object, limit: int = MAX_FIELD) -> str:
    """One line of printable text: controls become spaces, runs of blanks one space."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates (from surrogateescape decoding) cannot be encoded: replace them.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text[:limit]


def normalize_address(value: object) -> str:
    """Lower-cased address without angle brackets or blanks ('' when there is none)."""
    text = clean(value, MAX_ADDRESS + 2).strip("<> ").lower()
    return text[:MAX_ADDRESS]


def valid_address(address: str) -> bool:
    return 3 <= len(address) <= MAX_ADDRESS and _ADDRESS.fullmatch(address) is not None


def valid_reason(reason: str) -> bool:
    return _REASON.fullmatch(reason) is not None
