"""``mailops tenants policy``: the bulk nodes' Postfix policy service for tenant mail.

One daemon per node (``--listen SOCKET``: the mailops role runs it under systemd, or
under its own ``--supervise`` parent where there is no systemd) serves every smtpd on a
unix socket in Postfix's private directory, many connections at once in one asyncio
loop.  It speaks the policy delegation protocol (SMTPD_POLICY_README): ``name=value``
lines, an empty line ends a request, the answer is one ``action=...`` line and an
empty line; one request after another on each connection.  Without ``--listen`` it
holds one such conversation on stdin/stdout (by hand, or under a ``spawn`` service),
without warm-up caps: those need one counter per node.

Only SASL-authenticated clients are tenants' applications; anything else gets ``DUNNO``
(mail with no tenant meets the Postfix suppression map instead).  For a login:

* RCPT: the recipient suppressed for the tenant is refused with ``550 5.7.1`` and a
  text naming why (the client reads ``550 5.7.1 <addr>: Recipient address rejected:
  recipient unsubscribed from alpha``) (global rows: hard bounces, complaints,
  operators' entries; the tenant's own rows: its unsubscribes; a tenant with
  ``complaints = "tenant"`` skips global complaint rows unless the complaint came from its
  own mail).  Otherwise ``FILTER pool_<pool>_<n>[_<class>]:``: ``n`` picks one of this
  host's transports of the tenant's pool by a stable hash of the recipient (the same
  recipient always leaves from the same address), ``<class>`` is the provider class of
  the recipient's domain (``[transport_classes]``), and the empty next hop makes Postfix
  deliver to the recipient's domain.  FILTER is one per message: with recipients at
  several providers the last recipient's transport carries the message (every
  recipient still goes to its own domain).  A tenant without transports on this host
  gets ``DEFER_IF_PERMIT`` (never the shared addresses: its SPF lists only its pool)
  and a warning in the log; the client's MTA tries another node.  The daemon counts
  each routed recipient against its address and provider (:mod:`mailops.warmup`): an
  address in warm-up over today's cap gets ``450 4.7.1`` instead (docs/warmup.md).
  Every recipient of one message (smtpd's ``instance``) takes the first one's address.
* END-OF-MESSAGE: ``HOLD`` when the tenant is paused: the message is accepted and kept
  in the hold queue until ``mailops tenants sync`` releases it on resume.  A message
  with the null sender gets ``451`` instead: the sync finds held mail by its sender's
  domain and would never release it.
* A login that is no tenant's: ``DEFER_IF_PERMIT``; no state file ever seen:
  ``DEFER_IF_PERMIT`` (a broken or missing file later: the last good one stays in use).

No store access per request: everything comes from local files, each re-read only
when its inode, size or modification time changes (one ``stat`` each per request; the
daemon's at most every :data:`RECHECK` seconds): the
settings file (``[tenants]``, ``[transport_classes]``, ``[warmup]``), the state file
that ``mailops tenants sync`` writes (who is paused), its suppression snapshot and the
warm-up starts.

The snapshot is SQLite, opened read-only: an indexed lookup in microseconds, and a
sync's new file (replaced by rename) is reopened at the next request while the old one
stays complete (``immutable=1``: nobody writes a file in place).

Warnings go to the mail log through ``postlog`` (``[tenants_policy] postlog``; "" writes
them to stderr), or else as smtpd's ``WARN`` lines; the daemon also writes them to its
own stderr (the journal, or the init script's log file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import os
import pwd
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote

from mailops import config, exitcodes
from mailops.config import ConfigError
from mailops.tenants.model import Tenant, Tenants, load_tenants
from mailops.warmup import caps, schedule, state
from mailops.warmup.schedule import WarmupSettings

# The snapshot's layout; the sync writes it, the policy refuses any other.
SNAPSHOT_FORMAT = "mailops-tenants-suppression 1"
STATE_FORMAT = 1
# A request line longer than this is cut (Postfix's attributes are far shorter).
MAX_LINE = 65536
# Names of the suppression sources, as the reply text says them.
_SOURCE_TEXT = {
    "bounce": "recipient is suppressed: it bounced",
    "soft": "recipient is suppressed: it bounced repeatedly",
    "complaint": "recipient is suppressed: a complaint was received from it",
    "unsubscribe": "recipient unsubscribed",
}

T = TypeVar("T")


def normalize(address: str) -> str:
    """The recipient as the store keys it (mailops.store.text.normalize_address does the
    same; a test keeps them in step: importing the store here would cost every spawned
    policy process a third of a second)."""
    return " ".join(address.split()).strip("<> ").lower()[:320]


def stable_index(address: str, count: int) -> int:
    """Which of ``count`` transports carries mail to ``address``: the same every time, on
    every node and in every process (Python's hash() differs per process)."""
    digest = hashlib.blake2b(address.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


# --------------------------------------------------------------------------- watched files


class Watched(Generic[T]):
    """A file read again only when it changed; a file that cannot be read keeps the last
    good value (``value`` is None until one was read)."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        warn: Callable[[str], None],
        missing: T | None = None,
        recheck: float = 0.0,
    ):
        self.path = path
        # Seconds between two looks at the file (0: every call).  The daemon answers
        # thousands of requests a second; a look every tenth of a second is enough.
        self.recheck = recheck
        self._looked = -1e18
        self._load = load
        self._warn = warn
        self._missing = missing  # the value of a file that does not exist, if it may not
        self._sig: tuple[int, ...] | None = None
        self._bad_sig: tuple[int, ...] | None = None
        self.value: T | None = None

    def get(self) -> T | None:
        if self.recheck:
            now = time.monotonic()
            if now - self._looked < self.recheck:
                return self.value
            self._looked = now
        try:
            st = self.path.stat()
        except OSError as exc:
            sig: tuple[int, ...] = (-1, exc.errno or 0)
        else:
            sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._sig or sig == self._bad_sig:
            return self.value
        if sig == (-1, errno.ENOENT) and self._missing is not None:
            self._sig, self._bad_sig, self.value = sig, None, self._missing
            return self.value
        try:
            if sig[0] == -1:
                raise OSError(sig[1], os.strerror(sig[1]))
            value = self._load(self.path)
        except (OSError, ValueError, ConfigError, sqlite3.Error) as exc:
            self._bad_sig = sig
            kept = "keeping the last good one" if self.value is not None else "none read yet"
            self._warn(f"{self.path}: cannot use it ({_describe(exc)}); {kept}")
            return self.value
        self._sig, self._bad_sig = sig, None
        self.value = value
        return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())[:200] or type(exc).__name__


@dataclass(frozen=True)
class Settings:
    tenants: Tenants
    classes: Mapping[str, str]  # recipient domain -> provider class
    state: Path
    snapshot: Path
    postlog: str
    syslog_name: str
    warmup: WarmupSettings


def transport_classes(data: Mapping[str, Any]) -> dict[str, str]:
    """``[transport_classes]`` (class -> domains) as domain -> class."""
    raw = data.get("transport_classes", {})
    problems = config.transport_class_problems(raw)
    if problems:
        raise ConfigError(*problems)
    return {domain.lower(): name for name, domains in raw.items() for domain in domains}


def read_settings(path: Path) -> Settings:
    data = config.load(str(path))
    sync = config.table(data, "tenants_sync")
    policy = config.table(data, "tenants_policy")
    return Settings(
        tenants=load_tenants(data),
        classes=transport_classes(data),
        state=Path(sync["state"]),
        snapshot=Path(sync["snapshot"]),
        postlog=policy["postlog"],
        syslog_name=policy["syslog_name"],
        warmup=schedule.read(data),
    )


def read_state(path: Path) -> dict[str, Any]:
    """The state file: {"format": 1, "tenants": {name: {"paused": bool, ...}}}."""
    with path.open("rb") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ValueError("not a tenants state file of format 1")
    tenants = data.get("tenants")
    if not isinstance(tenants, dict):
        raise ValueError("no tenants table")
    return tenants


class Snapshot:
    """The suppression snapshot, open read-only."""

    def __init__(self, path: Path) -> None:
        uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
        self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None or row[0] != SNAPSHOT_FORMAT:
                raise ValueError(f"not a snapshot of format {SNAPSHOT_FORMAT!r}")
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def refusal(self, tenant: Tenant, address: str, now: float) -> str | None:
        """Why ``tenant`` may not send to ``address``, or None."""
        rows = self.db.execute(
            "SELECT tenant, reason, source, expires_at FROM suppressed"
            " WHERE address = ? AND tenant IN ('', ?)",
            (address, tenant.name),
        ).fetchall()
        own: tuple[str, str] | None = None
        shared: tuple[str, str] | None = None
        for who, reason, source, expires_at in rows:
            if expires_at is not None and expires_at <= now:
                continue
            if who == tenant.name:
                own = (str(reason), str(source))
            elif (
                source == "complaint"
                and tenant.complaints == "tenant"
                and not self._complained_about(tenant.name, address)
            ):
                continue  # another tenant's complainer: this tenant ignores it
            else:
                shared = (str(reason), str(source))
        if own is not None:
            reason, source = own
            if source == "unsubscribe" or reason == "unsubscribe":
                return f"recipient unsubscribed from {tenant.name}"
            return f"recipient is suppressed for {tenant.name} ({reason})"
        if shared is not None:
            reason, source = shared
            text = _SOURCE_TEXT.get(source, "recipient is suppressed")
            return f"{text} ({reason})"
        return None

    def _complained_about(self, tenant: str, address: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM complaint_origins WHERE address = ? AND tenant = ?",
            (address, tenant),
        ).fetchone()
        return row is not None


def _open_snapshot(path: Path) -> Snapshot:
    return Snapshot(path)


# --------------------------------------------------------------------------- the service


class Policy:
    """Answers one request at a time; the files are watched for changes."""

    def __init__(
        self,
        config_path: Path,
        *,
        clock: Callable[[], float] = time.time,
        count: bool = False,
        echo: bool = False,
        recheck: float = 0.0,
    ) -> None:
        self.clock = clock
        self._warned: dict[str, float] = {}
        self._echo = echo  # warnings to stderr too (the daemon's log)
        self._recheck = recheck
        self.settings = Watched(config_path, read_settings, self.warn, recheck=recheck)
        self._state: Watched[dict[str, Any]] | None = None
        self._snapshot: Watched[Snapshot] | None = None
        # Warm-up caps: only the daemon counts (one counter per node); a spawned or
        # hand-run process answers without caps.
        self._count = count
        self.counter: caps.Counter | None = None
        self._starts: Watched[dict[str, dict[str, Any]]] | None = None
        self._first_seen_failed: set[str] = set()
        # The transport each message (smtpd's ``instance``) took: every recipient of one
        # message leaves from one address, so each is counted against that address.
        self._picked: OrderedDict[str, str] = OrderedDict()
        # Until the settings are read: their defaults (stderr is smtpd's socket).
        self._postlog = str(config.SCHEMA["tenants_policy"]["postlog"].default)
        self._syslog_name = str(config.SCHEMA["tenants_policy"]["syslog_name"].default)
        self.pending: list[str] = []  # warnings postlog could not write

    # ------------------------------------------------------------- logging

    def warn(self, text: str) -> None:
        """One warning line in the mail log, once an hour for the same text.

        ``postlog`` writes it; where it cannot (Debian's postlog is not set-gid, so with
        ``maillog_file`` only root reaches postlogd), the warning waits for the next
        answer that would be ``DUNNO`` and goes out as ``WARN text`` instead: smtpd
        logs it with the client, sender and recipient, and carries on as for DUNNO.
        """
        when = time.monotonic()
        if when - self._warned.get(text, -3600.0) < 3600:
            return
        if len(self._warned) > 1000:
            self._warned.clear()
        self._warned[text] = when
        if self._echo or not self._postlog:
            print(f"mailops tenants policy: warning: {text}", file=sys.stderr, flush=True)
        if not self._postlog:
            return
        # Never let logging break the protocol (stderr is smtpd's socket).
        try:
            done = subprocess.run(
                [self._postlog, "-t", self._syslog_name, "-p", "warning", text],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            done = None
        if (done is None or done.returncode != 0) and len(self.pending) < 100:
            self.pending.append(text)

    def with_warning(self, action: str) -> str:
        """``action``, or a waiting warning as ``WARN text`` when the action is DUNNO."""
        if action == "DUNNO" and self.pending:
            return "WARN mailops tenants policy: " + _safe_text(self.pending.pop(0))
        return action

    # ------------------------------------------------------------- files

    def _files(self) -> tuple[Settings | None, dict[str, Any] | None, Snapshot | None]:
        settings = self.settings.get()
        if settings is None:
            return None, None, None
        self._postlog, self._syslog_name = settings.postlog, settings.syslog_name
        if self._state is None or self._state.path != settings.state:
            self._state = Watched(settings.state, read_state, self.warn, recheck=self._recheck)
        if self._snapshot is None or self._snapshot.path != settings.snapshot:
            self._snapshot = Watched(
                settings.snapshot, _open_snapshot, self.warn, recheck=self._recheck
            )
        previous = self._snapshot.value
        snapshot = self._snapshot.get()
        if previous is not None and snapshot is not previous:
            previous.close()
        return settings, self._state.get(), snapshot

    # ------------------------------------------------------------- answers

    def answer(self, request: Mapping[str, str]) -> str:
        login = request.get("sasl_username", "").strip()
        if not login:
            return "DUNNO"
        settings, states, snapshot = self._files()
        if settings is None:
            return "DEFER_IF_PERMIT 4.3.5 tenant settings cannot be read; try again later"
        tenant = settings.tenants.for_login(login)
        if tenant is None:
            return f"DEFER_IF_PERMIT 4.7.1 login {_safe(login)} belongs to no tenant here"
        if states is None or snapshot is None:
            return "DEFER_IF_PERMIT 4.3.5 tenant state not known yet; try again later"
        stage = request.get("protocol_state", "").upper()
        if stage == "RCPT":
            return self._rcpt(
                settings,
                tenant,
                snapshot,
                request.get("recipient", ""),
                request.get("instance", ""),
            )
        if stage == "END-OF-MESSAGE":
            state = states.get(tenant.name)
            if isinstance(state, dict) and state.get("paused") is True:
                if not request.get("sender", "").strip("<> "):
                    # The sync finds a tenant's held mail by its sender's domain: a
                    # message with the null sender would stay on hold after resume.
                    return (
                        f"451 4.7.1 tenant {tenant.name} is paused; mail with an empty"
                        " envelope sender is not held, try again later"
                    )
                return f"HOLD tenant {tenant.name} is paused"
        return "DUNNO"

    def _rcpt(
        self, settings: Settings, tenant: Tenant, snapshot: Snapshot, rcpt: str, instance: str = ""
    ) -> str:
        address = normalize(rcpt)
        if not address:
            return "DUNNO"  # the null recipient is smtpd's business
        why = snapshot.refusal(tenant, address, self.clock())
        if why is not None:
            # smtpd writes "<addr>: Recipient address rejected: " before the text.
            return f"550 5.7.1 {why}"
        if not tenant.transports:
            # Never from the shared addresses: the tenant's SPF lists only its pool, and
            # its mail would spend the other tenants' reputation.  A 4xx: the client's
            # MTA tries another address of the cluster name, now or on its next retry.
            self.warn(
                f"tenant {tenant.name}: no address of pool {tenant.pool} on this host;"
                " its mail is deferred here"
            )
            return (
                f"DEFER_IF_PERMIT 4.3.5 tenant {tenant.name} has no sending address on"
                " this node; try another node"
            )
        base = self._picked.get(instance) if instance else None
        if base is None or base not in tenant.transports:
            base = tenant.transports[stable_index(address, len(tenant.transports))]
        domain = address.rpartition("@")[2]
        klass = settings.classes.get(domain)
        if self._count:
            over = self._warmup(settings, base, klass or schedule.OTHER)
            if over is not None:
                return over
        if instance:
            self._picked[instance] = base
            self._picked.move_to_end(instance)
            if len(self._picked) > 4096:
                self._picked.popitem(last=False)
        return f"FILTER {base}_{klass}:" if klass else f"FILTER {base}:"

    # ------------------------------------------------------------- warm-up

    def _warmup(self, settings: Settings, base: str, provider: str) -> str | None:
        """The 4xx for one more recipient over the address's cap today, or None (and the
        recipient counted)."""
        warm = settings.warmup
        address = warm.transports.get(base)
        if address is None:
            return None
        when = self.clock()
        today = schedule.day_of(when)
        key = today.isoformat()
        if self.counter is None or self.counter.path != warm.counts:
            self.counter = caps.Counter.load(warm.counts, key, self.warn)
        self.counter.roll(key)
        if self._starts is None or self._starts.path != warm.starts:
            self._starts = Watched(
                warm.starts, state.read_starts, self.warn, missing={}, recheck=self._recheck
            )
        starts = self._starts.get() or {}
        entry = starts.get(address)
        cap, day, _ = caps.today_cap(warm, address, entry, today)
        if entry is None and address in warm.planned and address not in warm.planned_day1:
            self._record_first_seen(warm, address, key)
        if cap is not None and self.counter.used(address, provider) >= cap:
            return caps.reply(address, provider, cap, day)
        self.counter.add(address, provider)
        return None

    def _record_first_seen(self, warm: WarmupSettings, address: str, day: str) -> None:
        if address in self._first_seen_failed:
            return

        def first(entries: dict[str, dict[str, Any]]) -> bool:
            if address in entries:
                return False
            entries[address] = {"day1": day, "by": "first-seen"}
            return True

        try:
            state.change_starts(warm.starts, first)
        except (OSError, ValueError) as exc:
            self._first_seen_failed.add(address)
            self.warn(f"{warm.starts}: cannot record day 1 of {address} ({_describe(exc)})")

    def flush(self, *, force: bool = False) -> None:
        """Write the warm-up counts when they changed (``force``: also when not)."""
        if self.counter is None:
            return
        try:
            self.counter.flush(self.clock(), force=force)
        except OSError as exc:
            self.warn(f"{self.counter.path}: cannot write the warm-up counts ({_describe(exc)})")

    def close(self) -> None:
        if self._snapshot is not None and self._snapshot.value is not None:
            self._snapshot.value.close()


def _safe_text(text: str) -> str:
    """One line of printable text for a reply, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text)[:400]


def _safe(text: str) -> str:
    """Text for a reply line: printable, no line breaks, bounded."""
    return "".join(c if c.isprintable() and c != " " else "?" for c in text)[:320]


def respond(policy: Policy, request: Mapping[str, str]) -> str:
    """The action for one request; a bug defers, never kills the connection."""
    try:
        return policy.with_warning(policy.answer(request))
    except Exception as exc:
        policy.warn(f"internal error: {type(exc).__name__}: {_describe(exc)}")
        return "DEFER_IF_PERMIT 4.3.0 tenant policy error; try again later"


def serve(policy: Policy, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests until end of file; the number answered."""
    answered = 0
    request: dict[str, str] = {}
    while True:
        raw = stdin.readline(MAX_LINE)
        if not raw:
            return answered
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line:
            name, eq, value = line.partition("=")
            if eq:
                request[name] = value
            continue
        action = respond(policy, request)
        stdout.write(f"action={action}\n\n".encode())
        stdout.flush()
        answered += 1
        request = {}


# --------------------------------------------------------------------------- the daemon

# A connection whose unanswered request grows past this is closed (smtpd's requests are
# a few hundred bytes).
MAX_REQUEST = 1 << 20
# The daemon looks at its files at most this often (seconds): a pause, a suppression or
# an operator's warm-up start is in force this long after the file changed, at most.
RECHECK = 0.1


class _Connection(asyncio.Protocol):
    """One smtpd's connection: requests end with an empty line; each is answered at
    once, in order (the work is in memory, so nothing waits)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        out: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            request: dict[str, str] = {}
            for line in buffer[start:end].decode("utf-8", "replace").split("\n"):
                name, eq, value = line.rstrip("\r").partition("=")
                if eq:
                    request[name] = value
            start = end + 2
            out.append(f"action={respond(self.policy, request)}\n\n".encode())
        if start:
            del buffer[:start]
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if len(buffer) > MAX_REQUEST:
            self.transport.close()


def listen(path: Path, owner: str, mode: int) -> socket.socket:
    """A listening unix socket at ``path`` (a stale one replaced), ``owner``'s (user, and
    that user's group) with ``mode``: smtpd, chrooted or not, connects as that user."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if owner:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(mode)
    sock.listen(1024)
    return sock


def drop_privileges(user: str) -> None:
    """Become ``user`` (from root); nothing to do for anyone else."""
    if not user or os.getuid() != 0:
        return
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


async def _serve_socket(
    policy: Policy, sock: socket.socket, flush_every: Callable[[], float]
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: policy.flush(force=True))
    server = await loop.create_unix_server(lambda: _Connection(policy), sock=sock)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(flush_every())
            policy.flush()

    task = asyncio.create_task(flusher())
    try:
        await stop.wait()
    finally:
        task.cancel()
        server.close()
        policy.flush()


def daemon(policy: Policy, sock: socket.socket) -> None:
    """Serve every smtpd on ``sock`` until SIGTERM; the counts are written on the way out."""

    def every() -> float:
        settings = policy.settings.get()
        return settings.warmup.flush_every if settings is not None else 2.0

    asyncio.run(_serve_socket(policy, sock, every))


def supervise(argv: list[str], sock: socket.socket, path: Path) -> int:
    """Run the daemon as a child on ``sock`` and start it again when it dies (for hosts
    without systemd: the lab's containers); SIGTERM stops the child, then this."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    backoff = 1.0
    try:
        while not stopping:
            started = time.monotonic()
            child = subprocess.Popen([*argv, "--fd", str(sock.fileno())], pass_fds=(sock.fileno(),))
            code = child.wait()
            if stopping:
                break
            if time.monotonic() - started > 60:
                backoff = 1.0
            print(
                f"mailops tenants policy: the daemon ended (status {code});"
                f" starting it again in {backoff:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
        return exitcodes.OK
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def run(args: argparse.Namespace) -> int:
    path, _ = config.config_path(args.config)
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        drop_privileges(args.user)
        policy = Policy(path, clock=schedule.clock(), count=True, echo=True, recheck=RECHECK)
        try:
            daemon(policy, sock)
        finally:
            policy.close()
        return exitcodes.OK
    if args.listen:
        where = Path(args.listen)
        sock = listen(where, args.socket_owner, int(args.socket_mode, 8))
        if args.supervise:
            argv = [sys.executable, "-m", "mailops"]
            if args.config:
                argv += ["--config", args.config]
            argv += ["tenants", "policy", "--user", args.user]
            return supervise(argv, sock, where)
        drop_privileges(args.user)
        policy = Policy(path, clock=schedule.clock(), count=True, echo=True, recheck=RECHECK)
        try:
            daemon(policy, sock)
        finally:
            policy.close()
            with contextlib.suppress(OSError):
                where.unlink()
        return exitcodes.OK
    policy = Policy(path)
    try:
        serve(policy, sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        pass  # smtpd went away
    finally:
        policy.close()
    return exitcodes.OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "policy",
        help="Postfix policy service for tenant mail: the bulk node's daemon (--listen),"
        " or one conversation on stdin/stdout",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--listen",
        metavar="SOCKET",
        help="serve every smtpd on this unix socket (the daemon); without it, one"
        " conversation on stdin and stdout, with no warm-up caps",
    )
    p.add_argument(
        "--socket-owner",
        default="postfix",
        metavar="USER",
        help="the socket's owner, user and group (default: postfix); '' leaves it",
    )
    p.add_argument("--socket-mode", default="0660", metavar="OCTAL", help="default: 0660")
    p.add_argument(
        "--user",
        default="",
        metavar="USER",
        help="run as this user once the socket is made (when started as root)",
    )
    p.add_argument(
        "--supervise",
        action="store_true",
        help="keep the daemon running: start it again when it dies (hosts without systemd)",
    )
    p.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)
