"""Amazon SES notifications delivered by mail (an SNS e-mail or e-mail-json subscription):
Bounce, Complaint, Delivery and DeliveryDelay, in the notification and the event
publishing shapes.  SES's own DSN mails are RFC 3464 and handled there."""

from __future__ import annotations

import json
from typing import Any

from mailops.bounceparse import _text
from mailops.bounceparse._base import MAX_RECIPIENTS, Draft, recipient
from mailops.bounceparse._mime import Context
from mailops.bounceparse.model import Recipient
from mailops.bounceparse.reasons import HARD_REASONS
from mailops.bounceparse.reports import NOT_COMPLAINTS

# bounceSubType -> reason, used when the diagnostic text says nothing better.
SUBTYPES = {
    "NoEmail": "userunknown",
    "Suppressed": "userunknown",  # SES: recent history of bouncing as an invalid address
    "OnAccountSuppressionList": "onhold",
    "MailboxFull": "mailboxfull",
    "MessageTooLarge": "mesgtoobig",
    "ContentRejected": "contenterror",
    "AttachmentRejected": "contenterror",
}


def _json_object(text: str) -> dict[str, Any] | None:
    start = text.find("{", 0, 4096)
    if start < 0 or ("notificationType" not in text and "eventType" not in text):
        return None
    try:
        # strict=False: a mail relay may fold a long JSON line, leaving a line break
        # inside a string.
        obj, _ = json.JSONDecoder(strict=False).raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    inner = obj.get("Message")
    if obj.get("Type") == "Notification" and isinstance(inner, str):  # the SNS envelope
        try:
            obj = json.loads(inner[: _text.TEXT_LIMIT], strict=False)
        except (ValueError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value[:MAX_RECIPIENTS] if isinstance(value, list) else []


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def ses(ctx: Context) -> Draft | None:
    texts = [p.text() for p in ctx.parts if p.ctype in ("text/plain", "application/json")]
    obj = next((o for o in map(_json_object, texts[:3]) if o is not None), None)
    if obj is None:
        return None
    return draft_of(obj)


def draft_of(obj: dict[str, Any]) -> Draft:
    """The classification of one SES notification or event (the JSON object, SNS
    envelope removed), whether it came by mail or from SQS (``mailops ses events``)."""
    kind = _str(obj.get("notificationType")) or _str(obj.get("eventType"))
    mail = _dict(obj.get("mail"))
    draft = Draft(kind="bounce", detector="ses")
    draft.verp_sources.append(_str(mail.get("source")))
    for header in _list(mail.get("headers")):
        name = _str(_dict(header).get("name")).lower()
        value = _str(_dict(header).get("value"))
        if name == "message-id" and not draft.original_message_id:
            draft.original_message_id = value
        elif name == "x-message-id" and not draft.x_message_id:
            draft.x_message_id = value
    if not draft.original_message_id:
        draft.original_message_id = _str(_dict(mail.get("commonHeaders")).get("messageId"))

    if kind == "Bounce":
        draft.recipients = _bounce(_dict(obj.get("bounce")))
    elif kind == "Complaint":
        draft.kind = "feedback"
        complaint = _dict(obj.get("complaint"))
        draft.feedback_type = _str(complaint.get("complaintFeedbackType")).lower() or "abuse"
        hard = draft.feedback_type not in NOT_COMPLAINTS
        for item in _list(complaint.get("complainedRecipients")):
            address = _text.address_spec(_str(_dict(item).get("emailAddress")))
            if address:
                draft.recipients.append(
                    Recipient(address, "", "feedback", hard, "", "", "feedback via SES")
                )
    elif kind == "Delivery":
        delivery = _dict(obj.get("delivery"))
        response = _str(delivery.get("smtpResponse"))
        mta = _str(delivery.get("reportingMTA"))
        for item in _list(delivery.get("recipients")):
            draft.recipients.append(recipient(_str(item), "", response, "delivered", mta))
    elif kind == "DeliveryDelay":
        delay = _dict(obj.get("deliveryDelay"))
        for item in _list(delay.get("delayedRecipients")):
            entry = _dict(item)
            draft.recipients.append(
                recipient(
                    _str(entry.get("emailAddress")),
                    _str(entry.get("status")),
                    _str(entry.get("diagnosticCode")),
                    "delayed",
                    _str(delay.get("reportingMTA")),
                )
            )
    else:
        draft.kind = "other"
        draft.notes.append(f"SES notification {_text.clean(kind, 40)!r} is not a bounce")
    draft.recipients = [r for r in draft.recipients if r.address]
    return draft


def _bounce(bounce: dict[str, Any]) -> list[Recipient]:
    permanent = _str(bounce.get("bounceType")) == "Permanent"
    subtype = SUBTYPES.get(_str(bounce.get("bounceSubType")), "")
    mta = _str(bounce.get("reportingMTA"))
    out: list[Recipient] = []
    for item in _list(bounce.get("bouncedRecipients")):
        entry = _dict(item)
        rcpt = recipient(
            _str(entry.get("emailAddress")),
            _str(entry.get("status")),
            _str(entry.get("diagnosticCode")),
            _str(entry.get("action")) or "failed",
            mta,
            permanent or None,
        )
        reason = rcpt.reason
        if subtype and (reason == "undefined" or not rcpt.diagnostic):
            reason = subtype
        # SES's verdict decides, unless the remote's own words name a reason that is
        # not about the address (a block, a policy): then it is not suppressed for good.
        hard = permanent and (reason in HARD_REASONS or reason in ("undefined", "onhold"))
        if not permanent:
            hard = False
        out.append(
            Recipient(
                rcpt.address,
                rcpt.status,
                reason,
                hard,
                rcpt.action,
                rcpt.remote_mta,
                rcpt.diagnostic,
            )
        )
    return out
