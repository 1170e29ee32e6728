"""Fuzzing mailops.bounceparse with hypothesis: whatever arrives, parse_message returns a
Report whose strings are single-line and capped and whose reasons are in REASONS, and no
detector fails on the way.

parse_message() turns any exception into a note so that ingest never stops on a message;
here every call goes through ``parse()``, which runs it with ``strict=True`` (an
exception in any detector propagates and fails the test), and ``check()`` also refuses a
Report that carries an internal-error note.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailops.bounceparse import (
    DETECTOR_FAILED_NOTE,
    ERROR_NOTE,
    REASONS,
    Report,
    _mime,
    parse_message,
    reasons,
)
from mailops.bounceparse._text import ADDRESS_MAX, DIAGNOSTIC_MAX, LINE_MAX
from tests.support.mime_tree import stdlib_tree, tree

DATA = Path(__file__).resolve().parent / "data" / "bounces"
SAMPLES = [p.read_bytes() for p in sorted(DATA.glob("*.eml"))]
KINDS = {"bounce", "feedback", "autoreply", "other"}
FORBIDDEN = {"\r", "\n", "\x00"}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def parse(raw: bytes, envelope_to: str = "") -> Report:
    """parse_message with detector failures raised, not noted."""
    return parse_message(raw, envelope_to, strict=True)


def check(report: Report) -> None:
    """The contract every Report keeps, and no internal failure on the way."""
    assert isinstance(report, Report)
    failures = [n for n in report.notes if n.startswith((ERROR_NOTE, DETECTOR_FAILED_NOTE))]
    assert not failures, failures
    assert report.kind in KINDS
    assert report.detector
    values: list[tuple[str, object]] = list(dataclasses.asdict(report).items())
    values += [("note", n) for n in report.notes]
    for rcpt in report.recipients:
        assert rcpt.reason in REASONS
        assert isinstance(rcpt.hard, bool)
        assert len(rcpt.address) <= ADDRESS_MAX
        assert len(rcpt.diagnostic) <= DIAGNOSTIC_MAX
        if rcpt.hard:
            assert rcpt.action not in ("delayed", "delivered", "relayed", "expanded")
        values += list(dataclasses.asdict(rcpt).items())
    for name, value in values:
        if isinstance(value, str):
            assert not FORBIDDEN & set(value), (name, value)
            assert value == value.strip(), (name, value)
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in value), (name, value)
            value.encode("utf-8")  # storable as text anywhere
            if name not in ("diagnostic", "address", "from_address"):
                assert len(value) <= LINE_MAX, name


@FUZZ
@given(st.binary(max_size=20_000))
def test_random_bytes(raw: bytes) -> None:
    check(parse(raw))


@FUZZ
@given(st.text(max_size=5_000), st.text(max_size=200))
def test_random_text_as_message_and_envelope(text: str, envelope: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    check(parse(raw, envelope_to=envelope))
    check(parse(b"Content-Type: multipart/report; boundary=x\n\n--x\n" + raw))


samples = st.sampled_from(SAMPLES)


@FUZZ
@given(samples, st.data())
def test_truncated_samples(raw: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(raw)))
    check(parse(raw[:cut]))


@FUZZ
@given(
    samples,
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=40),
)
def test_byte_flips(raw: bytes, flips: list[tuple[float, int]]) -> None:
    buf = bytearray(raw)
    for where, value in flips:
        buf[int(where * len(buf))] = value
    check(parse(bytes(buf)))


@FUZZ
@given(samples, st.binary(min_size=1, max_size=2_000), st.floats(0, 1))
def test_junk_inserted(raw: bytes, junk: bytes, where: float) -> None:
    at = int(where * len(raw))
    check(parse(raw[:at] + junk + raw[at:]))


ENCODING_BREAKS = [
    (
        b"Content-Type: message/delivery-status",
        b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64",
    ),
    (b"Content-Type: text/plain", b"Content-Type: text/plain\nContent-Transfer-Encoding: base64"),
    (b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable"),
    (b"Content-Transfer-Encoding: quoted-printable", b"Content-Transfer-Encoding: base64"),
    (b"charset=utf-8", b"charset=x-no-such-charset"),
    (b'charset="utf-8"', b'charset="zlib_codec"'),
    (b"charset=us-ascii", b"charset=utf-7"),
    (b'charset="UTF-8"', b'charset="idna"'),
    (b"charset=ISO-8859-1", b"charset*=''%FF%FE"),
    (b"=?UTF-8?", b"=?no-such?"),
    (b"?Q?", b"?B?"),
    (b"boundary=", b"boundary*0="),
    (b"\n\n", b"\n=?utf-8?b?////?=\n\n"),
    (b"\n", b"\r"),
    (b"\n", b"\x00\n"),
    (b"=", b"=\xff"),
    (b"Final-Recipient: rfc822;", b"Final-Recipient: rfc822; \xff\xfe\x80@\xc3("),
    (b"Status: 5", b"Status: 9"),
    (b"Action: failed", b"Action: \xe2\x80\xa8failed\x85"),
]


@FUZZ
@given(samples, st.lists(st.sampled_from(ENCODING_BREAKS), min_size=1, max_size=4))
def test_broken_encodings_and_charsets(raw: bytes, breaks: list[tuple[bytes, bytes]]) -> None:
    for old, new in breaks:
        raw = raw.replace(old, new)
    check(parse(raw))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples, st.sampled_from([b"a", b"\xff", b"=?utf-8?q?=0D=0A?= ", b"x\n ", b"a: b\n"]))
def test_megabyte_headers(raw: bytes, unit: bytes) -> None:
    big = unit * (1024 * 1024 // len(unit))
    start = time.perf_counter()
    check(parse(b"X-Huge: " + big + b"\n" + raw))
    check(parse(raw.replace(b"\nSubject: ", b"\nSubject: " + big, 1)))
    assert time.perf_counter() - start < 20


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3000), st.sampled_from(["multipart", "rfc822", "mixed"]))
def test_deep_nesting(depth: int, how: str) -> None:
    parts = []
    for i in range(depth):
        if how == "multipart" or (how == "mixed" and i % 2):
            parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i))
        else:
            parts.append(b"Content-Type: message/rfc822\n\n")
    raw = b"From: MAILER-DAEMON@example.org\n" + b"".join(parts) + SAMPLES[0]
    check(parse(raw))


def test_many_small_headers_and_parts_finish_quickly() -> None:
    headers = b"".join(b"X-H%d: v\n" % i for i in range(60_000))
    parts = b"".join(b"--b\nContent-Type: text/plain\n\nhi\n" for i in range(20_000))
    raw = headers + b'Content-Type: multipart/mixed; boundary="b"\n\n' + parts + b"--b--\n"
    start = time.perf_counter()
    check(parse(raw))
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("raw", SAMPLES[:3])
def test_recursion_limit_is_not_reached_even_when_low(raw: bytes) -> None:
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    try:
        check(parse(b"Content-Type: message/rfc822\n\n" * 100 + raw))
    finally:
        sys.setrecursionlimit(old)


PHRASE_ROWS = [(reason, row) for reason, row in reasons.STRONG + reasons.WEAK]


@pytest.mark.parametrize(("reason", "row"), PHRASE_ROWS, ids=[r for r, _ in PHRASE_ROWS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_phrase_gates_never_hide_a_match(
    reason: str, row: reasons.Phrases, data: st.DataObject
) -> None:
    """A text the row's regex matches always passes the row's literal gates."""
    text = data.draw(st.from_regex(row.regex, fullmatch=False))
    assert row.search(text), (reason, text)


# Lines a multipart is made of, well and badly formed: the splitter must build the
# standard library's tree from any mix of them, or leave the message to it.
MIME_LINES = st.sampled_from(
    [
        "--o",
        "--o--",
        "--o \t",
        "--o-- ",
        "--ox",
        "--i",
        "--i--",
        "",
        " folded",
        "X-A: 1",
        "From x",
        "From a: b",
        ":x",
        "\tfolded",
        "text",
        "Content-Type: text/plain",
        "Content-Type: multipart/mixed; boundary=i",
        "Content-Type: multipart/mixed; boundary=o",
        "Content-Type: message/rfc822",
        "Content-Type: message/delivery-status",
        "Content-Type: multipart/digest; boundary=i",
        "Status: 5.1.1",
        "\xe9t\xe9",
    ]
)


@FUZZ
@given(
    st.lists(MIME_LINES, max_size=40),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_the_mime_splitter_builds_the_standard_librarys_tree(
    lines: list[str], end: str, last_newline: bool
) -> None:
    head = ["Content-Type: multipart/report; boundary=o", ""]
    text = end.join(head + lines) + (end if last_newline else "")
    raw = text.encode("latin-1")
    assert tree(_mime.parse_bytes(raw)) == stdlib_tree(raw)
