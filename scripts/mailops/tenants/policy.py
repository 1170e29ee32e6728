"""``mailops tenants policy``: the bulk nodes' Postfix policy service for tenant mail.

Postfix's ``spawn`` service starts one of these per client connection (master.cf
``mailops-tenants``) and talks the policy delegation protocol (SMTPD_POLICY_README) over
stdin/stdout: ``name=value`` lines, an empty line ends a request, the answer is one
``action=...`` line and an empty line; one request after another until end of file.

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
  and a warning in the log; the client's MTA tries another node.
* END-OF-MESSAGE: ``HOLD`` when the tenant is paused: the message is accepted and kept
  in the hold queue until ``mailops tenants sync`` releases it on resume.  A message
  with the null sender gets ``451`` instead: the sync finds held mail by its sender's
  domain and would never release it.
* A login that is no tenant's: ``DEFER_IF_PERMIT``; no state file ever seen:
  ``DEFER_IF_PERMIT`` (a broken or missing file later: the last good one stays in use).

No store access per request: everything comes from three local files, each re-read
only when its inode, size or modification time changes (one ``stat`` each per request):
the settings file (``[tenants]``, ``[transport_classes]``), the state file that
``mailops tenants sync`` writes (who is paused) and its suppression snapshot.

Why the snapshot is SQLite and not JSON: a policy process lives as long as one smtpd's
connection to it, and a node runs hundreds of smtpd processes.  A JSON list of tens of
thousands of addresses would be parsed into every one of them (tens of milliseconds and
megabytes each, again on every sync); the SQLite file is opened read-only and answers an
indexed lookup in microseconds, its pages shared through the page cache.  The sync
replaces it by rename, so an open connection keeps reading the complete old file until
the next request reopens the new one (``immutable=1``: nobody writes a file in place).

Under ``spawn`` the process's stderr is the socket to smtpd, so warnings go to the mail
log through ``postlog`` (``[tenants_policy] postlog``; "" writes them to stderr, for
running the service by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote

from mailops import config, exitcodes
from mailops.config import ConfigError
from mailops.tenants.model import Tenant, Tenants, load_tenants

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

    def __init__(self, path: Path, load: Callable[[Path], T], warn: Callable[[str], None]):
        self.path = path
        self._load = load
        self._warn = warn
        self._sig: tuple[int, ...] | None = None
        self._bad_sig: tuple[int, ...] | None = None
        self.value: T | None = None

    def get(self) -> T | None:
        try:
            st = self.path.stat()
        except OSError as exc:
            sig: tuple[int, ...] = (-1, exc.errno or 0)
        else:
            sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._sig or sig == self._bad_sig:
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

    def __init__(self, config_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._warned: set[str] = set()
        self.settings = Watched(config_path, read_settings, self.warn)
        self._state: Watched[dict[str, Any]] | None = None
        self._snapshot: Watched[Snapshot] | None = None
        # Until the settings are read: their defaults (stderr is smtpd's socket).
        self._postlog = str(config.SCHEMA["tenants_policy"]["postlog"].default)
        self._syslog_name = str(config.SCHEMA["tenants_policy"]["syslog_name"].default)
        self.pending: list[str] = []  # warnings postlog could not write

    # ------------------------------------------------------------- logging

    def warn(self, text: str) -> None:
        """One warning line in the mail log, once per process for the same text.

        ``postlog`` writes it; where it cannot (Debian's postlog is not set-gid, so with
        ``maillog_file`` only root reaches postlogd), the warning waits for the next
        answer that would be ``DUNNO`` and goes out as ``WARN text`` instead: smtpd
        logs it with the client, sender and recipient, and carries on as for DUNNO.
        """
        if text in self._warned:
            return
        self._warned.add(text)
        if len(self._warned) > 1000:
            self._warned.clear()
        if not self._postlog:
            print(f"mailops tenants policy: warning: {text}", file=sys.stderr, flush=True)
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
            self._state = Watched(settings.state, read_state, self.warn)
        if self._snapshot is None or self._snapshot.path != settings.snapshot:
            self._snapshot = Watched(settings.snapshot, _open_snapshot, self.warn)
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
            return self._rcpt(settings, tenant, snapshot, request.get("recipient", ""))
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

    def _rcpt(self, settings: Settings, tenant: Tenant, snapshot: Snapshot, rcpt: str) -> str:
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
        base = tenant.transports[stable_index(address, len(tenant.transports))]
        domain = address.rpartition("@")[2]
        klass = settings.classes.get(domain)
        return f"FILTER {base}_{klass}:" if klass else f"FILTER {base}:"

    def close(self) -> None:
        if self._snapshot is not None and self._snapshot.value is not None:
            self._snapshot.value.close()


def _safe_text(text: str) -> str:
    """One line of printable text for a reply, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text)[:400]


def _safe(text: str) -> str:
    """Text for a reply line: printable, no line breaks, bounded."""
    return "".join(c if c.isprintable() and c != " " else "?" for c in text)[:320]


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
        try:
            action = policy.with_warning(policy.answer(request))
        except Exception as exc:  # a bug must not kill the connection: defer, say why
            policy.warn(f"internal error: {type(exc).__name__}: {_describe(exc)}")
            action = "DEFER_IF_PERMIT 4.3.0 tenant policy error; try again later"
        stdout.write(f"action={action}\n\n".encode())
        stdout.flush()
        answered += 1
        request = {}


def run(args: argparse.Namespace) -> int:
    path, _ = config.config_path(args.config)
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
        help="Postfix policy service for tenant mail (run by master.cf spawn)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.set_defaults(func=run)
