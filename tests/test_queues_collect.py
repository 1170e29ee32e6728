"""mailops queues collect against real sshd servers on 127.0.0.1, started by the tests.

Each server has its own host key and an authorized_keys whose entries force
``mailops queues local --json`` on a synthetic queue, as the nodes do.  Needs
/usr/sbin/sshd (Debian package openssh-server) and ssh-keygen (openssh-client).
"""

from __future__ import annotations

import getpass
import json
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from mailops import cli
from mailops.queues.collect import HostSpec, SSHOptions, collect
from tests.test_queues import make_queue, parse_exposition

ROOT = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
USER = getpass.getuser()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def forced(queue_dir: Path) -> str:
    """The node's forced command, pointing at our tree and our source checkout."""
    cmd = (
        f"env PYTHONPATH={shlex.quote(str(ROOT / 'scripts'))} {shlex.quote(sys.executable)} "
        f"-m mailops queues local --json --method files --queue-directory {queue_dir}"
    )
    return f'command="{cmd}",restrict'


@dataclass
class Server:
    port: int
    host_pub: str  # "ssh-ed25519 AAAA... comment"
    proc: subprocess.Popen[bytes]
    log: Path


def start_sshd(base: Path, name: str, authorized: str) -> Server:
    d = base / name
    d.mkdir()
    host_pub = keygen(d / "host_key")
    (d / "authorized_keys").write_text(authorized)
    port = free_port()
    (d / "sshd_config").write_text(
        f"""HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers {USER}
LogLevel VERBOSE
"""
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = d / "sshd.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                str(SSHD),
                "-D",
                "-e",
                "-f",
                str(d / "sshd_config"),
                "-p",
                str(port),
                "-o",
                "ListenAddress=127.0.0.1",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(8).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sshd did not start: {log.read_text()}")
        time.sleep(0.05)
    return Server(port=port, host_pub=host_pub, proc=proc, log=log)


@dataclass
class Lab:
    base: Path
    a: Server
    b: Server
    key: Path
    other_key: Path  # authorized on a with a forced command that fails
    stranger_key: Path  # authorized nowhere
    queue: Path

    def known_hosts(self, lines: list[str]) -> Path:
        path = self.base / f"known_hosts.{len(list(self.base.glob('known_hosts.*')))}"
        path.write_text("".join(line + "\n" for line in lines))
        return path

    def entry(self, server: Server, name: str = "127.0.0.1", pub: str | None = None) -> str:
        key = " ".join((pub or server.host_pub).split()[:2])
        return f"[{name}]:{server.port} {key}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not SSHD.exists():
        pytest.fail("/usr/sbin/sshd missing: install the Debian package openssh-server")
    base = tmp_path_factory.mktemp("sshlab")
    queue = make_queue(base / "spool", counts={"active": 2, "deferred": 9, "hold": 1})
    keys = base / "keys"
    keys.mkdir()
    pub = keygen(keys / "collector")
    other = keygen(keys / "other")
    keygen(keys / "stranger")
    authorized = f"{forced(queue)} {pub}\n{forced(base / 'no-such-queue')} {other}\n"
    a = start_sshd(base, "a", authorized)
    b = start_sshd(base, "b", authorized)
    yield Lab(base, a, b, keys / "collector", keys / "other", keys / "stranger", queue)
    for s in (a, b):
        s.proc.terminate()
        s.proc.wait(timeout=10)


def opts(lab: Lab, known_hosts: Path, key: Path | None = None, timeout: float = 8) -> SSHOptions:
    return SSHOptions(
        user=USER, key=str(key or lab.key), known_hosts=str(known_hosts), timeout=timeout
    )


def test_collect_cli_good_host_beside_failing_ones(lab: Lab) -> None:
    closed = free_port()
    # b's entry carries a's key: b's real key does not match it
    kh = lab.known_hosts([lab.entry(lab.a), lab.entry(lab.b, pub=lab.a.host_pub)])
    inventory = lab.base / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "_meta": {
                    "hostvars": {
                        h: {"ansible_host": "127.0.0.1", "ansible_port": p}
                        for h, p in (("mail1", lab.a.port), ("mail2", lab.b.port), ("mx1", closed))
                    }
                },
                "mail_nodes": {"hosts": ["mail1", "mail2", "mx1"]},
            }
        )
    )
    out = lab.base / "www" / "mailqueues.json"
    out.parent.mkdir()
    prom = out.parent / "metrics"
    rc = cli.main(
        [
            "queues",
            "collect",
            "--inventory-json",
            str(inventory),
            "--group",
            "mail_nodes",
            "--user",
            USER,
            "--key",
            str(lab.key),
            "--known-hosts",
            str(kh),
            "--timeout",
            "8",
            "--output",
            str(out),
            "--prometheus-output",
            str(prom),
        ]
    )
    assert rc == 1  # some host failed; the file is written all the same
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    doc = json.loads(out.read_text())
    mq = doc["mailqueues"]
    assert mq["mail1"] == {"activemailqueue": "2", "deferredmailqueue": "9"}
    assert "host key mismatch" in mq["mail2"]["error"]
    assert set(mq["mx1"]) == {"error"}
    assert mq["mx1"]["error"].startswith(f"cannot connect to 127.0.0.1:{closed}")
    assert doc["hosts"]["mail1"]["queues"]["hold"] == 1
    assert doc["hosts"]["mail1"]["host"] == "mail1"
    assert doc["hosts"]["mx1"]["error"] == mq["mx1"]["error"]
    assert doc["generated_at"].endswith("Z")
    families = parse_exposition(prom.read_text())
    up = {labels["host"]: v for labels, v in families["mailops_queue_collect_up"]}
    assert up == {"mail1": 1.0, "mail2": 0.0, "mx1": 0.0}
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644


def test_collect_prometheus_all_up(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    kh = lab.known_hosts([lab.entry(lab.a), lab.entry(lab.b)])
    rc = cli.main(
        [
            "queues",
            "collect",
            "--hosts",
            f"a=127.0.0.1:{lab.a.port},b=127.0.0.1:{lab.b.port}",
            "--user",
            USER,
            "--key",
            str(lab.key),
            "--known-hosts",
            str(kh),
            "--format",
            "prometheus",
            "--parallel",
            "2",
        ]
    )
    assert rc == 0
    fams = parse_exposition(capsys.readouterr().out)
    assert sorted(fams["mailops_queue_collect_up"], key=lambda s: s[0]["host"]) == [
        ({"host": "a"}, 1.0),
        ({"host": "b"}, 1.0),
    ]
    deferred = {
        s[0]["host"]: s[1] for s in fams["mailops_queue_messages"] if s[0]["queue"] == "deferred"
    }
    assert deferred == {"a": 9.0, "b": 9.0}


def test_unknown_host_key_is_rejected_not_learnt(lab: Lab) -> None:
    kh = lab.known_hosts([lab.entry(lab.a)])
    before = kh.read_text()
    res = collect([HostSpec("b", "127.0.0.1", lab.b.port)], opts(lab, kh))
    assert "not found in known_hosts" in res["b"]["error"]
    assert kh.read_text() == before


def test_known_hosts_may_name_the_host_instead_of_its_address(lab: Lab) -> None:
    kh = lab.known_hosts(
        [lab.entry(lab.a, name="mail1"), lab.entry(lab.b, name="mail2", pub=lab.a.host_pub)]
    )
    res = collect(
        [HostSpec("mail1", "127.0.0.1", lab.a.port), HostSpec("mail2", "127.0.0.1", lab.b.port)],
        opts(lab, kh),
    )
    assert res["mail1"]["queues"]["deferred"] == 9
    assert "host key mismatch" in res["mail2"]["error"]


def test_key_not_authorized_fails_that_host(lab: Lab) -> None:
    kh = lab.known_hosts([lab.entry(lab.a)])
    res = collect([HostSpec("a", "127.0.0.1", lab.a.port)], opts(lab, kh, lab.stranger_key))
    assert res["a"]["error"].startswith("authentication failed")


def test_remote_failure_carries_the_exit_code_and_message(lab: Lab) -> None:
    kh = lab.known_hosts([lab.entry(lab.a)])
    res = collect([HostSpec("a", "127.0.0.1", lab.a.port)], opts(lab, kh, lab.other_key))
    assert "remote command exited 66" in res["a"]["error"]
    assert "no such queue directory" in res["a"]["error"]


def test_silent_server_times_out_within_the_timeout(lab: Lab) -> None:
    """A peer that accepts TCP and never speaks SSH (a hung node) costs one timeout."""
    kh = lab.known_hosts([lab.entry(lab.a)])
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        held: list[socket.socket] = []
        t = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
        t.start()
        start = time.monotonic()
        res = collect(
            [HostSpec("hung", "127.0.0.1", port), HostSpec("a", "127.0.0.1", lab.a.port)],
            opts(lab, kh, timeout=4),
        )
        elapsed = time.monotonic() - start
        for c in held:
            c.close()
    assert res["hung"]["error"].startswith("timed out after 4 s")
    assert res["a"]["queues"]["active"] == 2, res["a"]
    # One timeout, not one per step of the SSH handshake, nor a wait for ever: the
    # bound leaves room for a busy machine (the healthy host's own handshake included)
    # and still fails if each of the hung peer's steps waited out its own timeout.
    assert elapsed < 4 * 2.5, f"{elapsed:.1f} s"


def _client(lab: Lab) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts([lab.entry(lab.a)])))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        port=lab.a.port,
        username=USER,
        key_filename=str(lab.key),
        allow_agent=False,
        look_for_keys=False,
        timeout=8,
    )
    return client


def _read_all(chan: paramiko.Channel) -> bytes:
    chan.settimeout(10)
    data = b""
    while chunk := chan.recv(65536):
        data += chunk
    return data


def test_forced_command_ignores_what_the_client_asks(lab: Lab) -> None:
    client = _client(lab)
    try:
        _, stdout, _ = client.exec_command("/bin/sh -c id", timeout=10)
        out = stdout.read().decode()
        assert "uid=" not in out
        assert json.loads(out)["queues"]["deferred"] == 9

        # a shell request (no pty) runs the same forced command, stdin is ignored
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.invoke_shell()
        chan.sendall(b"id; echo SHELL-$((6*7))\n")
        chan.shutdown_write()
        out = _read_all(chan).decode()
        assert "uid=" not in out and "SHELL-42" not in out
        assert json.loads(out)["queues"]["active"] == 2
    finally:
        client.close()


def test_restrict_forbids_pty_and_port_forwarding(lab: Lab) -> None:
    client = _client(lab)
    try:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        with pytest.raises(paramiko.SSHException):
            chan.get_pty()
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel(
                "direct-tcpip", ("127.0.0.1", lab.b.port), ("127.0.0.1", 0), timeout=5
            )
    finally:
        client.close()
