"""Detectors for the plain-text notices of the common MTAs and providers.

Each dialect is a function ``(text, ctx) -> list[Hit] | None`` over the notice's human
text: None when the text is not in that dialect, else the recipients it names (maybe
none).  They also serve the RFC 3464 detector, which borrows their diagnostic text when
a DSN's machine-readable part leaves it out.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailops.bounceparse._base import MAX_RECIPIENTS, Hit
from mailops.bounceparse._mime import Context
from mailops.bounceparse._text import address_spec, first_address

Dialect = Callable[[str, Context], "list[Hit] | None"]

_ADDR = r"[^\s<>\"'(),;:\[\]@]{1,128}@[A-Za-z0-9_.\[\]:-]{1,200}"
_REMOTE_POSTFIX = re.compile(r"\bhost\s+([A-Za-z0-9.-]{1,200})\[")
_REMOTE_EXIM = re.compile(r"\bhost\s+([A-Za-z0-9.-]{1,200})\s+\[")


def _head(text: str, size: int = 6000) -> str:
    return text[:size].lower()


def _remote(diag: str) -> str:
    match = _REMOTE_POSTFIX.search(diag) or _REMOTE_EXIM.search(diag)
    return match.group(1).rstrip(".") if match else ""


# --- Postfix (notices without their DSN part, and Postfix before 2.3) ---------------

_POSTFIX_INTRO = re.compile(r"(?im)^[ \t]*this is the (?:postfix program|mail system) at host\s")
_POSTFIX_RCPT = re.compile(
    r"^ {0,3}<(" + _ADDR + r")>(?:\s*\(expanded from <[^<>]{0,300}>\))?:\s*(.*)$"
)


def postfix(text: str, ctx: Context) -> list[Hit] | None:
    if not _POSTFIX_INTRO.search(text[:6000]):
        return None
    action = "delayed" if "this is a warning only" in _head(text) else "failed"
    hits: list[Hit] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) and len(hits) < MAX_RECIPIENTS:
        match = _POSTFIX_RCPT.match(lines[i])
        i += 1
        if not match:
            continue
        parts = [match.group(2)]
        while (
            i < len(lines)
            and lines[i].strip()
            and lines[i][:1] in (" ", "\t")
            and not _POSTFIX_RCPT.match(lines[i])
        ):
            parts.append(lines[i].strip())
            i += 1
        diag = " ".join(parts)
        hits.append(Hit(match.group(1), diag, _remote(diag), action))
    return hits


# --- Exim ----------------------------------------------------------------------------

_EXIM_INTRO = "this message was created automatically by mail delivery software"
_EXIM_LIST = re.compile(
    r"(?im)(?:address(?:\(es\)|es)? failed|has not yet been delivered|"
    r"not yet been delivered (?:is|are))[^\n]*:[ \t]*$"
)
_EXIM_RCPT = re.compile(r"^ {1,3}<?(" + _ADDR + r")>?:?\s*$")


def exim(text: str, ctx: Context) -> list[Hit] | None:
    head = _head(text)
    if _EXIM_INTRO not in head:
        return None
    listing = _EXIM_LIST.search(text[:20000])
    if not listing:
        return [] if ctx.header("x-failed-recipients") else None
    delayed = "has not yet been delivered" in head
    permanent = True if "permanent error" in head else None
    hits: list[Hit] = []
    current: Hit | None = None
    for line in text[listing.end() :].splitlines():
        if line.startswith("------") or len(hits) >= MAX_RECIPIENTS:
            break
        if not line.strip():
            continue
        match = _EXIM_RCPT.match(line)
        if match:
            current = Hit(match.group(1), action="delayed" if delayed else "failed")
            current.permanent = None if delayed else permanent
            hits.append(current)
        elif line.startswith("    ") and current is not None:
            part = line.strip()
            if not part.startswith("(generated from") and len(current.diagnostic) < 2000:
                current.diagnostic = f"{current.diagnostic} {part}".strip()
        elif hits and not line.startswith(" "):
            break  # the prose after the list
    for hit in hits:
        hit.remote_mta = _remote(hit.diagnostic)
    return hits


# --- Sendmail ------------------------------------------------------------------------

_SENDMAIL_MARK = re.compile(
    r"(?im)^[ \t]*-{2,}[ \t]*the following addresses had (permanent fatal|transient non-fatal)"
    r" errors[ \t]*-{2,}[ \t]*$"
)
_SENDMAIL_ADDR = re.compile(r"^\s*<?(" + _ADDR + r")>?\s*(?:\(.*\))?\s*$")
_SENDMAIL_REASON = re.compile(r"^\s*\(reason:\s*(.*?)\)?\s*$", re.IGNORECASE)
_SENDMAIL_TRANSCRIPT = re.compile(
    r"^(?:<<<\s*)?([245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s+)?<?(" + _ADDR + r")>?\.\.\.\s*.*)$"
)
_SENDMAIL_TALKING = re.compile(r"(?i)while talking to ([A-Za-z0-9.-]{1,200}?)\.?:")


def sendmail(text: str, ctx: Context) -> list[Hit] | None:
    mark = _SENDMAIL_MARK.search(text[:20000])
    if not mark:
        return None
    permanent = mark.group(1).lower().startswith("permanent")
    action = "failed" if permanent else "delayed"
    hits: list[Hit] = []
    for line in text[mark.end() :].splitlines()[1:]:
        if not line.strip():
            if hits:
                break
            continue
        reason = _SENDMAIL_REASON.match(line)
        if reason and hits:
            hits[-1].diagnostic = reason.group(1)
            continue
        match = _SENDMAIL_ADDR.match(line)
        if match and not line.lstrip().startswith("("):
            hits.append(Hit(match.group(1), action=action, permanent=permanent or None))
            if len(hits) >= MAX_RECIPIENTS:
                break
    talking = _SENDMAIL_TALKING.search(text[:20000])
    remote = talking.group(1) if talking else ""
    transcript: dict[str, str] = {}
    for line in text[mark.end() : mark.end() + 20000].splitlines():
        match = _SENDMAIL_TRANSCRIPT.match(line.strip())
        if match:
            address = address_spec(match.group(2))
            transcript.setdefault(address, match.group(1))
    for hit in hits:
        hit.diagnostic = transcript.get(address_spec(hit.address), hit.diagnostic)
        hit.remote_mta = remote
    return hits


# --- qmail (QSBMF) and Yahoo, which writes the same paragraphs ----------------------

_QMAIL_INTRO = re.compile(
    r"(?im)^[ \t]*(?:hi\. this is the qmail-send program at|hi\. the mta program at|"
    r"this is the mail delivery agent at)"
)
_QSBMF_RCPT = re.compile(r"^\s*<(" + _ADDR + r")>:\s*(.*)$")
_QMAIL_REMOTE = re.compile(
    r"(?i)(?:^|\s)(?:connected to ([0-9A-Fa-f.:]{3,60}) but|([0-9A-Fa-f.:]{3,60}) does not like|"
    r"giving up on ([0-9A-Fa-f.:]{3,60}?)\.?(?:\s|$))"
)


def _qsbmf(text: str, action: str, permanent: bool | None) -> list[Hit]:
    hits: list[Hit] = []
    current: Hit | None = None
    for line in text.splitlines():
        if line.startswith("---"):
            break
        if not line.strip():
            current = None
            continue
        match = _QSBMF_RCPT.match(line)
        if match:
            current = Hit(match.group(1), match.group(2).strip(), "", action, permanent)
            hits.append(current)
            if len(hits) >= MAX_RECIPIENTS:
                break
        elif current is not None and len(current.diagnostic) < 2000:
            current.diagnostic = f"{current.diagnostic} {line.strip()}".strip()
    for hit in hits:
        remote = _QMAIL_REMOTE.search(hit.diagnostic)
        if remote:
            hit.remote_mta = next(g for g in remote.groups() if g)
    return hits


def qmail(text: str, ctx: Context) -> list[Hit] | None:
    intro = _QMAIL_INTRO.search(text[:6000])
    if not intro:
        return None
    head = _head(text)
    permanent = True if "permanent error" in head else None
    return _qsbmf(text[intro.end() :], "failed", permanent)


_YAHOO_INTRO = re.compile(
    r"(?im)^[ \t]*(?:sorry, we were unable to deliver your message to the following address|"
    r"message from yahoo\.[a-z.]+\.?\s*$|unable to deliver message to the following address)"
)


def yahoo(text: str, ctx: Context) -> list[Hit] | None:
    intro = _YAHOO_INTRO.search(text[:6000])
    if not intro:
        return None
    return _qsbmf(text[intro.end() :], "failed", None)


# --- Exchange / Office 365 -----------------------------------------------------------

_EXCHANGE_INTRO = re.compile(
    r"(?i)delivery has failed to these recipients or (?:groups|distribution lists)|"
    r"delivery is delayed to these recipients or (?:groups|distribution lists)|"
    r"did not reach some or all of the intended recipients|"
    r"diagnostic information for administrators|"
    r"the following recipient\(s\) (?:could not|cannot) be reached"
)
_EXCHANGE_TOP = re.compile(
    r"(?i)(?:delivery (?:has failed|is delayed) to these recipients or "
    r"(?:groups|distribution lists)|the following recipient\(s\) (?:could not|cannot) be "
    r"reached):?[ \t]*\n"
)
_EXCHANGE_DIAG = re.compile(r"(?i)diagnostic information for administrators:?[ \t]*\n")
_EXCHANGE_END = re.compile(
    r"(?im)^[ \t]*(?:original message headers|diagnostic information for administrators|"
    r"how to fix it|more info for email admins|sent by microsoft exchange|_{5,})"
)
_REMOTE_RETURNED = re.compile(r"(?i)remote server returned '(.*)'")


def _paragraphs(text: str) -> list[list[str]]:
    out: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _section(text: str, start: re.Match[str]) -> str:
    rest = text[start.end() : start.end() + 20000]
    end = _EXCHANGE_END.search(rest)
    return rest[: end.start()] if end else rest


def _exchange_diag(lines: list[str]) -> str:
    parts: list[str] = []
    for line in lines:
        returned = _REMOTE_RETURNED.search(line)
        if returned:
            line = returned.group(1)
        parts.append(line.strip().strip("#").strip())
    return " ".join(p for p in parts if p)


def exchange(text: str, ctx: Context) -> list[Hit] | None:
    if not _EXCHANGE_INTRO.search(text[:20000]):
        return None
    head = _head(text, 20000)
    delayed = "delivery is delayed" in head
    action = "delayed" if delayed else "failed"
    permanent = None if delayed else True
    hits: dict[str, Hit] = {}
    top = _EXCHANGE_TOP.search(text[:20000])
    if top:
        for para in _paragraphs(_section(text, top)):
            address = first_address(para[0])
            if address and address not in hits:
                hits[address] = Hit(address, _exchange_diag(para[1:]), "", action, permanent)
    diag = _EXCHANGE_DIAG.search(text[:20000])
    if diag:
        last: Hit | None = None
        for para in _paragraphs(_section(text, diag)):
            if para[0].lower().startswith("generating server"):
                para = para[1:]
                if not para:
                    continue
            address = first_address(para[0]) if "@" in para[0] and " " not in para[0] else ""
            if address:
                last = hits.setdefault(address, Hit(address, "", "", action, permanent))
                technical = _exchange_diag(para[1:])
                if technical:
                    last.diagnostic = technical
            elif last is not None and not last.diagnostic.startswith(("5", "4")):
                last.diagnostic = _exchange_diag(para)
    return list(hits.values())[:MAX_RECIPIENTS]


# --- Gmail (plain-text notices, old and new wording) ---------------------------------

_GMAIL_LIST = re.compile(
    r"(?i)delivery to the following recipients? (failed permanently|has been delayed|failed)"
    r"[.:]?[ \t]*\n"
)
_GMAIL_NEW = re.compile(
    r"(?i)(your message wasn'?t delivered to|there was a temporary problem delivering your "
    r"message to|your message has not been delivered to)\s+(" + _ADDR + r")"
)
_GMAIL_DIAG = (
    re.compile(
        r"(?is)the error that the other server returned was:[ \t]*\n\s*(.+?)(?:\n[ \t]*\n|$)"
    ),
    re.compile(
        r"(?is)the response (?:from the remote server )?was:[ \t]*\n\s*(.+?)(?:\n[ \t]*\n|$)"
    ),
    re.compile(
        r"(?is)technical details of (?:permanent|temporary) failure:"
        r"[ \t]*\n\s*(.+?)(?:\n[ \t]*\n|$)"
    ),
)


def gmail(text: str, ctx: Context) -> list[Hit] | None:
    head_text = text[:20000]
    listing = _GMAIL_LIST.search(head_text)
    new = _GMAIL_NEW.search(head_text)
    if not listing and not new:
        return None
    lowered = head_text.lower()
    delayed = bool(
        (listing and "delayed" in listing.group(1).lower())
        or (new and "temporary" in new.group(1).lower())
    )
    action = "delayed" if delayed else "failed"
    permanent = None if delayed else True
    diag = ""
    for pattern in _GMAIL_DIAG:
        found = pattern.search(head_text)
        if found:
            diag = " ".join(found.group(1).split())
            break
    addresses: list[str] = []
    if listing:
        for line in head_text[listing.end() :].splitlines():
            if not line.strip():
                if addresses:
                    break
                continue
            address = first_address(line)
            if not address:
                break
            addresses.append(address)
    elif new:
        addresses.append(new.group(2))
    if "permanent" in lowered and not delayed:
        permanent = True
    return [Hit(a, diag, _remote(diag), action, permanent) for a in addresses[:MAX_RECIPIENTS]]


# Order matters where wordings overlap: the more specific first.
DIALECTS: tuple[tuple[str, Dialect], ...] = (
    ("postfix", postfix),
    ("exim", exim),
    ("sendmail", sendmail),
    ("yahoo", yahoo),
    ("qmail", qmail),
    ("exchange", exchange),
    ("gmail", gmail),
)
