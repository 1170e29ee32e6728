"""The main.cf/master.cf layering filters: the postfix role's only Postfix logic."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pf", ROOT / "plugins/filter/postfix.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pf = _load()


def test_later_layer_replaces_scalar_and_keeps_position() -> None:
    out = pf.postfix_maincf(
        [
            {"name": "myhostname", "value": "a.test"},
            {"name": "smtpd_banner", "value": "$myhostname ESMTP"},
            {"name": "myhostname", "value": "b.test"},
        ]
    )
    assert [(e["name"], e["value"]) for e in out] == [
        ("myhostname", "b.test"),
        ("smtpd_banner", "$myhostname ESMTP"),
    ]


def test_list_items_merge_by_name_and_sort_by_weight() -> None:
    out = pf.postfix_maincf(
        [
            {
                "name": "smtpd_recipient_restrictions",
                "value": [
                    {"name": "permit_mynetworks", "weight": 10},
                    {"name": "reject_unauth_destination", "weight": 20},
                    "permit",
                ],
            },
            # A satellite role exports its policy service between the two.
            {
                "name": "smtpd_recipient_restrictions",
                "value": [{"name": "check_policy_service unix:private/spf", "weight": 30}],
            },
            {
                "name": "smtpd_recipient_restrictions",
                "value": [{"name": "permit", "weight": 99}],
            },
        ]
    )
    assert out[0]["value"] == [
        "permit_mynetworks",
        "reject_unauth_destination",
        "check_policy_service unix:private/spf",
        "permit",
    ]


def test_absent_item_and_absent_parameter() -> None:
    out = pf.postfix_maincf(
        [
            {"name": "a", "value": ["x", "y"]},
            {"name": "a", "value": [{"name": "x", "state": "absent"}]},
            {"name": "b", "value": "1"},
            {"name": "b", "state": "absent"},
        ]
    )
    assert out == [{"name": "a", "value": ["y"], "comment": ""}]


def test_booleans_become_yes_no() -> None:
    out = pf.postfix_maincf([{"name": "smtpd_helo_required", "value": True}])
    assert out[0]["value"] == "yes"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"value": "x"}], "needs a 'name'"),
        ([{"name": "a"}], "a: needs a 'value'"),
        ([{"name": "a", "value": "x\ny"}], "must be one line"),
        ([{"name": "a", "value": {"k": 1}}], "expected a string"),
        ([{"name": "a", "value": "x", "state": "gone"}], "state must be present or absent"),
        ("not a list", "must be a list"),
    ],
)
def test_bad_entries_fail_with_a_message_naming_them(entries: object, message: str) -> None:
    with pytest.raises(pf.AnsibleFilterError, match=message):
        pf.postfix_maincf(entries)


def test_mastercf_merges_by_service_and_type_and_orders_by_weight() -> None:
    out = pf.postfix_mastercf(
        [
            {"service": "smtp", "type": "inet", "private": "n", "command": "smtpd", "weight": 10},
            {"service": "pickup", "type": "unix", "private": "n", "command": "pickup"},
            {"service": "smtp", "type": "inet", "command": "postscreen", "maxproc": 1},
            {"service": "smtp", "type": "unix", "command": "smtp"},
            {"service": "pickup", "type": "unix", "state": "absent"},
        ]
    )
    assert [(s["service"], s["type"], s["command"]) for s in out] == [
        ("smtp", "inet", "postscreen"),
        ("smtp", "unix", "smtp"),
    ]
    assert out[0]["private"] == "n" and out[0]["maxproc"] == "1" and out[0]["chroot"] == "-"


def test_mastercf_rejects_unknown_type_and_missing_command() -> None:
    with pytest.raises(pf.AnsibleFilterError, match="unknown service type"):
        pf.postfix_mastercf([{"service": "x", "type": "tcp", "command": "smtpd"}])
    with pytest.raises(pf.AnsibleFilterError, match="needs a 'command'"):
        pf.postfix_mastercf([{"service": "x", "type": "unix"}])


def test_map_lines_from_dict_and_list() -> None:
    assert pf.postfix_map_lines({"company.test": "relay:[aspmx.test]"}) == [
        "company.test relay:[aspmx.test]"
    ]
    assert pf.postfix_map_lines([{"key": "a@b.test", "value": "REJECT no"}]) == [
        "a@b.test REJECT no"
    ]
    with pytest.raises(pf.AnsibleFilterError, match="without spaces"):
        pf.postfix_map_lines({"bad key": "x"})
