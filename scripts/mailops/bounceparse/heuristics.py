"""The last detectors: RFC 3834 auto-replies and a generic reading of notices that look
like bounces but match no known dialect."""

from __future__ import annotations

import re

from mailops.bounceparse import _text, links
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


_BOUNCE_SUBJECT = re.compile(
    r"(?i)undeliver|returned mail|returned to sender|delivery status notification|"
    r"failure notice|mail delivery (?:failed|failure|system|problem)|delivery failure|"
    r"non-?delivery|could not be delivered|delivery (?:has )?failed|not delivered|"
    r"delivery notification|mail system error"
)
_DAEMONS = frozenset(
    ["mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "mailer_daemon"]
)
_CODE = re.compile(r"(?<![\w.])(?:[245]\d\d(?=[\s-])|[245]\.\d{1,3}\.\d{1,3}(?!\.?\d))")
_QUOTED_START = re.compile(
    r"(?im)^[ \t]*(?:-{2,}.{0,60}(?:original|copy of|below this line|headers?|returned)|"
    r"received:|return-path:|message-id:|original message)"
)


_REPLY_PREFIX = re.compile(r"(?i)^\s*(?:re|fwd?|aw|wg|sv|vs|tr|rv)\s*:")


def looks_like_bounce(ctx: Context) -> bool:
    """From a mailer daemon, or naming failed recipients, or with a bounce subject on
    machine mail (null return path or Auto-Submitted): a person's "Re: Undelivered
    mail" must not suppress the addresses it quotes."""
    local = _text.first_address(ctx.header("from")).partition("@")[0]
    if local in _DAEMONS or ctx.header("x-failed-recipients"):
        return True
    subject = ctx.header("subject")
    if not _BOUNCE_SUBJECT.search(subject) or _REPLY_PREFIX.match(subject):
        return False
    auto = ctx.header("auto-submitted").lower()
    null_sender = ctx.header("return-path").replace(" ", "") == "<>"
    return null_sender or (bool(auto) and not auto.startswith("no"))


def generic(ctx: Context) -> Draft | None:
    """A notice from a mailer daemon (or with a bounce subject) that no dialect knows:
    each paragraph of the notice that names an address and an SMTP code is a recipient;
    X-Failed-Recipients (Exim and others) names them when the text does not."""
    if not looks_like_bounce(ctx):
        return None
    draft = Draft(kind="bounce", detector="generic")
    text = ctx.primary_text()
    cut = _QUOTED_START.search(text)
    notice = text[: cut.start()] if cut else text
    own = {
        _text.first_address(ctx.header("from")),
        _text.first_address(ctx.header("to")),
    }
    hits: list[Hit] = []
    for para in re.split(r"\n[ \t]*\n", notice[:20000]):
        if not _CODE.search(para):
            continue
        for address in _text.all_addresses(para, 5):
            if address not in own:
                hits.append(Hit(address, " ".join(para.split())))
                break
        if len(hits) >= MAX_RECIPIENTS:
            break
    failed = _text.all_addresses(ctx.header("x-failed-recipients"), MAX_RECIPIENTS)
    if failed:
        by_address = {h.address: h for h in hits}
        hits = [by_address.get(a, Hit(a)) for a in failed] + [
            h for h in hits if h.address not in failed
        ]
    draft.recipients = from_hits(hits)
    return draft
