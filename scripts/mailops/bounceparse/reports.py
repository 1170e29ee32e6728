"""Detectors for the standard machine-readable reports: RFC 3464 delivery status
notifications (and RFC 6533's global form) and RFC 5965 ARF feedback reports."""

from __future__ import annotations

import re

from mailops.bounceparse import _text
from mailops.bounceparse._base import MAX_RECIPIENTS, Draft, Hit, from_hits, recipient, strip_type
from mailops.bounceparse._mime import Context
from mailops.bounceparse.dialects import DIALECTS
from mailops.bounceparse.heuristics import complete_hits, looks_like_bounce
from mailops.bounceparse.links import original_headers
from mailops.bounceparse.model import Recipient

DSN_TYPES = frozenset(["message/delivery-status", "message/global-delivery-status"])
ARF_TYPES = frozenset(["message/feedback-report"])
_RECIPIENT_KEYS = ("final-recipient", "original-recipient")
_PER_MESSAGE_KEYS = frozenset(
    ["reporting-mta", "x-original-message-id", "arrival-date", "received-from-mta"]
)
# Feedback types that are not a recipient's complaint (RFC 5965 section 7.3, RFC 6591).
NOT_COMPLAINTS = frozenset(["not-spam", "auth-failure"])


def _report_type(ctx: Context) -> str:
    if ctx.ctype != "multipart/report":
        return ""
    return ctx.params.get("report-type", "").strip().lower()


def text_hits(ctx: Context) -> tuple[str, list[Hit]]:
    """Recipients as the human-readable notice names them, by the first dialect that
    recognises it: (dialect, hits), or ("", [])."""
    text = ctx.primary_text()
    if not text:
        return "", []
    for name, dialect in DIALECTS:
        hits = dialect(text, ctx)
        if hits:
            return name, complete_hits(text, ctx, hits)
    return "generic", complete_hits(text, ctx, [])


def _records(blocks: list[list[tuple[str, str]]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    per_message: dict[str, str] = {}
    records: list[dict[str, str]] = []
    for block in blocks:
        if not any(name in _RECIPIENT_KEYS for name, _ in block):
            for name, value in block:
                per_message.setdefault(name, value)
            continue
        current: dict[str, str] = {}
        for name, value in block:
            if name in _PER_MESSAGE_KEYS:
                per_message.setdefault(name, value)
                continue
            if name in _RECIPIENT_KEYS and name in current:
                records.append(current)
                current = {}
            current.setdefault(name, value)
        if current:
            records.append(current)
        if len(records) >= MAX_RECIPIENTS:
            break
    return per_message, records[:MAX_RECIPIENTS]


_TEXT_DSN = re.compile(r"(?im)^[ \t]*final-recipient[ \t]*:[ \t]*\S")


def _dsn_source(ctx: Context) -> str | None:
    """The delivery-status fields: the DSN part, else "" for a report that lost it, else
    a notice that pastes the fields into its text (some MTAs send no DSN part but copy
    its Final-Recipient/Action/Status/Diagnostic-Code lines), else None."""
    parts = ctx.parts_of(DSN_TYPES)
    if parts:
        return parts[0].text()
    if _report_type(ctx) in ("delivery-status", "global-delivery-status"):
        return ""
    text = ctx.primary_text()
    if _TEXT_DSN.search(text[:20000]) and looks_like_bounce(ctx):
        return text[:20000]
    return None


def rfc3464(ctx: Context) -> Draft | None:
    source = _dsn_source(ctx)
    if source is None:
        return None
    draft = Draft(kind="bounce", detector="rfc3464")
    blocks = _text.parse_blocks(source) if source else []
    per_message, records = _records(blocks)
    draft.original_message_id = per_message.get("x-original-message-id", "")
    recipients: list[Recipient] = []
    seen: set[str] = set()
    # The notice may say at which SMTP command each recipient failed (Postfix: "(in reply
    # to MAIL FROM command)"), which the DSN fields leave out.
    text_read: tuple[str, list[Hit]] | None = None
    said: dict[str, str] = {}
    if records and "mail from" in ctx.primary_text()[:20000].lower():
        text_read = text_hits(ctx)
        said = {_text.address_spec(h.address): h.diagnostic for h in text_read[1]}
    for rec in records:
        original = _text.address_spec(rec.get("original-recipient", ""))
        address = original or _text.address_spec(rec.get("final-recipient", ""))
        action = rec.get("action", "").strip().lower()
        status = rec.get("status", "")
        permanent = True if action == "failed" and not status.strip() else None
        key = f"{address} {action}"
        if key in seen:
            continue
        seen.add(key)
        recipients.append(
            recipient(
                address,
                status,
                rec.get("diagnostic-code", ""),
                action or "failed",
                rec.get("remote-mta", ""),
                permanent,
                said.get(address, ""),
            )
        )
    if not recipients or any(not r.diagnostic for r in recipients):
        dialect, hits = text_read or text_hits(ctx)
        if not recipients and hits:
            draft.detector = dialect
            recipients = from_hits(hits)
            draft.notes.append("delivery-status part without recipients: read the notice")
        else:
            by_address = {_text.address_spec(h.address): h for h in hits}
            recipients = [_with_text_diagnostic(r, by_address) for r in recipients]
    draft.recipients = recipients
    return draft


def _with_text_diagnostic(rcpt: Recipient, hits: dict[str, Hit]) -> Recipient:
    hit = hits.get(rcpt.address)
    if rcpt.diagnostic or hit is None or not hit.diagnostic:
        return rcpt
    return recipient(
        rcpt.address,
        rcpt.status,
        hit.diagnostic,
        rcpt.action,
        rcpt.remote_mta or hit.remote_mta,
        None,
    )


def arf(ctx: Context) -> Draft | None:
    parts = ctx.parts_of(ARF_TYPES)
    if not parts and _report_type(ctx) != "feedback-report":
        return None
    fields = _text.parse_fields(parts[0].text()) if parts else []
    values: dict[str, list[str]] = {}
    for name, value in fields:
        values.setdefault(name, []).append(value)

    def first(name: str) -> str:
        return values.get(name, [""])[0]

    feedback_type = _text.clean(first("feedback-type"), _text.SHORT_MAX).lower()
    draft = Draft(kind="feedback", detector="arf", feedback_type=feedback_type or "abuse")
    draft.source_ip = first("source-ip")
    draft.reporting_mta = strip_type(first("reporting-mta"))
    draft.verp_sources.extend(values.get("original-mail-from", []))
    addresses = [
        _text.address_spec(v)
        for v in values.get("original-rcpt-to", []) + values.get("removal-recipient", [])
    ]
    if not any(addresses):
        addresses = _original_recipients(ctx)
    agent = _text.clean(first("user-agent"), 80)
    diagnostic = f"feedback-type {draft.feedback_type}" + (f" from {agent}" if agent else "")
    hard = draft.feedback_type not in NOT_COMPLAINTS
    seen: set[str] = set()
    for address in addresses:
        if not address or address in seen:
            continue
        seen.add(address)
        draft.recipients.append(
            Recipient(
                address=address,
                status="",
                reason="feedback",
                hard=hard,
                action="",
                diagnostic=_text.clean(diagnostic, _text.DIAGNOSTIC_MAX),
            )
        )
        if len(draft.recipients) >= MAX_RECIPIENTS:
            break
    return draft


def _original_recipients(ctx: Context) -> list[str]:
    """The complainant from the returned message when the report leaves it out: a
    Hotmail-style original-recipient header, else a To with exactly one address."""
    headers = original_headers(ctx)
    for name, value in headers:
        if name == "x-hmxmroriginalrecipient":
            return [_text.first_address(_text.decode_header(value))]
    to = [_text.decode_header(v) for n, v in headers if n == "to"]
    if len(to) == 1:
        found = _text.all_addresses(to[0], 2)
        if len(found) == 1:
            return found
    return []
