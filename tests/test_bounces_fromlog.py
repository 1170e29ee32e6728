"""mailops bounces from-log: tenant mail's bounces from a bulk node's log into the store.

Logs come from the generator (which records every delivery line it wrote, with the
message's sender) or are written here line by line; the store is SQLite in tmp_path.
The expectations are counted from the generator's record and from the docs
(docs/suppression.md, docs/tenants.md), not with the code under test."""

from __future__ import annotations

import gzip
import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.bounces import fromlog
from mailops.store.db import Store, StoreError
from tests.support import postfix_loggen

SENDERS = (
    "news@alpha.test",
    "Billing@Mail.Alpha.test",  # a subdomain of alpha's, in capitals
    "info@beta.test",
    "noreply@app.example",  # the company's own: its DSNs reach bounces@
    "",
    "billing",
)
OWNER = {"alpha.test": "alpha", "beta.test": "beta"}
TENANTS: dict[str, Any] = {
    "alpha": {"domains": ["alpha.test"], "logins": ["alpha"]},
    "beta": {"domains": ["beta.test"], "logins": ["beta"]},
}
# what the generator's bounce texts are (tests/support/postfix_loggen.py): the code in
# the server's words, the reason and whether the address is dead for good
CLASSIFIED = {
    "5.1.1": ("userunknown", 1),  # 550 5.1.1 <addr>: User unknown
    "5.2.2": ("mailboxfull", 0),  # 552 5.2.2 Mailbox full
    "4.4.7": ("expired", 0),  # message expired
}


def owner(sender: str) -> str | None:
    domain = sender.rpartition("@")[2].lower()
    for d, tenant in OWNER.items():
        if domain == d or domain.endswith("." + d):
            return tenant
    return None


def settings(tmp_path: Path, url: str | None = None) -> dict[str, Any]:
    return {
        "store": {"url": url or f"sqlite:///{tmp_path / 'store.db'}"},
        "tenants": TENANTS,
    }


def rows(tmp_path: Path, table: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(tmp_path / "store.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table}")]  # noqa: S608
    finally:
        db.close()


def run(
    tmp_path: Path, log: Path, data: dict[str, Any] | None = None, warnings: list[str] | None = None
) -> int:
    out = warnings if warnings is not None else []
    return fromlog.run(data or settings(tmp_path), log, tmp_path / "state.json", warn=out.append)


def expected(deliveries: Iterable[postfix_loggen.Delivery]) -> Counter[tuple[str, str, str]]:
    """(tenant, address, DSN class) of every bounce line of a tenant's message."""
    out: Counter[tuple[str, str, str]] = Counter()
    for d in deliveries:
        tenant = owner(d.sender)
        if d.status == "bounced" and tenant is not None:
            out[tenant, d.addr.lower(), d.dsn[0]] += 1
    return out


def stored(tmp_path: Path) -> Counter[tuple[str, str, str]]:
    return Counter((r["tenant"], r["address"], r["status"][0]) for r in rows(tmp_path, "bounces"))


def generated(tmp_path: Path, seed: int, lines: int = 6000) -> tuple[Path, postfix_loggen.Stats]:
    log = tmp_path / "mail.log"
    stats = postfix_loggen.generate(seed, log, lines, hosts=("mail1", "mail2"), senders=SENDERS)
    return log, stats


# ---------------------------------------------------------------------- generated logs


@pytest.mark.parametrize("seed", [3, 4, 10])  # 3: ISO time stamps; 4, 10: classic
def test_tenant_bounces_stored_once_with_tenant_reason_and_global_suppression(
    tmp_path: Path, seed: int
) -> None:
    log, stats = generated(tmp_path, seed)
    want = expected(stats.deliveries)
    every_bounce = sum(1 for d in stats.deliveries if d.status == "bounced")
    # the log has what the test is about: bounces of both tenants, hard and soft, and
    # bounces of mail that is no tenant's
    assert {t for t, _, _ in want} == {"alpha", "beta"}
    assert {c for _, _, c in want} == {"4", "5"}
    assert every_bounce > sum(want.values()) > 20

    assert run(tmp_path, log) == exitcodes.OK
    assert stored(tmp_path) == want  # each once, with its tenant; company mail skipped

    bounces = rows(tmp_path, "bounces")
    for r in bounces:
        assert (r["reason"], r["hard"]) == CLASSIFIED[r["status"]], r
        assert r["detector"] == "postfix-log"
        assert r["action"] == "failed"
    hard = {r["address"] for r in bounces if r["hard"]}
    assert hard and any(not r["hard"] for r in bounces)
    suppressions = rows(tmp_path, "suppressions")
    assert {s["tenant"] for s in suppressions} == {""}  # global, whose mail it was or not
    assert {s["address"] for s in suppressions if s["source"] == "bounce"} == hard
    assert all(s["reason"] == "userunknown" for s in suppressions if s["source"] == "bounce")


def test_a_second_run_and_a_lost_state_store_nothing_twice(tmp_path: Path) -> None:
    log, stats = generated(tmp_path, 1)
    assert run(tmp_path, log) == exitcodes.OK
    first = stored(tmp_path)
    assert first == expected(stats.deliveries) and first
    suppressed = rows(tmp_path, "suppressions")

    assert run(tmp_path, log) == exitcodes.OK  # nothing new in the log
    assert stored(tmp_path) == first

    warnings: list[str] = []
    (tmp_path / "state.json").write_text("{not json", encoding="utf-8")
    assert run(tmp_path, log, warnings=warnings) == exitcodes.OK  # the whole log again
    assert any("unreadable" in w for w in warnings)
    assert stored(tmp_path) == first
    assert rows(tmp_path, "suppressions") == suppressed


def _split(text: str, at: float) -> tuple[str, str]:
    """``text`` cut after the line at ``at`` (a share of its length)."""
    cut = text.index("\n", int(len(text) * at)) + 1
    return text[:cut], text[cut:]


@pytest.mark.parametrize("rotated_name", ["mail.log.1", "mail.log.1.gz"])
def test_rotation_between_runs_loses_nothing(tmp_path: Path, rotated_name: str) -> None:
    log, stats = generated(tmp_path, 2)
    first, rest = _split(log.read_text(encoding="ascii"), 0.4)
    middle, last = _split(rest, 0.3)
    log.write_text(first, encoding="ascii")
    assert run(tmp_path, log) == exitcodes.OK
    # more lines go to the file, then it is rotated away and a new one begins
    with log.open("a", encoding="ascii") as fh:
        fh.write(middle)
    old = tmp_path / rotated_name
    if rotated_name.endswith(".gz"):
        old.write_bytes(gzip.compress(log.read_bytes()))
        log.unlink()
    else:
        log.rename(old)
    log.write_text(last, encoding="ascii")
    warnings: list[str] = []
    assert run(tmp_path, log, warnings=warnings) == exitcodes.OK
    assert warnings == []
    # senders read in one run attribute the bounces of the next
    assert stored(tmp_path) == expected(stats.deliveries)


def test_a_dead_store_keeps_the_state_and_the_next_run_stores_everything(tmp_path: Path) -> None:
    log, stats = generated(tmp_path, 4)
    first, rest = _split(log.read_text(encoding="ascii"), 0.5)
    log.write_text(first, encoding="ascii")
    assert run(tmp_path, log) == exitcodes.OK
    state = (tmp_path / "state.json").read_bytes()
    before = stored(tmp_path)
    with log.open("a", encoding="ascii") as fh:
        fh.write(rest)

    dead = settings(tmp_path, f"sqlite:///{tmp_path / 'no-such-dir' / 'store.db'}")
    warnings: list[str] = []
    assert run(tmp_path, log, dead, warnings) == exitcodes.TEMPFAIL
    assert len(warnings) == 1 and "cannot open store" in warnings[0]
    assert (tmp_path / "state.json").read_bytes() == state  # not advanced
    assert stored(tmp_path) == before

    assert run(tmp_path, log) == exitcodes.OK
    assert stored(tmp_path) == expected(stats.deliveries)


def test_a_store_failing_in_the_middle_keeps_the_state_and_nothing_is_stored_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, stats = generated(tmp_path, 5)
    want = expected(stats.deliveries)
    real = Store.record_report
    calls = 0

    def failing(self: Store, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 5:
            raise StoreError("store x: connection lost")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_report", failing)
    assert run(tmp_path, log) == exitcodes.TEMPFAIL
    assert not (tmp_path / "state.json").exists()
    assert sum(stored(tmp_path).values()) == 5
    monkeypatch.setattr(Store, "record_report", real)
    assert run(tmp_path, log) == exitcodes.OK
    assert stored(tmp_path) == want


# ---------------------------------------------------------------------- lines by hand

QMGR = (
    "Dec 07 17:40:05 mail1 postfix/qmgr[1746]: {qid}: from=<{sender}>, size=709, nrcpt=1"
    " (queue active)"
)
BOUNCED = (
    "Dec 07 17:40:06 mail1 postfix/pool_alpha_1_gmail/smtp[2365]: {qid}: to=<{to}>,"
    " relay=inbox.outside.test[198.51.100.40]:25, delay=0.43, delays=0.3/0.08/0.02/0.03,"
    " dsn={dsn}, status=bounced ({text})"
)
UNKNOWN = (
    "host inbox.outside.test[198.51.100.40] said: 550 5.1.1 <{to}>: Recipient address"
    " rejected: User unknown in virtual mailbox table (in reply to RCPT TO command)"
)
EXPIRED = "delivery temporarily suspended: connect to mx.gmail.test[198.51.100.80]:25: timeout"
REMOVED = "Dec 07 17:40:07 mail1 postfix/qmgr[1746]: {qid}: removed"


def bounce_lines(qid: str, sender: str, to: str, dsn: str = "5.1.1", text: str = UNKNOWN) -> str:
    return "\n".join(
        (
            QMGR.format(qid=qid, sender=sender),
            BOUNCED.format(qid=qid, to=to, dsn=dsn, text=text.format(to=to)),
            REMOVED.format(qid=qid),
        )
    )


def test_the_lab_line_gives_a_hard_userunknown_of_alpha(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(bounce_lines("4jjq9x5K2zzHk8V", "news@alpha.test", "Nobody@Gmail.test") + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    (row,) = rows(tmp_path, "bounces")
    assert (row["tenant"], row["address"], row["status"], row["reason"], row["hard"]) == (
        "alpha",
        "nobody@gmail.test",
        "5.1.1",
        "userunknown",
        1,
    )
    assert row["remote_mta"] == "inbox.outside.test"
    assert "User unknown" in row["diagnostic"]
    (sup,) = rows(tmp_path, "suppressions")
    assert (sup["tenant"], sup["address"], sup["source"], sup["expires_at"]) == (
        "",
        "nobody@gmail.test",
        "bounce",
        None,
    )


def test_a_sender_read_in_one_run_names_the_tenant_of_a_bounce_read_in_the_next(
    tmp_path: Path,
) -> None:
    log = tmp_path / "mail.log"
    first, bounced, removed = bounce_lines("GGG1", "news@alpha.test", "g@gmail.test").split("\n")
    log.write_text(first + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    with log.open("a") as fh:
        fh.write(bounced + "\n" + removed + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    assert [(r["tenant"], r["address"]) for r in rows(tmp_path, "bounces")] == [
        ("alpha", "g@gmail.test")
    ]


def test_company_mail_is_skipped_without_opening_the_store(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(
        bounce_lines("AAA1", "bounces+x@company.test", "a@gmail.test")
        + "\n"
        + bounce_lines("AAA2", "", "b@gmail.test")
        + "\n"
    )
    dead = settings(tmp_path, f"sqlite:///{tmp_path / 'no-such-dir' / 'store.db'}")
    assert run(tmp_path, log, dead) == exitcodes.OK  # nothing to store: no store needed
    assert (tmp_path / "state.json").exists()
    assert not (tmp_path / "store.db").exists()


def test_an_expired_message_is_a_soft_bounce_and_three_suppress_for_a_while(
    tmp_path: Path,
) -> None:
    log = tmp_path / "mail.log"
    lines = [
        bounce_lines(f"BBB{n}", "news@beta.test", "slow@outlook.test", "4.4.7", EXPIRED)
        for n in range(3)
    ]
    log.write_text(lines[0] + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    (row,) = rows(tmp_path, "bounces")
    assert (row["tenant"], row["status"], row["reason"], row["hard"]) == (
        "beta",
        "4.4.7",
        "expired",
        0,
    )
    assert rows(tmp_path, "suppressions") == []  # one soft bounce suppresses nothing
    with log.open("a") as fh:
        fh.write("\n".join(lines[1:]) + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    assert len(rows(tmp_path, "bounces")) == 3
    (sup,) = rows(tmp_path, "suppressions")  # the third, by the [suppression] policy
    assert (sup["tenant"], sup["source"]) == ("", "soft")
    assert sup["expires_at"] is not None


def test_a_queue_id_used_again_by_company_mail_is_not_the_tenants(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    # alpha's message is still queued (no removed line) when its id turns up again
    qmgr = QMGR.format(qid="CCC1", sender="news@alpha.test")
    log.write_text(qmgr + "\n" + bounce_lines("CCC1", "ops@company.test", "c@gmail.test") + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    assert not (tmp_path / "store.db").exists()  # nothing to store


def test_removed_messages_are_forgotten_and_the_state_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fromlog, "MAX_OPEN", 3)
    log = tmp_path / "mail.log"
    done = bounce_lines("DDD0", "news@alpha.test", "d@gmail.test")
    open_ = [QMGR.format(qid=f"EEE{n}", sender="news@alpha.test") for n in range(5)]
    log.write_text("\n".join([done, *open_]) + "\n")
    assert run(tmp_path, log) == exitcodes.OK
    state = fromlog.State.load(tmp_path / "state.json", pytest.fail)
    assert list(state.senders) == ["mail1 EEE2", "mail1 EEE3", "mail1 EEE4"]


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mail.log"
    log.write_text(bounce_lines("FFF1", "news@alpha.test", "f@gmail.test") + "\n")
    conf = tmp_path / "mailops.toml"
    conf.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n'
        '[tenants.alpha]\ndomains = ["alpha.test"]\n',
        encoding="utf-8",
    )
    argv = ["--config", str(conf), "bounces", "from-log", "--log", str(log)]
    argv += ["--state", str(tmp_path / "state.json"), "-v"]
    assert cli.main(argv) == exitcodes.OK
    out = capsys.readouterr().out
    assert "f@gmail.test 5.1.1 userunknown (hard), tenant alpha, suppressed" in out
    assert "1 stored" in out


def test_broken_store_settings_are_refused_even_with_nothing_to_store(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    # (nothing to store: the store would never be opened, its settings never read)
    log.write_text(bounce_lines("HHH1", "ops@company.test", "h@gmail.test") + "\n")
    conf = tmp_path / "mailops.toml"
    conf.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n[suppression]\nsoft_threshold = -1\n'
        '[tenants.alpha]\ndomains = ["alpha.test"]\n',
        encoding="utf-8",
    )
    argv = ["--config", str(conf), "bounces", "from-log", "--log", str(log)]
    assert cli.main([*argv, "--state", str(tmp_path / "state.json")]) == exitcodes.CONFIG
    assert not (tmp_path / "state.json").exists()
