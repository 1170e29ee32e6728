"""The List-Unsubscribe milter of the bulk nodes (``mailops unsub milter``).

Postfix's smtpd hands each message to this milter before OpenDKIM (smtpd_milters, in
that order), so the headers it adds are inside the DKIM signature.  For a tenant's
message (SMTP login of a tenant, ``{auth_authen}``) with exactly one recipient and no
``List-Unsubscribe`` it adds::

    List-Unsubscribe: <https://UNSUB_HOST/u/TOKEN>, <mailto:unsubscribe+TOKEN@DOMAIN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

TOKEN names the tenant and the recipient (mailops.unsub.token).  It adds nothing to
mail of no tenant, to transactional mail (the header ``[unsubscribe]
transactional_header``, which it removes, or a login of ``transactional_logins``), to a
message that has ``List-Unsubscribe`` already (one without ``List-Unsubscribe-Post`` is
logged), or to a message with several recipients (logged: a token is per recipient).

The milter protocol (version 6, as Postfix speaks it) is implemented here on asyncio:
one process serves every smtpd, with no thread per connection and no C library, and it
asks Postfix for no reply to MAIL, RCPT, headers and end of headers, and for no
connect, HELO, DATA or body events: one round trip per message (end of message).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailops.store.text import normalize_address
from mailops.tenants.model import Tenants
from mailops.unsub.token import Sealer

# Commands from the MTA.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"
# Replies.
SMFIR_ADDHEADER = b"h"
SMFIR_CHGHEADER = b"m"
SMFIR_CONTINUE = b"c"
SMFIR_TEMPFAIL = b"t"
# Actions we may take.
SMFIF_ADDHDRS = 0x01
SMFIF_CHGHDRS = 0x10
# Protocol steps we do not want, and those we do not answer.
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOBODY = 0x10
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_EOH = 0x40000
WANTED_PROTOCOL = (
    SMFIP_NOCONNECT
    | SMFIP_NOHELO
    | SMFIP_NOBODY
    | SMFIP_NOUNKNOWN
    | SMFIP_NODATA
    | SMFIP_NR_HDR
    | SMFIP_NR_MAIL
    | SMFIP_NR_RCPT
    | SMFIP_NR_EOH
)
MILTER_VERSION = 6
MAX_PACKET = 1024 * 1024

LU = "List-Unsubscribe"
LUP = "List-Unsubscribe-Post"
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class Settings:
    url_base: str  # https://UNSUB_HOST/u/
    mailto_domain: str
    transactional_header: str
    transactional_logins: frozenset[str]


@dataclass
class Decision:
    add: list[tuple[str, str]] = field(default_factory=list)
    # (name, occurrence index from 1) of headers to remove
    remove: list[tuple[str, int]] = field(default_factory=list)
    warning: str = ""


def decide(
    login: str,
    recipients: list[str],
    headers: list[tuple[str, str]],
    tenants: Tenants,
    settings: Settings,
    sealer: Sealer,
    now: float | None = None,
) -> Decision:
    """What to do to one message: the milter's whole policy, free of the protocol."""
    decision = Decision()
    marker = settings.transactional_header.lower()
    seen = 0
    transactional = False
    for name, _ in headers:
        if marker and name.lower() == marker:
            seen += 1
            transactional = True
            decision.remove.append((name, seen))
    # Postfix deletes the n-th occurrence; delete from the last so indices hold.
    decision.remove.reverse()
    tenant = tenants.for_login(login) if login else None
    if tenant is None:
        return decision
    if transactional or login.strip().lower() in settings.transactional_logins:
        return decision
    names = {name.lower() for name, _ in headers}
    if LU.lower() in names:
        if LUP.lower() not in names:
            decision.warning = (
                f"tenant {tenant.name}: the message has {LU} but no {LUP}:"
                " kept as it is, but it offers no one-click unsubscribe (RFC 8058)"
            )
        return decision
    if len(recipients) != 1:
        decision.warning = (
            f"tenant {tenant.name}: {len(recipients)} recipients, no {LU} added"
            " (a token names one recipient; send one message per recipient)"
        )
        return decision
    token = sealer.make(tenant.name, normalize_address(recipients[0]), now)
    value = f"<{settings.url_base}{token}>"
    if settings.mailto_domain:
        value += f", <mailto:unsubscribe+{token}@{settings.mailto_domain}>"
    decision.add.append((LU, value))
    if LUP.lower() not in names:
        decision.add.append((LUP, ONE_CLICK))
    return decision


def packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


def _strings(data: bytes) -> list[str]:
    return [s.decode("utf-8", "replace") for s in data.split(b"\0")[:-1]]


class Session:
    """One milter connection: feed it packets, get the reply packets (bytes) back."""

    def __init__(
        self,
        tenants: Tenants,
        settings: Settings,
        sealer: Sealer,
        log: Callable[[str], None],
    ) -> None:
        self.tenants, self.settings, self.sealer, self.log = tenants, settings, sealer, log
        self.protocol = 0
        self.closed = False
        self.macros: dict[str, str] = {}
        self._reset()

    def _reset(self) -> None:
        self.login = ""
        self.recipients: list[str] = []
        self.headers: list[tuple[str, str]] = []

    def _quiet(self, flag: int) -> list[bytes]:
        return [] if self.protocol & flag else [packet(SMFIR_CONTINUE)]

    def feed(self, code: bytes, data: bytes) -> list[bytes]:
        if code == SMFIC_OPTNEG:
            _version, actions, offered = struct.unpack(">III", data[:12])
            self.protocol = WANTED_PROTOCOL & offered
            mine = (SMFIF_ADDHDRS | SMFIF_CHGHDRS) & actions
            return [packet(SMFIC_OPTNEG, struct.pack(">III", MILTER_VERSION, mine, self.protocol))]
        if code == SMFIC_MACRO:
            items = _strings(data[1:])
            for name, value in zip(items[::2], items[1::2], strict=False):
                self.macros[name.strip("{}")] = value
            return []
        if code == SMFIC_MAIL:
            self._reset()
            self.login = self.macros.get("auth_authen", "")
            return self._quiet(SMFIP_NR_MAIL)
        if code == SMFIC_RCPT:
            args = _strings(data)
            if args:
                self.recipients.append(args[0].strip().strip("<>"))
            return self._quiet(SMFIP_NR_RCPT)
        if code == SMFIC_HEADER:
            parts = _strings(data)
            if len(parts) >= 2:
                self.headers.append((parts[0], parts[1]))
            return self._quiet(SMFIP_NR_HDR)
        if code == SMFIC_EOH:
            return self._quiet(SMFIP_NR_EOH)
        if code == SMFIC_BODYEOB:
            return self._end_of_message()
        if code == SMFIC_ABORT:
            self._reset()
            return []
        if code == SMFIC_QUIT_NC:
            self._reset()
            self.macros.clear()
            return []
        if code == SMFIC_QUIT:
            self.closed = True
            return []
        # CONNECT, HELO, DATA, BODY, UNKNOWN (when not negotiated away): carry on.
        return [packet(SMFIR_CONTINUE)]

    def _end_of_message(self) -> list[bytes]:
        try:
            decision = decide(
                self.login, self.recipients, self.headers, self.tenants, self.settings, self.sealer
            )
        except Exception as exc:  # never let a message pass unmarked by error
            self.log(f"error: {type(exc).__name__}: {exc}; message deferred")
            self._reset()
            return [packet(SMFIR_TEMPFAIL)]
        queue_id = self.macros.get("i", "")
        if decision.warning:
            self.log(f"{queue_id + ': ' if queue_id else ''}warning: {decision.warning}")
        out = [
            packet(SMFIR_CHGHEADER, struct.pack(">I", index) + name.encode() + b"\0\0")
            for name, index in decision.remove
        ]
        out += [
            packet(SMFIR_ADDHEADER, name.encode() + b"\0" + value.encode() + b"\0")
            for name, value in decision.add
        ]
        self._reset()
        return [*out, packet(SMFIR_CONTINUE)]


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    make_session: Callable[[], Session],
) -> None:
    session = make_session()
    try:
        while not session.closed:
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            if length < 1 or length > MAX_PACKET:
                break
            data = await reader.readexactly(length)
            replies = session.feed(data[:1], data[1:])
            if replies:
                writer.write(b"".join(replies))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def log_to_stderr(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} mailops-unsub-milter: {text}", file=sys.stderr, flush=True)


async def serve(
    path: str,
    make_session: Callable[[], Session],
    *,
    mode: int = 0o660,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve the milter on unix socket ``path`` until SIGTERM or SIGINT."""
    sock_path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if sock_path.is_socket():
            sock_path.unlink()
    server = await asyncio.start_unix_server(
        lambda r, w: _serve_connection(r, w, make_session), path=path
    )
    sock_path.chmod(mode)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    if ready:
        ready()
    async with server:
        await stop
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
