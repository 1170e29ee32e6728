"""Unsubscribe tokens: they round-trip, and anything forged, altered or old is refused."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailops.unsub.token import Sealer, TokenError, read_secrets

KEY = "k" * 16 + "0123456789abcdefghijklmnop"
OLD = "o" * 40
DAY = 86400.0
NOW = 1_800_000_000.0


def sealer(*keys: str, max_age: float = 30 * DAY) -> Sealer:
    return Sealer(list(keys or (KEY,)), max_age)


def test_round_trip_and_the_address_is_not_in_clear() -> None:
    token = sealer().make("alpha", "bob@gmail.test", now=NOW)
    assert re.fullmatch(r"[a-z2-7]+", token), token
    claim = sealer().open(token, now=NOW + 60)
    assert (claim.tenant, claim.address, claim.issued) == ("alpha", "bob@gmail.test", int(NOW))
    raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    assert b"bob" not in raw and b"gmail" not in raw and b"alpha" not in raw


def test_case_of_the_token_does_not_matter() -> None:
    token = sealer().make("alpha", "bob@gmail.test", now=NOW)
    assert sealer().open(token.upper(), now=NOW).address == "bob@gmail.test"


def test_every_altered_byte_is_refused() -> None:
    token = sealer().make("alpha", "bob@gmail.test", now=NOW)
    raw = bytearray(base64.b32decode(token.upper() + "=" * (-len(token) % 8)))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            changed = bytearray(raw)
            changed[i] ^= bit
            text = base64.b32encode(bytes(changed)).decode().rstrip("=").lower()
            with pytest.raises(TokenError):
                sealer().open(text, now=NOW)


def test_another_key_and_garbage_are_refused() -> None:
    token = sealer("x" * 40).make("alpha", "bob@gmail.test", now=NOW)
    with pytest.raises(TokenError, match="forged or altered"):
        sealer().open(token, now=NOW)
    for junk in ("", "abc", "not-a-token", "a" * 60, "é" * 40):
        with pytest.raises(TokenError):
            sealer().open(junk, now=NOW)


def test_expiry_and_the_future() -> None:
    token = sealer(max_age=10 * DAY).make("beta", "c@outlook.test", now=NOW)
    assert sealer(max_age=10 * DAY).open(token, now=NOW + 10 * DAY).tenant == "beta"
    with pytest.raises(TokenError, match="expired"):
        sealer(max_age=10 * DAY).open(token, now=NOW + 10 * DAY + 1)
    with pytest.raises(TokenError, match="future"):
        sealer().open(token, now=NOW - 3600)


def test_rotation_the_new_key_signs_the_old_one_still_opens() -> None:
    before = sealer(OLD).make("alpha", "bob@gmail.test", now=NOW)
    rotated = sealer(KEY, OLD)
    after = rotated.make("alpha", "bob@gmail.test", now=NOW)
    assert rotated.open(before, now=NOW).address == "bob@gmail.test"
    assert sealer(KEY).open(after, now=NOW).address == "bob@gmail.test"
    with pytest.raises(TokenError):
        sealer(KEY).open(before, now=NOW)  # the old key dropped: its tokens end


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        Sealer(["short"], DAY)
    assert read_secrets(["# new first", KEY, "", f"  {OLD}  "]) == [KEY, OLD]


addresses = st.emails().map(str.lower)
tenants = st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(tenant=tenants, address=addresses, age=st.floats(0, 30 * DAY))
def test_any_address_round_trips_and_never_shows(tenant: str, address: str, age: float) -> None:
    s = sealer()
    token = s.make(tenant, address, now=NOW)
    claim = s.open(token, now=NOW + age)
    assert (claim.tenant, claim.address) == (tenant, address)
    raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    assert address.encode() not in raw
    assert address.split("@")[1].encode() not in raw or len(address.split("@")[1]) < 4
