"""mailops throttle: reply classification, the step rule on an injected clock, the
Postfix commands a run gives, the log reading across runs, and the figures for /metrics."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from mailops import exitcodes
from mailops.queues import render
from mailops.throttle import run, step_all
from mailops.throttle.classify import classify
from mailops.throttle.export import families, node_section
from mailops.throttle.postfix import Postfix
from mailops.throttle.reader import Reader
from mailops.throttle.state import State
from mailops.throttle.steps import (
    Params,
    Rung,
    Seen,
    SettingsError,
    TransportState,
    decide,
    parse_settings,
)

HOST = "host mx.example[192.0.2.10]"

# (provider, rule) for every reply that is a throttle, as Postfix logs it.
THROTTLES: list[tuple[str, str, str]] = [
    (
        f"{HOST} said: 421 4.7.28 gmail.test has rate limited mail from your IP address"
        " (in reply to RCPT TO command)",
        "gmail",
        "gmail-4.7.28",
    ),
    (
        f"{HOST} said: 421-4.7.28 [192.0.2.21      15] Our system has detected an unusual"
        " rate of 421-4.7.28 unsolicited mail originating from your IP address. To protect"
        " our 421-4.7.28 users from spam, mail sent from your IP address has been"
        " temporarily 421-4.7.28 rate limited. 421 4.7.28 - gsmtp (in reply to end of DATA"
        " command)",
        "gmail",
        "gmail-4.7.28",
    ),
    (
        f"{HOST} said: 450 4.7.28 rate limited (in reply to MAIL FROM command)",
        "gmail",
        "gmail-4.7.28",
    ),
    (
        f"{HOST} said: 421-4.7.0 Our system has detected an unusual rate of 421 4.7.0"
        " unsolicited mail - gsmtp (in reply to end of DATA command)",
        "gmail",
        "gmail-4.7.0-rate",
    ),
    (
        f"{HOST} said: 421 4.7.0 Try again later, you have been rate limited - gsmtp"
        " (in reply to RCPT TO command)",
        "gmail",
        "gmail-4.7.0-rate",
    ),
    (
        f"{HOST} said: 451 4.7.500 Server busy. Please try again later from [192.0.2.21]."
        " (S77719) [BN8NAM12FT012.eop-nam12.prod.protection.outlook.com] (in reply to RCPT"
        " TO command)",
        "microsoft",
        "microsoft-4.7.5xx-6xx",
    ),
    (
        f"{HOST} said: 421 4.7.650 The mail server [192.0.2.21] has been temporarily rate"
        " limited due to IP reputation. (in reply to MAIL FROM command)",
        "microsoft",
        "microsoft-4.7.5xx-6xx",
    ),
    (
        f"{HOST} said: 451 4.7.699 busy (in reply to RCPT TO command)",
        "microsoft",
        "microsoft-4.7.5xx-6xx",
    ),
    (
        f"{HOST} said: 421 RP-001 (BAY004-MC1F12) Unfortunately, some messages from"
        " 192.0.2.21 weren't sent. Please try again. We have limits for how many messages"
        " can be sent per hour and per day. (in reply to MAIL FROM command)",
        "microsoft",
        "microsoft-rp",
    ),
    (
        f"{HOST} said: 452 4.3.2 Connection throttled by outlook.com, come back later"
        " (in reply to RCPT TO command)",
        "microsoft",
        "microsoft-throttled",
    ),
    (
        f"{HOST} refused to talk to me: 421 4.7.0 [TSS04] Messages from 192.0.2.21"
        " temporarily deferred due to unexpected volume or user complaints - 4.16.55.1;"
        " see https://postmaster.yahooinc.com/error-codes",
        "yahoo",
        "yahoo-tss",
    ),
    (
        f"{HOST} said: 421 4.7.0 [TSS09] All messages from 192.0.2.21 will be permanently"
        " deferred; Retrying will NOT succeed. (in reply to MAIL FROM command)",
        "yahoo",
        "yahoo-tss",
    ),
    (
        f"{HOST} said: 451 Message temporarily deferred - [160] (in reply to end of DATA command)",
        "yahoo",
        "yahoo-deferred",
    ),
    (
        f"{HOST} refused to talk to me: 421 4.7.0 mx.example Error: too many connections"
        " from 192.0.2.21",
        "generic",
        "generic-421",
    ),
    (
        f"{HOST} refused to talk to me: 421 Too many concurrent SMTP connections",
        "generic",
        "generic-421",
    ),
    (
        f"{HOST} said: 421 4.3.2 Please try later (in reply to RCPT TO command)",
        "generic",
        "generic-421",
    ),
    (f"{HOST} said: 421 Try again later (in reply to MAIL FROM command)", "generic", "generic-421"),
    (
        f"{HOST} said: 421 4.4.5 slow down please (in reply to RCPT TO command)",
        "generic",
        "generic-421",
    ),
    (
        f"{HOST} said: 450 4.7.1 Rate limit exceeded for 192.0.2.21 (in reply to RCPT TO command)",
        "generic",
        "generic-rate",
    ),
    (
        f"{HOST} said: 452 4.1.0 ratelimit hit (in reply to RCPT TO command)",
        "generic",
        "generic-rate",
    ),
]

# Deferrals that must never step a transport down.
NOT_THROTTLES: list[str] = [
    f"{HOST} said: 450 4.2.0 <a@b.example>: Recipient address rejected: Greylisted, see"
    " http://postgrey.schweikert.ch/help/b.example.html (in reply to RCPT TO command)",
    f"{HOST} said: 451 4.7.1 Greylisting in action, please come back later (in reply to"
    " RCPT TO command)",
    f"{HOST} said: 451 4.7.1 Please try again later (in reply to RCPT TO command)",
    f"{HOST} said: 421-4.7.26 This mail has been rate limited because it is 421 4.7.26"
    " unauthenticated. - gsmtp (in reply to end of DATA command)",
    f"{HOST} said: 421-4.7.27 rate limited: SPF did not pass (in reply to end of DATA command)",
    f"{HOST} said: 421 4.7.32 rate limited: the From: header is not aligned (in reply to"
    " end of DATA command)",
    f"{HOST} said: 450-4.2.1 The user you are trying to contact is receiving mail at a rate"
    " that 450 4.2.1 prevents additional messages from being delivered (in reply to RCPT TO"
    " command)",
    f"{HOST} said: 452 4.5.3 Error: too many recipients (in reply to RCPT TO command)",
    f"{HOST} said: 452 4.2.2 The email account that you tried to reach is over quota"
    " (in reply to RCPT TO command)",
    f"{HOST} said: 421 4.4.2 mx.example Error: timeout exceeded (in reply to end of DATA command)",
    f"{HOST} said: 451 4.3.0 Temporary local problem (in reply to end of DATA command)",
    f"{HOST} said: 451 4.7.700 whatever (in reply to RCPT TO command)",
    f"{HOST} said: 451 4.7.499 whatever (in reply to RCPT TO command)",
    f"{HOST} said: 550 5.7.28 rate limited for good (in reply to RCPT TO command)",
    f"{HOST} said: 554 5.7.1 too many complaints, rate limit (in reply to RCPT TO command)",
    "connect to mx.example[192.0.2.10]:25: Connection refused",
    "connect to mx.example[192.0.2.10]:25: Connection timed out",
    f"lost connection with {HOST[5:]} while receiving the initial server greeting",
    f"conversation with {HOST[5:]} timed out while sending end of data -- message may be"
    " sent more than once",
    "Host or domain name not found. Name service error for name=x.example type=MX: Host"
    " not found, try again",
    # our own words about "try again later", not the remote server's
    "delivery temporarily suspended: connect to x.example[192.0.2.10]:25: try again later",
]


@pytest.mark.parametrize(("diag", "provider", "rule"), THROTTLES)
def test_throttle_replies_are_recognised(diag: str, provider: str, rule: str) -> None:
    verdict = classify(diag)
    assert verdict is not None and verdict.throttle, diag
    assert (verdict.provider, verdict.rule) == (provider, rule)


@pytest.mark.parametrize("diag", NOT_THROTTLES)
def test_other_deferrals_are_not_throttles(diag: str) -> None:
    verdict = classify(diag)
    assert verdict is None or not verdict.throttle, verdict


def test_the_reply_text_drops_postfix_s_own_words() -> None:
    verdict = classify(THROTTLES[0][0])
    assert verdict is not None
    assert verdict.reply.code == 421 and verdict.reply.esc == (4, 7, 28)
    assert verdict.reply.text.startswith("421 4.7.28 gmail.test")
    assert "in reply to" not in verdict.reply.text


# ---------------------------------------------------------------- settings and ladders

TRANSPORTS = [
    {"name": "gmail", "class": "gmail", "concurrency": 10, "rate_delay": "0s"},
    {"name": "microsoft", "class": "microsoft", "concurrency": 5, "rate_delay": "1s"},
    {"name": "pool_alpha_1_gmail", "class": "gmail", "concurrency": 10, "rate_delay": "0s"},
]


def settings_data(tmp_path: Path, **over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "log": str(tmp_path / "mail.log"),
        "state": str(tmp_path / "state" / "state.json"),
        "min_signals": 3,
        "hold_seconds": 110,
        "quiet_seconds": 600,
        "min_delivered": 1,
        "idle_seconds": 3600,
        "transports": TRANSPORTS,
        "steps": {
            "default": [
                {"concurrency": 5, "rate_delay": "1s"},
                {"concurrency": 2, "rate_delay": "5s"},
                {"concurrency": 1, "rate_delay": "30s"},
                {"concurrency": 1, "rate_delay": "10m"},
            ]
        },
    }
    data.update(over)
    return data


def test_a_ladder_starts_at_the_inventory_and_skips_steps_that_change_nothing(
    tmp_path: Path,
) -> None:
    s = parse_settings(settings_data(tmp_path))
    gmail, microsoft = s.transports[0], s.transports[1]
    assert s.ladder(gmail) == (Rung(10, 0), Rung(5, 1), Rung(2, 5), Rung(1, 30), Rung(1, 600))
    # microsoft already has (5, 1s): the first step would change nothing
    assert s.ladder(microsoft) == (Rung(5, 1), Rung(2, 5), Rung(1, 30), Rung(1, 600))


def test_a_class_table_replaces_the_default_and_never_loosens_the_inventory(
    tmp_path: Path,
) -> None:
    data = settings_data(
        tmp_path,
        transports=[{"name": "gmail", "class": "gmail", "concurrency": 3, "rate_delay": "2s"}],
        steps={
            "default": [{"concurrency": 1, "rate_delay": "1h"}],
            "gmail": [
                {"concurrency": 5, "rate_delay": "0s"},
                {"concurrency": 1, "rate_delay": "2m"},
            ],
        },
    )
    s = parse_settings(data)
    assert s.ladder(s.transports[0]) == (Rung(3, 2), Rung(1, 120))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"steps": {"gmail": []}}, "'default'"),
        ({"steps": {"default": []}}, "non-empty list"),
        (
            {
                "steps": {
                    "default": [
                        {"concurrency": 1, "rate_delay": "5s"},
                        {"concurrency": 2, "rate_delay": "9s"},
                    ]
                }
            },
            "no looser",
        ),
        (
            {
                "steps": {
                    "default": [
                        {"concurrency": 2, "rate_delay": "5s"},
                        {"concurrency": 2, "rate_delay": "1s"},
                    ]
                }
            },
            "no looser",
        ),
        ({"steps": {"default": [{"concurrency": 0, "rate_delay": "5s"}]}}, ">= 1"),
        ({"steps": {"default": [{"concurrency": 2, "rate_delay": "5 minutes"}]}}, "not a time"),
        ({"steps": {"default": [{"concurrency": 2}]}}, "exactly concurrency and rate_delay"),
        (
            {
                "steps": {
                    "default": [{"concurrency": 2, "rate_delay": "5s"}],
                    "gmial": [{"concurrency": 2, "rate_delay": "5s"}],
                }
            },
            "gmial is not the class",
        ),
        ({"quiet_seconds": -1}, "quiet_seconds"),
        ({"min_signals": 0}, "min_signals"),
        ({"min_signals": "3"}, "min_signals"),
        (
            {
                "transports": [
                    {"name": "Gmail!", "class": "gmail", "concurrency": 1, "rate_delay": "0s"}
                ]
            },
            "master.cf service name",
        ),
        ({"transports": [TRANSPORTS[0], TRANSPORTS[0]]}, "listed twice"),
        ({"log": "mail.log"}, "absolute"),
    ],
)
def test_bad_settings_are_refused_with_their_place(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    with pytest.raises(SettingsError, match=words):
        parse_settings(settings_data(tmp_path, **change))


# ---------------------------------------------------------------- the step rule

P = Params(min_signals=3, hold_seconds=110, quiet_seconds=600, min_delivered=1, idle_seconds=3600)


def signals(n: int, when: float) -> Seen:
    seen = Seen()
    for _ in range(n):
        seen.add_signal("gmail", "gmail-4.7.28", "421 4.7.28 ...", when)
    return seen


def delivered(n: int, when: float) -> Seen:
    return Seen(delivered=n, last_activity_at=when)


def test_steps_down_on_signals_once_per_hold_and_never_past_the_top() -> None:
    st = TransportState()
    t0 = 1_000_000.0
    d = decide(st, signals(5, t0), 3, t0, P)
    assert (d.old, d.new) == (0, 1) and "5 throttle replies" in d.why
    # a minute later: more signals, but the last change is younger than hold_seconds
    assert decide(st, signals(5, t0 + 60), 3, t0 + 60, P).new == 1
    assert decide(st, signals(5, t0 + 120), 3, t0 + 120, P).new == 2
    assert decide(st, signals(5, t0 + 240), 3, t0 + 240, P).new == 3
    assert decide(st, signals(5, t0 + 360), 3, t0 + 360, P).new == 3  # the top: suspended
    assert st.signals_total == 25 and st.signals_by_provider == {"gmail": 25}


def test_fewer_signals_than_the_minimum_do_not_step_down_but_keep_it_from_stepping_up() -> None:
    st = TransportState()
    t0 = 1_000_000.0
    assert decide(st, signals(2, t0), 3, t0, P).new == 0
    st = TransportState(step=1, changed_at=t0 - 10_000, last_signal_at=t0 - 10_000)
    st.delivered_since_change = 50
    assert decide(st, signals(1, t0), 3, t0, P).new == 1  # a signal: not quiet
    assert decide(st, Seen(), 3, t0 + 599, P).new == 1  # quiet for only 599 s
    assert decide(st, Seen(), 3, t0 + 600, P).new == 0


def test_steps_up_one_at_a_time_after_quiet_with_deliveries() -> None:
    t0 = 1_000_000.0
    st = TransportState(step=3, changed_at=t0, last_signal_at=t0)
    assert decide(st, delivered(1, t0 + 300), 3, t0 + 300, P).new == 3  # not quiet yet
    d = decide(st, Seen(), 3, t0 + 600, P)
    assert (d.old, d.new) == (3, 2) and "1 delivered" in d.why
    # the next step up needs its own quiet period and its own deliveries
    assert decide(st, Seen(), 3, t0 + 1200, P).new == 2
    assert decide(st, delivered(4, t0 + 1210), 3, t0 + 1210, P).new == 1
    assert decide(st, delivered(1, t0 + 1800), 3, t0 + 1800, P).new == 1
    assert decide(st, Seen(), 3, t0 + 1811, P).new == 0
    assert decide(st, delivered(9, t0 + 9999), 3, t0 + 9999, P).new == 0


def test_an_idle_transport_steps_up_without_deliveries() -> None:
    t0 = 1_000_000.0
    st = TransportState(step=2, changed_at=t0, last_signal_at=t0, last_activity_at=t0)
    assert decide(st, Seen(), 3, t0 + 3599, P).new == 2
    d = decide(st, Seen(), 3, t0 + 3600, P)
    assert d.new == 1 and "nothing sent" in d.why


def test_a_shorter_ladder_than_the_remembered_step_is_taken_at_its_top() -> None:
    st = TransportState(step=4, changed_at=0, last_signal_at=0)
    d = decide(st, signals(9, 10_000), 2, 10_000, P)
    assert (d.old, d.new) == (2, 2)


# ---------------------------------------------------------------- Postfix commands


class FakePostfix:
    """postconf/postfix/postlog as a dict: what main.cf says, and every command."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)
        self.commands: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        argv = list(argv)
        self.commands.append(argv)
        if argv[:2] == ["postconf", "-e"]:
            for item in argv[2:]:
                k, _, v = item.partition("=")
                self.values[k] = v
            return 0, "", ""
        if argv[0] == "postconf":
            out = "".join(f"{n} = {self.values[n]}\n" for n in argv[1:] if n in self.values)
            return 0, out, ""
        return 0, "", ""


def baseline() -> dict[str, str]:
    out: dict[str, str] = {}
    for t in TRANSPORTS:
        out[f"{t['name']}_destination_concurrency_limit"] = str(t["concurrency"])
        out[f"{t['name']}_destination_rate_delay"] = str(t["rate_delay"])
    return out


def test_a_step_down_sets_the_values_reloads_once_and_logs_one_line_each(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path))
    fake = FakePostfix(baseline())
    state = State()
    t0 = 1_000_000.0
    seen = {"gmail": signals(4, t0), "pool_alpha_1_gmail": signals(3, t0)}
    out = step_all(s, state, seen, Postfix(fake), t0)
    assert fake.commands[0] == [
        "postconf",
        "gmail_destination_concurrency_limit",
        "gmail_destination_rate_delay",
        "pool_alpha_1_gmail_destination_concurrency_limit",
        "pool_alpha_1_gmail_destination_rate_delay",
    ]
    assert fake.commands[1] == [
        "postconf",
        "-e",
        "gmail_destination_concurrency_limit=5",
        "gmail_destination_rate_delay=1s",
        "pool_alpha_1_gmail_destination_concurrency_limit=5",
        "pool_alpha_1_gmail_destination_rate_delay=1s",
    ]
    assert fake.commands[2] == ["postfix", "reload"]
    logs = [c for c in fake.commands if c[0] == "postlog"]
    assert len(logs) == 2 and all(
        c[:5] == ["postlog", "-t", "mailops/throttle", "-p", "info"] for c in logs
    )
    assert logs[0][5] == (
        "transport gmail: step 0 -> 1 of 4, concurrency 10 -> 5, rate_delay 0s -> 1s:"
        " 4 throttle replies (gmail-4.7.28: 421 4.7.28 ...)"
    )
    assert out.reloaded and len(fake.commands) == 5
    assert state.transports["gmail"].applied_step == 1
    assert state.transports["microsoft"].state.step == 0


def test_nothing_is_run_when_nothing_changes(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path))
    fake = FakePostfix(baseline())
    state = State()
    step_all(s, state, {"gmail": signals(2, 5.0)}, Postfix(fake), 1_000_000.0)
    assert fake.commands == []
    # stepped down and applied: the next quiet-but-young run reads main.cf, sets nothing
    step_all(s, state, {"gmail": signals(3, 1_000_000.0)}, Postfix(fake), 1_000_000.0)
    fake.commands.clear()
    step_all(s, state, {}, Postfix(fake), 1_000_060.0)
    assert fake.commands == [
        ["postconf", "gmail_destination_concurrency_limit", "gmail_destination_rate_delay"]
    ]


def test_a_converge_that_put_the_inventory_back_is_undone_while_backed_off(
    tmp_path: Path,
) -> None:
    s = parse_settings(settings_data(tmp_path))
    fake = FakePostfix(baseline())
    state = State()
    step_all(s, state, {"gmail": signals(3, 1.0)}, Postfix(fake), 1_000_000.0)
    fake.values.update(baseline())  # the postfix role rewrote main.cf
    fake.commands.clear()
    out = step_all(s, state, {}, Postfix(fake), 1_000_060.0)
    assert [
        "postconf",
        "-e",
        "gmail_destination_concurrency_limit=5",
        "gmail_destination_rate_delay=1s",
    ] in fake.commands
    assert ["postfix", "reload"] in fake.commands
    assert "step 1 of 4 set again" in out.changes[0].line(4)


def test_stepping_back_to_zero_restores_the_inventory_and_then_leaves_main_cf_alone(
    tmp_path: Path,
) -> None:
    s = parse_settings(settings_data(tmp_path, quiet_seconds=50))
    fake = FakePostfix(baseline())
    state = State()
    t0 = 1_000_000.0
    step_all(s, state, {"gmail": signals(3, t0)}, Postfix(fake), t0)
    step_all(s, state, {"gmail": delivered(2, t0 + 30)}, Postfix(fake), t0 + 60)
    assert fake.values["gmail_destination_concurrency_limit"] == "10"
    assert fake.values["gmail_destination_rate_delay"] == "0s"
    assert state.transports["gmail"].state.step == 0
    fake.values["gmail_destination_concurrency_limit"] = "7"  # an operator's hand edit
    fake.commands.clear()
    step_all(s, state, {}, Postfix(fake), t0 + 120)
    assert fake.commands == []


def test_a_dry_run_reads_but_never_sets(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path))
    fake = FakePostfix(baseline())
    out = step_all(s, State(), {"gmail": signals(3, 1.0)}, Postfix(fake), 1_000_000.0, dry_run=True)
    assert [c[:2] for c in fake.commands] == [["postconf", "gmail_destination_concurrency_limit"]]
    assert len(out.changes) == 1


# ---------------------------------------------------------------- the log, across runs


def line(transport: str, status: str, diag: str, clock: str = "Dec  7 20:31:24") -> str:
    return (
        f"{clock} mail1 postfix/{transport}/smtp[123]: 4AbCd: to=<a@gmail.test>,"
        " relay=inbox.test[198.51.100.40]:25, delay=0.1, delays=0/0/0/0.1, dsn=4.7.28,"
        f" status={status} ({diag})\n"
    )


GMAIL_421 = f"{HOST} said: 421 4.7.28 rate limited (in reply to RCPT TO command)"


def test_the_reader_counts_per_transport_and_skips_repeats_and_strangers() -> None:
    seen: dict[str, Seen] = {}
    reader = Reader({"gmail", "pool_alpha_1_gmail"}, 1.8e9, lambda n: seen.setdefault(n, Seen()))
    text = "".join(
        [
            line("gmail", "deferred", GMAIL_421),
            line("gmail", "deferred", GMAIL_421).replace(
                "postfix/gmail/smtp", "postfix/gmail/smtp"
            ),
            line("gmail", "deferred", "delivery temporarily suspended: " + GMAIL_421),
            line("gmail", "deferred", "connect to x[192.0.2.1]:25: Connection refused"),
            line("gmail", "sent", "250 2.0.0 Ok: queued as 1234"),
            line("pool_alpha_1_gmail", "deferred", GMAIL_421),
            line("yahoo", "deferred", GMAIL_421),  # not a watched transport
            line("smtp", "deferred", GMAIL_421).replace("postfix/smtp/smtp", "postfix/smtp"),
            "Dec  7 20:31:25 mail1 postfix/qmgr[9]: 4AbCd: removed\n",
        ]
    ).encode()
    reader.feed(io.BytesIO(text), final=True)
    assert seen["gmail"].signals == 2 and seen["gmail"].delivered == 1
    assert seen["pool_alpha_1_gmail"].signals == 1
    assert "yahoo" not in seen
    assert reader.other_deferrals == 2


def test_runs_follow_the_log_from_its_end_and_across_rotation(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path, min_signals=3))
    log = tmp_path / "mail.log"
    log.write_text(line("gmail", "deferred", GMAIL_421) * 50)  # old news: not read
    fake = FakePostfix(baseline())
    warnings: list[str] = []
    assert run(s, postfix=Postfix(fake), now=1.8e9, warn=warnings.append) == exitcodes.OK
    assert fake.commands == []
    with log.open("a") as fh:
        fh.write(line("gmail", "deferred", GMAIL_421) * 2)
    log.rename(tmp_path / "mail.log.1")  # rotated away before the next run
    log.write_text(line("gmail", "deferred", GMAIL_421))
    assert run(s, postfix=Postfix(fake), now=1.8e9 + 60, warn=warnings.append) == exitcodes.OK
    assert fake.values["gmail_destination_concurrency_limit"] == "5"  # 2 + 1 = 3 signals
    assert warnings == []
    saved = json.loads(Path(s.state).read_text())
    assert saved["transports"]["gmail"]["step"] == 1
    assert saved["transports"]["gmail"]["signals_total"] == 3
    assert oct(Path(s.state).stat().st_mode & 0o777) == "0o644"


def test_an_unreadable_log_is_exit_66_and_a_failed_postconf_75(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path))
    assert run(s, postfix=Postfix(FakePostfix({})), now=1.0, warn=lambda _m: None) == 66
    (tmp_path / "mail.log").write_text("")
    run(s, postfix=Postfix(FakePostfix({})), now=1.0, warn=lambda _m: None)
    with (tmp_path / "mail.log").open("a") as fh:
        fh.write(line("gmail", "deferred", GMAIL_421) * 3)
    failed: list[str] = []

    def broken(argv: Sequence[str]) -> tuple[int, str, str]:
        return (1, "", "postconf: fatal: open /etc/postfix/main.cf: Permission denied")

    assert run(s, postfix=Postfix(broken), now=2.0, warn=failed.append) == exitcodes.TEMPFAIL
    assert "Permission denied" in failed[0]


# ---------------------------------------------------------------- figures for /metrics


def test_the_state_reaches_prometheus_through_the_queue_report(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path))
    fake = FakePostfix(baseline())
    state = State()
    step_all(s, state, {"gmail": signals(4, 1.0)}, Postfix(fake), 1_000_000.0)
    path = tmp_path / "state.json"
    state.save(path, 1_000_000.0)
    section = node_section(str(path))
    assert section is not None
    gmail = next(r for r in section if r["transport"] == "gmail")
    assert gmail["step"] == 1 and gmail["concurrency"] == 5 and gmail["rate_delay_seconds"] == 1
    report = {"mail1": {"queues": {}, "throttle": section}, "mx1": {"queues": {}}}
    text = render.prometheus(report, 1_000_000.0)  # type: ignore[arg-type]
    assert 'mailops_throttle_step{host="mail1",transport="gmail"} 1\n' in text
    assert 'mailops_throttle_step{host="mail1",transport="microsoft"} 0\n' in text
    assert 'mailops_throttle_top_step{host="mail1",transport="gmail"} 4\n' in text
    assert (
        'mailops_throttle_signals_total{host="mail1",transport="gmail",provider="gmail"} 4\n'
        in text
    )
    assert "# TYPE mailops_throttle_signals_total counter" in text
    assert 'host="mx1",transport' not in text
    assert families({"mx1": {"queues": {}}}) == []
    assert node_section(str(tmp_path / "absent.json")) is None


def test_a_step_change_is_logged_even_when_main_cf_already_says_it(tmp_path: Path) -> None:
    s = parse_settings(settings_data(tmp_path, quiet_seconds=50))
    fake = FakePostfix(baseline())
    state = State()
    t0 = 1_000_000.0
    step_all(s, state, {"gmail": signals(3, t0)}, Postfix(fake), t0)
    fake.values.update(baseline())  # a converge put the inventory back
    fake.commands.clear()
    out = step_all(s, state, {"gmail": delivered(2, t0 + 30)}, Postfix(fake), t0 + 60)
    assert state.transports["gmail"].state.step == 0
    assert not out.reloaded and [c[0] for c in fake.commands] == ["postconf", "postlog"]
    assert fake.commands[1][5].startswith("transport gmail: step 1 -> 0 of 4, concurrency 10 -> 10")
