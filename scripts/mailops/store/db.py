"""The store: bounces, complaints, unsubscribes and the suppression list in one database.

SQLite (``sqlite:////var/lib/mailops/mailops.db``) on a single MX, PostgreSQL
(``postgresql://user:password@host/dbname``, psycopg 3) when several hosts share it.  The
schema is brought up to date on open (see :mod:`mailops.store.migrations`).

Every write that belongs to one message happens in one transaction: either all the rows
of a bounce report and the suppressions they cause are there, or none is.  Any database
failure surfaces as :class:`StoreError`, which the Postfix pipes turn into exit 75 so the
message stays queued and comes back later.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mailops.bounceparse.model import REASONS, Report
from mailops.config import ConfigError
from mailops.dmarc.model import DmarcReport, TlsReport
from mailops.store import migrations
from mailops.store.text import (
    MAX_ADDRESS,
    MAX_DIAGNOSTIC,
    clean,
    normalize_address,
    valid_address,
)

DEFAULT_URL = "sqlite:////var/lib/mailops/mailops.db"
DAY = 86400
# pg_advisory_xact_lock key that serialises migrations between hosts ("mailops" in ASCII).
_MIGRATION_LOCK = 0x6D61696C6F7073

# Feedback types (RFC 5965, RFC 6650) that mean "the recipient does not want this mail".
# not-spam and auth-failure reports are kept but suppress nothing.
COMPLAINT_TYPES = frozenset(["", "abuse", "fraud", "virus", "other"])
# DSN actions that report success: the address works, soft history is cleared.
SUCCESS_ACTIONS = frozenset(["delivered", "relayed", "expanded"])


class StoreError(Exception):
    """The store cannot be reached, is locked, or refuses writes: retrying can help."""


class StoreURLError(ConfigError):
    """The store URL in the settings is not one this tool understands."""


@dataclass(frozen=True)
class Policy:
    """When bounces turn into suppressions (table ``[suppression]``)."""

    soft_threshold: int = 3  # soft bounces within the window that suppress; 0 = never
    soft_window_days: float = 7.0
    expire_days: float = 30.0  # life of a soft suppression; 0 = until removed

    @property
    def soft_window(self) -> int:
        return int(self.soft_window_days * DAY)

    def soft_expiry(self, now: int) -> int | None:
        return None if self.expire_days <= 0 else now + int(self.expire_days * DAY)


@dataclass(frozen=True)
class RawInfo:
    """What ingest knows about the message as it arrived, beside the classification."""

    sha256: str
    size: int
    truncated: bool = False
    envelope_to: str = ""


@dataclass
class Outcome:
    """What one report did to the store."""

    stored: int = 0  # rows added
    duplicates: int = 0  # rows that an earlier arrival of the same report had added
    suppressed: list[str] = field(default_factory=list)  # addresses (newly) suppressed
    cleared: int = 0  # soft bounces and soft suppressions cleared by delivery reports


@dataclass(frozen=True)
class TenantState:
    tenant: str
    paused: bool
    reason: str
    changed_at: int
    changed_by: str


@dataclass(frozen=True)
class Suppression:
    tenant: str
    address: str
    reason: str
    source: str
    created_at: int
    updated_at: int
    expires_at: int | None
    note: str

    @property
    def permanent(self) -> bool:
        return self.expires_at is None


_SUPPRESSION_COLUMNS = "tenant, address, reason, source, created_at, updated_at, expires_at, note"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(url: str) -> str:
    """``sqlite:////abs/path`` -> ``/abs/path``; ``sqlite:///rel`` -> ``rel``."""
    rest = url[len("sqlite:") :]
    if rest in ("", "//", "///:memory:", "//:memory:"):
        return ":memory:"
    if not rest.startswith("///") or len(rest) == 3:
        raise StoreURLError(
            f"store url {url!r}: use sqlite:////absolute/path.db or sqlite:///relative.db"
        )
    return rest[3:]


def _now(now: float | None) -> int:
    return int(time.time() if now is None else now)


def _key(*parts: object) -> str:
    text = "\x00".join(clean(p, 2000) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- backends


def _own_like_directory(path: str) -> None:
    """Give the SQLite store's files (the database, its -wal and -shm) to the owner of
    the directory they are in, when root made them.

    The pipes run as the mailops user and cron's jobs (suppression sync, prune) as
    root.  A root job that opens the store first would otherwise leave the database,
    or the -wal/-shm files WAL mode makes at every first open, owned by root: the
    pipes could no longer write, and every bounce would wait in Postfix's queue.
    """
    if path == ":memory:" or os.geteuid() != 0:
        return
    try:
        st = Path(path).resolve().parent.stat()
    except OSError:
        return
    if st.st_uid == 0:
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with suppress(FileNotFoundError):
            if Path(name).stat().st_uid == 0:
                os.chown(name, st.st_uid, st.st_gid)


class _SQLite:
    dialect = "sqlite"

    def __init__(self, path: str, timeout: float) -> None:
        self.errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
        self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        try:
            mode = str(self.conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode not in ("wal", "memory"):
                # WAL: readers (sync, list) never block the pipes' writes.  Persistent.
                self.conn.execute("PRAGMA journal_mode=WAL")
            # A bounce acknowledged to Postfix must survive a power cut.
            self.conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            self.conn.close()
            raise
        _own_like_directory(path)

    def begin(self, write: bool) -> None:
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, tuple(params))

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        cur = self.conn.execute(sql, tuple(params))
        while rows := cur.fetchmany(1000):
            yield from rows

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    dialect = "postgresql"

    def __init__(self, url: str, timeout: float) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the pgsql extra is not installed
            raise StoreError(f"PostgreSQL store needs psycopg (mailops[pgsql]): {exc}") from None
        self.errors = (psycopg.Error, OSError)
        millis = max(1, int(timeout * 1000))
        self.conn = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
            options=f"-c statement_timeout={millis} -c lock_timeout={millis}",
        )

    def begin(self, write: bool) -> None:
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.closed:
            self.conn.execute("ROLLBACK")

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._sql(sql), tuple(params))

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        cur = self.conn.cursor()
        yield from cur.stream(self._sql(sql), tuple(params))

    def close(self) -> None:
        self.conn.close()


_Backend = _SQLite | _Postgres


# --------------------------------------------------------------------------- the store


class Store:
    """One open connection to the store.  Use as a context manager, or call close()."""

    def __init__(self, backend: _Backend, url: str, policy: Policy) -> None:
        self._db = backend
        self.url = url
        self.policy = policy

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        policy: Policy | None = None,
        migrate: bool = True,
    ) -> Store:
        """Connect (and bring the schema up to date unless ``migrate`` is False)."""
        scheme = url.split(":", 1)[0].lower()
        backend: _Backend
        try:
            if scheme == "sqlite":
                backend = _SQLite(sqlite_path(url), timeout)
            elif scheme in ("postgresql", "postgres"):
                backend = _Postgres(url, timeout)
            else:
                raise StoreURLError(
                    f"store url {redact(url)!r}: scheme must be sqlite: or postgresql:"
                )
        except (StoreError, ConfigError):
            raise
        except Exception as exc:
            raise StoreError(f"cannot open store {redact(url)}: {_describe(exc)}") from None
        store = cls(backend, url, policy or Policy())
        if migrate:
            try:
                store.migrate()
            except BaseException:
                store.close()
                raise
        return store

    def close(self) -> None:
        with suppress(Exception):  # closing a broken connection: nothing to do
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        return self._db.dialect

    # ----------------------------------------------------------------- plumbing

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except self._db.errors as exc:
            raise StoreError(f"store {redact(self.url)}: {_describe(exc)}") from None

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._errors():
            return self._db.execute(sql, params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._errors():
            row = self._db.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self._errors():
            yield from self._db.stream(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: the writes inside commit together or not at all."""
        with self._errors():
            self._db.begin(True)
        try:
            yield
        except BaseException:
            with suppress(Exception):  # the original error is the one to report
                self._db.rollback()
            raise
        with self._errors():
            self._db.commit()

    # ----------------------------------------------------------------- schema

    def schema_version(self) -> int:
        """Applied schema version; 0 for an empty database."""
        if self.dialect == "sqlite":
            exists = self._one(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            )
        else:
            exists = self._one("SELECT to_regclass('schema_version')")
            exists = exists if exists and exists[0] is not None else None
        if not exists:
            return 0
        row = self._one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(row[0]) if row else 0

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, each in its own transaction."""
        current = self.schema_version()
        if current > migrations.LATEST:
            raise StoreError(
                f"store {redact(self.url)} has schema version {current}, newer than this "
                f"mailops knows ({migrations.LATEST}): upgrade mailops"
            )
        if current == migrations.LATEST:
            return []
        applied: list[int] = []
        for migration in migrations.MIGRATIONS:
            with self.transaction():
                if self.dialect == "postgresql":
                    self._exec("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                self._exec(migrations.SCHEMA_VERSION_TABLE.strip())
                row = self._one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                current = int(row[0]) if row else 0
                if migration.version <= current:
                    continue  # applied meanwhile by another process
                for step in migrations.steps_for(migration, self.dialect):
                    self._exec(step)
                self._exec(
                    "INSERT INTO schema_version (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, _now(None)),
                )
                applied.append(migration.version)
        return applied

    def counts(self) -> dict[str, int]:
        """Rows per table (tables a partly migrated store lacks are left out)."""
        out: dict[str, int] = {}
        tables = ("bounces", "complaints", "unsubscribes", "suppressions", "autoreplies")
        for table in (
            *tables,
            "dmarc_records",
            "tlsrpt_policies",
            "report_quarantine",
            "ses_events",
        ):
            try:
                row = self._one(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 - fixed names
            except StoreError:
                continue
            out[table] = int(row[0]) if row else 0
        return out

    # ----------------------------------------------------------------- reports

    def record_report(
        self,
        report: Report,
        raw: RawInfo,
        *,
        tenant: str = "",
        scope: str = "",
        now: float | None = None,
    ) -> Outcome:
        """Store a bounce or feedback report and apply the suppression policy.

        ``tenant`` is whose mail the report is about (the rows' tenant); ``scope`` is
        the tenant of the suppressions it causes, '' (global) by default: a hard bounce
        or a complaint about any tenant's mail stops everybody's.  Soft bounces count
        per address over every tenant's rows.

        Other kinds store nothing.  One transaction for the whole report; a report that
        was stored before (same dedup keys, whichever tenant it was stored for) adds no
        rows and changes nothing.
        """
        out = Outcome()
        if report.kind not in ("bounce", "feedback"):
            return out
        when = _now(now)
        tenant = clean(tenant, 64)
        scope = clean(scope, 64)
        with self.transaction():
            if report.kind == "bounce":
                self._record_bounce(report, raw, tenant, scope, when, out)
            else:
                self._record_feedback(report, raw, tenant, scope, when, out)
        return out

    def _stored_before(self, table: str, key: str) -> bool:
        """Whether a row with this dedup key exists for any tenant (an arrival stored
        before the tenant was known, or under another one, is still the same report)."""
        return (
            self._one(f"SELECT 1 FROM {table} WHERE dedup_key = ? LIMIT 1", (key,))  # noqa: S608
            is not None
        )

    def _links(self, report: Report) -> tuple[str, str, str, str]:
        return (
            clean(report.message_id),
            clean(report.original_message_id),
            clean(report.x_message_id),
            clean(report.verp_token),
        )

    def _record_bounce(
        self, report: Report, raw: RawInfo, tenant: str, scope: str, now: int, out: Outcome
    ) -> None:
        message_id, original, x_id, verp = self._links(report)
        recipients = report.recipients or ()
        rows = list(recipients) if recipients else [None]
        for index, rcpt in enumerate(rows):
            address = normalize_address(rcpt.address) if rcpt else ""
            status = clean(rcpt.status, 32) if rcpt else ""
            action = clean(rcpt.action, 32).lower() if rcpt else ""
            reason = rcpt.reason if rcpt and rcpt.reason in REASONS else "undefined"
            hard = bool(rcpt.hard) if rcpt else False
            if action in SUCCESS_ACTIONS or reason == "delivered":
                if valid_address(address):
                    out.cleared += self._clear_soft(scope, address, now)
                continue
            if message_id:
                key = _key("mid", message_id, address, status, action, "" if address else index)
            else:
                key = _key("raw", raw.sha256, address, status, action, index)
            added = (
                not self._stored_before("bounces", key)
                and self._exec(
                    "INSERT INTO bounces (tenant, dedup_key, received_at, address, status, reason,"
                    " hard, action, remote_mta, diagnostic, detector, message_id,"
                    " original_message_id, x_message_id, verp_token, envelope_to, raw_sha256,"
                    " raw_size, truncated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, dedup_key) DO NOTHING",
                    (
                        tenant,
                        key,
                        now,
                        address,
                        status,
                        reason,
                        int(hard),
                        action,
                        clean(rcpt.remote_mta) if rcpt else "",
                        clean(rcpt.diagnostic, MAX_DIAGNOSTIC) if rcpt else "",
                        clean(report.detector, 64),
                        message_id,
                        original,
                        x_id,
                        verp,
                        normalize_address(raw.envelope_to),
                        clean(raw.sha256, 64),
                        int(raw.size),
                        int(raw.truncated),
                    ),
                ).rowcount
            )
            if not added:
                out.duplicates += 1
                continue
            out.stored += 1
            if not valid_address(address) or action == "delayed":
                continue
            if hard:
                if self._suppress(scope, address, reason, "bounce", None, "", now, False):
                    out.suppressed.append(address)
            elif self.policy.soft_threshold > 0:
                row = self._one(
                    "SELECT COUNT(*) FROM bounces WHERE address = ?"
                    " AND hard = 0 AND cleared_at IS NULL AND action <> 'delayed'"
                    " AND received_at > ?",
                    (address, now - self.policy.soft_window),
                )
                count = int(row[0]) if row else 0
                if count >= self.policy.soft_threshold:
                    note = f"{count} soft bounces in {self.policy.soft_window_days:g} days"
                    expiry = self.policy.soft_expiry(now)
                    if self._suppress(scope, address, reason, "soft", expiry, note, now, False):
                        out.suppressed.append(address)

    def _record_feedback(
        self, report: Report, raw: RawInfo, tenant: str, scope: str, now: int, out: Outcome
    ) -> None:
        message_id, original, x_id, verp = self._links(report)
        feedback_type = clean(report.feedback_type, 32).lower()
        rows = list(report.recipients) if report.recipients else [None]
        for index, rcpt in enumerate(rows):
            address = normalize_address(rcpt.address) if rcpt else ""
            if message_id:
                key = _key("mid", message_id, address, feedback_type, "" if address else index)
            else:
                key = _key("raw", raw.sha256, address, index)
            added = (
                not self._stored_before("complaints", key)
                and self._exec(
                    "INSERT INTO complaints (tenant, dedup_key, received_at, address,"
                    " feedback_type, source_ip, reporting_mta, detector, message_id,"
                    " original_message_id, x_message_id, verp_token, envelope_to, raw_sha256,"
                    " raw_size, truncated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, dedup_key) DO NOTHING",
                    (
                        tenant,
                        key,
                        now,
                        address,
                        feedback_type,
                        clean(report.source_ip, 64),
                        clean(report.reporting_mta),
                        clean(report.detector, 64),
                        message_id,
                        original,
                        x_id,
                        verp,
                        normalize_address(raw.envelope_to),
                        clean(raw.sha256, 64),
                        int(raw.size),
                        int(raw.truncated),
                    ),
                ).rowcount
            )
            if not added:
                out.duplicates += 1
                continue
            out.stored += 1
            if valid_address(address) and feedback_type in COMPLAINT_TYPES:
                note = f"feedback type {feedback_type}" if feedback_type else ""
                if self._suppress(scope, address, "complaint", "complaint", None, note, now, False):
                    out.suppressed.append(address)

    # ----------------------------------------------------------------- deliveries

    def record_delivery(
        self, address: str, *, tenant: str = "", at: float | None = None, now: float | None = None
    ) -> int:
        """A message to ``address`` was delivered at ``at``: forget its soft history.

        Soft bounces received up to ``at`` stop counting (every tenant's: they count
        together), and a soft suppression of scope ``tenant`` decided up to ``at`` is
        lifted.  Hard bounces, complaints and unsubscribes stay.
        Returns how many bounces and suppressions were cleared.
        """
        address = normalize_address(address)
        if not valid_address(address):
            return 0
        current = _now(now)
        when = current if at is None else int(at)
        with self.transaction():
            return self._clear_soft(clean(tenant, 64), address, when, current)

    def _clear_soft(self, tenant: str, address: str, at: int, now: int | None = None) -> int:
        cleared = self._exec(
            "UPDATE bounces SET cleared_at = ? WHERE address = ? AND hard = 0"
            " AND cleared_at IS NULL AND received_at <= ?",
            (now if now is not None else at, address, at),
        ).rowcount
        lifted = self._exec(
            "DELETE FROM suppressions WHERE tenant = ? AND address = ? AND source = 'soft'"
            " AND updated_at <= ?",
            (tenant, address, at),
        ).rowcount
        return int(cleared) + int(lifted)

    def soft_addresses(self, *, tenant: str = "", now: float | None = None) -> set[str]:
        """Addresses whose soft history a delivery would clear (a bounded set): soft
        bounces of every tenant's mail, soft suppressions of scope ``tenant``."""
        since = _now(now) - self.policy.soft_window
        found: set[str] = set()
        for (address,) in self._stream(
            "SELECT DISTINCT address FROM bounces WHERE hard = 0"
            " AND cleared_at IS NULL AND address <> '' AND received_at > ?",
            (since,),
        ):
            found.add(str(address))
        for (address,) in self._stream(
            "SELECT address FROM suppressions WHERE tenant = ? AND source = 'soft'", (tenant,)
        ):
            found.add(str(address))
        return found

    # ----------------------------------------------------------------- suppressions

    def _suppress(
        self,
        tenant: str,
        address: str,
        reason: str,
        source: str,
        expires_at: int | None,
        note: str,
        now: int,
        force: bool,
    ) -> bool:
        # A permanent entry is only replaced by force (an operator's add); an expiring or
        # expired one is replaced by whatever comes next.  created_at restarts when the
        # entry it replaces had already expired.
        changed = self._exec(
            f"INSERT INTO suppressions ({_SUPPRESSION_COLUMNS})"  # noqa: S608 - constant
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant, address) DO UPDATE SET"
            " reason = excluded.reason, source = excluded.source,"
            " created_at = CASE WHEN suppressions.expires_at IS NOT NULL"
            "   AND suppressions.expires_at <= excluded.updated_at"
            "   THEN excluded.created_at ELSE suppressions.created_at END,"
            " updated_at = excluded.updated_at, expires_at = excluded.expires_at,"
            " note = excluded.note"
            " WHERE ? = 1 OR suppressions.expires_at IS NOT NULL",
            (tenant, address, reason, source, now, now, expires_at, clean(note), int(force)),
        ).rowcount
        return bool(changed)

    def suppress(
        self,
        address: str,
        reason: str,
        *,
        tenant: str = "",
        source: str = "manual",
        expires_at: int | None = None,
        note: str = "",
        force: bool = True,
        now: float | None = None,
    ) -> bool:
        """Add or replace one entry (its own transaction).  False if nothing changed."""
        address = normalize_address(address)
        if not valid_address(address):
            raise ValueError(f"not a suppressible address: {address!r}")
        with self.transaction():
            return self._suppress(
                clean(tenant, 64), address, reason, source, expires_at, note, _now(now), force
            )

    def suppress_many(
        self,
        entries: Iterable[tuple[str, str, int | None, str]],
        *,
        tenant: str = "",
        source: str = "import",
        force: bool = False,
        now: float | None = None,
    ) -> tuple[int, int]:
        """(address, reason, expires_at, note) rows in one transaction: (changed, kept)."""
        when = _now(now)
        changed = kept = 0
        with self.transaction():
            for address, reason, expires_at, note in entries:
                if self._suppress(
                    clean(tenant, 64), address, reason, source, expires_at, note, when, force
                ):
                    changed += 1
                else:
                    kept += 1
        return changed, kept

    def record_unsubscribe(
        self,
        address: str,
        *,
        tenant: str = "",
        dedup_key: str,
        source: str = "mail",
        message_id: str = "",
        envelope_to: str = "",
        subject: str = "",
        now: float | None = None,
    ) -> bool:
        """Record an unsubscribe request and suppress the address, in one transaction.

        Returns False when the same request (dedup_key) was recorded before.
        """
        address = normalize_address(address)
        if not valid_address(address):
            raise ValueError(f"not a suppressible address: {address!r}")
        when = _now(now)
        tenant = clean(tenant, 64)
        with self.transaction():
            added = self._exec(
                "INSERT INTO unsubscribes (tenant, dedup_key, received_at, address, source,"
                " message_id, envelope_to, subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, dedup_key) DO NOTHING",
                (
                    tenant,
                    clean(dedup_key, 128),
                    when,
                    address,
                    clean(source, 32),
                    clean(message_id),
                    normalize_address(envelope_to),
                    clean(subject),
                ),
            ).rowcount
            if added:
                self._suppress(tenant, address, "unsubscribe", "unsubscribe", None, "", when, False)
        return bool(added)

    def unsuppress(
        self, addresses: Iterable[str], *, tenant: str = "", now: float | None = None
    ) -> int:
        """Remove entries; their soft history is cleared too, so counting starts afresh
        (a global entry: every tenant's soft bounces of the address, as they count
        together; a tenant's entry: that tenant's)."""
        when = _now(now)
        tenant = clean(tenant, 64)
        removed = 0
        with self.transaction():
            for raw in addresses:
                address = normalize_address(raw)
                removed += int(
                    self._exec(
                        "DELETE FROM suppressions WHERE tenant = ? AND address = ?",
                        (tenant, address),
                    ).rowcount
                )
                if tenant:
                    self._exec(
                        "UPDATE bounces SET cleared_at = ? WHERE tenant = ? AND address = ?"
                        " AND hard = 0 AND cleared_at IS NULL",
                        (when, tenant, address),
                    )
                else:
                    self._exec(
                        "UPDATE bounces SET cleared_at = ? WHERE address = ?"
                        " AND hard = 0 AND cleared_at IS NULL",
                        (when, address),
                    )
        return removed

    def get(
        self, address: str, *, tenant: str = "", now: float | None = None
    ) -> Suppression | None:
        """The entry in force for ``address``, if any."""
        row = self._one(
            f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions"  # noqa: S608 - constant
            " WHERE tenant = ? AND address = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (clean(tenant, 64), normalize_address(address), _now(now)),
        )
        return None if row is None else _suppression(row)

    def suppressions(
        self,
        *,
        tenant: str | None = "",
        reason: str | None = None,
        include_expired: bool = False,
        now: float | None = None,
    ) -> Iterator[Suppression]:
        """Entries ordered by tenant and address, streamed (``tenant=None``: every tenant)."""
        where: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if reason:
            where.append("reason = ?")
            params.append(reason)
        if not include_expired:
            where.append("(expires_at IS NULL OR expires_at > ?)")
            params.append(_now(now))
        sql = f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions"  # noqa: S608 - fixed columns
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY tenant, address"
        for row in self._stream(sql, params):
            yield _suppression(row)

    def complaint_origins(self, addresses: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Address -> the tenants whose mail drew a complaint from it ('' for mail of no
        tenant), from the complaints that suppress (not-spam and auth-failure reports
        do not).  ``addresses``: only these (normalised); None: every address."""
        sql = (
            "SELECT DISTINCT address, tenant FROM complaints WHERE address <> ''"  # noqa: S608
            " AND feedback_type IN (" + ", ".join("?" * len(COMPLAINT_TYPES)) + ")"
        )  # placeholders only
        types = sorted(COMPLAINT_TYPES)
        found: dict[str, set[str]] = {}
        if addresses is None:
            batches: Iterable[list[str]] = [[]]
        else:
            wanted = sorted({normalize_address(a) for a in addresses} - {""})
            batches = [wanted[i : i + 500] for i in range(0, len(wanted), 500)]
        for batch in batches:
            query, params = sql, list(types)
            if batch:
                query += " AND address IN (" + ", ".join("?" * len(batch)) + ")"
                params += batch
            for address, tenant in self._stream(query, params):
                found.setdefault(str(address), set()).add(str(tenant))
        return found

    def prune(self, *, now: float | None = None) -> int:
        """Delete expired entries (they already count for nothing)."""
        with self.transaction():
            return int(
                self._exec(
                    "DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    (_now(now),),
                ).rowcount
            )

    # ----------------------------------------------------------------- autoreply

    @contextmanager
    def autoreply_slot(
        self, address: str, *, period: int, tenant: str = "", now: float | None = None
    ) -> Iterator[bool]:
        """Yield whether ``address`` may get an automatic reply now; record it if so.

        The record commits only when the block finishes without an exception, so a
        reply that could not be handed to sendmail is tried again on the next delivery.
        """
        when = _now(now)
        address = normalize_address(address)[:MAX_ADDRESS]
        tenant = clean(tenant, 64)
        with self.transaction():
            row = self._one(
                "SELECT last_sent_at FROM autoreplies WHERE tenant = ? AND address = ?",
                (tenant, address),
            )
            allowed = row is None or int(row[0]) <= when - period
            yield allowed
            if allowed:
                self._exec(
                    "INSERT INTO autoreplies (tenant, address, last_sent_at, replies)"
                    " VALUES (?, ?, ?, 1) ON CONFLICT (tenant, address) DO UPDATE SET"
                    " last_sent_at = excluded.last_sent_at,"
                    " replies = autoreplies.replies + 1",
                    (tenant, address, when),
                )

    # ----------------------------------------------------------------- tenants

    def tenant_states(self) -> dict[str, TenantState]:
        """Every tenant with a recorded state (a tenant without one is active)."""
        return {
            str(row[0]): TenantState(
                tenant=str(row[0]),
                paused=bool(row[1]),
                reason=str(row[2]),
                changed_at=int(row[3]),
                changed_by=str(row[4]),
            )
            for row in self._stream(
                "SELECT tenant, paused, reason, changed_at, changed_by FROM tenant_state"
                " ORDER BY tenant"
            )
        }

    def set_tenant_paused(
        self,
        tenant: str,
        paused: bool,
        *,
        reason: str = "",
        by: str = "",
        now: float | None = None,
    ) -> bool:
        """Pause or resume a tenant (its own transaction).  False if it already was so."""
        tenant = clean(tenant, 64)
        when = _now(now)
        with self.transaction():
            row = self._one("SELECT paused FROM tenant_state WHERE tenant = ?", (tenant,))
            if bool(row[0]) == paused if row is not None else not paused:
                return False  # no row means active: resuming an active tenant adds none
            self._exec(
                "INSERT INTO tenant_state (tenant, paused, reason, changed_at, changed_by)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET"
                " paused = excluded.paused, reason = excluded.reason,"
                " changed_at = excluded.changed_at, changed_by = excluded.changed_by",
                (tenant, int(paused), clean(reason), when, clean(by, 128)),
            )
        return True

    # ----------------------------------------------------------------- reading rows

    def guard_levels(self) -> dict[tuple[str, str], int]:
        """The guard's last level of every (tenant, metric) it has judged (migration 5)."""
        return {
            (str(row[0]), str(row[1])): int(row[2])
            for row in self._stream("SELECT tenant, metric, level FROM guard_state")
        }

    def set_guard_level(
        self, tenant: str, metric: str, level: int, value: float, *, now: float | None = None
    ) -> None:
        """Record the guard's level (and the rate it judged) of one (tenant, metric)."""
        with self.transaction():
            self._exec(
                "INSERT INTO guard_state (tenant, metric, level, value, changed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, metric) DO UPDATE SET"
                " level = excluded.level, value = excluded.value,"
                " changed_at = excluded.changed_at",
                (clean(tenant, 64), clean(metric, 256), int(level), float(value), _now(now)),
            )

    def forget_guard_levels(self, tenant: str) -> int:
        """Drop the guard's recorded levels of a tenant (its next crossing mails again)."""
        with self.transaction():
            cur = self._exec("DELETE FROM guard_state WHERE tenant = ?", (clean(tenant, 64),))
        return max(0, int(getattr(cur, "rowcount", 0) or 0))

    # ----------------------------------------------------------------- SES events

    def record_ses_event(
        self,
        event_type: str,
        ses_message_id: str,
        addresses: Sequence[str],
        *,
        report: Report | None = None,
        raw: RawInfo | None = None,
        source: str = "",
        sns_message_id: str = "",
        detail: str = "",
        occurred_at: int | None = None,
        tenant: str = "",
        scope: str = "",
        now: float | None = None,
    ) -> Outcome:
        """Store one SES event (``mailops ses events``) in one transaction.

        One ses_events row per recipient, keyed by (type, SES message id, recipient):
        a second arrival adds nothing and changes nothing.  ``report`` (a bounce or a
        complaint in the classifier's terms) then goes through the same rows and the
        same suppression policy as the cluster's own reports, for the recipients that
        were new.  ``stored``/``duplicates`` count ses_events rows.
        """
        out = Outcome()
        when = _now(now)
        tenant = clean(tenant, 64)
        wanted = [normalize_address(a) for a in addresses] or [""]
        fresh: set[str] = set()
        with self.transaction():
            for address in dict.fromkeys(wanted):
                key = _key("ses", event_type, ses_message_id, address)
                added = self._exec(
                    "INSERT INTO ses_events (tenant, dedup_key, received_at, occurred_at,"
                    " event_type, address, ses_message_id, source, sns_message_id, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
                    (
                        tenant,
                        key,
                        when,
                        when if occurred_at is None else int(occurred_at),
                        clean(event_type, 32),
                        address,
                        clean(ses_message_id, 200),
                        normalize_address(source),
                        clean(sns_message_id, 200),
                        clean(detail, 300),
                    ),
                ).rowcount
                if added:
                    out.stored += 1
                    fresh.add(address)
                else:
                    out.duplicates += 1
            if report is not None and fresh and report.kind in ("bounce", "feedback"):
                rows = tuple(r for r in report.recipients if normalize_address(r.address) in fresh)
                if rows:
                    part = dataclasses.replace(report, recipients=rows)
                    info = raw or RawInfo(sha256="", size=0)
                    done = Outcome()
                    if report.kind == "bounce":
                        self._record_bounce(part, info, tenant, clean(scope, 64), when, done)
                    else:
                        self._record_feedback(part, info, tenant, clean(scope, 64), when, done)
                    out.suppressed.extend(done.suppressed)
                    out.cleared += done.cleared
        return out

    def ses_event_counts(self) -> dict[str, int]:
        """SES events stored, by type (every tenant, all time)."""
        return {
            str(kind): int(count)
            for kind, count in self._stream(
                "SELECT event_type, COUNT(*) FROM ses_events GROUP BY event_type"
            )
        }

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """Rows of one table as dicts (for tests, status and small reports)."""
        if table not in (
            "bounces",
            "complaints",
            "unsubscribes",
            "suppressions",
            "autoreplies",
            "tenant_state",
        ):
            raise ValueError(f"unknown table {table!r}")
        sql = f"SELECT * FROM {table}"  # noqa: S608 - table checked above
        params: list[Any] = []
        if where:
            sql += " WHERE " + " AND ".join(f"{name} = ?" for name in where)
            params = list(where.values())
        with self._errors():
            cur = self._db.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # ----------------------------------------------------------------- pipeline sends
    # (migration 8; mailops.ses.pipeline, docs/ses_pipeline.md)

    def claim_pipeline_send(
        self, key: str, info: dict[str, str], *, now: float | None = None, lease: int = 300
    ) -> str:
        """Claim an idempotency key before sending: 'new' (go ahead), 'sent' (sent
        before: send nothing) or 'busy' (another worker holds a claim younger than
        ``lease`` seconds).  An older claim is taken over."""
        when = _now(now)
        with self.transaction():
            added = self._exec(
                "INSERT INTO pipeline_sends (tenant, dedup_key, state, template, recipient,"
                " claimed_at) VALUES (?, ?, 'claimed', ?, ?, ?) ON CONFLICT (dedup_key)"
                " DO NOTHING",
                (
                    clean(info.get("tenant", ""), 64),
                    key,
                    clean(info.get("template", ""), 64),
                    normalize_address(info.get("recipient", "")),
                    when,
                ),
            ).rowcount
            if added:
                return "new"
            row = self._one("SELECT state FROM pipeline_sends WHERE dedup_key = ?", (key,))
            if row is not None and row[0] == "sent":
                return "sent"
            taken = self._exec(
                "UPDATE pipeline_sends SET claimed_at = ? WHERE dedup_key = ?"
                " AND state = 'claimed' AND claimed_at < ?",
                (when, key, when - lease),
            ).rowcount
            return "new" if taken else "busy"

    def finish_pipeline_send(
        self, key: str, message_id: str, transport: str, *, now: float | None = None
    ) -> None:
        with self.transaction():
            self._exec(
                "UPDATE pipeline_sends SET state = 'sent', sent_at = ?, message_id = ?,"
                " transport = ? WHERE dedup_key = ?",
                (_now(now), clean(message_id, 200), clean(transport, 64), key),
            )

    def release_pipeline_send(self, key: str) -> None:
        """Forget a claim whose send failed (a sent key stays)."""
        with self.transaction():
            self._exec(
                "DELETE FROM pipeline_sends WHERE dedup_key = ? AND state = 'claimed'", (key,)
            )

    def pipeline_sends(self) -> list[dict[str, Any]]:
        with self._errors():
            cur = self._db.execute("SELECT * FROM pipeline_sends ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # ----------------------------------------------------------------- DMARC and TLS-RPT
    # (migration 6; mailops.dmarc and mailops.tlsrpt, docs/dmarc.md)

    def record_dmarc(
        self,
        report: DmarcReport,
        *,
        tenant: str = "",
        raw_sha256: str = "",
        now: float | None = None,
    ) -> tuple[int, int]:
        """Store every record of a DMARC aggregate report in one transaction:
        (rows added, rows stored before).  A record is known by (org_name, report_id,
        its place in the report), so a report mailed twice is counted once."""
        when = _now(now)
        added = 0
        org, rid = clean(report.org_name, 256), clean(report.report_id, 256)
        with self.transaction():
            for r in report.records:
                added += int(
                    self._exec(
                        "INSERT INTO dmarc_records (tenant, org_name, report_id, record,"
                        " policy_domain, begin_at, end_at, source_ip, messages, disposition,"
                        " dkim, spf, header_from, received_at, raw_sha256)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (org_name, report_id, record) DO NOTHING",
                        (
                            clean(tenant, 64),
                            org,
                            rid,
                            r.index,
                            clean(report.policy_domain, 253).lower(),
                            report.begin,
                            report.end,
                            clean(r.source_ip, 64),
                            r.count,
                            clean(r.disposition, 32),
                            clean(r.dkim, 32),
                            clean(r.spf, 32),
                            clean(r.header_from, 253).lower(),
                            when,
                            raw_sha256,
                        ),
                    ).rowcount
                )
        return added, len(report.records) - added

    def record_tlsrpt(
        self,
        report: TlsReport,
        *,
        tenant: str = "",
        raw_sha256: str = "",
        now: float | None = None,
    ) -> tuple[int, int]:
        """Store every policy of a TLS-RPT report in one transaction, keyed as
        :meth:`record_dmarc` keys records: (rows added, rows stored before)."""
        when = _now(now)
        added = 0
        org, rid = clean(report.organization_name, 256), clean(report.report_id, 256)
        with self.transaction():
            for p in report.policies:
                added += int(
                    self._exec(
                        "INSERT INTO tlsrpt_policies (tenant, organization_name, report_id,"
                        " policy, policy_domain, policy_type, begin_at, end_at, successful,"
                        " failed, failures, received_at, raw_sha256)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (organization_name, report_id, policy) DO NOTHING",
                        (
                            clean(tenant, 64),
                            org,
                            rid,
                            p.index,
                            clean(p.policy_domain, 253).lower(),
                            clean(p.policy_type, 32),
                            report.begin,
                            report.end,
                            p.successful,
                            p.failed,
                            json.dumps(
                                {clean(k, 64): v for k, v in sorted(p.failures.items())},
                                sort_keys=True,
                            ),
                            when,
                            raw_sha256,
                        ),
                    ).rowcount
                )
        return added, len(report.policies) - added

    def quarantine_report(
        self,
        kind: str,
        message: bytes,
        *,
        raw_sha256: str,
        raw_size: int,
        error: str,
        sender: str = "",
        envelope_to: str = "",
        subject: str = "",
        tenant: str = "",
        now: float | None = None,
    ) -> bool:
        """Keep a report mail that could not be read, for a person.  False when the same
        mail (kind and hash) was kept before."""
        with self.transaction():
            return bool(
                self._exec(
                    "INSERT INTO report_quarantine (tenant, kind, raw_sha256, received_at,"
                    " raw_size, sender, envelope_to, subject, error, message)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (kind, raw_sha256) DO NOTHING",
                    (
                        clean(tenant, 64),
                        clean(kind, 16),
                        raw_sha256,
                        _now(now),
                        raw_size,
                        normalize_address(sender),
                        normalize_address(envelope_to),
                        clean(subject),
                        clean(error, MAX_DIAGNOSTIC),
                        base64.b64encode(message).decode("ascii"),
                    ),
                ).rowcount
            )

    def quarantined_reports(
        self, *, since: int = 0, until: int | None = None, with_message: bool = False
    ) -> list[dict[str, Any]]:
        """Kept report mails received in [since, until), oldest first; ``message`` is the
        mail itself (bytes) when ``with_message``."""
        cols = "id, kind, raw_sha256, received_at, raw_size, sender, envelope_to, subject, error"
        sql = f"SELECT {cols}{', message' if with_message else ''} FROM report_quarantine"  # noqa: S608
        sql += " WHERE received_at >= ? AND received_at < ? ORDER BY received_at, id"
        names = [c.strip() for c in cols.split(",")]
        out: list[dict[str, Any]] = []
        for row in self._stream(sql, (since, until if until is not None else 2**62)):
            item = dict(zip(names, row[: len(names)], strict=True))
            if with_message:
                item["message"] = base64.b64decode(str(row[len(names)]))
            out.append(item)
        return out

    def dmarc_records(self, *, since: int = 0, until: int | None = None) -> list[dict[str, Any]]:
        """DMARC records received in [since, until), as dicts with the table's columns."""
        return self._received("dmarc_records", since, until)

    def tlsrpt_policies(self, *, since: int = 0, until: int | None = None) -> list[dict[str, Any]]:
        """TLS-RPT policies received in [since, until); ``failures`` decoded to a dict."""
        rows = self._received("tlsrpt_policies", since, until)
        for r in rows:
            try:
                found = json.loads(r["failures"] or "{}")
            except ValueError:
                found = {}
            r["failures"] = (
                {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}
            )
        return rows

    def _received(self, table: str, since: int, until: int | None) -> list[dict[str, Any]]:
        sql = (
            f"SELECT * FROM {table} WHERE received_at >= ? AND received_at < ?"  # noqa: S608
            " ORDER BY received_at, id"
        )  # table: one of two fixed names
        with self._errors():
            cur = self._db.execute(sql, (since, until if until is not None else 2**62))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _suppression(row: Sequence[Any]) -> Suppression:
    return Suppression(
        tenant=str(row[0]),
        address=str(row[1]),
        reason=str(row[2]),
        source=str(row[3]),
        created_at=int(row[4]),
        updated_at=int(row[5]),
        expires_at=None if row[6] is None else int(row[6]),
        note=str(row[7]),
    )


def _describe(exc: BaseException) -> str:
    """One line about a database error."""
    text = clean(str(exc), 300) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
