"""Fixtures shared by the molecule scenarios' testinfra verifiers (molecule/<role>/tests/).

testinfra gives each test the scenario's container as ``host`` (podman exec, see
.config/molecule/config.yml).  Every probe here runs inside that container, so what the
verifiers send stays on its loopback and its unix sockets.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest

# A Postfix policy client (the protocol of SMTPD_POLICY_README: name=value lines, an
# empty line; the answer is one action=... line and an empty line).  Run by the
# container's python3 with the socket's path and the attributes as arguments.
POLICY_CLIENT = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(40)
sock.connect(sys.argv[1])
sock.sendall(("\n".join(sys.argv[2:]) + "\n\n").encode())
answer = b""
while not answer.endswith(b"\n\n"):
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.decode().strip())
"""

Host = Any  # testinfra.host.Host: the library ships no type information


def _wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)


@pytest.fixture
def token() -> str:
    """A string that only this test's message or request carries."""
    return f"molecule-{secrets.token_hex(6)}"


@pytest.fixture
def policy(host: Host) -> Callable[..., str]:
    """Ask a policy service on a unix socket; returns its action=... line."""

    def ask(socket_path: str, **attributes: str) -> str:
        request = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
                   "protocol_name": "ESMTP", **attributes}  # fmt: skip
        pairs = [f"{k}={v}" for k, v in request.items()]
        result = host.run("python3 -c %s %s" + " %s" * len(pairs),
                          POLICY_CLIENT, socket_path, *pairs)  # fmt: skip
        assert result.rc == 0, f"policy service on {socket_path}: {result.stderr.strip()}"
        answer: str = result.stdout.strip()
        assert answer.startswith("action="), f"not a policy answer: {answer!r}"
        return answer

    return ask


@pytest.fixture
def swaks(host: Host) -> Callable[..., str]:
    """One SMTP session with swaks inside the container (port 25 on loopback unless
    told otherwise); returns the transcript."""

    def session(*args: str) -> str:
        result = host.run("swaks --server 127.0.0.1 --timeout 30" + " %s" * len(args), *args)
        return str(result.stdout) + str(result.stderr)

    return session


@pytest.fixture
def wait_for() -> Callable[[Callable[[], bool], float, str], None]:
    """Poll a probe every half second until it holds (AssertionError after timeout)."""
    return _wait
