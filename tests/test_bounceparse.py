"""mailops.bounceparse: the sample corpus field by field, the reason table, links, limits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from mailops.bounceparse import (
    REASONS,
    Report,
    _mime,
    _text,
    detector_names,
    parse_message,
    reasons,
)
from mailops.bounceparse._mime import MAX_INPUT, MAX_NESTING
from tests.support.mime_tree import stdlib_tree, tree

DATA = Path(__file__).resolve().parent / "data" / "bounces"
SAMPLES = sorted(DATA.glob("*.eml"))


def as_dict(report: Report) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(report)))
    return result


def expected(sample: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sample.with_suffix(".expected.json").read_text())
    return data


# --- the corpus ------------------------------------------------------------------------


def test_corpus_covers_at_least_eight_mtas_and_every_kind() -> None:
    assert all(s.with_suffix(".expected.json").exists() for s in SAMPLES)
    results = [expected(s) for s in SAMPLES]
    # The producing MTA/provider is the first word of the sample name.
    producers = {s.name.split("_")[0].rstrip("0123456789") for s in SAMPLES}
    producers -= {"arf", "autoreply", "not"}
    assert len(producers) >= 8, producers
    assert {r["kind"] for r in results} == {"bounce", "feedback", "autoreply", "other"}
    assert {r["detector"] for r in results} <= set(detector_names())


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_sample_every_field(sample: Path) -> None:
    assert as_dict(parse_message(sample.read_bytes())) == expected(sample)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_sample_with_crlf_line_ends_reads_the_same(sample: Path) -> None:
    raw = sample.read_bytes().replace(b"\n", b"\r\n")
    assert as_dict(parse_message(raw)) == expected(sample)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_sample_strings_are_single_line(sample: Path) -> None:
    report = parse_message(sample.read_bytes())
    for value in _strings(report):
        assert not set(value) & {"\r", "\n", "\x00", "\t"}, value
    assert all(r.reason in REASONS for r in report.recipients)


def _strings(report: Report) -> list[str]:
    out = [v for v in dataclasses.asdict(report).values() if isinstance(v, str)]
    out += list(report.notes)
    for rcpt in report.recipients:
        out += [v for v in dataclasses.asdict(rcpt).values() if isinstance(v, str)]
    return out


def test_detector_choice_per_sample() -> None:
    """The table reads each dialect with its own detector (a regression guard on order)."""
    by_name = {s.stem: expected(s)["detector"] for s in SAMPLES}
    assert by_name["postfix_dsn"] == "rfc3464"
    assert by_name["postfix_plain"] == "postfix"
    assert by_name["exim_failed"] == "exim"
    assert by_name["sendmail_plain"] == "sendmail"
    assert by_name["qmail"] == "qmail"
    assert by_name["yahoo"] == "yahoo"
    assert by_name["exchange_ndr"] == "exchange"
    assert by_name["gmail_legacy"] == "gmail"
    assert by_name["ses_notification"] == "ses"
    assert by_name["arf_abuse"] == "arf"
    assert by_name["autoreply_rfc3834"] == "rfc3834"
    assert by_name["not_a_bounce"] == "none"


# --- reasons ---------------------------------------------------------------------------

CASES = [
    # status, diagnostic, action, reason, hard
    (
        "5.1.1",
        "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown",
        "failed",
        "userunknown",
        True,
    ),
    ("", "550 No such user here", "failed", "userunknown", True),
    (
        "4.1.1",
        "450 4.1.1 <a@example.com>: Recipient address rejected: unverified",
        "delayed",
        "userunknown",
        False,
    ),
    (
        "5.1.2",
        "Host or domain name not found. Name service error for name=x.test type=MX",
        "failed",
        "hostunknown",
        True,
    ),
    ("5.4.4", "Host or domain name not found", "failed", "hostunknown", True),
    ("5.2.2", "552 5.2.2 Mailbox full", "failed", "mailboxfull", False),
    (
        "5.0.0",
        "552 Requested mail action aborted: exceeded storage allocation",
        "failed",
        "mailboxfull",
        False,
    ),
    (
        "4.2.2",
        "452 4.2.2 The email account that you tried to reach is over quota",
        "delayed",
        "mailboxfull",
        False,
    ),
    (
        "5.7.1",
        "554 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.test",
        "failed",
        "blocked",
        False,
    ),
    (
        "5.7.1",
        "550 5.7.1 Message blocked by the recipient's administrator",
        "failed",
        "blocked",
        False,
    ),
    (
        "5.7.25",
        "550 5.7.25 The IP address sending this message does not have a PTR record",
        "failed",
        "requireptr",
        False,
    ),
    (
        "5.7.1",
        "550 5.7.1 Client host rejected: cannot find your reverse hostname",
        "failed",
        "requireptr",
        False,
    ),
    ("4.7.0", "421 4.7.0 Rate limit exceeded, try again later", "delayed", "speeding", False),
    (
        "4.7.0",
        "421 4.7.0 [TSS04] Messages temporarily deferred due to unexpected volume",
        "delayed",
        "speeding",
        False,
    ),
    ("4.3.2", "421 4.3.2 Too many connections from your IP", "delayed", "toomanyconn", False),
    (
        "5.7.26",
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated",
        "failed",
        "authfailure",
        False,
    ),
    (
        "5.7.1",
        "550 5.7.1 Our system has detected that this message is likely unsolicited mail",
        "failed",
        "spamdetected",
        False,
    ),
    (
        "5.7.0",
        "554 5.7.0 Reject, id=12345 - VIRUS_FOUND: Win.Trojan",
        "failed",
        "virusdetected",
        False,
    ),
    ("5.7.1", "554 5.7.1 <a@example.com>: Relay access denied", "failed", "norelaying", False),
    ("5.1.6", "551 5.1.6 User has moved; please try b@example.org", "failed", "hasmoved", True),
    ("5.1.10", "550 5.1.10 Recipient address has null MX", "failed", "notaccept", True),
    ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "failed", "userunknown", True),
    ("5.0.0", "554 Your account has been suspended", "failed", "suspend", True),
    ("5.0.0", "556 5.1.10 Domain does not accept mail (null MX)", "failed", "notaccept", True),
    (
        "5.2.1",
        "550 5.2.1 The email account that you tried to reach is disabled",
        "failed",
        "suspend",
        True,
    ),
    (
        "5.3.4",
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "failed",
        "mesgtoobig",
        False,
    ),
    (
        "4.4.1",
        "connect to mx.example.com[192.0.2.1]:25: Connection timed out",
        "delayed",
        "expired",  # the host cannot be reached: the message is running out of time
        False,
    ),
    (
        "4.4.1",
        "connect to mx.example.com[192.0.2.1]:25: Connection timed out",
        "failed",
        "expired",
        False,
    ),
    (
        "4.4.2",
        "lost connection with mx.example.com[192.0.2.1] while receiving the initial greeting",
        "failed",
        "networkerror",
        False,
    ),
    ("4.4.7", "", "failed", "expired", False),
    ("4.0.0", "delivery temporarily suspended", "failed", "expired", False),
    (
        "5.1.8",
        "553 5.1.8 <x@company.test>: Sender address rejected: Domain not found",
        "failed",
        "rejected",
        False,
    ),
    ("5.7.1", "550 5.7.1 Message rejected by policy", "failed", "policyviolation", False),
    (
        "4.7.1",
        "450 4.7.1 Greylisted, see https://example.org/greylist",
        "delayed",
        "policyviolation",
        False,
    ),
    ("5.6.0", "", "failed", "contenterror", False),
    ("5.7.1", "550 5.7.1 Message is not RFC 5322 compliant", "failed", "notcompliantrfc", False),
    ("5.4.6", "554 5.4.6 Too many hops", "failed", "systemerror", False),
    ("5.3.0", "Command died with status 1: /usr/bin/procmail", "failed", "mailererror", False),
    ("4.3.1", "452 4.3.1 Insufficient system storage", "delayed", "systemfull", False),
    ("5.7.0", "530 5.7.0 Must issue a STARTTLS command first", "failed", "securityerror", False),
    ("5.0.0", "550 5.7.1 Rejected due to poor sender reputation", "failed", "badreputation", False),
    ("2.0.0", "250 2.0.0 OK", "delivered", "delivered", False),
    ("", "", "relayed", "delivered", False),
    ("", "", "failed", "undefined", False),
    # The general phrasings of issue 19, one class of wording each.
    (
        "5.7.1",
        "550 5.7.1 Messages with multiple addresses in From: header are not accepted",
        "failed",
        "notcompliantrfc",
        False,
    ),
    (
        "5.7.1",
        "550 5.7.1 This message is not RFC 5322 compliant. To reduce the amount of "
        "spam sent, this message has been blocked.",
        "failed",
        "notcompliantrfc",
        False,
    ),
    (
        "5.0.0",
        "554 Transaction failed: Duplicate header 'DKIM-Signature'.",
        "failed",
        "notcompliantrfc",
        False,
    ),
    (
        "5.0.0",
        "Your email was rejected due to spam classification. Set up SPF records.",
        "failed",
        "spamdetected",
        False,
    ),
    (
        "5.7.1",
        "550 5.7.1 Message content rejected, UBE, id=00000-22-225",
        "failed",
        "spamdetected",
        False,
    ),
    (
        "5.0.0",
        "Connected to 192.0.2.1 but my name was rejected. Remote host said: 501 5.0.0 "
        "Invalid domain name",
        "failed",
        "blocked",
        False,
    ),
    (
        "5.0.0",
        "Name service error for domain example.test: Host not found, try again",
        "failed",
        "networkerror",
        False,
    ),
    (
        "4.0.0",
        "DNS Error: DNS type 'mx' lookup of example.test responded with code NXDOMAIN "
        "Domain name not found: example.test",
        "failed",
        "networkerror",
        False,
    ),
    (
        "5.1.2",
        "Host or domain name not found. Name service error for name=x.test type=MX: Host not found",
        "failed",
        "hostunknown",
        True,
    ),
    (
        "5.4.4",
        "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)",
        "failed",
        "notaccept",
        True,
    ),
    (
        "4.4.3",
        "Unable to contact LDAP server. (#4.4.3) I'm not going to try again; this "
        "message has been in the queue too long.",
        "failed",
        "systemerror",
        False,
    ),
    (
        "5.0.0",
        "Sorry, no mailbox here by that name. I'm not going to try again; this "
        "message has been in the queue too long.",
        "failed",
        "userunknown",
        True,
    ),
    (
        "",
        "The recipient server did not accept our requests to connect. [mx.example.test "
        "192.0.2.7: timed out]",
        "delayed",
        "expired",
        False,
    ),
    ("4.3.2", "452 4.3.2 Connection rate limit exceeded.", "failed", "toomanyconn", False),
    (
        "5.2.3",
        "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient",
        "failed",
        "exceedlimit",
        False,
    ),
    ("5.0.0", "504 Command parameter not implemented", "failed", "syntaxerror", False),
    ("5.0.0", "550 Unauthenticated senders not allowed", "failed", "securityerror", False),
    (
        "5.7.1",
        "501 RCPT TO not accepted: 5.7.1 This system is not configured to relay mail",
        "failed",
        "norelaying",
        False,
    ),
    (
        "5.0.0",
        "Mail size limit exceeded. For explanation visit the postmaster pages",
        "failed",
        "mesgtoobig",
        False,
    ),
    (
        "5.0.0",
        "The number of messages in recipient's mailbox exceeded the local limit.",
        "failed",
        "mailboxfull",
        False,
    ),
    (
        "5.7.9",
        "554 5.7.9 Message not accepted for policy reasons.",
        "failed",
        "policyviolation",
        False,
    ),
    ("5.7.9", "550 5.7.9 Rejected", "failed", "securityerror", False),
    (
        "5.0.0",
        "permission denied: you do not have permission to post messages to the group",
        "failed",
        "rejected",
        False,
    ),
    (
        "5.7.1",
        "host mx.example.test[192.0.2.9] said: 550 5.7.1 Access denied (in reply to "
        "MAIL FROM command)",
        "failed",
        "rejected",
        False,
    ),
    (
        "5.1.1",
        "SMTP error from remote mail server after MAIL FROM:<news@company.test>: 550 "
        "5.1.1 user unknown",
        "failed",
        "rejected",
        False,
    ),
    (
        "4.1.1",
        "450 4.1.1 <a@example.test>: Recipient address rejected: User unknown in virtual alias "
        "table",
        "failed",
        "userunknown",
        True,  # given up: unknown at every attempt
    ),
    (
        "",
        "all hosts for 'example.test' have been failing for a long time (and retry time "
        "not reached)",
        "failed",
        "expired",
        False,
    ),
    (
        "5.0.0",
        "Child process of local_delivery transport returned 75 (could mean temporary error)",
        "failed",
        "mailererror",
        False,
    ),
    ("5.0.0", "550 This account is currently disabled", "failed", "suspend", True),
    (
        "5.0.0",
        "The recipient's e-mail address was not found in the recipient's e-mail system",
        "failed",
        "userunknown",
        True,
    ),
    ("5.0.0", "550 Connection frequency limited", "failed", "toomanyconn", False),
    (
        "4.1.1",
        "450 4.1.1 <a@example.test>: Recipient address rejected: unverified address",
        "failed",
        "userunknown",
        False,
    ),
    (
        "5.0.0",
        "550 5.0.0 User <cat@example.test> not listed in Domino Directory",
        "failed",
        "userunknown",
        True,
    ),
]


@pytest.mark.parametrize(("status", "diag", "action", "reason", "hard"), CASES)
def test_reason_and_hard(status: str, diag: str, action: str, reason: str, hard: bool) -> None:
    _, got_reason, got_hard = reasons.classify(status, diag, action)
    assert (got_reason, got_hard) == (reason, hard)


def test_every_table_reason_is_in_the_vocabulary() -> None:
    named = set(reasons.STATUS.values()) | set(reasons.PRIORITY_STATUS.values())
    named |= {r for r, _ in reasons.STRONG} | {r for r, _ in reasons.WEAK}
    named |= set(reasons.SUBJECT_DEFAULT.values())
    assert named <= REASONS


@pytest.mark.parametrize(
    ("field", "diag", "want"),
    [
        ("5.0.0", "smtp; 550 5.1.1 user unknown", "5.1.1"),  # Exim DSNs say 5.0.0
        ("5.1.1 (user unknown)", "", "5.1.1"),
        ("", "Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1"),
        ("", "550 Requested action not taken", "5.0.0"),
        ("", "relay build 25.4.4.10 said: 450 try later", "4.0.0"),  # not 5.4.4 or 4.4.10
        ("4.0.0", "550 5.1.1 user unknown", "4.0.0"),  # a class that disagrees is ignored
        ("", "no code at all", ""),
        # the remote's own code, quoted after the relay's words, beats a guessed field
        (
            "5.1.0",
            "5.1.0 - Unknown address error 550-'5.2.2 <a@example.test>... Mailbox Full'",
            "5.2.2",
        ),
        (
            "4.4.7",
            "554 4.4.7 Message expired: unable to deliver <421 4.4.2 Connection timed out>",
            "4.4.2",
        ),
        ("5.1.1", "552 5.2.2 Over quota", "5.2.2"),
        (
            "",
            "Out: 250 2.1.0 Ok In: RCPT TO:<a@example.test> Out: 550 5.1.1 no such user",
            "5.1.1",
        ),  # the transcript's successful commands come first
    ],
)
def test_status_choice(field: str, diag: str, want: str) -> None:
    assert reasons.choose_status(field, diag) == want


# --- links -----------------------------------------------------------------------------


def test_envelope_recipient_wins_for_the_verp_token() -> None:
    raw = (DATA / "postfix_dsn.eml").read_bytes()
    assert parse_message(raw).verp_token == "a1b2c3d4"
    assert parse_message(raw, envelope_to="bounces+zz99@company.test").verp_token == "zz99"
    # a plain bounces@ address is no token; the headers still are
    assert parse_message(raw, envelope_to="bounces@company.test").verp_token == "a1b2c3d4"


def test_verp_prefixes_are_configurable() -> None:
    raw = (DATA / "postfix_dsn.eml").read_bytes().replace(b"bounces+", b"rp+")
    assert parse_message(raw).verp_token == ""
    assert parse_message(raw, verp_prefixes=("rp",)).verp_token == "a1b2c3d4"


def test_verp_token_from_the_returned_message_when_headers_lack_it() -> None:
    raw = (DATA / "sendmail_dsn.eml").read_bytes()
    raw = raw.replace(b"Delivered-To: bounces+9d8e7f@company.test\n", b"")
    raw = raw.replace(b"To: <bounces+9d8e7f@company.test>", b"To: <bounces@company.test>")
    raw = raw.replace(b"for <bounces+9d8e7f@company.test>", b"for <bounces@company.test>")
    assert parse_message(raw).verp_token == "9d8e7f"


def test_encoded_x_message_id_is_decoded() -> None:
    assert parse_message((DATA / "gmail_dsn.eml").read_bytes()).x_message_id == "alert-9901"


def test_other_mail_carries_no_links() -> None:
    report = parse_message((DATA / "not_a_bounce.eml").read_bytes())
    assert (report.original_message_id, report.x_message_id, report.verp_token) == ("", "", "")


# --- hostile and odd input -------------------------------------------------------------


def test_header_injection_through_encoded_words_is_flattened() -> None:
    raw = (
        b"From: =?utf-8?q?Evil=0D=0ABcc:_x@example.com?= <MAILER-DAEMON@example.org>\n"
        b"Subject: =?utf-8?b?VW5kZWxpdmVyZWQNClgtSW5qZWN0ZWQ6IDEA?=\n"
        b"Content-Type: text/plain\n\n"
        b"This is the mail system at host mx.example.org.\n\n"
        b"<a\x00b@example.com>: host mx.example.com[192.0.2.1] said: 550 5.1.1\n"
        b"    user unknown\r\nX-Evil: 1\n"
    )
    report = parse_message(raw)
    assert report.subject == "Undelivered X-Injected: 1"
    for value in _strings(report):
        assert not set(value) & {"\r", "\n", "\x00"}


def test_not_bytes_and_empty_input() -> None:
    assert parse_message(b"").kind == "other"
    assert parse_message(b"\x00\xff" * 100).detector == "none"
    text: Any = "Subject: Undelivered Mail\n\nhello"  # a caller that passes str
    assert parse_message(text).subject == "Undelivered Mail"


def test_huge_input_is_cut_and_still_classified() -> None:
    raw = (DATA / "postfix_dsn.eml").read_bytes()
    lines = b"x" * 76 + b"\n"
    big = raw.replace(b"Hello, here is what happened in June.", lines * (MAX_INPUT // 70))
    report = parse_message(big)
    assert report.kind == "bounce" and report.recipients[0].reason == "userunknown"
    assert any("truncated" in n for n in report.notes)


def test_a_megabyte_header_line_does_not_hide_the_report() -> None:
    raw = (DATA / "postfix_dsn.eml").read_bytes()
    big = raw.replace(b"\nSubject: ", b"\nSubject: " + b"\xff" * (2 * MAX_INPUT), 1)
    report = parse_message(big)
    assert [r.reason for r in report.recipients] == ["userunknown", "blocked"]
    assert len(report.subject) <= _text.LINE_MAX
    assert report.notes == ("lines cut to 65536 bytes",)


def test_deep_nesting_is_cut() -> None:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(500)
    )
    report = parse_message(b"From: x@example.com\n" + head + b"Content-Type: text/plain\n\nhi\n")
    assert report.kind == "other"
    assert any(str(MAX_NESTING) in n for n in report.notes)


def test_clean_strips_controls_and_surrogates() -> None:
    assert _text.clean("a\r\nb\x00c\x85d\u2028e\udcff", 100) == "a b c d e\ufffd"
    assert _text.clean("x" * 500, 10) == "x" * 10


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("rfc822; <User@Example.COM>", "user@example.com"),
        ("RFC822;user@example.com", "user@example.com"),
        ("x400; /G=a/S=b/", ""),
        ("not an address", ""),
        ("a@@example.com", ""),
        ("<>", ""),
    ],
)
def test_address_spec(value: str, want: str) -> None:
    assert _text.address_spec(value) == want


def test_arf_without_original_rcpt_to_uses_the_returned_to() -> None:
    raw = (
        (DATA / "arf_abuse.eml")
        .read_bytes()
        .replace(b"Original-Rcpt-To: <Walter@example.net>\n", b"")
    )
    report = parse_message(raw)
    assert [r.address for r in report.recipients] == ["walter@example.net"]


def test_not_spam_feedback_is_not_hard() -> None:
    raw = (
        (DATA / "arf_abuse.eml")
        .read_bytes()
        .replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    )
    report = parse_message(raw)
    assert report.kind == "feedback" and report.feedback_type == "not-spam"
    assert [r.hard for r in report.recipients] == [False]


def test_generic_reads_an_unknown_daemon_notice() -> None:
    raw = (
        b"From: Mail Administrator <postmaster@mail.example.org>\n"
        b"To: bounces+g1@company.test\n"
        b"Subject: Mail System Error - Returned Mail\n\n"
        b"This Message was undeliverable due to the following reason:\n\n"
        b"The user(s) account is temporarily over quota.\n\n"
        b"<amy@example.org>\n  552 Mailbox limit exceeded\n"
    )
    report = parse_message(raw)
    assert (report.kind, report.detector, report.verp_token) == ("bounce", "generic", "g1")
    assert [(r.address, r.status) for r in report.recipients] == [("amy@example.org", "5.0.0")]


def test_a_broken_detector_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    import mailops.bounceparse as bp

    def boom(ctx: object) -> None:
        raise RuntimeError("bug")

    table = tuple((n, boom if n == "rfc3464" else d) for n, d in bp.DETECTORS)
    monkeypatch.setattr(bp, "DETECTORS", table)
    report = bp.parse_message((DATA / "postfix_dsn.eml").read_bytes())
    assert report.detector == "postfix"  # the notice text still names both recipients
    assert [r.reason for r in report.recipients] == ["userunknown", "blocked"]
    assert f"{bp.DETECTOR_FAILED_NOTE}rfc3464: RuntimeError" in report.notes
    with pytest.raises(RuntimeError, match="bug"):  # what the fuzz tests rely on
        bp.parse_message((DATA / "postfix_dsn.eml").read_bytes(), strict=True)


# --- DSN details -----------------------------------------------------------------------


def _postfix_dsn(old: bytes, new: bytes) -> Report:
    raw = (DATA / "postfix_dsn.eml").read_bytes()
    assert old in raw
    return parse_message(raw.replace(old, new))


def test_original_recipient_is_the_address_we_sent_to() -> None:
    original = b"\nOriginal-Recipient: rfc822;nobody@gmail.test"
    report = _postfix_dsn(
        b"Final-Recipient: rfc822; nobody@gmail.test" + original,
        b"Final-Recipient: rfc822; forwarded@other.test" + original,
    )
    assert report.recipients[0].address == "nobody@gmail.test"


def test_success_and_relay_notices_are_delivered_and_soft() -> None:
    report = _postfix_dsn(b"Action: failed\nStatus: 5.1.1", b"Action: relayed\nStatus: 2.0.0")
    first = report.recipients[0]
    assert (report.kind, first.action, first.status, first.reason, first.hard) == (
        "bounce",
        "relayed",
        "2.0.0",
        "delivered",
        False,
    )


def test_global_delivery_status_is_read() -> None:
    report = _postfix_dsn(
        b"Content-Type: message/delivery-status", b"Content-Type: message/global-delivery-status"
    )
    assert [r.reason for r in report.recipients] == ["userunknown", "blocked"]


def test_base64_delivery_status_is_decoded() -> None:
    raw = (DATA / "sendmail_dsn.eml").read_bytes()
    head, _, rest = raw.partition(b"Content-Type: message/delivery-status\n\n")
    body, sep, tail = rest.partition(b"\n--454BUKqV012345")
    import base64

    encoded = base64.encodebytes(
        body.replace(b"Status: 5.1.2", b"Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 unknown")
    )
    raw = (
        head
        + b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        + encoded
        + sep
        + tail
    )
    report = parse_message(raw)
    assert [(r.address, r.status) for r in report.recipients] == [
        ("ivan@nonexistent.example.org", "5.1.1")
    ]


def test_recipient_without_status_that_failed_counts_as_permanent() -> None:
    report = _postfix_dsn(
        b"Action: failed\nStatus: 5.1.1\nRemote-MTA: dns; mx.gmail.test\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <nobody@gmail.test>: Recipient address\n"
        b"    rejected: User unknown in virtual mailbox table",
        b"Action: failed\nDiagnostic-Code: x-local; no such user here",
    )
    first = report.recipients[0]
    assert (first.status, first.reason, first.hard) == ("", "userunknown", True)


def test_ses_delivery_and_delay_notifications() -> None:
    raw = (DATA / "ses_complaint.eml").read_bytes()
    start = raw.index(b'{"notificationType"')
    end = raw.index(b"\n\n--\n")
    delivery = (
        b'{"notificationType":"Delivery","mail":{"source":"bounces+d1@company.test"},'
        b'"delivery":{"recipients":["Ok@Example.net"],"smtpResponse":"250 2.6.0 Message '
        b'received","reportingMTA":"a8-90.smtp-out.amazonses.test"}}'
    )
    report = parse_message(raw[:start] + delivery + raw[end:])
    assert (report.kind, report.detector, report.verp_token) == ("bounce", "ses", "d1")
    assert [(r.address, r.status, r.reason, r.hard) for r in report.recipients] == [
        ("ok@example.net", "2.6.0", "delivered", False)
    ]
    delay = (
        b'{"eventType":"DeliveryDelay","mail":{},"deliveryDelay":{"delayType":"MailboxFull",'
        b'"delayedRecipients":[{"emailAddress":"full@example.net","status":"4.2.2",'
        b'"diagnosticCode":"smtp; 452 4.2.2 Mailbox full"}]}}'
    )
    report = parse_message(raw[:start] + delay + raw[end:])
    assert [(r.action, r.reason, r.hard) for r in report.recipients] == [
        ("delayed", "mailboxfull", False)
    ]


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        (b"From: Zoe <zoe@example.net>\nSubject: Re: Undelivered Mail\n", "other"),
        (b"From: Zoe <zoe@example.net>\nSubject: Undelivered Mail\n", "other"),
        (b"Return-Path: <>\nFrom: Zoe <zoe@example.net>\nSubject: Undelivered Mail\n", "bounce"),
        (
            b"From: x@example.net\nAuto-Submitted: auto-generated\nSubject: Undeliverable\n",
            "bounce",
        ),
        (b"From: <MAILER-DAEMON@example.net>\nSubject: hello\n", "bounce"),
    ],
)
def test_generic_needs_machine_mail(headers: bytes, kind: str) -> None:
    body = b"\nMy mail to <someone@company.test> failed: 550 5.1.1 user unknown\n"
    report = parse_message(headers + body)
    assert report.kind == kind
    if kind == "bounce":
        assert [(r.address, r.hard) for r in report.recipients] == [("someone@company.test", True)]


# --- notices in no known dialect (issue 19) --------------------------------------------


def test_a_mailer_daemon_notice_marked_auto_replied_is_a_bounce() -> None:
    raw = (
        b"From: Mail Delivery Subsystem <mailer-daemon@mail.example.org>\n"
        b"To: bounces+a1@company.test\n"
        b"Auto-Submitted: auto-replied\n"
        b"X-Failed-Recipients: list@example.org\n"
        b"Subject: Delivery Status Notification (Failure)\n\n"
        b"We're writing to let you know that the group you tried to contact may not exist,\n"
        b"or you may not have permission to post messages to the group.\n"
    )
    report = parse_message(raw)
    assert (report.kind, report.detector) == ("bounce", "generic")
    assert [(r.address, r.reason) for r in report.recipients] == [("list@example.org", "rejected")]


def test_an_unsubscribe_request_is_feedback_about_its_sender() -> None:
    raw = (
        b"From: someone@example.net\nTo: opt-out-1234@company.test\n"
        b"Subject: unsubscribe\nAuto-Submitted: auto-replied\n\n"
        b"This mail program sent this email to unsubscribe.\n"
    )
    report = parse_message(raw)
    assert (report.kind, report.detector, report.feedback_type) == (
        "feedback",
        "unsubscribe",
        "unsubscribe",
    )
    assert [(r.address, r.reason) for r in report.recipients] == [
        ("someone@example.net", "feedback")
    ]


def test_a_notice_in_no_dialect_gives_each_recipient_its_own_reason() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\nTo: news@company.test\n"
        b"Subject: failure notice\n\n"
        b"Your message could not be delivered to these recipients.\n\n"
        b'"amy@example.org":\nSMTP error from remote server after RCPT command:\n'
        b"host: mx.example.org\n5.1.1 <amy@example.org>... User Unknown\n"
        b'"bob@example.org":\nSMTP error from remote server after RCPT command:\n'
        b"host: mx.example.org\n5.2.2 <bob@example.org>... Mailbox Full\n"
        b"--- The header of the original message is following. ---\n"
        b"From: news@company.test\nTo: amy@example.org\n"
    )
    report = parse_message(raw)
    assert report.detector == "generic"
    got = [(r.address, r.status, r.reason, r.hard) for r in report.recipients]
    assert got == [
        ("amy@example.org", "5.1.1", "userunknown", True),
        ("bob@example.org", "5.2.2", "mailboxfull", False),
    ]


def test_a_notice_that_says_why_in_prose_before_the_address() -> None:
    raw = (
        b"From: Postmaster@mail.example.org\nTo: news@company.test\n"
        b"Subject: Mail System Error - Returned Mail\n\n"
        b"The user(s) account is disabled.\n\n<cat@example.org>\n"
    )
    report = parse_message(raw)
    assert [(r.address, r.reason) for r in report.recipients] == [("cat@example.org", "suspend")]


def test_dsn_fields_pasted_into_the_notice_are_read_as_a_dsn() -> None:
    raw = (
        b"From: MAILER-DAEMON@mail.example.org\nTo: news@company.test\n"
        b"Subject: Delivery Status Notification (Failure)\n"
        b"Content-Type: text/plain\n\n"
        b"An error occurred while trying to deliver the mail to the following recipients:\n"
        b"dan@example.org\n\nTechnical report:\n"
        b"Reporting-MTA: dsn; mta.example.org\nAction: failed\n"
        b"Final-Recipient: rfc822; dan@example.org\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <dan@example.org>: user unknown\n"
        b"Status: 5.1.1\n"
    )
    report = parse_message(raw)
    assert report.detector == "rfc3464"
    got = [(r.address, r.status, r.reason, r.hard) for r in report.recipients]
    assert got == [("dan@example.org", "5.1.1", "userunknown", True)]


def test_a_content_type_without_its_semicolon_still_names_its_type() -> None:
    raw = (
        b"From: MAILER-DAEMON@mail.example.org\nTo: news@company.test\n"
        b"Subject: Returned Mail: User unknown\n"
        b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b'Content-Type: text/plain\n   charset="us-ascii"\n\n'
        b"---The following addresses had delivery errors---\n\n"
        b"eve@example.org [User unknown]\n\n--b--\n"
    )
    report = parse_message(raw)
    assert [(r.address, r.reason) for r in report.recipients] == [
        ("eve@example.org", "userunknown")
    ]


def test_a_dsn_refused_at_mail_from_is_a_rejected_sender() -> None:
    """Postfix's DSN fields leave out the SMTP command; its notice text says it: an
    unknown address at MAIL FROM is the sender's, not the recipient's."""
    raw = (DATA / "postfix_dsn.eml").read_bytes()
    assert parse_message(raw).recipients[0].reason == "userunknown"
    raw = raw.replace(b"(in reply to RCPT TO command)", b"(in reply to MAIL FROM command)", 1)
    report = parse_message(raw)
    assert report.detector == "rfc3464"
    assert (report.recipients[0].reason, report.recipients[0].hard) == ("rejected", False)


GENERIC_NOTICES = {
    # Lotus Domino: the reason after the address, in its own paragraph
    "domino": (
        b"From: Postmaster@notes.example.org\nTo: news@company.test\n"
        b"Subject: DELIVERY FAILURE: User cat (cat@example.org) not listed in Domino Directory"
        b"\n\nYour message\n\n  Subject: test\n\nwas not delivered to:\n\n  cat@example.org\n\n"
        b"because:\n\n  User cat (cat@example.org) not listed in Domino Directory\n",
        [("cat@example.org", "", "userunknown", True)],
    ),
    # Courier's plain notice, from "<@>" with a null return path
    "courier": (
        b"From: Courier mail server at mx.example.org <@>\nTo: news@company.test\n"
        b"Subject: NOTICE: mail delivery status.\nReturn-Path: <>\n\n"
        b"This is a delivery status notification from mx.example.org,\n"
        b"running the Courier mail server, version 0.65.2.\n\n"
        b"Your message to the following recipients cannot be delivered:\n\n"
        b"<ant@example.org>:\n    mx.example.org [192.0.2.3]:\n>>> RCPT TO:<ant@example.org>\n"
        b"<<< 550 5.1.1 <ant@example.org>... User Unknown\n",
        [("ant@example.org", "5.1.1", "userunknown", True)],
    ),
    # a gateway that names the recipients after the reason
    "reason_first": (
        b"From: MailMarshal@example.org\nTo: news@company.test\nReturn-Path: <>\n"
        b'Subject: Undeliverable Mail: "test"\n\n'
        b"Your message:\n   From:    news@company.test\n   Subject: test\n\n"
        b"Could not be delivered because of\n\n550 5.2.2 Mailbox full\n\n"
        b"The following recipients were affected:\n    owl@example.org\n",
        [("owl@example.org", "5.2.2", "mailboxfull", False)],
    ),
}


@pytest.mark.parametrize("name", sorted(GENERIC_NOTICES))
def test_generic_reads_notices_of_software_it_has_no_dialect_for(name: str) -> None:
    raw, want = GENERIC_NOTICES[name]
    report = parse_message(raw, strict=True)
    assert (report.kind, report.detector) == ("bounce", "generic")
    assert [(r.address, r.status, r.reason, r.hard) for r in report.recipients] == want


def test_a_transcript_reply_about_another_host_is_not_the_previous_recipients() -> None:
    raw = (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.org>\n"
        b"To: news@company.test\nSubject: Returned mail: User unknown\n\n"
        b"   ----- Transcript of session follows -----\n"
        b"554 <amy@example.org>... Remote protocol error: Connection reset by peer\n"
        b"550 example.net (smtp)... 550 Host unknown\n"
        b"554 <bob@example.net>... 550 Host unknown (Authoritative answer from name server)\n"
        b"   ----- Unsent message follows -----\n"
    )
    got = [(r.address, r.reason, r.hard) for r in parse_message(raw, strict=True).recipients]
    assert got == [
        ("amy@example.org", "networkerror", False),
        ("bob@example.net", "hostunknown", True),
    ]


def test_a_charset_no_codec_can_be_looked_up_by_reads_as_ascii() -> None:
    """Found by the strict fuzz tests: "charset=utf-8\\0" made the standard library's
    get_payload() raise ValueError, and the message came out as kind "other"."""
    raw = (DATA / "autoreply_rfc3834.eml").read_bytes()
    raw = raw.replace(b"charset=utf-8", b"charset=utf-8\x00").replace(b"\n\n", b"\n\n\xff ", 1)
    report = parse_message(raw, strict=True)
    assert (report.kind, report.detector) == ("autoreply", "rfc3834")


# --- the MIME splitter: the standard library's tree, read faster -------------------------

OUTER = b'Content-Type: multipart/report; report-type=delivery-status; boundary="o"\n'
SHAPES: dict[str, bytes] = {
    "dsn": OUTER + b"\npreamble\n\n--o\nContent-Type: text/plain\n\nhello\n\n--o\n"
    b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; a\n\n"
    b"Final-Recipient: rfc822; u@x\nStatus: 5.1.1\n\n--o\n"
    b"Content-Type: message/rfc822\n\nSubject: s\nContent-Type: multipart/alternative;"
    b" boundary=i\n\n--i\n\ntext\n--i\nContent-Type: text/html\n\n<p>x</p>\n--i--\n"
    b"inner epilogue\n\n--o--\nouter epilogue\n",
    "runs of boundaries, blanks after them, close without newline": OUTER
    + b"\n--o\n--o  \n--o--\nX-A: 1\n\nbody\n--o\t\n\n\nno headers\n--o--",
    "not boundaries": OUTER + b"\n--o\n\n--ox\n--o--x\n -- o\n--o-- \n",
    "crlf": OUTER.replace(b"\n", b"\r\n")
    + b"\r\n--o\r\nContent-Type: text/plain\r\n\r\nline\r\n\r\n--o--\r\n\r\nend\r\n",
    "missing separator, 8-bit text, empty parts": OUTER
    + b"\n--o\nnot a header line\n\xe9t\xe9\n--o\n--o\n\n--o--\n",
    "nested multipart ends at the outer boundary": OUTER
    + b"\n--o\nContent-Type: multipart/mixed; boundary=i\n\n--i\n\na\n--i--\n\n--o--\n",
    "no close boundary, inner nor outer (a returned message cut short)": OUTER
    + b"\n--o\n\nnotice\n\n--o\nContent-Type: message/rfc822\n\n"
    b"Content-Type: multipart/mixed; boundary=i\n\n--i\n\ntext\n--i\n\ncut sh",
    "message/rfc822 of a message/rfc822": OUTER
    + b"\n--o\nContent-Type: message/rfc822\n\nContent-Type: message/rfc822\n\n"
    b"Subject: deep\n\nbody\n--o--\n",
    "unix from line": b"From x@y Mon Jan  1 00:00:00 2024\n" + OUTER + b"\n--o\n\nx\n--o--\n",
    "header lines without a name, misplaced From, continuation first": OUTER
    + b"\n--o\nX-A: 1\n:no name\nFrom a: b\n\tfold\nX-B: 2\n\nbody\n--o\n"
    b" folded first\nX-C: 3\n\n--o--\n",
    "a From line that ends the headers goes to the body": OUTER
    + b"\n--o\nX-A: 1\nFrom x\n\nbody\n--o\nX-B: 2\nFrom y\nno header\n--o--\n",
}
# Shapes the splitter leaves to the standard library (its defects are recorded there).
LEFT_TO_STDLIB: dict[str, bytes] = {
    "no start boundary": OUTER + b"\nx\n--o--\n",
    "no boundary parameter": b"Content-Type: multipart/mixed\n\nx\n",
    "a boundary folded over two lines": b"Content-Type: multipart/mixed; boundary=i\n"
    b"\tfold\n\n--i\n\tfold\n\nx\n--i\n\tfold--\n",
    "lone CR": OUTER + b"\n--o\r\rx\n--o--\n",
    "digest": b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: a\n\n--d--\n",
    "base64 multipart": OUTER + b"Content-Transfer-Encoding: base64\n\n--o\n\nx\n--o--\n",
}


@pytest.mark.parametrize("raw", list(SHAPES.values()), ids=list(SHAPES))
def test_the_mime_splitter_builds_the_standard_librarys_tree(raw: bytes) -> None:
    text = raw.decode("ascii", "surrogateescape")
    assert tree(_mime._split_node(text)[0]) == stdlib_tree(raw)
    assert tree(_mime.parse_bytes(raw)) == stdlib_tree(raw)


@pytest.mark.parametrize("raw", list(LEFT_TO_STDLIB.values()), ids=list(LEFT_TO_STDLIB))
def test_unusual_multiparts_are_left_to_the_standard_library(raw: bytes) -> None:
    if b"\r\r" not in raw:
        with pytest.raises(_mime._Unusual):
            _mime._split_node(raw.decode("ascii", "surrogateescape"))
    assert tree(_mime.parse_bytes(raw)) == stdlib_tree(raw)


def test_the_mime_splitter_reads_the_samples_as_the_standard_library() -> None:
    for sample in sorted(DATA.glob("*.eml")):
        raw = sample.read_bytes()
        assert tree(_mime.parse_bytes(raw)) == stdlib_tree(raw), sample.name


def test_the_content_type_kept_follows_new_headers_and_default_type() -> None:
    msg = _mime.parse_bytes(b"X-A: 1\n\nbody\n")
    assert msg.get_content_type() == "text/plain"
    msg.set_default_type("message/rfc822")
    assert msg.get_content_type() == "message/rfc822"
    msg["Content-Type"] = "text/html; charset=utf-8"
    assert msg.get_content_type() == "text/html"
    del msg["Content-Type"]
    assert msg.get_content_type() == "message/rfc822"
