"""What the store accepts: addresses and reasons fit for a Postfix map, field limits.

Cleaning text and normalising addresses is :mod:`mailops.text`'s; the names are
re-exported here for the store's callers.
"""

from __future__ import annotations

import re

from mailops.text import MAX_ADDRESS, clean, normalize_address

__all__ = [
    "MAX_ADDRESS",
    "MAX_DIAGNOSTIC",
    "MAX_FIELD",
    "clean",
    "normalize_address",
    "valid_address",
    "valid_reason",
]

# What a suppressible address looks like: no whitespace, quotes, angle brackets or commas;
# not starting with '#' (a comment in a Postfix map); exactly one '@' with text on both
# sides.  Quoted local parts are not accepted: the Postfix map key cannot carry them.
_ADDRESS = re.compile(r"[^\s@<>()\[\]\\\",;:#][^\s@<>()\\\",;:]*@[^\s@<>()\\\",;:]+")
# Words that may stand as a reason (they end up in the text of a 550 reply).
_REASON = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

MAX_FIELD = 255
MAX_DIAGNOSTIC = 1000


def valid_address(address: str) -> bool:
    return 3 <= len(address) <= MAX_ADDRESS and _ADDRESS.fullmatch(address) is not None


def valid_reason(reason: str) -> bool:
    return _REASON.fullmatch(reason) is not None
