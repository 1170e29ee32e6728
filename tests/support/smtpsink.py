"""A small SMTP server on loopback for tests: it records what it is sent and answers
as it is told (per recipient, and after DATA).

``with SmtpSink() as sink: ... sink.port ... sink.messages``.  Each accepted message is
a :class:`Received` with the envelope and the data exactly as sent, dot-stuffing undone
and CRLF line ends kept.  With ``tls`` (a server SSLContext) it offers STARTTLS.  Not a
mail server: one session at a time is enough here.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class Script:
    """The replies: per recipient address, and to the end of DATA."""

    rcpt: Callable[[str], str] = lambda _address: "250 2.1.5 Ok"
    data: str = "250 2.0.0 Ok: queued"
    mail: str = "250 2.1.0 Ok"


@dataclass
class _State:
    script: Script
    tls: ssl.SSLContext | None = None
    messages: list[Received] = field(default_factory=list)
    sessions: int = 0
    encrypted: int = 0  # messages received over TLS
    lock: threading.Lock = field(default_factory=threading.Lock)


def _addr(arg: str) -> str:
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end] if 0 <= start < end else arg.strip()


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        state: _State = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.sessions += 1
        self.reply("220 sink.test ESMTP")
        sender: str | None = None
        rcpts: list[str] = []
        secure = False
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                offer = "250-STARTTLS\r\n" if state.tls is not None and not secure else ""
                self.reply(f"250-sink.test\r\n{offer}250-8BITMIME\r\n250 SIZE 10240000")
            elif verb == "STAR" and state.tls is not None and not secure:
                self.reply("220 2.0.0 Ready to start TLS")
                self.request = state.tls.wrap_socket(self.request, server_side=True)
                self.rfile = self.request.makefile("rb")
                self.wfile = self.request.makefile("wb")
                secure, sender, rcpts = True, None, []
            elif verb == "MAIL":
                sender, rcpts = _addr(line[10:]), []
                self.reply(state.script.mail)
            elif verb == "RCPT":
                address = _addr(line[8:])
                answer = state.script.rcpt(address)
                if answer.startswith("2"):
                    rcpts.append(address)
                self.reply(answer)
            elif verb == "DATA":
                if sender is None or not rcpts:
                    self.reply("503 5.5.1 Error: need RCPT command")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                chunks: list[bytes] = []
                while True:
                    got = self.rfile.readline(1 << 20)
                    if not got or got == b".\r\n":
                        break
                    chunks.append(got[1:] if got.startswith(b".") else got)
                answer = state.script.data
                if answer.startswith("2"):
                    with state.lock:
                        state.messages.append(Received(sender, list(rcpts), b"".join(chunks)))
                        state.encrypted += secure
                self.reply(answer)
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpSink:
    """The server on 127.0.0.1 and a free port, for the duration of a with block."""

    def __init__(self, script: Script | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.state = _State(script or Script(), tls)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def messages(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.messages)

    @property
    def encrypted(self) -> int:
        with self.state.lock:
            return self.state.encrypted

    @property
    def sessions(self) -> int:
        with self.state.lock:
            return self.state.sessions

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(tmp: Path, name: str = "sink.test") -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for ``name``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "sink.crt", tmp / "sink.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
