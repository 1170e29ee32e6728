"""What the bounce classifier says about one message: the contract between the
classifier (mailops.bounceparse) and its users (ingest, the store, ``bounces parse``).

Every string field here is single-line text: the classifier strips CR, LF and other
control characters from anything taken from the message, so a stored field can never
carry an injected header or log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["bounce", "feedback", "autoreply", "other"]

# RFC 3463-style reasons, the vocabulary of the store and of reports.
REASONS: frozenset[str] = frozenset(
    [
        "userunknown",
        "hostunknown",
        "mailboxfull",
        "hasmoved",
        "notaccept",
        "expired",
        "filtered",
        "rejected",
        "blocked",
        "spamdetected",
        "virusdetected",
        "policyviolation",
        "securityerror",
        "authfailure",
        "requireptr",
        "badreputation",
        "norelaying",
        "systemerror",
        "systemfull",
        "networkerror",
        "mailererror",
        "toomanyconn",
        "speeding",
        "exceedlimit",
        "mesgtoobig",
        "contenterror",
        "syntaxerror",
        "notcompliantrfc",
        "suspend",
        "onhold",
        "vacation",
        "feedback",
        "delivered",
        "undefined",
    ]
)


@dataclass(frozen=True)
class Recipient:
    """One recipient's outcome as reported by the remote side."""

    address: str  # lower-cased addr-spec, "" when the report names none
    status: str  # RFC 3463 code "5.1.1", "" when unknown
    reason: str  # one of REASONS
    hard: bool  # True: the address will never work, suppress now
    action: str = ""  # RFC 3464 Action: failed, delayed, delivered, relayed, expanded
    remote_mta: str = ""
    diagnostic: str = ""


@dataclass(frozen=True)
class Report:
    """The classification of one message."""

    kind: Kind
    detector: str  # which dialect detector recognised it ("rfc3464", "exim", "arf", ...)
    recipients: tuple[Recipient, ...] = ()
    # Links to what we sent: the original's Message-ID, the X-Message-ID the application
    # set, the token of a VERP return path (bounces+TOKEN@domain).
    original_message_id: str = ""
    x_message_id: str = ""
    verp_token: str = ""
    # Who sent the original (bounces and feedback): the returned message's Return-Path
    # and From: addresses, "" when the report does not carry them.  The store reads the
    # tenant of the mail from these.
    original_sender: str = ""
    original_from: str = ""
    # The bounce/report message's own Message-ID (dedup key together with recipients).
    message_id: str = ""
    # ARF (RFC 5965) fields, for kind == "feedback".
    feedback_type: str = ""
    source_ip: str = ""
    reporting_mta: str = ""
    # The sender of the report (for autoreplies and unsubscribe requests).
    from_address: str = ""
    subject: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
