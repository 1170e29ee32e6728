"""``mailops tenants policy``: the real process, spoken to as smtpd speaks to it.

Each test starts ``mailops tenants policy`` with a settings file in its own directory,
writes the state file and the suppression snapshot with the sync's own writers, and
sends policy requests (name=value lines, an empty line) on stdin, reading each answer
from stdout with a deadline.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailops.store.text import normalize_address
from mailops.tenants import policy
from mailops.tenants.sync import SuppressionRow, write_snapshot, write_state
from tests.support.policyd import PolicyClient, PolicyDaemon

ROOT = Path(__file__).resolve().parent.parent
NOW = time.time()

CONFIG = """
[tenants.alpha]
domains = ["alpha.test"]
logins = ["alpha"]
pool = "alpha"
transports = ["pool_alpha_1", "pool_alpha_2"]

[tenants.beta]
domains = ["beta.test"]
logins = ["beta", "beta-app"]
pool = "beta"
complaints = "tenant"
transports = ["pool_beta_1"]

[tenants.gamma]
domains = ["gamma.test"]
logins = ["gamma"]
pool = "gamma"

[transport_classes]
gmail = ["gmail.test", "gmail.com"]
microsoft = ["outlook.test"]

[tenants_sync]
state = "{tmp}/tenants.json"
snapshot = "{tmp}/snapshot.db"

[tenants_policy]
postlog = "{tmp}/postlog"
"""

# A postlog stand-in: appends its arguments to a file.
POSTLOG = """#!/bin/sh
printf '%s\\n' "$*" >> "$(dirname "$0")/postlog.out"
"""

ROWS: list[SuppressionRow] = [
    ("gone@gmail.test", "", "userunknown", "bounce", None),
    ("spam@outlook.test", "", "complaint", "complaint", None),
    ("mine@outlook.test", "", "complaint", "complaint", None),
    ("bye@gmail.test", "alpha", "unsubscribe", "unsubscribe", None),
    ("tired@example.net", "", "mailboxfull", "soft", int(NOW) - 10),
    ("busy@example.net", "", "mailboxfull", "soft", int(NOW) + 3600),
    ("blocked@example.net", "", "manual", "manual", None),
]
# Complaints about beta's mail from mine@ (beta takes only its own complaints).
ORIGINS = [("mine@outlook.test", "beta"), ("spam@outlook.test", "alpha")]


class PolicyProcess:
    def __init__(self, conf: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MAILOPS_PIPE", "MAILOPS_CONFIG")}
        env["PYTHONPATH"] = str(ROOT / "scripts")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailops", "--config", str(conf), "tenants", "policy"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._buffer = b""

    def send(self, attrs: dict[str, str]) -> None:
        assert self.proc.stdin is not None
        lines = "".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n"
        self.proc.stdin.write(lines.encode())
        self.proc.stdin.flush()

    def read_answer(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n\n" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"no answer within {timeout} s; got {self._buffer!r}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"the service ended; stderr: {self.stderr()}"
                self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n\n")
        text = answer.decode()
        assert text.startswith("action="), text
        assert "\n" not in text, text
        return text[len("action=") :]

    def ask(self, **attrs: str) -> str:
        self.send(attrs)
        return self.read_answer()

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


def rcpt(login: str, recipient: str, **more: str) -> dict[str, str]:
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "198.51.100.30",
        "sasl_method": "PLAIN",
        "sasl_username": login,
        "sender": f"news@{login.split('-')[0]}.test",
        "recipient": recipient,
    }
    attrs.update(more)
    return attrs


def eom(login: str) -> dict[str, str]:
    attrs = rcpt(login, "")
    attrs["protocol_state"] = "END-OF-MESSAGE"
    attrs["recipient_count"] = "1"
    return attrs


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    conf = tmp_path / "mailops.toml"
    conf.write_text(CONFIG.replace("{tmp}", str(tmp_path)))
    postlog = tmp_path / "postlog"
    postlog.write_text(POSTLOG)
    postlog.chmod(0o755)
    write_snapshot(tmp_path / "snapshot.db", ROWS, ORIGINS)
    write_state(
        tmp_path / "tenants.json",
        {"alpha": {"paused": True, "reason": "lab", "queue": "held"}, "beta": {"paused": False}},
        NOW,
    )
    return {"conf": conf, "tmp": tmp_path}


@pytest.fixture
def service(setup: dict[str, Any]) -> Iterator[PolicyProcess]:
    proc = PolicyProcess(setup["conf"])
    yield proc
    assert proc.close() == 0, proc.stderr()


# --------------------------------------------------------------------------- who asks


def test_no_login_is_none_of_its_business(service: PolicyProcess) -> None:
    attrs = rcpt("", "gone@gmail.test")
    assert service.ask(**attrs) == "DUNNO"
    del attrs["sasl_username"]
    assert service.ask(**attrs) == "DUNNO"
    end = eom("")
    assert service.ask(**end) == "DUNNO"


def test_a_login_of_no_tenant_is_deferred(service: PolicyProcess) -> None:
    answer = service.ask(**rcpt("mallory", "someone@gmail.test"))
    assert answer.startswith("DEFER_IF_PERMIT 4.7.1 "), answer
    assert "mallory" in answer


# --------------------------------------------------------------------------- suppression


def test_global_rows_stop_every_tenant_with_the_reason(service: PolicyProcess) -> None:
    for login in ("alpha", "beta", "gamma"):
        answer = service.ask(**rcpt(login, "<Gone@Gmail.TEST>"))
        assert answer == "550 5.7.1 recipient is suppressed: it bounced" + (" (userunknown)"), (
            login,
            answer,
        )
    answer = service.ask(**rcpt("beta", "blocked@example.net"))
    assert answer == "550 5.7.1 recipient is suppressed (manual)"


def test_an_unsubscribe_stops_only_its_own_tenant(service: PolicyProcess) -> None:
    assert service.ask(**rcpt("alpha", "bye@gmail.test")) == (
        "550 5.7.1 recipient unsubscribed from alpha"
    )
    assert service.ask(**rcpt("beta", "bye@gmail.test")) == "FILTER pool_beta_1_gmail:"


def test_complaints_are_global_unless_the_tenant_takes_only_its_own(
    service: PolicyProcess,
) -> None:
    complaint = "recipient is suppressed: a complaint was received from it (complaint)"
    # alpha takes everybody's complaints: both addresses are refused.
    assert service.ask(**rcpt("alpha", "spam@outlook.test")) == (f"550 5.7.1 {complaint}")
    assert service.ask(**rcpt("alpha", "mine@outlook.test")) == (f"550 5.7.1 {complaint}")
    # beta only its own: spam@ complained about alpha's mail, mine@ about beta's.
    assert service.ask(**rcpt("beta", "spam@outlook.test")) == "FILTER pool_beta_1_microsoft:"
    assert service.ask(**rcpt("beta-app", "mine@outlook.test")) == (f"550 5.7.1 {complaint}")


def test_an_expired_entry_counts_for_nothing(service: PolicyProcess) -> None:
    assert service.ask(**rcpt("beta", "tired@example.net")) == "FILTER pool_beta_1:"
    assert service.ask(**rcpt("beta", "busy@example.net")) == (
        "550 5.7.1 recipient is suppressed: it bounced repeatedly (mailboxfull)"
    )


# --------------------------------------------------------------------------- transports


def test_each_recipient_keeps_one_of_the_pools_transports_with_its_class(
    setup: dict[str, Any], service: PolicyProcess
) -> None:
    addresses = [f"user{i}@gmail.test" for i in range(40)] + ["x@elsewhere.example"]
    first = {a: service.ask(**rcpt("alpha", a)) for a in addresses}
    assert first["x@elsewhere.example"] in ("FILTER pool_alpha_1:", "FILTER pool_alpha_2:")
    gmail = {first[a] for a in addresses[:-1]}
    assert gmail == {"FILTER pool_alpha_1_gmail:", "FILTER pool_alpha_2_gmail:"}, gmail
    # Another process (another smtpd, another node) picks the same for each recipient.
    other = PolicyProcess(setup["conf"])
    try:
        again = {a: other.ask(**rcpt("alpha", a.upper())) for a in addresses}
    finally:
        assert other.close() == 0
    assert again == first


def test_a_tenant_without_transports_here_is_deferred_never_sent_from_shared_addresses(
    setup: dict[str, Any], service: PolicyProcess
) -> None:
    """gamma's pool has no address on this node: its SPF lists only the pool, so the
    shared addresses would fail it; a 4xx sends the client to another node."""
    for recipient in ("a@gmail.test", "b@gmail.test"):
        answer = service.ask(**rcpt("gamma", recipient))
        assert answer.startswith("DEFER_IF_PERMIT 4.3.5 tenant gamma has no sending address"), (
            answer
        )
    # A suppressed recipient is still refused for good, whatever the node.
    assert service.ask(**rcpt("gamma", "gone@gmail.test")).startswith("550 5.7.1 ")
    logged = (setup["tmp"] / "postlog.out").read_text().splitlines()
    assert len(logged) == 1, logged  # once per process, not once per recipient
    assert logged[0].startswith(
        "-t postfix/mailops-tenants -p warning tenant gamma: no address of pool gamma"
    )


def test_where_postlog_cannot_write_smtpd_logs_the_warning(
    setup: dict[str, Any], service: PolicyProcess
) -> None:
    """Debian's postlog is not set-gid: with maillog_file, the mailops user cannot log."""
    (setup["tmp"] / "postlog").write_text("#!/bin/sh\nexit 1\n")
    # A warning never replaces a decision: it waits for an answer that is DUNNO anyway.
    assert service.ask(**rcpt("gamma", "a@gmail.test")).startswith("DEFER_IF_PERMIT 4.3.5 ")
    assert service.ask(**rcpt("", "a@gmail.test")) == (
        "WARN mailops tenants policy: tenant gamma: no address of pool gamma on this host;"
        " its mail is deferred here"
    )
    assert service.ask(**rcpt("", "b@gmail.test")) == "DUNNO"
    (setup["tmp"] / "new.json").write_text("[]")
    (setup["tmp"] / "new.json").replace(setup["tmp"] / "tenants.json")
    assert service.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
    answer = service.ask(**eom("beta"))
    assert (
        answer.startswith("WARN mailops tenants policy: ") and "tenants.json: cannot use" in answer
    )
    assert service.ask(**eom("beta")) == "DUNNO"


# --------------------------------------------------------------------------- pause


def test_a_paused_tenants_message_is_held_at_the_end(service: PolicyProcess) -> None:
    # Recipients are still judged (and accepted) while paused; the message is held.
    assert service.ask(**rcpt("alpha", "someone@example.org")).startswith("FILTER pool_alpha_")
    assert service.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
    assert service.ask(**eom("beta")) == "DUNNO"
    assert service.ask(**eom("gamma")) == "DUNNO"  # no state recorded: active


def test_a_paused_tenants_null_sender_message_is_deferred_not_held(
    service: PolicyProcess,
) -> None:
    """The sync releases held mail by its sender's domain: a held message with the null
    sender (a tenant's auto-reply, its DSN) would stay on hold for ever after resume."""
    answer = service.ask(**{**eom("alpha"), "sender": ""})
    assert answer.startswith("451 4.7.1 tenant alpha is paused"), answer
    assert service.ask(**{**eom("beta"), "sender": ""}) == "DUNNO"


def test_changes_to_the_files_are_seen_without_a_restart(
    setup: dict[str, Any], service: PolicyProcess
) -> None:
    tmp = setup["tmp"]
    assert service.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
    assert service.ask(**rcpt("beta", "gone@gmail.test")).startswith("550 ")
    write_state(tmp / "tenants.json", {"alpha": {"paused": False}}, NOW)
    write_snapshot(tmp / "snapshot.db", [r for r in ROWS if r[0] != "gone@gmail.test"], [])
    assert service.ask(**eom("alpha")) == "DUNNO"
    assert service.ask(**rcpt("beta", "gone@gmail.test")) == "FILTER pool_beta_1_gmail:"
    # A new login in the settings file is known at once too.
    conf = setup["conf"]
    conf.write_text(conf.read_text().replace('"beta-app"]', '"beta-app", "beta2"]'))
    assert service.ask(**rcpt("beta2", "new@example.org")) == "FILTER pool_beta_1:"


def test_a_broken_state_file_keeps_the_last_good_one(
    setup: dict[str, Any], service: PolicyProcess
) -> None:
    tmp = setup["tmp"]
    assert service.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
    # Replaced (as the sync replaces them) by files that cannot be used.
    (tmp / "new.json").write_text("{ half a file")
    (tmp / "new.json").replace(tmp / "tenants.json")
    (tmp / "new.db").write_bytes(b"not sqlite at all" * 100)
    (tmp / "new.db").replace(tmp / "snapshot.db")
    assert service.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
    assert service.ask(**rcpt("alpha", "gone@gmail.test")).startswith(
        "550 5.7.1 recipient is suppressed: it bounced"
    )
    logged = (tmp / "postlog.out").read_text()
    assert "tenants.json: cannot use it" in logged and "keeping the last good one" in logged
    assert "snapshot.db: cannot use it" in logged


def test_no_state_ever_defers_until_the_sync_has_run(setup: dict[str, Any]) -> None:
    tmp = setup["tmp"]
    (tmp / "tenants.json").unlink()
    proc = PolicyProcess(setup["conf"])
    try:
        answer = proc.ask(**rcpt("alpha", "a@gmail.test"))
        assert answer.startswith("DEFER_IF_PERMIT 4.3.5 tenant state not known yet"), answer
        assert proc.ask(**eom("alpha")).startswith("DEFER_IF_PERMIT")
        assert proc.ask(**rcpt("", "a@gmail.test")) == "DUNNO"
        write_state(tmp / "tenants.json", {}, NOW)
        assert proc.ask(**rcpt("alpha", "a@gmail.test")).startswith("FILTER pool_alpha_")
    finally:
        assert proc.close() == 0


def test_unreadable_settings_defer_tenant_mail_only(setup: dict[str, Any]) -> None:
    setup["conf"].write_text("[tenants.alpha]\ndomains = 3\n")
    proc = PolicyProcess(setup["conf"])
    try:
        assert proc.ask(**rcpt("alpha", "a@gmail.test")).startswith("DEFER_IF_PERMIT 4.3.5")
        # No postlog to write with: smtpd logs the problem for the service (WARN), once.
        assert proc.ask(**rcpt("", "a@gmail.test")) == (
            f"WARN mailops tenants policy: {setup['conf']}: cannot use it ([tenants.alpha]"
            " domains: expected a list of strings, got 3); none read yet"
        )
        assert proc.ask(**rcpt("", "a@gmail.test")) == "DUNNO"
    finally:
        assert proc.close() == 0


# --------------------------------------------------------------------------- the protocol


def test_requests_in_one_write_are_answered_in_order(service: PolicyProcess) -> None:
    service.send(rcpt("alpha", "bye@gmail.test"))
    service.send(eom("beta"))
    service.send(rcpt("nobody", "x@gmail.test"))
    answers = [service.read_answer() for _ in range(3)]
    assert answers[0] == "550 5.7.1 recipient unsubscribed from alpha"
    assert answers[1] == "DUNNO"
    assert answers[2].startswith("DEFER_IF_PERMIT")


def test_tens_of_thousands_of_suppressions_stay_fast(setup: dict[str, Any]) -> None:
    tmp = setup["tmp"]
    rows: list[SuppressionRow] = [
        (f"user{i}@example.com", "" if i % 3 else "alpha", "userunknown", "bounce", None)
        for i in range(50_000)
    ]
    write_snapshot(tmp / "snapshot.db", rows, [])
    proc = PolicyProcess(setup["conf"])
    try:
        proc.ask(**rcpt("beta", "warm@example.com"))
        start = time.monotonic()
        for i in range(0, 50_000, 50):
            proc.send(rcpt("beta", f"user{i}@example.com"))
        answers = [proc.read_answer() for _ in range(1000)]
        took = time.monotonic() - start
    finally:
        assert proc.close() == 0
    refused = sum(a.startswith("550 ") for a in answers)
    assert refused == sum(1 for i in range(0, 50_000, 50) if i % 3)
    assert took < 10, f"1000 requests took {took:.1f} s"


@pytest.mark.parametrize(
    "text", ["Bob@Example.COM", "<bob@example.com>", " bob@example.com ", "<>", ""]
)
def test_the_recipient_is_keyed_as_the_store_keys_it(text: str) -> None:
    assert policy.normalize(text) == normalize_address(text)


# --------------------------------------------------------------------------- the daemon


def test_the_daemon_answers_many_smtpds_at_once_as_the_spawned_process_does(
    setup: dict[str, Any],
) -> None:
    """One process per node (``--listen``): connections interleave, each gets its own
    answers in order, and the answers are those of the process smtpd used to spawn."""
    daemon = PolicyDaemon(setup["conf"], setup["tmp"] / "policy.sock")
    try:
        clients = [daemon.client() for _ in range(50)]
        for i, client in enumerate(clients):
            client.send(rcpt("alpha", "bye@gmail.test"))
            client.send(rcpt("beta", f"user{i}@outlook.test"))
            client.send(eom("alpha"))
        for client in clients:
            assert client.read_answer() == "550 5.7.1 recipient unsubscribed from alpha"
            assert client.read_answer() == "FILTER pool_beta_1_microsoft:"
            assert client.read_answer() == "HOLD tenant alpha is paused"
        # A request split across writes is answered once it is whole.
        client = clients[0]
        text = "".join(f"{k}={v}\n" for k, v in rcpt("beta", "gone@gmail.test").items()) + "\n"
        for piece in (text[:7], text[7:100], text[100:]):
            client.conn.sendall(piece.encode())
            time.sleep(0.01)
        assert client.read_answer().startswith("550 5.7.1 recipient is suppressed: it bounced")
        for client in clients:
            client.close()
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
    # Stopped: the socket is gone, so smtpd's connect fails and it answers its 451.
    assert not (setup["tmp"] / "policy.sock").exists()


def test_the_supervisor_starts_a_dead_daemon_again_on_the_same_socket(
    setup: dict[str, Any],
) -> None:
    """Where there is no systemd (--supervise): the daemon killed, a new one answers on
    the socket the supervisor keeps; SIGTERM to the supervisor stops both."""
    sock = setup["tmp"] / "policy.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("MAILOPS_PIPE", "MAILOPS_CONFIG")}
    env["PYTHONPATH"] = str(ROOT / "scripts")
    argv = [sys.executable, "-m", "mailops", "--config", str(setup["conf"]), "tenants"]
    supervisor = subprocess.Popen(
        [*argv, "policy", "--listen", str(sock), "--socket-owner", "", "--supervise"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline and supervisor.poll() is None
            time.sleep(0.05)
        client = PolicyClient(sock)
        assert client.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
        client.close()
        children = subprocess.run(
            ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGKILL)
        # The next connection waits in the socket's backlog for the new daemon.
        client = PolicyClient(sock)
        assert client.ask(**eom("alpha")) == "HOLD tenant alpha is paused"
        client.close()
    finally:
        supervisor.terminate()
        assert supervisor.wait(timeout=30) == 0
    assert supervisor.stderr is not None
    assert "starting it again" in supervisor.stderr.read().decode()
    assert not sock.exists()
