"""What the Postfix pipes (bounces ingest, unsubscribe, autoreply) have in common.

Postfix's pipe(8) runs the command with the message on stdin and reads its exit status:
0 delivered, 75 (EX_TEMPFAIL) try again later, most others bounce.  The pipes here read
a bounded amount of the message, write one line about what they did to syslog (mail
facility) and stderr (Postfix quotes stderr in the defer reason when the status is 75),
and turn every unexpected failure into 75, so mail is never lost to a bug or an outage.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import syslog
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import BinaryIO

from mailops import exitcodes
from mailops.config import ConfigError
from mailops.store.db import StoreError
from mailops.store.text import clean, normalize_address

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024
# Headers that are looked at never need more than this much of the message.
_HEADER_BYTES = 256 * 1024


@dataclass(frozen=True)
class RawMessage:
    data: bytes  # at most the cap
    size: int  # bytes that arrived in total
    sha256: str  # of everything that arrived, not only what was kept
    truncated: bool


def read_message(stream: BinaryIO, max_bytes: int = DEFAULT_MAX_BYTES) -> RawMessage:
    """Read the whole input, keep at most ``max_bytes`` of it (bounded memory).

    Reading to the end matters: a pipe that stops reading early makes Postfix see a
    broken pipe.  The hash covers every byte, so a resent copy of the same message is
    recognised even when it was too big to keep in full.
    """
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        room = max_bytes - len(kept)
        if room > 0:
            kept += chunk[:room]
    return RawMessage(bytes(kept), size, digest.hexdigest(), size > len(kept))


def headers(data: bytes) -> Message:
    """The message's header section (a malformed one gives whatever could be read)."""
    head = data[:_HEADER_BYTES]
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = head.find(sep)
        if end >= 0:
            head = head[: end + len(sep)]
            break
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def header(msg: Message, name: str) -> str:
    """One header's value as single-line text ('' when absent or undecodable)."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    return clean(value, 1000) if value is not None else ""


def header_address(msg: Message, name: str) -> str:
    """The first address in an address header (From:, Reply-To:), normalised."""
    value = header(msg, name)
    if not value:
        return ""
    try:
        pairs = getaddresses([value])
    except Exception:
        return ""
    for _, addr in pairs:
        address = normalize_address(addr)
        if address:
            return address
    return ""


# RFC 3834 section 2: responders must not reply to these senders, nor to mailing lists.
_MACHINE_LOCALPARTS = frozenset(
    [
        "mailer-daemon",
        "postmaster",
        "listserv",
        "majordomo",
        "bounce",
        "bounces",
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
        "nobody",
    ]
)


def machine_sender(sender: str) -> str | None:
    """Why an envelope sender is not a person ('' and MAILER-DAEMON: a bounce), or None."""
    address = normalize_address(sender)
    if not address or address in ("<>", "mailer-daemon"):
        return "null sender"
    local = address.rsplit("@", 1)[0]
    base = local.split("+", 1)[0]
    if base in _MACHINE_LOCALPARTS:
        return f"sender {local}@ is a machine"
    if local.startswith("owner-") or local.endswith(("-request", "-bounces", "-owner")):
        return "sender is a mailing list"
    return None


def automatic_message(msg: Message, *, lists: bool = True) -> str | None:
    """Why a message was sent by a machine (RFC 3834 and common practice), or None."""
    auto = header(msg, "Auto-Submitted").lower()
    if auto and auto.split(";", 1)[0].strip() != "no":
        return f"Auto-Submitted: {auto[:40]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse"):
        if msg.get(name) is not None:
            return f"{name} present"
    suppress = header(msg, "X-Auto-Response-Suppress").lower()
    if any(word in suppress for word in ("all", "autoreply", "oof")):
        return f"X-Auto-Response-Suppress: {suppress[:40]}"
    precedence = header(msg, "Precedence").lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return f"Precedence: {precedence}"
    if lists:
        for name in ("List-Id", "List-Unsubscribe", "List-Post", "Feedback-ID"):
            if msg.get(name) is not None:
                return f"{name} present (list or bulk mail)"
    return None


# --------------------------------------------------------------------------- running


class PipeError(Exception):
    """A failure that retrying can fix; the message says what to do about it."""


def log(tool: str, text: str, *, error: bool = False) -> None:
    """One line to syslog (mail facility) and to stderr."""
    line = clean(text, 900)
    try:
        syslog.openlog(f"mailops/{tool}", syslog.LOG_PID, syslog.LOG_MAIL)
        syslog.syslog(syslog.LOG_WARNING if error else syslog.LOG_INFO, line)
    except Exception:  # noqa: S110 - logging must never turn a delivery into a failure
        pass
    with contextlib.suppress(Exception):  # stderr closed: nothing left to tell
        print(f"mailops {tool}: {line}", file=sys.stderr, flush=True)


def run_pipe(tool: str, body: Callable[[], int]) -> int:
    """Run a pipe's body; anything but a clean return is a one-line TEMPFAIL."""
    try:
        return body()
    except ConfigError as exc:
        log(tool, f"configuration error, message kept queued: {exc}", error=True)
    except StoreError as exc:
        log(tool, f"store unavailable, message kept queued: {exc}", error=True)
    except PipeError as exc:
        log(tool, f"{exc}; message kept queued", error=True)
    except MemoryError:
        log(tool, "out of memory; message kept queued", error=True)
    except Exception as exc:
        log(tool, f"unexpected {type(exc).__name__}: {exc}; message kept queued", error=True)
    return exitcodes.TEMPFAIL
