"""The store: schema and migrations, dedup, the suppression policy, all-or-nothing writes.

Every test runs against SQLite in a temporary directory and against a throwaway
PostgreSQL cluster on 127.0.0.1 (skipped, with the reason, when PostgreSQL is not
installed).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailops.bounceparse.model import Recipient, Report
from mailops.store import Policy, RawInfo, Store, StoreError, StoreURLError, migrations
from mailops.store.db import DAY, redact, sqlite_path
from tests.pgcluster import backend_url

NOW = 1_700_000_000
RAW = RawInfo(sha256="ab" * 32, size=1234)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store.open(url, timeout=5) as s:
        yield s


def bounce(*recipients: Recipient, message_id: str = "<dsn-1@mx.example>", **kw: str) -> Report:
    return Report(
        kind="bounce", detector="test", recipients=recipients, message_id=message_id, **kw
    )


def hard(address: str, reason: str = "userunknown", status: str = "5.1.1") -> Recipient:
    return Recipient(address=address, status=status, reason=reason, hard=True, action="failed")


def soft(address: str, reason: str = "mailboxfull", action: str = "failed") -> Recipient:
    return Recipient(address=address, status="4.2.2", reason=reason, hard=False, action=action)


def raw(n: int) -> RawInfo:
    return RawInfo(sha256=f"{n:064x}", size=100 + n)


# --------------------------------------------------------------------------- schema


def test_open_creates_every_table_with_a_tenant_column(store: Store) -> None:
    assert store.schema_version() == migrations.LATEST
    for table in ("bounces", "complaints", "unsubscribes", "suppressions", "autoreplies"):
        if store.dialect == "sqlite":
            cols = [r[1] for r in store._db.execute(f"PRAGMA table_info({table})").fetchall()]
        else:
            cols = [
                r[0]
                for r in store._db.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                    (table,),
                ).fetchall()
            ]
        assert "tenant" in cols, table
    versions = [r[0] for r in store._db.execute("SELECT version FROM schema_version").fetchall()]
    assert sorted(versions) == [m.version for m in migrations.MIGRATIONS]


def test_reopening_applies_nothing_and_keeps_rows(url: str) -> None:
    with Store.open(url) as s:
        s.suppress("a@example.com", "manual", now=NOW)
    with Store.open(url) as s:
        assert s.migrate() == []
        assert s.get("a@example.com", now=NOW) is not None


def test_upgrade_from_version_1_keeps_data(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    monkeypatch.setattr(migrations, "LATEST", 1)
    with Store.open(url) as s:
        assert s.schema_version() == 1
        s.suppress("old@example.com", "manual", now=NOW)
        assert "autoreplies" not in s.counts()
    monkeypatch.undo()
    with Store.open(url, migrate=False) as s:
        assert s.migrate() == list(range(2, migrations.LATEST + 1))
        assert s.schema_version() == migrations.LATEST
        assert s.get("old@example.com", now=NOW) is not None
        assert s.counts()["autoreplies"] == 0
        assert s.tenant_states() == {}


def test_pausing_a_tenant_is_recorded_once(url: str) -> None:
    with Store.open(url) as s:
        assert s.set_tenant_paused("alpha", True, reason="complaints", by="ops", now=NOW)
        assert not s.set_tenant_paused("alpha", True, reason="again", by="ops", now=NOW + 1)
        state = s.tenant_states()["alpha"]
        assert (state.paused, state.reason, state.changed_at) == (True, "complaints", NOW)
        assert s.set_tenant_paused("alpha", False, by="ops", now=NOW + 2)
        assert not s.tenant_states()["alpha"].paused


def test_a_newer_schema_is_refused(url: str) -> None:
    with Store.open(url) as s:
        s._db.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
            (migrations.LATEST + 1, "from the future", NOW),
        )
    with pytest.raises(StoreError, match="newer than this mailops"):
        Store.open(url)


# --------------------------------------------------------------------------- bounces


def test_hard_bounce_suppresses_at_once(store: Store) -> None:
    out = store.record_report(bounce(hard("Gone@Example.COM")), RAW, now=NOW)
    assert (out.stored, out.duplicates, out.suppressed) == (1, 0, ["gone@example.com"])
    entry = store.get("gone@example.com", now=NOW + 400 * DAY)
    assert entry is not None
    assert (entry.reason, entry.source, entry.expires_at) == ("userunknown", "bounce", None)
    row = store.rows("bounces")[0]
    assert (row["address"], row["status"], row["hard"], row["tenant"]) == (
        "gone@example.com",
        "5.1.1",
        1,
        "",
    )


def test_same_bounce_twice_adds_one_row(store: Store) -> None:
    report = bounce(hard("a@example.com"), hard("b@example.com"))
    first = store.record_report(report, raw(1), now=NOW)
    # A resent copy: different bytes (new Received: lines), same Message-ID.
    again = store.record_report(report, raw(2), now=NOW + 60)
    assert (first.stored, again.stored, again.duplicates) == (2, 0, 2)
    assert len(store.rows("bounces")) == 2


def test_without_message_id_the_raw_hash_dedups(store: Store) -> None:
    report = bounce(hard("a@example.com"), message_id="")
    assert store.record_report(report, raw(7), now=NOW).stored == 1
    assert store.record_report(report, raw(7), now=NOW).stored == 0
    assert store.record_report(report, raw(8), now=NOW).stored == 1  # a different message
    assert len(store.rows("bounces")) == 2


def test_soft_bounces_suppress_after_threshold_within_window(store: Store) -> None:
    addr = "full@example.com"
    for i in range(2):
        out = store.record_report(bounce(soft(addr), message_id=f"<s{i}@x>"), raw(i), now=NOW + i)
        assert out.suppressed == []
    out = store.record_report(bounce(soft(addr), message_id="<s2@x>"), raw(2), now=NOW + 2)
    assert out.suppressed == [addr]
    entry = store.get(addr, now=NOW + 3)
    assert entry is not None
    assert (entry.source, entry.reason) == ("soft", "mailboxfull")
    assert entry.expires_at == NOW + 2 + 30 * DAY
    # ...and it expires.
    assert store.get(addr, now=NOW + 31 * DAY) is None
    assert list(store.suppressions(now=NOW + 31 * DAY)) == []
    assert len(list(store.suppressions(include_expired=True, now=NOW + 31 * DAY))) == 1
    assert store.prune(now=NOW + 31 * DAY) == 1


def test_soft_bounces_outside_the_window_do_not_count(store: Store) -> None:
    addr = "slow@example.com"
    for i, t in enumerate((NOW, NOW + 8 * DAY, NOW + 16 * DAY)):
        out = store.record_report(bounce(soft(addr), message_id=f"<w{i}@x>"), raw(i), now=t)
        assert out.suppressed == []


def test_policy_from_arguments(url: str) -> None:
    with Store.open(url, policy=Policy(soft_threshold=1, expire_days=0)) as s:
        out = s.record_report(bounce(soft("x@example.com")), RAW, now=NOW)
        assert out.suppressed == ["x@example.com"]
        entry = s.get("x@example.com", now=NOW + 1000 * DAY)
        assert entry is not None and entry.expires_at is None  # expire_days 0: never


def test_delay_notices_never_count(store: Store) -> None:
    for i in range(5):
        report = bounce(soft("late@example.com", action="delayed"), message_id=f"<d{i}@x>")
        assert store.record_report(report, raw(i), now=NOW + i).suppressed == []
    assert len(store.rows("bounces")) == 5


def test_delivery_clears_soft_history(store: Store) -> None:
    addr = "flaky@example.com"
    for i in range(2):
        store.record_report(bounce(soft(addr), message_id=f"<f{i}@x>"), raw(i), now=NOW + i)
    assert store.record_delivery(addr, at=NOW + 10, now=NOW + 10) == 2
    out = store.record_report(bounce(soft(addr), message_id="<f2@x>"), raw(2), now=NOW + 20)
    assert out.suppressed == []  # one soft bounce since the delivery
    assert all(r["cleared_at"] == NOW + 10 for r in store.rows("bounces") if r["id"] != 3)


def test_an_older_delivery_does_not_clear_newer_bounces(store: Store) -> None:
    addr = "flaky@example.com"
    for i in range(2):
        store.record_report(bounce(soft(addr), message_id=f"<g{i}@x>"), raw(i), now=NOW + 100)
    assert store.record_delivery(addr, at=NOW, now=NOW + 200) == 0
    out = store.record_report(bounce(soft(addr), message_id="<g2@x>"), raw(2), now=NOW + 300)
    assert out.suppressed == [addr]


def test_delivery_report_in_a_dsn_clears_and_lifts_soft_suppression(store: Store) -> None:
    addr = "back@example.com"
    for i in range(3):
        store.record_report(bounce(soft(addr), message_id=f"<b{i}@x>"), raw(i), now=NOW + i)
    assert store.get(addr, now=NOW + 5) is not None
    ok = Recipient(address=addr, status="2.0.0", reason="delivered", hard=False, action="relayed")
    out = store.record_report(bounce(ok, message_id="<ok@x>"), raw(9), now=NOW + 10)
    assert out.cleared == 4 and out.stored == 0
    assert store.get(addr, now=NOW + 11) is None


def test_delivery_never_clears_hard_suppression(store: Store) -> None:
    store.record_report(bounce(hard("dead@example.com")), RAW, now=NOW)
    store.record_delivery("dead@example.com", at=NOW + 10, now=NOW + 10)
    assert store.get("dead@example.com", now=NOW + 20) is not None


def test_hard_replaces_soft_but_soft_never_shortens_hard(store: Store) -> None:
    store.suppress("s@example.com", "mailboxfull", source="soft", expires_at=NOW + DAY, now=NOW)
    store.record_report(bounce(hard("s@example.com")), raw(1), now=NOW + 1)
    entry = store.get("s@example.com", now=NOW + 2 * DAY)
    assert entry is not None and entry.expires_at is None and entry.source == "bounce"
    with Store.open(store.url, policy=Policy(soft_threshold=1)) as s:
        s.record_report(bounce(soft("s@example.com"), message_id="<z@x>"), raw(2), now=NOW + 5)
    entry = store.get("s@example.com", now=NOW + 400 * DAY)
    assert entry is not None and entry.reason == "userunknown" and entry.expires_at is None


def test_bounce_without_recipients_is_kept_for_linking(store: Store) -> None:
    report = bounce(original_message_id="<sent-1@app>", verp_token="t0k3n")
    out = store.record_report(report, RAW, now=NOW)
    assert out.stored == 1 and out.suppressed == []
    row = store.rows("bounces")[0]
    assert (row["address"], row["original_message_id"], row["verp_token"]) == (
        "",
        "<sent-1@app>",
        "t0k3n",
    )


def test_other_kinds_store_nothing(store: Store) -> None:
    for kind in ("autoreply", "other"):
        report = Report(kind=kind, detector="x", recipients=(hard("a@example.com"),))  # type: ignore[arg-type]
        assert store.record_report(report, RAW, now=NOW).stored == 0
    assert store.counts()["bounces"] == 0


# --------------------------------------------------------------------------- complaints


def test_complaint_suppresses_at_once_and_dedups(store: Store) -> None:
    report = Report(
        kind="feedback",
        detector="arf",
        recipients=(Recipient("angry@example.com", "", "feedback", True),),
        feedback_type="abuse",
        message_id="<fbl-1@isp>",
        source_ip="198.51.100.7",
    )
    out = store.record_report(report, RAW, now=NOW)
    assert out.suppressed == ["angry@example.com"]
    assert store.record_report(report, raw(3), now=NOW + 1).duplicates == 1
    assert len(store.rows("complaints")) == 1
    entry = store.get("angry@example.com", now=NOW)
    assert entry is not None and (entry.reason, entry.expires_at) == ("complaint", None)


def test_not_spam_and_auth_failure_reports_suppress_nothing(store: Store) -> None:
    for i, ftype in enumerate(("not-spam", "auth-failure")):
        report = Report(
            kind="feedback",
            detector="arf",
            recipients=(Recipient("fine@example.com", "", "feedback", False),),
            feedback_type=ftype,
            message_id=f"<n{i}@isp>",
        )
        assert store.record_report(report, raw(i), now=NOW).suppressed == []
    assert store.get("fine@example.com", now=NOW) is None
    assert len(store.rows("complaints")) == 2


# --------------------------------------------------------------------------- safety


def test_a_failure_mid_report_leaves_no_rows(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = Store._suppress

    def failing(self: Store, *args: object) -> bool:
        calls.append(args)
        if len(calls) == 2:
            raise StoreError("disk full (simulated)")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "_suppress", failing)
    report = bounce(hard("one@example.com"), hard("two@example.com"))
    with pytest.raises(StoreError):
        store.record_report(report, RAW, now=NOW)
    monkeypatch.undo()
    assert store.counts()["bounces"] == 0
    assert store.counts()["suppressions"] == 0
    # The retry stores it whole.
    assert store.record_report(report, RAW, now=NOW).stored == 2


def test_stored_fields_are_single_line_and_valid_text(store: Store) -> None:
    nasty = Recipient(
        address="a@example.com",
        status="5.1.1\r\nX-Injected: 1",
        reason="not-a-reason",
        hard=True,
        action="failed",
        remote_mta="mx\x00.example\u2028",
        diagnostic="550 no such user\r\nBcc: victim@example.com\udcff" + "x" * 5000,
    )
    store.record_report(bounce(nasty, message_id="<m\n@x>", verp_token="\x1b[31m"), RAW, now=NOW)
    row = store.rows("bounces")[0]
    for value in row.values():
        if isinstance(value, str):
            assert not any(c in value for c in "\r\n\x00\x1b\u2028"), value
            value.encode("utf-8")
    assert row["reason"] == "undefined"
    assert len(row["diagnostic"]) <= 1000


def complaint(address: str, n: int, feedback_type: str = "abuse") -> Report:
    return Report(
        kind="feedback",
        detector="arf",
        recipients=(Recipient(address, "", "feedback", True),),
        feedback_type=feedback_type,
        message_id=f"<fbl-{n}@isp>",
    )


def test_rows_carry_the_tenant_of_the_mail_suppressions_are_global(store: Store) -> None:
    store.record_report(bounce(hard("a@example.com")), RAW, tenant="alpha", now=NOW)
    store.record_report(complaint("b@example.com", 1), raw(1), tenant="beta", now=NOW)
    assert [r["tenant"] for r in store.rows("bounces")] == ["alpha"]
    assert [r["tenant"] for r in store.rows("complaints")] == ["beta"]
    assert [(e.tenant, e.address, e.source) for e in store.suppressions(tenant=None)] == [
        ("", "a@example.com", "bounce"),
        ("", "b@example.com", "complaint"),
    ]


def test_a_scope_puts_the_suppressions_under_that_tenant(store: Store) -> None:
    store.record_report(bounce(hard("a@example.com")), RAW, scope="client1", now=NOW)
    assert store.get("a@example.com", tenant="client1", now=NOW) is not None
    assert store.get("a@example.com", now=NOW) is None


def test_a_report_stored_under_another_tenant_is_still_a_duplicate(store: Store) -> None:
    # The first arrival was stored before the tenant was known (or under another one).
    assert store.record_report(bounce(hard("a@example.com")), RAW, now=NOW).stored == 1
    again = store.record_report(bounce(hard("a@example.com")), RAW, tenant="alpha", now=NOW)
    assert (again.stored, again.duplicates) == (0, 1)
    assert store.record_report(complaint("b@example.com", 1), raw(1), now=NOW).stored == 1
    again = store.record_report(complaint("b@example.com", 1), raw(1), tenant="beta", now=NOW)
    assert (again.stored, again.duplicates) == (0, 1)
    assert (len(store.rows("bounces")), len(store.rows("complaints"))) == (1, 1)


def test_soft_bounces_count_per_address_over_every_tenant(store: Store) -> None:
    addr = "full@example.com"
    for n, tenant in enumerate(("alpha", "beta")):
        out = store.record_report(
            bounce(soft(addr), message_id=f"<s{n}@mx>"), raw(n), tenant=tenant, now=NOW + n
        )
        assert out.suppressed == []
    out = store.record_report(bounce(soft(addr), message_id="<s2@mx>"), raw(2), now=NOW + 2)
    assert out.suppressed == [addr]
    entry = store.get(addr, now=NOW + 3)
    assert entry is not None and entry.source == "soft"
    assert addr in store.soft_addresses(now=NOW + 3)
    # A delivery of anybody's mail clears everybody's soft history.
    assert store.record_delivery(addr, at=NOW + 3, now=NOW + 3) == 4
    assert store.get(addr, now=NOW + 4) is None
    assert store.soft_addresses(now=NOW + 4) == set()


def test_removing_a_global_entry_clears_every_tenants_soft_history(store: Store) -> None:
    addr = "full@example.com"
    for n, tenant in enumerate(("alpha", "beta")):
        store.record_report(
            bounce(soft(addr), message_id=f"<s{n}@mx>"), raw(n), tenant=tenant, now=NOW
        )
    store.suppress(addr, "manual", now=NOW)
    assert store.unsuppress([addr], now=NOW + 1) == 1
    assert [r["cleared_at"] for r in store.rows("bounces")] == [NOW + 1, NOW + 1]


def test_complaint_origins(store: Store) -> None:
    store.record_report(complaint("x@example.com", 1), raw(1), tenant="alpha", now=NOW)
    store.record_report(complaint("X@example.com", 2), raw(2), tenant="beta", now=NOW)
    store.record_report(complaint("y@example.com", 3), raw(3), now=NOW)
    store.record_report(complaint("z@example.com", 4, "not-spam"), raw(4), tenant="alpha", now=NOW)
    assert store.complaint_origins() == {"x@example.com": {"alpha", "beta"}, "y@example.com": {""}}
    assert store.complaint_origins(["X@Example.com", "z@example.com"]) == {
        "x@example.com": {"alpha", "beta"}
    }
    assert store.complaint_origins([]) == {}


# --------------------------------------------------------------------------- other writes


def test_unsubscribe_is_recorded_once_and_suppresses(store: Store) -> None:
    assert store.record_unsubscribe("Reader@Example.com", dedup_key="k1", now=NOW)
    assert not store.record_unsubscribe("reader@example.com", dedup_key="k1", now=NOW)
    assert len(store.rows("unsubscribes")) == 1
    entry = store.get("reader@example.com", now=NOW + 1000 * DAY)
    assert entry is not None and (entry.reason, entry.source) == ("unsubscribe", "unsubscribe")


def test_manual_add_replaces_and_remove_clears_soft_history(store: Store) -> None:
    addr = "x@example.com"
    store.record_report(bounce(hard(addr)), RAW, now=NOW)
    assert store.suppress(addr, "manual", note="asked by phone", now=NOW + 1)
    entry = store.get(addr, now=NOW + 2)
    assert entry is not None and (entry.reason, entry.note) == ("manual", "asked by phone")
    assert entry.created_at == NOW  # replaced, not re-created
    with Store.open(store.url, policy=Policy(soft_threshold=2)) as s:
        s.record_report(bounce(soft("y@example.com"), message_id="<1@x>"), raw(1), now=NOW)
        assert s.unsuppress(["y@example.com"], now=NOW + 1) == 0
        out = s.record_report(bounce(soft("y@example.com"), message_id="<2@x>"), raw(2), now=NOW)
        assert out.suppressed == []  # the first one was cleared by remove
    assert store.unsuppress([addr]) == 1
    assert store.get(addr, now=NOW + 3) is None


def test_suppress_refuses_what_cannot_be_an_address(store: Store) -> None:
    for bad in ("", "no-at-sign", "a b@example.com", "#x@example.com", "a@b@c"):
        with pytest.raises(ValueError, match="suppressible"):
            store.suppress(bad, "manual")


def test_autoreply_slot_once_per_period(store: Store) -> None:
    with store.autoreply_slot("p@example.com", period=7 * DAY, now=NOW) as ok:
        assert ok
    with store.autoreply_slot("p@example.com", period=7 * DAY, now=NOW + DAY) as ok:
        assert not ok
    with store.autoreply_slot("p@example.com", period=7 * DAY, now=NOW + 8 * DAY) as ok:
        assert ok
    assert store.rows("autoreplies")[0]["replies"] == 2


def test_autoreply_slot_is_not_taken_when_sending_fails(store: Store) -> None:
    with (
        pytest.raises(RuntimeError),
        store.autoreply_slot("q@example.com", period=DAY, now=NOW) as ok,
    ):
        assert ok
        raise RuntimeError("sendmail failed")
    with store.autoreply_slot("q@example.com", period=DAY, now=NOW + 1) as ok:
        assert ok


def test_soft_addresses_are_the_ones_a_delivery_could_clear(store: Store) -> None:
    store.record_report(bounce(soft("s1@example.com"), message_id="<1@x>"), raw(1), now=NOW)
    store.record_report(bounce(hard("h1@example.com"), message_id="<2@x>"), raw(2), now=NOW)
    store.record_report(
        bounce(soft("old@example.com"), message_id="<3@x>"), raw(3), now=NOW - 30 * DAY
    )
    assert store.soft_addresses(now=NOW + 1) == {"s1@example.com"}


# --------------------------------------------------------------------------- failures


def test_urls() -> None:
    assert sqlite_path("sqlite:////var/lib/mailops/mailops.db") == "/var/lib/mailops/mailops.db"
    assert sqlite_path("sqlite:///rel.db") == "rel.db"
    assert sqlite_path("sqlite://") == ":memory:"
    with pytest.raises(StoreURLError):
        Store.open("mysql://x@y/z")
    with pytest.raises(StoreURLError):
        Store.open("sqlite:/x.db")
    assert redact("postgresql://mailops:s3cret@db.example:5432/mailops") == (
        "postgresql://mailops:***@db.example:5432/mailops"
    )
    assert "s3cret" not in redact("postgresql://:s3cret@db/x")


def test_sqlite_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        Store.open(f"sqlite:///{tmp_path}/no/such/dir/m.db")


def test_sqlite_locked_is_a_store_error_within_the_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    Store.open(url).close()
    holder = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with Store.open(url, timeout=0.2) as s, pytest.raises(StoreError, match="locked"):
            s.record_report(bounce(hard("a@example.com")), RAW, now=NOW)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open(url) as s:
        assert s.record_report(bounce(hard("a@example.com")), RAW, now=NOW).stored == 1


def test_postgresql_unreachable_is_a_store_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError, match="cannot open store") as exc:
        Store.open(f"postgresql://mailops:pw@127.0.0.1:{port}/mailops", timeout=2)
    assert "pw@" not in str(exc.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the case is a root cron job")
def test_a_store_root_opens_first_stays_writable_for_the_pipes_user(tmp_path: Path) -> None:
    """cron's jobs run as root, the pipes as the mailops user: whoever opens the SQLite
    store first, the pipe's user can still write to it afterwards (the molecule
    scenario's bounce waited in the queue when root's sync had made the file)."""
    nobody = 65534
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, nobody, nobody)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if parent.stat().st_mode & 0o001 == 0 and str(parent).startswith("/tmp/"):
            parent.chmod(parent.stat().st_mode | 0o001)
    db = folder / "mailops.db"
    with Store.open(f"sqlite:///{db}", timeout=5):
        owners = {p.name: p.stat().st_uid for p in folder.iterdir()}
        pid = os.fork()
        if pid == 0:  # the pipe's user, while root's connection is still open
            code = 1
            try:
                os.setgid(nobody)
                os.setuid(nobody)
                conn = sqlite3.connect(db, timeout=5, isolation_level=None)
                conn.execute("CREATE TABLE pipe_wrote (x)")
                conn.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert owners == {"mailops.db": nobody, "mailops.db-wal": nobody, "mailops.db-shm": nobody}
    assert os.waitstatus_to_exitcode(status) == 0, "the pipe's user could not write"
