"""The List-Unsubscribe milter: which messages get the headers, and the milter protocol.

Whether OpenDKIM then signs them (h=) is a fact of the lab: tests/e2e/test_unsubscribe.py.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from mailops.tenants.model import load_tenants
from mailops.unsub import milter
from mailops.unsub.token import Sealer

KEY = "m" * 48
SEALER = Sealer([KEY], 86400 * 30)
TENANTS = load_tenants(
    {
        "tenants": {
            "alpha": {"domains": ["alpha.test"], "logins": ["alpha", "alpha-tx"]},
            "beta": {"domains": ["beta.test"], "logins": ["beta"]},
        }
    }
)
SETTINGS = milter.Settings(
    url_base="https://unsubscribe.company.test/u/",
    mailto_domain="company.test",
    transactional_header="X-Mailops-Transactional",
    transactional_logins=frozenset({"alpha-tx"}),
)
PLAIN = [("From", "news@alpha.test"), ("Subject", "hi")]


def decide(
    login: str, rcpts: list[str], headers: list[tuple[str, str]] | None = None
) -> milter.Decision:
    return milter.decide(
        login, rcpts, PLAIN if headers is None else headers, TENANTS, SETTINGS, SEALER
    )


def test_tenant_mail_to_one_recipient_gets_both_headers() -> None:
    d = decide("alpha", ["Bob@Gmail.test"])
    assert [n for n, _ in d.add] == ["List-Unsubscribe", "List-Unsubscribe-Post"]
    lu, post = d.add[0][1], d.add[1][1]
    assert post == "List-Unsubscribe=One-Click"
    https, mailto = lu.split(", ")
    token = https.removeprefix("<https://unsubscribe.company.test/u/").removesuffix(">")
    assert mailto == f"<mailto:unsubscribe+{token}@company.test>"
    claim = SEALER.open(token)
    assert (claim.tenant, claim.address) == ("alpha", "bob@gmail.test")
    assert "bob" not in lu.lower()
    assert not d.warning and not d.remove


def test_no_tenant_no_header() -> None:
    for login in ("", "stranger"):
        d = decide(login, ["bob@gmail.test"])
        assert not d.add and not d.warning


def test_transactional_by_header_or_login() -> None:
    marked = [*PLAIN, ("X-Mailops-Transactional", "yes"), ("x-mailops-transactional", "1")]
    d = decide("alpha", ["bob@gmail.test"], marked)
    assert not d.add
    # the marker never leaves the cluster; the last occurrence first, so indices hold
    assert d.remove == [("x-mailops-transactional", 2), ("X-Mailops-Transactional", 1)]
    assert not decide("alpha-tx", ["bob@gmail.test"]).add
    # a sender of no tenant cannot use the marker to pass anything either: it is removed
    assert decide("", ["bob@gmail.test"], marked).remove


def test_existing_headers_are_kept_and_a_missing_post_is_logged() -> None:
    both = [
        *PLAIN,
        ("List-Unsubscribe", "<https://alpha.test/u/1>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    d = decide("alpha", ["bob@gmail.test"], both)
    assert not d.add and not d.warning
    d = decide("alpha", ["bob@gmail.test"], [*PLAIN, ("list-unsubscribe", "<mailto:x@alpha.test>")])
    assert not d.add
    assert "no List-Unsubscribe-Post" in d.warning and "alpha" in d.warning


def test_several_recipients_are_left_alone_and_logged() -> None:
    d = decide("beta", ["a@gmail.test", "b@gmail.test"])
    assert not d.add
    assert "2 recipients" in d.warning


# --------------------------------------------------------------------------- protocol


def pkt(code: bytes, data: bytes = b"") -> bytes:
    return milter.packet(code, data)


def cstr(*items: str) -> bytes:
    return b"".join(i.encode() + b"\0" for i in items)


def conversation(login: str, rcpts: list[str], headers: list[tuple[str, str]]) -> list[bytes]:
    """What Postfix sends for one message (after option negotiation)."""
    out = [
        pkt(b"D", b"M" + cstr("{auth_authen}", login, "i", "4QX1")) if login else b"",
        pkt(b"M", cstr("<news@alpha.test>", "BODY=8BITMIME")),
    ]
    out += [pkt(b"R", cstr(f"<{r}>")) for r in rcpts]
    out += [pkt(b"L", cstr(n, v)) for n, v in headers]
    out += [pkt(b"N"), pkt(b"E")]
    return [p for p in out if p]


def split(stream: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while stream:
        (n,) = struct.unpack(">I", stream[:4])
        out.append((stream[4:5], stream[5 : 4 + n]))
        stream = stream[4 + n :]
    return out


def feed_all(session: milter.Session, packets: list[bytes]) -> list[tuple[bytes, bytes]]:
    replies = b""
    for p in packets:
        for stream in split(p):
            replies += b"".join(session.feed(*stream))
    return split(replies)


OFFER = struct.pack(">III", 6, 0x1FF, 0x1FFFFF)


def session(log: list[str] | None = None) -> milter.Session:
    return milter.Session(TENANTS, SETTINGS, SEALER, (log if log is not None else []).append)


def test_negotiation_asks_for_one_round_trip_per_message() -> None:
    s = session()
    ((code, data),) = feed_all(s, [pkt(b"O", OFFER)])
    version, actions, protocol = struct.unpack(">III", data)
    assert code == b"O" and version == 6
    assert actions == milter.SMFIF_ADDHDRS | milter.SMFIF_CHGHDRS
    assert protocol == milter.WANTED_PROTOCOL
    replies = feed_all(s, conversation("alpha", ["bob@gmail.test"], PLAIN))
    assert [c for c, _ in replies] == [b"h", b"h", b"c"]
    assert replies[1][1] == cstr("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


def test_an_mta_without_no_reply_steps_gets_replies() -> None:
    s = session()
    feed_all(s, [pkt(b"O", struct.pack(">III", 6, 0x1FF, 0x3F))])
    replies = feed_all(s, conversation("", ["bob@gmail.test"], PLAIN))
    # MAIL, RCPT, two headers, EOH, then end of message: continue each time, no header
    assert [c for c, _ in replies] == [b"c"] * 6


def test_removal_and_the_next_message_in_the_session() -> None:
    s = session()
    feed_all(s, [pkt(b"O", OFFER)])
    replies = feed_all(
        s, conversation("alpha", ["bob@gmail.test"], [*PLAIN, ("X-Mailops-Transactional", "1")])
    )
    assert replies == [
        (b"m", struct.pack(">I", 1) + cstr("X-Mailops-Transactional", "")),
        (b"c", b""),
    ]
    # same session, second message: the login stays, the recipients start afresh
    replies = feed_all(
        s,
        [pkt(b"M", cstr("<news@alpha.test>")), pkt(b"R", cstr("<c@x.test>")), pkt(b"N"), pkt(b"E")],
    )
    assert [c for c, _ in replies] == [b"h", b"h", b"c"]


def test_an_error_defers_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    s = session(log)
    feed_all(s, [pkt(b"O", OFFER)])

    def boom(*_a: object, **_k: object) -> milter.Decision:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(milter, "decide", boom)
    replies = feed_all(s, conversation("alpha", ["bob@gmail.test"], PLAIN))
    assert replies == [(b"t", b"")]
    assert "disk on fire" in log[0]


def test_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")

    async def run() -> list[tuple[bytes, bytes]]:
        ready = asyncio.Event()
        server = asyncio.create_task(milter.serve(path, session, ready=ready.set))
        await asyncio.wait_for(ready.wait(), 5)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(pkt(b"O", OFFER) + b"".join(conversation("beta", ["d@gmail.test"], PLAIN)))
        await writer.drain()
        got = b""
        while len(split(got)) < 4:
            got += await asyncio.wait_for(reader.read(4096), 5)
        writer.write(pkt(b"Q"))
        writer.close()
        server.cancel()
        return split(got)

    replies = asyncio.run(run())
    assert [c for c, _ in replies] == [b"O", b"h", b"h", b"c"]
    token = replies[1][1].split(b"/u/")[1].split(b">")[0].decode()
    assert SEALER.open(token).tenant == "beta"
