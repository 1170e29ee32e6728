"""mailops.text: the one cleaner of outside text, and its two address readers."""

from __future__ import annotations

from mailops import text
from mailops.bounceparse import _text
from mailops.store import text as store_text


def test_store_and_classifier_share_one_cleaner() -> None:
    assert store_text.clean is text.clean
    assert _text.clean is text.clean


def test_clean_bounds_and_joins() -> None:
    assert text.clean(None) == ""
    assert text.clean(42) == "42"
    assert text.clean("  a\t\tb\r\n c\u2028d  ") == "a b c d"
    assert text.clean("lone \udcff surrogate") == "lone \ufffd surrogate"
    # cut at the limit, no blank left at the end of the cut
    assert text.clean("abc def", 4) == "abc"
    assert len(text.clean("x" * 5000, 1000)) == 1000


def test_normalize_address_is_lenient_address_spec_is_strict() -> None:
    assert text.normalize_address(" <Alice@Example.COM> ") == "alice@example.com"
    assert text.normalize_address("no address") == "no address"
    assert text.address_spec("no address") == ""
    assert text.address_spec("rfc822; <Alice@Example.COM>") == "alice@example.com"
    long_local = "a" * 64 + "@" + "b" * 200 + ".example"
    assert text.normalize_address(long_local) == long_local.lower()
    assert text.address_spec(long_local) == ""
