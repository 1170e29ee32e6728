"""Warm-up caps: the curve, and the policy daemon deferring a new address's recipients
over today's cap per provider, with its clock set by $MAILOPS_NOW (day 1, day 2, steady,
a restart that keeps the day's counts), and ``mailops warmup start|stop|status``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailops import config
from mailops.tenants.policy import RECHECK, stable_index
from mailops.tenants.sync import write_snapshot, write_state
from mailops.warmup import caps, schedule, state
from mailops.warmup.schedule import Curve
from tests.support.policyd import ROOT, PolicyDaemon, rcpt

DAY1 = "2026-12-07T10:00:00"

CONFIG = """
[tenants.alpha]
domains = ["alpha.test"]
logins = ["alpha"]
pool = "alpha"
transports = ["pool_alpha_1"]

[tenants.beta]
domains = ["beta.test"]
logins = ["beta"]
pool = "beta"
transports = ["pool_beta_1"]

[transport_classes]
gmail = ["gmail.test"]
microsoft = ["outlook.test"]

[tenants_sync]
state = "{tmp}/tenants.json"
snapshot = "{tmp}/snapshot.db"

[tenants_policy]
postlog = ""

[warmup]
starts = "{tmp}/warmup-starts.json"
counts = "{tmp}/warmup-counts.json"
flush_every = 0.2
curve = {{start = 200, factor = 1.5, steady = 50000}}
transports = {{pool_alpha_1 = "198.51.100.121", pool_beta_1 = "198.51.100.131"}}

[warmup.addresses."198.51.100.121"]
start = 5
steady = 12
"""


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    conf = tmp_path / "mailops.toml"
    conf.write_text(CONFIG.replace("{tmp}", str(tmp_path)).replace("{{", "{").replace("}}", "}"))
    write_snapshot(tmp_path / "snapshot.db", [("gone@gmail.test", "", "x", "bounce", None)], [])
    write_state(tmp_path / "tenants.json", {}, 0)
    return {"conf": conf, "tmp": tmp_path, "sock": tmp_path / "policy.sock"}


@pytest.fixture
def started() -> Iterator[list[PolicyDaemon]]:
    daemons: list[PolicyDaemon] = []
    yield daemons
    for d in daemons:
        d.stop()


def start(setup: dict[str, Any], started: list[PolicyDaemon], now: str) -> PolicyDaemon:
    daemon = PolicyDaemon(setup["conf"], setup["sock"], now=now)
    started.append(daemon)
    return daemon


def mailops(setup: dict[str, Any], *args: str, now: str = DAY1) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MAILOPS_CONFIG"}
    env.update(PYTHONPATH=str(ROOT / "scripts"), MAILOPS_NOW=now)
    done = subprocess.run(
        [sys.executable, "-m", "mailops", "--config", str(setup["conf"]), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(daemon: PolicyDaemon, login: str, domain: str, n: int, tag: str) -> list[str]:
    client = daemon.client()
    try:
        return [
            client.ask(**rcpt(login, f"{tag}{i}@{domain}", instance=f"{tag}.{i}")) for i in range(n)
        ]
    finally:
        client.close()


def deferred(answers: list[str]) -> int:
    assert all(a.startswith(("FILTER ", "450 4.7.1 ")) for a in answers), answers
    return sum(a.startswith("450 ") for a in answers)


# --------------------------------------------------------------------------- the curve


def test_the_default_curve_grows_by_half_a_day_until_steady() -> None:
    curve = Curve()
    assert [curve.cap(d) for d in (1, 2, 3, 4)] == [200, 300, 450, 675]
    assert curve.cap(0) == 200  # a day 1 in the future counts as day 1
    last = curve.days()
    assert curve.cap(last) is not None and curve.cap(last) < 50_000  # type: ignore[operator]
    assert curve.cap(last + 1) is None and curve.cap(10**9) is None
    assert last == 14  # 200 * 1.5 ** 13 = 38,924; day 15 would be 58,386


def test_the_clock_is_the_environments_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_NOW", "2026-12-08")
    assert schedule.day_of(schedule.now()).isoformat() == "2026-12-08"
    monkeypatch.setenv("MAILOPS_NOW", "1765000000")
    assert schedule.now() == 1765000000.0
    monkeypatch.delenv("MAILOPS_NOW")
    assert schedule.day_of(schedule.now()) >= schedule.parse_day("2026-01-01")


def test_bad_warmup_settings_are_refused_by_the_check() -> None:
    bad = {
        "curve": {"start": 0, "factor": 0.5, "speed": 1},
        "transports": {"pool_alpha_1": "not-an-ip"},
        "addresses": {"x": {}},
        "flush_every": 0,
    }
    found = config.problems({"warmup": bad})
    assert len(found) == 6, found
    assert "[warmup] curve start: expected an integer >= 1, got 0" in found
    assert config.problems({"warmup": {"curve": {"start": 50}}}) == []


# --------------------------------------------------------------------------- the daemon


def test_day_one_cap_per_provider_then_4xx_never_5xx(
    setup: dict[str, Any], started: list[PolicyDaemon]
) -> None:
    daemon = start(setup, started, DAY1)
    answers = send(daemon, "alpha", "gmail.test", 8, "g")
    assert answers[:5] == ["FILTER pool_alpha_1_gmail:"] * 5
    assert deferred(answers) == 3
    assert answers[5].startswith(
        "450 4.7.1 sending address 198.51.100.121 is warming up (day 1): today's cap of 5"
        " recipients at gmail is reached"
    ), answers[5]
    # Each provider has its own cap; other domains are "other".
    assert deferred(send(daemon, "alpha", "outlook.test", 6, "o")) == 1
    assert deferred(send(daemon, "alpha", "example.org", 5, "x")) == 0
    # A steady address (beta's) has no cap; a suppressed recipient is still a 550.
    assert deferred(send(daemon, "beta", "gmail.test", 30, "b")) == 0
    client = daemon.client()
    assert client.ask(**rcpt("alpha", "gone@gmail.test")).startswith("550 5.7.1 ")
    client.close()
    # Day 1 was recorded when the node first routed mail through the address.
    starts = state.read_starts(setup["tmp"] / "warmup-starts.json")
    assert starts == {"198.51.100.121": {"day1": "2026-12-07", "by": "first-seen"}}


def test_a_restart_keeps_the_days_counts_and_the_next_day_has_a_higher_cap(
    setup: dict[str, Any], started: list[PolicyDaemon]
) -> None:
    daemon = start(setup, started, DAY1)
    assert deferred(send(daemon, "alpha", "gmail.test", 4, "a")) == 0
    assert daemon.stop() == 0
    assert not setup["sock"].exists()
    # Same day, new process: 1 left of 5.
    daemon = start(setup, started, "2026-12-07T18:00:00")
    assert deferred(send(daemon, "alpha", "gmail.test", 3, "b")) == 2
    daemon.stop()
    # Day 2: 5 * 1.5 = 7.
    daemon = start(setup, started, "2026-12-08T09:00:00")
    answers = send(daemon, "alpha", "gmail.test", 9, "c")
    assert deferred(answers) == 2
    assert "(day 2): today's cap of 7 " in answers[7], answers[7]
    daemon.stop()
    # Day 3: 11; day 4: 16 would pass the steady 12, so the warm-up is over.
    daemon = start(setup, started, "2026-12-10T09:00:00")
    assert deferred(send(daemon, "alpha", "gmail.test", 40, "d")) == 0


def test_the_daemon_writes_its_counts_while_it_runs_and_status_shows_them(
    setup: dict[str, Any], started: list[PolicyDaemon]
) -> None:
    daemon = start(setup, started, DAY1)
    send(daemon, "alpha", "gmail.test", 7, "a")
    send(daemon, "beta", "outlook.test", 3, "b")
    counts = setup["tmp"] / "warmup-counts.json"
    for _ in range(100):
        day, _, seen = state.read_counts(counts) if counts.exists() else ("", 0, {})
        if seen.get("198.51.100.131", {}).get("microsoft") == 3:
            break
        time.sleep(0.05)
    assert day == "2026-12-07"
    assert seen == {"198.51.100.121": {"gmail": 5}, "198.51.100.131": {"microsoft": 3}}
    rows = {r["address"]: r for r in json.loads(mailops(setup, "warmup", "status", "--json"))}
    alpha, beta = rows["198.51.100.121"], rows["198.51.100.131"]
    assert (alpha["phase"], alpha["day"], alpha["cap"]) == ("warming", 1, 5)
    assert alpha["use"] == {"gmail": 5, "microsoft": 0, "other": 0}
    assert alpha["transports"] == ["pool_alpha_1"]
    assert (beta["phase"], beta["cap"], beta["use"]["microsoft"]) == ("steady", None, 3)
    # The next day's status: day 2, cap 7, nothing used yet.
    rows = json.loads(mailops(setup, "warmup", "status", "--json", now="2026-12-08"))
    alpha = next(r for r in rows if r["address"] == "198.51.100.121")
    assert (alpha["day"], alpha["cap"], alpha["use"]["gmail"]) == (2, 7, 0)
    text = mailops(setup, "warmup", "status")
    assert "198.51.100.121" in text and "day 1" in text and "cap 5" in text


def test_an_operator_starts_and_stops_an_address_warm_up(
    setup: dict[str, Any], started: list[PolicyDaemon]
) -> None:
    # beta's address is steady until an operator starts its warm-up, here with a curve
    # of its own, on a day 1 that was yesterday.
    out = mailops(
        setup, "warmup", "start", "198.51.100.131", "--date", "2026-12-06", "--start", "2"
    )
    assert "198.51.100.131: warm-up day 1 is 2026-12-06" in out
    daemon = start(setup, started, DAY1)
    answers = send(daemon, "beta", "gmail.test", 5, "a")
    assert deferred(answers) == 2 and "(day 2): today's cap of 3 " in answers[3]
    # The running daemon sees the stop within its look at the files (RECHECK seconds).
    mailops(setup, "warmup", "stop", "198.51.100.131")
    time.sleep(RECHECK * 2)
    assert deferred(send(daemon, "beta", "gmail.test", 10, "b")) == 0
    # And a stop holds for an address the inventory warms up: no first-seen over it.
    mailops(setup, "warmup", "stop", "198.51.100.121")
    time.sleep(RECHECK * 2)
    assert deferred(send(daemon, "alpha", "gmail.test", 10, "c")) == 0
    starts = state.read_starts(setup["tmp"] / "warmup-starts.json")
    assert starts["198.51.100.121"] == {"stopped": True, "by": "operator"}
    assert "198.51.100.131" not in starts  # steady anyway: as if never started


def test_every_recipient_of_one_message_counts_against_the_address_it_leaves_from(
    setup: dict[str, Any], started: list[PolicyDaemon]
) -> None:
    """FILTER is one per message: the first recipient's transport carries them all."""
    conf = setup["conf"]
    conf.write_text(
        conf.read_text()
        .replace('transports = ["pool_alpha_1"]', 'transports = ["pool_alpha_1", "pool_alpha_2"]')
        .replace(
            'pool_beta_1 = "198.51.100.131"',
            'pool_beta_1 = "198.51.100.131", pool_alpha_2 = "198.51.100.122"',
        )
    )
    mailops(setup, "warmup", "stop", "198.51.100.121")  # counted, never capped
    daemon = start(setup, started, DAY1)
    client = daemon.client()
    picked = {client.ask(**rcpt("alpha", f"u{i}@example.org", instance="m1")) for i in range(8)}
    assert len(picked) == 1, picked
    # Without an instance, each recipient keeps its own (stable) choice.
    alone = {client.ask(**rcpt("alpha", f"u{i}@example.org")) for i in range(8)}
    assert alone == {"FILTER pool_alpha_1:", "FILTER pool_alpha_2:"}
    client.close()
    daemon.stop()
    _, _, counts = state.read_counts(setup["tmp"] / "warmup-counts.json")
    addresses = ["198.51.100.121", "198.51.100.122"]
    expected = dict.fromkeys(addresses, 0)
    expected[addresses[stable_index("u0@example.org", 2)]] += 8  # the message's, all of them
    for i in range(8):
        expected[addresses[stable_index(f"u{i}@example.org", 2)]] += 1
    assert {a: counts[a]["other"] for a in addresses} == expected


# --------------------------------------------------------------------------- Route53


def test_the_cluster_names_weight_follows_the_curve_from_the_inventorys_day1(
    tmp_path: Path,
) -> None:
    """mail3 warms up from day1 2026-12-07 with the default curve: its weight in the
    weighted cluster name is its steady weight (its dns_weight, else 100) times the day's
    cap over steady, at least 1; past the curve, the steady weight."""
    inv = tmp_path / "inv"
    shutil.copytree(ROOT / "tests/data/dns/weighted", inv)
    (inv / "group_vars/all/warmup.yml").write_text(
        "mail_warmup:\n"
        "  curve: {start: 5000, factor: 2, steady: 50000}\n"
        "  addresses:\n"
        '    "192.0.2.22": {day1: "2026-12-07"}\n'
        '    "198.51.100.23": {day1: "2026-12-07", start: 25000}\n'
    )

    def weights(now: str) -> dict[str, int]:
        out = mailops(
            {"conf": tmp_path / "none.toml"},
            "dns", "plan", "--inventory", str(inv), "--format", "json",
            "--dkim-keys", str(tmp_path),
            now=now,
        )  # fmt: skip
        recs = json.loads(out)
        return {
            r["set_id"]: r["weight"]
            for r in recs
            if r["name"] == "bulk.example.com" and r["type"] == "A"
        }

    (tmp_path / "none.toml").write_text("")
    # Day 1: mail2 100 * 5000/50000 = 10; mail3 10 * 25000/50000 = 5.
    assert weights("2026-12-07T12:00") == {"mail1": 100, "mail2": 10, "mail3": 5, "mail4": 0}
    # Day 3: 20000 -> 40; mail3 is past its curve (50000): its own weight again.
    assert weights("2026-12-09T12:00") == {"mail1": 100, "mail2": 40, "mail3": 10, "mail4": 0}
    assert weights("2026-12-20T12:00") == {"mail1": 100, "mail2": 100, "mail3": 10, "mail4": 0}


def test_a_day1_in_the_inventory_is_the_addresses_day_one() -> None:
    warm = schedule.read(
        {"warmup": {"addresses": {"198.51.100.121": {"day1": "2026-12-05", "start": 10}}}}
    )
    today = schedule.parse_day("2026-12-07")
    assert caps.today_cap(warm, "198.51.100.121", None, today)[:2] == (22, 3)
    # An operator's start wins over it.
    entry = {"day1": "2026-12-07", "by": "operator"}
    assert caps.today_cap(warm, "198.51.100.121", entry, today)[:2] == (10, 1)
    assert config.problems({"warmup": {"addresses": {"198.51.100.1": {"day1": "soon"}}}}) == [
        "[warmup.addresses.'198.51.100.1'] day1: expected a date (YYYY-MM-DD), got \"soon\""
    ]
