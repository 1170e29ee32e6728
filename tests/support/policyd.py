"""The tenants policy daemon (``mailops tenants policy --listen``) started for a test, and
a client that speaks Postfix's policy protocol to its unix socket as smtpd does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


class PolicyDaemon:
    """``mailops tenants policy --listen SOCKET`` in its own process (``now``: the
    daemon's clock, $MAILOPS_NOW)."""

    def __init__(self, conf: Path, sock: Path, now: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MAILOPS_PIPE", "MAILOPS_CONFIG")}
        env["PYTHONPATH"] = str(ROOT / "scripts")
        if now is not None:
            env["MAILOPS_NOW"] = now
        self.sock = sock
        self.log = sock.with_suffix(".log")
        self._log = self.log.open("ab")
        argv = [sys.executable, "-m", "mailops", "--config", str(conf), "tenants", "policy"]
        self.proc = subprocess.Popen(
            [*argv, "--listen", str(sock), "--socket-owner", ""],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert self.proc.poll() is None, f"the daemon ended: {self.log.read_text()}"
            assert time.monotonic() < deadline, "no socket within 20 s"
            time.sleep(0.02)

    def client(self) -> PolicyClient:
        return PolicyClient(self.sock)

    def stop(self) -> int:
        """SIGTERM, as systemd and the init script stop it; its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


class PolicyClient:
    """One smtpd's connection: requests one after another, each answer read in full."""

    def __init__(self, path: Path, timeout: float = 20.0) -> None:
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.settimeout(timeout)
        self.conn.connect(str(path))
        self._buffer = b""

    def send(self, attrs: dict[str, str]) -> None:
        self.conn.sendall(("".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n").encode())

    def read_answer(self) -> str:
        while b"\n\n" not in self._buffer:
            chunk = self.conn.recv(65536)
            assert chunk, "the daemon closed the connection"
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n\n")
        text = answer.decode()
        assert text.startswith("action=") and "\n" not in text, text
        return text[len("action=") :]

    def ask(self, **attrs: str) -> str:
        self.send(attrs)
        return self.read_answer()

    def close(self) -> None:
        self.conn.close()


def rcpt(login: str, recipient: str, **more: str) -> dict[str, str]:
    """A RCPT request as smtpd sends it for a SASL client."""
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
