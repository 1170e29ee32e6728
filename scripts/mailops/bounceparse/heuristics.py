"""The last detectors: RFC 3834 auto-replies and a generic reading of notices that look
like bounces but match no known dialect."""

from __future__ import annotations

import re

from mailops.bounceparse import _text, links, reasons
from mailops.bounceparse._base import MAX_RECIPIENTS, Draft, Hit, from_hits
from mailops.bounceparse._mime import Context
from mailops.bounceparse.model import Recipient

# Subjects of vacation / out-of-office replies, as a prefix (English, German, French,
# Spanish, Italian, Dutch, Nordic, Portuguese wordings of the big mail programs).
_VACATION_SUBJECT = re.compile(
    r"(?i)^\s*(?:automatic reply|auto(?:matic)?[ -]?repl(?:y|ies)|auto[ -]?response|"
    r"auto:|autoreply|out of (?:the )?office|i am out of the office|i'?m out of the office|"
    r"on vacation|vacation (?:reply|notice|auto|message)|away from (?:the|my) (?:office|desk)|"
    r"abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|absence du bureau|"
    r"respuesta autom[áa]tica|fuera de la oficina|risposta automatica|fuori sede|"
    r"automatisch antwoord|afwezig|autosvar|automaattinen vastaus|resposta autom[áa]tica|"
    r"ausente)"
)
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-vacation")


def autoreply(ctx: Context) -> Draft | None:
    auto = ctx.header("auto-submitted").lower()
    precedence = ctx.header("precedence").lower()
    subject = ctx.header("subject")
    if looks_like_bounce(ctx):
        return None  # a mailer daemon's notice marks itself auto-replied too (RFC 3834)
    if subject.strip().lower() == "unsubscribe":
        return _unsubscribe(ctx)
    if auto.startswith("auto-replied"):
        detector = "rfc3834"
    elif (
        any(ctx.header(h) for h in _AUTOREPLY_HEADERS)
        or precedence.startswith("auto_reply")
        or _VACATION_SUBJECT.match(subject)
    ):
        detector = "vacation"
    else:
        return None
    draft = Draft(kind="autoreply", detector=detector)
    replied_to = ctx.header("in-reply-to") or links.last_reference(ctx.header("references"))
    draft.original_message_id = replied_to
    address = _text.first_address(ctx.header("from"))
    if address:
        draft.recipients.append(Recipient(address, "", "vacation", False, "", "", subject))
    return draft


def _unsubscribe(ctx: Context) -> Draft:
    """A List-Unsubscribe mailto request (RFC 2369; mail programs send it, marked
    auto-replied, with the subject "unsubscribe"): the sender asks to get no more mail,
    so it is feedback about the From address, to suppress like a complaint."""
    draft = Draft(kind="feedback", detector="unsubscribe", feedback_type="unsubscribe")
    address = _text.first_address(ctx.header("from"))
    if address:
        note = "unsubscribe request"
        draft.recipients.append(Recipient(address, "", "feedback", True, "", "", note))
    return draft


_BOUNCE_SUBJECT = re.compile(
    r"(?i)undeliver|returned mail|returned to sender|delivery status|"
    r"failure notice|mail delivery (?:failed|failure|system|problem)|delivery failure|"
    r"non-?deliver|could not be delivered|delivery (?:has )?failed|not delivered|"
    r"delivery notification|mail system error|could not send message|"
    r"delayed mail|message delayed|delivery delayed"
)
_DAEMONS = frozenset(
    ["mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "mailer_daemon"]
)
_DAEMON_NAMES = frozenset(
    ["mailerdaemon", "maildaemon", "postmaster", "maildeliverysystem", "maildeliverysubsystem"]
)
_SEPARATORS = re.compile(r"[._+-]")
_CODE = re.compile(r"(?<![\w.])(?:[245]\d\d(?=[\s-])|[245]\.\d{1,3}\.\d{1,3}(?!\.?\d))")
_QUOTED_START = re.compile(
    r"(?im)^[ \t]*(?:-{2,}.{0,60}(?:original|copy of|below this line|headers?|returned)|"
    r"received:|return-path:|message-id:|original message)"
)


_REPLY_PREFIX = re.compile(r"(?i)^\s*(?:re|fwd?|aw|wg|sv|vs|tr|rv)\s*:")


def _daemon(header: str) -> bool:
    local = _text.first_address(header).partition("@")[0]
    return local in _DAEMONS or _SEPARATORS.sub("", local) in _DAEMON_NAMES


def own_addresses(ctx: Context) -> set[str]:
    """The bounce's own From and To: never a failed recipient of the notice."""
    return {_text.first_address(ctx.header("from")), _text.first_address(ctx.header("to"))}


def looks_like_bounce(ctx: Context) -> bool:
    """From a mailer daemon (in From or Return-Path), or naming failed recipients, or a
    multipart/report, or with a bounce subject on machine mail (null return path or
    Auto-Submitted): a person's "Re: Undelivered mail" must not suppress the addresses
    it quotes."""
    if _daemon(ctx.header("from")) or _daemon(ctx.header("return-path")):
        return True
    if ctx.header("x-failed-recipients") or ctx.ctype == "multipart/report":
        return True
    subject = ctx.header("subject")
    if not _BOUNCE_SUBJECT.search(subject) or _REPLY_PREFIX.match(subject):
        return False
    auto = ctx.header("auto-submitted").lower()
    null_sender = ctx.header("return-path").replace(" ", "") == "<>"
    return null_sender or (bool(auto) and not auto.startswith("no"))


_REPLY_LINE = re.compile(r"^\s*(?:<<<\s*)?[245]\d\d[ -]")
_DELAY_WORDS = re.compile(
    r"(?i)\bdelayed\b|will (?:be )?retr|still trying|keep trying|still undelivered|"
    r"warning message only|"
    r"this is (?:only )?a (?:temporary|warning)|temporary failure report|"
    r"not yet been delivered"
)


def _informative(text: str) -> bool:
    """Does a piece of a notice say why (an SMTP code or a known phrase)?"""
    return bool(_CODE.search(text)) or reasons.has_phrase(text)


def notice_hits(
    text: str, own: set[str], failed: list[str] | None = None, returned_to: str = ""
) -> list[Hit]:
    """The recipients of a notice in no known dialect, and what it says about each.

    The notice (the text before the returned message) is cut into segments, each
    starting at a line that names an address not seen before; a segment is that
    recipient's account ("addr: 550 5.1.1 ...", "addr [User unknown]", a transcript).
    A segment that gives no reason borrows the whole notice, which then usually names
    it in prose ("The user's mailbox is full").  ``failed`` (X-Failed-Recipients) names
    the recipients when present; ``returned_to`` (the single To of the returned message)
    when nothing else does."""
    cut = _QUOTED_START.search(text)
    notice = (text[: cut.start()] if cut else text)[:20000]
    segments: dict[str, list[str]] = {}
    current: list[str] | None = None
    replied = False  # the current segment already has its SMTP reply
    for line in notice.splitlines()[:400]:
        fresh = []
        if "@" in line:
            fresh = [a for a in _text.all_addresses(line, 5) if a not in own and a not in segments]
        if fresh and len(segments) < MAX_RECIPIENTS:
            current = segments[fresh[0]] = [line.strip()]
            replied = bool(_REPLY_LINE.match(line) or _CODE.search(line))
        elif current is not None and line.strip():
            if replied and _REPLY_LINE.match(line) and "@" not in line:
                # Another reply after this recipient's own (a Sendmail transcript lists
                # one line per recipient, then replies about hosts): not about it.
                current = None
                continue
            current.append(line.strip())
            replied = replied or bool(_CODE.search(line))
    whole = " ".join(notice.split())[:3000]
    wanted = failed or [a for a, lines in segments.items() if _informative(" ".join(lines))]
    if not wanted:
        wanted = list(segments)
    if not wanted and returned_to and returned_to not in own:
        wanted = [returned_to]
    permanent = None if _DELAY_WORDS.search(notice) else True
    action = "delayed" if permanent is None else "failed"
    hits: list[Hit] = []
    for address in wanted[:MAX_RECIPIENTS]:
        said = " ".join(segments.get(address, []))[:3000]
        diagnostic = said if _informative(said) else whole
        hits.append(Hit(address, diagnostic, "", action, permanent))
    return hits


def _returned_to(ctx: Context) -> str:
    """The recipient of the returned message when it had exactly one (its To header, from
    the attached message or, failing that, the copy quoted in the notice)."""
    values = [v for n, v in links.original_headers(ctx) if n == "to"]
    if not values:
        quoted = _QUOTED_TO.search(ctx.primary_text()[:60000])
        values = [quoted.group(1)] if quoted else []
    found = _text.all_addresses(_text.decode_header(values[0]), 2) if len(values) == 1 else []
    return found[0] if len(found) == 1 else ""


_QUOTED_TO = re.compile(r"(?im)^to:[ \t]*(.{1,500})$")


def complete_hits(text: str, ctx: Context, hits: list[Hit]) -> list[Hit]:
    """A dialect's hits, completed by the generic reading of the same notice: its
    recipients when the dialect found none in a layout it does not know, and what the
    notice says about those the dialect found without a reason."""
    if hits and all(h.diagnostic for h in hits):
        return hits
    generic_hits = notice_hits(text, own_addresses(ctx))
    if not hits:
        return generic_hits
    said = {h.address: h.diagnostic for h in generic_hits}
    for hit in hits:
        hit.diagnostic = hit.diagnostic or said.get(_text.address_spec(hit.address), "")
    return hits


def generic(ctx: Context) -> Draft | None:
    """A notice from a mailer daemon (or with a bounce subject) that no dialect knows:
    read by notice_hits; X-Failed-Recipients (Exim and others) names the recipients
    when present."""
    if not looks_like_bounce(ctx):
        return None
    draft = Draft(kind="bounce", detector="generic")
    own = own_addresses(ctx)
    failed = _text.all_addresses(ctx.header("x-failed-recipients"), MAX_RECIPIENTS)
    draft.recipients = from_hits(notice_hits(ctx.primary_text(), own, failed, _returned_to(ctx)))
    return draft
