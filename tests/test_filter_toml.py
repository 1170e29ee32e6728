"""to_toml writes what tomllib reads back unchanged, and refuses what TOML cannot hold."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from plugins.filter.toml import AnsibleFilterError, to_toml

SETTINGS = {
    "mailops": {"ops_address": "ops@company.test"},
    "store": {"url": 'postgresql://mailops:p"w\\d@monitor.company.test/mailops'},
    "saslblock": {"threshold": 5, "window": 600, "allow": ["198.51.100.0/24"], "postmap": True},
    "report": {"ratio": 0.25, "sub": {"deep": "x"}},
}


def test_round_trip_of_a_settings_file() -> None:
    text = to_toml(SETTINGS)
    assert tomllib.loads(text) == SETTINGS
    assert "[saslblock]" in text and "[report.sub]" in text


def test_scalars_come_before_tables_whatever_the_order() -> None:
    data = {"t": {"a": 1}, "top": "v"}
    assert tomllib.loads(to_toml(data)) == data


@pytest.mark.parametrize("key", ["0\n", "a\n", "a b", "a.b", "\u00e9"])
def test_keys_that_are_not_bare_are_quoted(key: str) -> None:
    # A trailing newline once passed for a bare key: "0\n = false" is not TOML.
    data = {key: False, "t": {key: {}}}
    assert tomllib.loads(to_toml(data)) == data


@pytest.mark.parametrize(
    "bad",
    [{"a": None}, {"a": [{"b": 1}]}, {1: "x"}, {"a": float("nan")}, ["not", "a", "dict"]],
)
def test_values_toml_cannot_hold_fail_with_the_path(bad: Any) -> None:
    with pytest.raises(AnsibleFilterError):
        to_toml(bad)


keys = st.text(min_size=1, max_size=8)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
tables = st.recursive(
    st.dictionaries(keys, st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=4),
    lambda inner: st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@given(tables)
def test_any_table_round_trips(data: dict[str, Any]) -> None:
    assert tomllib.loads(to_toml(data)) == data
