"""``mailops tenants sync``: a SQLite store, and stand-ins for postqueue and postsuper.

The stand-ins (first on PATH) keep a small queue in a JSON file: ``postqueue -j`` prints
it, ``postsuper -h -``/``-H -`` move the ids read from stdin to or from "hold",
``postqueue -i ID`` records the flush; every call is logged, and a ``fail-<name>`` file
makes that command fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.store import Store

FAKE = """#!{python}
import json, os, sys
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
name = os.path.basename(sys.argv[0])
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open(os.path.join(here, "calls.log"), "a") as fh:
    given = " < " + " ".join(stdin.split()) if stdin else ""
    fh.write(" ".join([name] + sys.argv[1:]) + given + chr(10))
if os.path.exists(os.path.join(here, "fail-" + name)):
    print(name + ": fatal: the stand-in was told to fail", file=sys.stderr)
    sys.exit(1)
path = os.path.join(here, "queue.json")
queue = json.load(open(path))
if name == "postqueue" and sys.argv[1] == "-j":
    for m in queue:
        print(json.dumps(m))
elif name == "postqueue" and sys.argv[1] == "-i":
    if not any(m["queue_id"] == sys.argv[2] for m in queue):
        print("postqueue: fatal: no such queue id", file=sys.stderr)
        sys.exit(1)
elif name == "postsuper":
    ids = set(stdin.split())
    for m in queue:
        if m["queue_id"] in ids:
            if sys.argv[1] == "-h":
                m["queue_name"] = "hold"
            elif sys.argv[1] == "-H" and m["queue_name"] == "hold":
                m["queue_name"] = "deferred"
    json.dump(queue, open(path, "w"))
else:
    sys.exit(64)
"""

CONFIG = """
[store]
url = "sqlite:///{tmp}/store.db"

[tenants.alpha]
domains = ["alpha.test"]
logins = ["alpha"]
transports = ["pool_alpha_1"]

[tenants.beta]
domains = ["beta.test"]
logins = ["beta"]
complaints = "{beta_complaints}"

[tenants_sync]
state = "{tmp}/lib/tenants.json"
snapshot = "{tmp}/lib/snapshot.db"
"""


def message(queue_id: str, sender: str, queue_name: str = "deferred") -> dict[str, Any]:
    return {
        "queue_name": queue_name,
        "queue_id": queue_id,
        "arrival_time": 1765100000,
        "message_size": 900,
        "forced_expire": False,
        "sender": sender,
        "recipients": [{"address": "alice@gmail.test"}],
    }


class Node:
    """A bulk node's view: settings, the store, the queue stand-ins."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, beta_complaints: str) -> None:
        self.tmp = tmp
        self.conf = tmp / "mailops.toml"
        self.conf.write_text(
            CONFIG.replace("{tmp}", str(tmp)).replace("{beta_complaints}", beta_complaints)
        )
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name in ("postqueue", "postsuper"):
            script = bin_dir / name
            script.write_text(FAKE.replace("{python}", sys.executable))
            script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.delenv("MAILOPS_PIPE", raising=False)
        self.queue: list[dict[str, Any]] = []
        self.save_queue()
        self.store = Store.open(f"sqlite:///{tmp}/store.db")

    def save_queue(self) -> None:
        (self.tmp / "queue.json").write_text(json.dumps(self.queue))

    def load_queue(self) -> dict[str, str]:
        return {
            m["queue_id"]: m["queue_name"]
            for m in json.loads((self.tmp / "queue.json").read_text())
        }

    def calls(self) -> list[str]:
        log = self.tmp / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return lines

    def sync(self, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, str]:
        rc = cli.main(["--config", str(self.conf), "tenants", "sync", *more])
        return rc, capsys.readouterr().err

    def state(self) -> dict[str, Any]:
        data = json.loads((self.tmp / "lib" / "tenants.json").read_text())
        assert data["format"] == 1
        return dict(data["tenants"])

    def snapshot(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.tmp / "lib" / "snapshot.db")
        try:
            return sorted(db.execute(sql).fetchall())
        finally:
            db.close()

    def complaint(self, tenant: str, address: str, feedback_type: str = "abuse") -> None:
        db = sqlite3.connect(self.tmp / "store.db")
        with db:
            db.execute(
                "INSERT INTO complaints (tenant, dedup_key, received_at, address, feedback_type)"
                " VALUES (?, ?, 1765100000, ?, ?)",
                (tenant, f"{tenant}-{address}-{feedback_type}", address, feedback_type),
            )
        db.close()


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    return Node(tmp_path, monkeypatch, "tenant")


# --------------------------------------------------------------------------- the files


def test_the_snapshot_holds_what_tenant_mail_meets(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    store = node.store
    store.suppress("gone@gmail.test", "userunknown", source="bounce")
    store.suppress("spam@outlook.test", "complaint", source="complaint")
    store.suppress("bye@gmail.test", "unsubscribe", tenant="alpha", source="unsubscribe")
    store.suppress("other@gmail.test", "unsubscribe", tenant="zeta", source="unsubscribe")
    store.suppress("old@gmail.test", "mailboxfull", source="soft", expires_at=1000)
    node.complaint("alpha", "spam@outlook.test")
    node.complaint("beta", "nice@outlook.test", "not-spam")
    node.complaint("zeta", "spam@outlook.test")
    rc, err = node.sync(capsys, "-v")
    assert (rc, err) == (exitcodes.OK, "")
    assert node.snapshot("SELECT address, tenant, reason, source FROM suppressed") == [
        ("bye@gmail.test", "alpha", "unsubscribe", "unsubscribe"),
        ("gone@gmail.test", "", "userunknown", "bounce"),
        ("spam@outlook.test", "", "complaint", "complaint"),
    ]
    # Only complaints that suppress, about configured tenants' mail.
    assert node.snapshot("SELECT address, tenant FROM complaint_origins") == [
        ("spam@outlook.test", "alpha")
    ]
    active = {"paused": False, "reason": "", "changed_at": 0, "changed_by": "", "queue": "active"}
    assert node.state() == {"alpha": active, "beta": active}
    assert node.calls() == []  # nobody paused: the queue is not even listed
    # Nothing changed: the snapshot is left as it is (the policy keeps its open file).
    inode = (node.tmp / "lib" / "snapshot.db").stat().st_ino
    assert node.sync(capsys)[0] == exitcodes.OK
    assert (node.tmp / "lib" / "snapshot.db").stat().st_ino == inode
    store.unsuppress(["gone@gmail.test"])
    assert node.sync(capsys)[0] == exitcodes.OK
    assert (node.tmp / "lib" / "snapshot.db").stat().st_ino != inode
    assert ("gone@gmail.test",) not in node.snapshot("SELECT address FROM suppressed")


def test_complaint_origins_are_not_read_when_every_tenant_takes_all_complaints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, monkeypatch, "global")
    node.complaint("alpha", "spam@outlook.test")
    assert node.sync(capsys)[0] == exitcodes.OK
    assert node.snapshot("SELECT * FROM complaint_origins") == []


def test_a_dead_store_keeps_the_last_files_and_exits_75(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.store.set_tenant_paused("alpha", True, reason="lab")
    assert node.sync(capsys)[0] == exitcodes.OK
    before = {p.name: p.read_bytes() for p in (node.tmp / "lib").iterdir()}
    node.store.close()
    (node.tmp / "store.db").unlink()
    (node.tmp / "store.db").mkdir()  # cannot be opened as a database any more
    rc, err = node.sync(capsys)
    assert rc == exitcodes.TEMPFAIL
    assert len(err.splitlines()) == 1 and "keeping the last state and snapshot" in err, err
    assert {p.name: p.read_bytes() for p in (node.tmp / "lib").iterdir()} == before


# --------------------------------------------------------------------------- pause and resume


def test_pause_holds_the_tenants_queued_mail_and_resume_releases_it(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.queue = [
        message("A1", "news@alpha.test"),
        message("A2", "news@mail.alpha.test", "active"),
        message("A3", "news@alpha.test", "hold"),  # held already (by the policy)
        message("B1", "news@beta.test"),
        message("N1", ""),  # a bounce: nobody's
        message("X1", "news@alpha.test.example"),
    ]
    node.save_queue()
    assert node.sync(capsys)[0] == exitcodes.OK
    assert node.calls() == []

    node.store.set_tenant_paused("alpha", True, reason="complaints", by="ops")
    rc, err = node.sync(capsys)
    assert (rc, err) == (exitcodes.OK, "")
    assert node.calls() == ["postqueue -j", "postsuper -h - < A1 A2"]
    assert node.load_queue() == {
        "A1": "hold", "A2": "hold", "A3": "hold", "B1": "deferred", "N1": "deferred",
        "X1": "deferred",
    }  # fmt: skip
    state = node.state()
    assert state["alpha"]["paused"] is True and state["alpha"]["queue"] == "held"
    assert (state["alpha"]["reason"], state["alpha"]["changed_by"]) == ("complaints", "ops")
    assert state["beta"]["paused"] is False

    # Still paused: mail that got into the queue meanwhile is held too.
    node.queue = [*json.loads((node.tmp / "queue.json").read_text()), message("A4", "x@alpha.test")]
    node.save_queue()
    assert node.sync(capsys)[0] == exitcodes.OK
    assert node.calls() == ["postqueue -j", "postsuper -h - < A4"]

    node.store.set_tenant_paused("alpha", False)
    assert node.sync(capsys)[0] == exitcodes.OK
    assert node.calls() == [
        "postqueue -j",
        "postsuper -H - < A1 A2 A3 A4",
        "postqueue -i A1",
        "postqueue -i A2",
        "postqueue -i A3",
        "postqueue -i A4",
    ]
    assert set(node.load_queue().values()) == {"deferred"}
    after = node.state()["alpha"]
    assert (after["paused"], after["queue"]) == (False, "releasing")
    # One more release for what the policy held just before it saw the resume...
    node.queue = [
        *json.loads((node.tmp / "queue.json").read_text()),
        message("A5", "y@alpha.test", "hold"),
    ]
    node.save_queue()
    assert node.sync(capsys)[0] == exitcodes.OK
    assert node.calls() == ["postqueue -j", "postsuper -H - < A5", "postqueue -i A5"]
    assert node.state()["alpha"]["queue"] == "active"
    # ... and then the queue is left alone (an operator's own holds stay).
    node.queue = [
        *json.loads((node.tmp / "queue.json").read_text()),
        message("A6", "z@alpha.test", "hold"),
    ]
    node.save_queue()
    assert node.sync(capsys)[0] == exitcodes.OK
    assert node.calls() == []
    assert node.load_queue()["A6"] == "hold"


def test_a_failed_hold_or_release_is_tried_again_next_run(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.queue = [message("A1", "news@alpha.test")]
    node.save_queue()
    node.store.set_tenant_paused("alpha", True)
    (node.tmp / "fail-postsuper").touch()
    rc, err = node.sync(capsys)
    assert rc == exitcodes.TEMPFAIL
    assert err.splitlines() == [
        "mailops tenants sync: tenant alpha: holding 1 messages: postsuper -h failed (1):"
        " postsuper: fatal: the stand-in was told to fail"
    ]
    # The policy holds new mail all the same: the state file says paused.
    assert node.state()["alpha"]["paused"] is True
    assert node.load_queue() == {"A1": "deferred"}
    (node.tmp / "fail-postsuper").unlink()
    assert node.sync(capsys) == (exitcodes.OK, "")
    assert node.load_queue() == {"A1": "hold"}

    node.store.set_tenant_paused("alpha", False)
    (node.tmp / "fail-postqueue").touch()  # cannot even list the queue
    rc, err = node.sync(capsys)
    assert rc == exitcodes.TEMPFAIL and "cannot list the queue" in err, err
    assert node.state()["alpha"] == {**node.state()["alpha"], "paused": False, "queue": "held"}
    (node.tmp / "fail-postqueue").unlink()
    node.calls()
    assert node.sync(capsys) == (exitcodes.OK, "")
    assert node.calls() == ["postqueue -j", "postsuper -H - < A1", "postqueue -i A1"]
    assert node.load_queue() == {"A1": "deferred"}


def test_mail_the_policy_held_is_released_even_if_no_hold_of_the_queue_succeeded(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pause of one run whose postqueue failed: the state file said paused all the
    same, so the policy held A1; the resume must release it (it stayed on hold for ever)."""
    node.store.set_tenant_paused("alpha", True)
    (node.tmp / "fail-postqueue").touch()
    rc, err = node.sync(capsys)
    assert rc == exitcodes.TEMPFAIL and "cannot list the queue" in err, err
    assert node.state()["alpha"]["paused"] is True
    (node.tmp / "fail-postqueue").unlink()
    node.queue = [message("A1", "news@alpha.test", "hold")]  # the policy's HOLD
    node.save_queue()
    node.store.set_tenant_paused("alpha", False)
    node.calls()
    assert node.sync(capsys) == (exitcodes.OK, "")
    assert node.calls() == ["postqueue -j", "postsuper -H - < A1", "postqueue -i A1"]
    assert node.load_queue() == {"A1": "deferred"}


def test_a_big_release_sends_only_so_many_at_once(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One postqueue -i per message would hold the sync's lock for minutes on a release
    of tens of thousands; past the limit the queue manager's next scan sends them."""
    monkeypatch.setattr("mailops.tenants.sync.FLUSH_LIMIT", 2)
    node.queue = [message(f"A{i}", "news@alpha.test") for i in range(5)]
    node.save_queue()
    node.store.set_tenant_paused("alpha", True)
    assert node.sync(capsys)[0] == exitcodes.OK
    node.store.set_tenant_paused("alpha", False)
    node.calls()
    rc, err = node.sync(capsys, "-v")
    assert (rc, set(node.load_queue().values())) == (exitcodes.OK, {"deferred"})
    assert node.calls() == [
        "postqueue -j",
        "postsuper -H - < A0 A1 A2 A3 A4",
        "postqueue -i A0",
        "postqueue -i A1",
    ]
    assert "3 released messages left to the queue manager's next scan" in err, err


def test_a_message_gone_before_its_flush_is_no_failure(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.queue = [message("A1", "news@alpha.test", "hold")]
    node.save_queue()
    node.store.set_tenant_paused("alpha", True)
    assert node.sync(capsys)[0] == exitcodes.OK
    node.store.set_tenant_paused("alpha", False)
    # postsuper releases it, then it is delivered before postqueue -i names it.
    fake = node.tmp / "bin" / "postsuper"
    fake.write_text(
        fake.read_text().replace(
            'json.dump(queue, open(path, "w"))', 'json.dump([], open(path, "w"))'
        )
    )
    rc, err = node.sync(capsys, "-v")
    assert rc == exitcodes.OK
    assert "warning: postqueue -i failed (1): postqueue: fatal: no such queue id" in err
    assert node.state()["alpha"]["queue"] == "releasing"


def test_one_sync_at_a_time(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    lock = node.tmp / "lib" / "tenants.json.lock"
    lock.parent.mkdir()
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        rc, err = node.sync(capsys)
    assert rc == exitcodes.OK
    assert err == "mailops tenants sync: another sync is running; leaving it to that one\n"
    assert not (node.tmp / "lib" / "tenants.json").exists()
    assert node.sync(capsys)[0] == exitcodes.OK
    assert (node.tmp / "lib" / "tenants.json").exists()


def test_the_files_are_readable_by_the_policy_user(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node.sync(capsys)[0] == exitcodes.OK
    for name in ("tenants.json", "snapshot.db"):
        assert (node.tmp / "lib" / name).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (node.tmp / "lib").iterdir()) == [
        "snapshot.db", "tenants.json", "tenants.json.lock",
    ]  # fmt: skip


def test_every_repeats_within_cron_s_minute_and_stops_at_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailops.tenants import sync

    clock = [1000.0]
    monkeypatch.setattr("mailops.tenants.sync.time.monotonic", lambda: clock[0])
    monkeypatch.setattr(
        "mailops.tenants.sync.time.sleep", lambda s: clock.__setitem__(0, clock[0] + s)
    )
    starts: list[float] = []

    def once() -> int:
        starts.append(clock[0] - 1000.0)
        clock[0] += 2.0  # a run takes two seconds
        return exitcodes.OK

    assert sync.repeat_within_minute(once, 20) == exitcodes.OK
    assert starts == [0.0, 20.0, 40.0]  # a fourth at 60 s would meet cron's next run
    starts.clear()
    clock[0] = 1000.0
    assert sync.repeat_within_minute(once, None) == exitcodes.OK
    assert starts == [0.0]
    codes = iter([exitcodes.OK, exitcodes.TEMPFAIL, exitcodes.OK])
    assert sync.repeat_within_minute(lambda: next(codes), 5) == exitcodes.TEMPFAIL
    assert next(codes) == exitcodes.OK  # the failed run was the last
