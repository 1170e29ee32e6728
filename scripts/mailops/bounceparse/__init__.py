"""Classify bounces, feedback reports and auto-replies (see model.py for the result).

``parse_message(raw)`` runs a table of detectors over one message, first match wins:

===========  ========================================================================
arf          RFC 5965 feedback report (multipart/report; report-type=feedback-report)
rfc3464      RFC 3464 / RFC 6533 delivery status notification, from any MTA (Postfix,
             Sendmail, Exim 4.9x, Exchange/Office 365, Gmail, Amazon SES, ...), and a
             notice that pastes the DSN fields into its text
ses          Amazon SES JSON notification delivered by mail (SNS e-mail subscription)
postfix      Postfix notice without its DSN part ("This is the mail system at host")
exim         Exim ("This message was created automatically by mail delivery software")
sendmail     Sendmail ("----- The following addresses had permanent fatal errors -----")
yahoo        Yahoo ("Sorry, we were unable to deliver your message ...")
qmail        qmail QSBMF ("Hi. This is the qmail-send program at ...")
exchange     Exchange / Office 365 NDR text ("Delivery has failed to these recipients")
gmail        Gmail plain notices ("Delivery to the following recipient failed ...")
unsubscribe  List-Unsubscribe mailto request (subject "unsubscribe"), kind "feedback"
rfc3834      auto-reply by its Auto-Submitted: auto-replied header
vacation     auto-reply by X-Autoreply-style headers or an out-of-office subject
generic      from a mailer daemon or with a bounce subject, in no known dialect
none         not a bounce, complaint or auto-reply (kind "other")
===========  ========================================================================

It never raises: any input, however malformed, gives a Report.  Every string in the
Report is one line of printable text (no CR, LF, NUL or other controls), capped in
length, and every reason is one of REASONS.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailops.bounceparse import _text, links
from mailops.bounceparse._base import Draft, from_hits
from mailops.bounceparse._mime import MAX_INPUT, Context, bound_input, parse_bytes
from mailops.bounceparse.dialects import DIALECTS, Dialect
from mailops.bounceparse.heuristics import autoreply, complete_hits, generic
from mailops.bounceparse.model import REASONS, Kind, Recipient, Report
from mailops.bounceparse.reports import arf, rfc3464
from mailops.bounceparse.ses import ses

__all__ = [
    "DEFAULT_VERP_PREFIXES",
    "DETECTORS",
    "DETECTOR_FAILED_NOTE",
    "ERROR_NOTE",
    "MAX_INPUT",
    "REASONS",
    "Recipient",
    "Report",
    "detector_names",
    "parse_message",
]

Detector = Callable[[Context], "Draft | None"]
KINDS: frozenset[str] = frozenset(["bounce", "feedback", "autoreply", "other"])
DEFAULT_VERP_PREFIXES = ("bounces",)


def _dialect_detector(name: str, dialect: Dialect) -> Detector:
    def detect(ctx: Context) -> Draft | None:
        text = ctx.primary_text()
        hits = dialect(text, ctx) if text else None
        if hits is None:
            return None
        hits = complete_hits(text, ctx, hits)
        return Draft(kind="bounce", detector=name, recipients=from_hits(hits))

    return detect


DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("arf", arf),
    ("rfc3464", rfc3464),
    ("ses", ses),
    *((name, _dialect_detector(name, dialect)) for name, dialect in DIALECTS),
    ("autoreply", autoreply),
    ("generic", generic),
)


def detector_names() -> list[str]:
    """Every detector name a Report can carry (autoreply reports as rfc3834/vacation)."""
    names = [name for name, _ in DETECTORS if name != "autoreply"]
    return [*names[:-1], "unsubscribe", "rfc3834", "vacation", names[-1], "none"]


def parse_message(
    raw: bytes,
    envelope_to: str = "",
    *,
    verp_prefixes: tuple[str, ...] = DEFAULT_VERP_PREFIXES,
    strict: bool = False,
) -> Report:
    """Classify one message.  Never raises; worst case Report(kind="other", detector="none").

    ``envelope_to`` is the envelope recipient when the caller knows it (a Postfix pipe's
    ${original_recipient}); it is the first place a VERP token is looked for.
    ``verp_prefixes`` are the local parts of VERP return paths (``bounces+TOKEN@``).
    ``strict`` is for tests: a failing detector (or any other internal error) raises
    instead of becoming a note, so that a test cannot miss it.
    """
    try:
        return _sanitize(_parse(raw, envelope_to, verp_prefixes, strict))
    except Exception as exc:  # the contract: a Report for every input
        if strict:
            raise
        return Report(kind="other", detector="none", notes=(_text.clean(f"{ERROR_NOTE}{exc!r}"),))


# How an internal failure shows in Report.notes (tests look for these prefixes).
ERROR_NOTE = "error: "
DETECTOR_FAILED_NOTE = "detector failed: "


def _parse(raw: bytes, envelope_to: str, verp_prefixes: tuple[str, ...], strict: bool) -> Report:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    data, notes = bound_input(bytes(raw))
    ctx = Context(parse_bytes(data), envelope_to if isinstance(envelope_to, str) else "")
    draft: Draft | None = None
    for name, detect in DETECTORS:
        try:
            draft = detect(ctx)
        except Exception as exc:  # one broken detector must not hide the others
            if strict:
                raise
            notes.append(f"{DETECTOR_FAILED_NOTE}{name}: {type(exc).__name__}")
            draft = None
        if draft is not None:
            break
    if draft is None:
        draft = Draft(kind="other", detector="none")
    draft.notes[:0] = notes
    return _finish(ctx, draft, verp_prefixes)


def _finish(ctx: Context, draft: Draft, verp_prefixes: tuple[str, ...]) -> Report:
    original = links.original_headers(ctx)
    inline: dict[str, str] = {}
    if draft.kind in ("bounce", "feedback") and not original:
        inline = links.inline_headers(ctx.primary_text())

    def from_original(name: str) -> str:
        for key, value in original:
            if key == name:
                return value
        return inline.get(name, "")

    message_id = links.message_id(from_original("message-id")) if draft.kind != "other" else ""
    if draft.kind == "autoreply" or not message_id:
        message_id = links.message_id(draft.original_message_id) or message_id
    if not message_id and draft.kind == "bounce":
        # Exim, Gmail and Office 365 name the original in In-Reply-To / References.
        message_id = links.message_id(ctx.header("in-reply-to")) or links.last_reference(
            ctx.header("references")
        )
    x_message_id = ""
    if draft.kind != "other":
        x_message_id = _text.clean(
            _text.decode_header(from_original("x-message-id") or draft.x_message_id)
        )

    token = ""
    if draft.kind != "other":
        candidates = [
            ctx.envelope_to,
            *ctx.header_all("delivered-to")[:10],
            *ctx.header_all("x-original-to")[:10],
            ctx.header("to"),
            from_original("return-path"),
            *draft.verp_sources,
        ]
        token = links.verp_token(candidates, links.verp_pattern(verp_prefixes))
    sender = author = ""
    if draft.kind in ("bounce", "feedback"):
        # The Return-Path, else what the report says the envelope sender was (ARF's
        # Original-Mail-From, SES's mail.source).
        for value in (from_original("return-path"), *draft.verp_sources):
            sender = _text.first_address(value)
            if sender:
                break
        author = _text.first_address(from_original("from"))

    return Report(
        kind=draft.kind,
        detector=draft.detector,
        recipients=tuple(draft.recipients),
        original_message_id=message_id,
        x_message_id=x_message_id,
        verp_token=token,
        original_sender=sender,
        original_from=author,
        message_id=links.message_id(ctx.header("message-id")),
        feedback_type=draft.feedback_type,
        source_ip=draft.source_ip,
        reporting_mta=draft.reporting_mta,
        from_address=_text.first_address(ctx.header("from")),
        subject=ctx.header("subject"),
        notes=tuple(draft.notes[:10]),
    )


_SAFE_TOKEN = re.compile(r"[^\x21-\x7e]")


def _c(value: object, limit: int = _text.LINE_MAX) -> str:
    return _text.clean(value, limit)


def _sanitize(report: Report) -> Report:
    """Last line of defence for the contract: single-line, capped strings, a known kind
    and reason, whatever a detector did."""
    recipients = tuple(
        Recipient(
            address=_c(r.address, _text.ADDRESS_MAX),
            status=_c(r.status, _text.STATUS_MAX),
            reason=r.reason if r.reason in REASONS else "undefined",
            hard=bool(r.hard),
            action=_c(r.action, _text.STATUS_MAX),
            remote_mta=_c(r.remote_mta),
            diagnostic=_c(r.diagnostic, _text.DIAGNOSTIC_MAX),
        )
        for r in report.recipients
    )
    kind: Kind = report.kind if report.kind in KINDS else "other"
    return Report(
        kind=kind,
        detector=_c(report.detector, _text.SHORT_MAX) or "none",
        recipients=recipients,
        original_message_id=_c(report.original_message_id),
        x_message_id=_c(report.x_message_id),
        verp_token=_SAFE_TOKEN.sub("", _c(report.verp_token, 200)),
        original_sender=_c(report.original_sender, _text.ADDRESS_MAX),
        original_from=_c(report.original_from, _text.ADDRESS_MAX),
        message_id=_c(report.message_id),
        feedback_type=_c(report.feedback_type, _text.SHORT_MAX),
        source_ip=_c(report.source_ip, _text.SHORT_MAX),
        reporting_mta=_c(report.reporting_mta),
        from_address=_c(report.from_address, _text.ADDRESS_MAX),
        subject=_c(report.subject),
        notes=tuple(_c(n) for n in report.notes[:10]),
    )
