"""What a detector hands back before the engine fills in links and cleans every field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailops.bounceparse import _text
from mailops.bounceparse.model import Kind, Recipient
from mailops.bounceparse.reasons import classify

MAX_RECIPIENTS = 100


@dataclass
class Hit:
    """One recipient as a notice's text describes it."""

    address: str
    diagnostic: str = ""
    remote_mta: str = ""
    action: str = "failed"
    permanent: bool | None = None
    status: str = ""


@dataclass
class Draft:
    kind: Kind
    detector: str
    recipients: list[Recipient] = field(default_factory=list)
    original_message_id: str = ""
    x_message_id: str = ""
    verp_sources: list[str] = field(default_factory=list)
    feedback_type: str = ""
    source_ip: str = ""
    reporting_mta: str = ""
    notes: list[str] = field(default_factory=list)


def strip_type(value: str) -> str:
    """Drop an RFC 3464 type prefix: "dns; mx.example.com" -> "mx.example.com"."""
    head, sep, rest = value.partition(";")
    if sep and 0 < len(head.strip()) <= 20 and " " not in head.strip():
        return rest.strip()
    return value.strip()


_DIAG_TYPE = re.compile(r"(?i)^\s*(?:smtp|esmtp|lmtp|mta|x-[a-z0-9.-]{1,30})\s*;\s*")
_CONTINUED = re.compile(r"^([245]\d\d)-((?:[245]\.\d{1,3}\.\d{1,3})?)\s*")


def clean_diagnostic(value: str) -> str:
    """A diagnostic as one readable line: no "smtp;" type, and a multi-line SMTP reply
    ("550-5.1.1 ... 550-5.1.1 ... 550 5.1.1 ...") joined into one."""
    text = _text.clean(_DIAG_TYPE.sub("", value[:8000]), 4000)
    first = _CONTINUED.match(text)
    if first:
        code, enhanced = first.groups()
        repeat = re.compile(r"\s" + code + r"[ -]" + re.escape(enhanced) + r"\s*")
        text = f"{code} {enhanced} {repeat.sub(' ', text[first.end() :])}"
    return _text.clean(text, _text.DIAGNOSTIC_MAX)


def remote_host(value: str) -> str:
    """The host of a Remote-MTA field: "dns; mx.example.com. (192.0.2.1, ...)" ->
    "mx.example.com"."""
    words = strip_type(_text.clean(value)).split()
    return words[0].rstrip(".") if words else ""


def recipient(
    address: str,
    status: str = "",
    diagnostic: str = "",
    action: str = "failed",
    remote_mta: str = "",
    permanent: bool | None = None,
    context: str = "",
) -> Recipient:
    """A classified, cleaned Recipient (``context``: more of what the notice says about
    it, read for the classification only)."""
    diag = clean_diagnostic(diagnostic)
    act = _text.clean(action, _text.STATUS_MAX).lower().split(" ")[0] if action else ""
    code, reason, hard = classify(_text.clean(status, 40), diag, act, permanent, context)
    return Recipient(
        address=_text.address_spec(address),
        status=_text.clean(code, _text.STATUS_MAX),
        reason=reason,
        hard=hard,
        action=act,
        remote_mta=remote_host(remote_mta),
        diagnostic=diag,
    )


def from_hits(hits: list[Hit]) -> list[Recipient]:
    out: list[Recipient] = []
    seen: set[str] = set()
    for hit in hits:
        rcpt = recipient(
            hit.address, hit.status, hit.diagnostic, hit.action, hit.remote_mta, hit.permanent
        )
        if not rcpt.address or rcpt.address in seen:
            continue
        seen.add(rcpt.address)
        out.append(rcpt)
        if len(out) >= MAX_RECIPIENTS:
            break
    return out
