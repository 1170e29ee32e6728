"""``mailops tenants sync``: bring the store's tenant states and suppressions to a bulk node.

Cron runs it every minute on the bulk nodes (``--every S``: again every S seconds until
the minute is over, as ``mailops suppression sync --every`` does).  Each run:

1. reads every tenant's state (paused or not) and the suppression rows that tenant mail
   meets: the global rows (tenant ''), every configured tenant's own rows, and, when a
   tenant takes only its own complaints (``complaints = "tenant"``), which tenant's mail
   each complaint was about;
2. writes the suppression snapshot (a small SQLite file, only when its content changed)
   and the state file (JSON), each to a temporary file renamed over the old one, so the
   policy service (``mailops tenants policy``) reads either the old file or the new one;
3. puts the queue in step: while a tenant is paused its queued mail (sender domain of
   the tenant, not on hold yet) is held with ``postsuper -h`` on every run (so mail that
   was on its way into the queue when the pause came is caught by the next run); on
   resume its held mail is released (``postsuper -H``, then ``postqueue -i ID`` so it
   leaves at once, for the first ``FLUSH_LIMIT`` messages) on the run that sees the resume
   and once more on the next run (a message the policy held just before it saw the
   resume).  A hold or release that
   failed is tried again next run: the state file records what was done to the queue.

The state file is written before the queue is touched: by then the policy service holds
new mail of a paused tenant, and no longer holds mail of a resumed one.

A store that cannot be reached: the last files stay, one line on stderr, exit 75 (the
next minute tries again).  Another sync still running (a hand run beside cron's): this
one says so and exits 0.  Settings: ``[tenants_sync]`` (see mailops.config).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mailops import config, exitcodes
from mailops.tenants.model import Tenant, Tenants, load_tenants
from mailops.tenants.policy import SNAPSHOT_FORMAT, STATE_FORMAT

if TYPE_CHECKING:
    from mailops.store import Store

# A run with --every stops starting syncs this long before cron's minute is over, so it
# has finished when cron starts the next one.
MINUTE = 60.0
MARGIN = 5.0
# Queue states of a tenant in the state file: what the sync has done to its mail.
ACTIVE, HELD, RELEASING = "active", "held", "releasing"
# Released messages sent at once with ``postqueue -i`` per run, at most: each call is a
# process (some 30 ms), and a release of tens of thousands would hold the sync's lock for
# many minutes, so no pause, resume or unsubscribe reached the node meanwhile.  The rest
# go on the queue manager's next scan of the deferred queue (queue_run_delay, 5 min).
FLUSH_LIMIT = 300


def _err(text: str) -> None:
    print(f"mailops tenants sync: {text}", file=sys.stderr)


def repeat_within_minute(once: Callable[[], int], every: float | None) -> int:
    """Run ``once``; with ``every``, again every ``every`` seconds until cron's minute is
    over.  A run that fails ends the loop with its exit code (the next minute retries)."""
    start = time.monotonic()
    n = 0
    while True:
        code = once()
        n += 1
        if code != exitcodes.OK or not every:
            return code
        due = start + n * every
        if due > start + MINUTE - MARGIN:
            return code
        time.sleep(max(0.0, due - time.monotonic()))


# --------------------------------------------------------------------------- files


def write_atomically(path: Path, produce: Callable[[Path], None]) -> None:
    """``produce(tmp)`` writes a file next to ``path``, which then replaces ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        produce(Path(tmp))
        Path(tmp).chmod(0o644)  # the policy runs as another user
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_previous_state(path: Path) -> dict[str, Any]:
    """The tenants table of the last state file ({} when there is none usable)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _err(f"{path}: unreadable ({exc}); judging transitions as if nothing was held")
        return {}
    tenants = data.get("tenants") if isinstance(data, dict) else None
    return tenants if isinstance(tenants, dict) else {}


def write_state(path: Path, tenants: Mapping[str, Mapping[str, Any]], now: float) -> None:
    body = {"format": STATE_FORMAT, "written_at": int(now), "tenants": tenants}
    text = json.dumps(body, indent=1, sort_keys=True) + "\n"

    def produce(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    write_atomically(path, produce)


SuppressionRow = tuple[str, str, str, str, int | None]  # address, tenant, reason, source, expires


def snapshot_digest(rows: list[SuppressionRow], origins: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256(SNAPSHOT_FORMAT.encode())
    for row in rows:
        digest.update(repr(row).encode("utf-8", "replace"))
    digest.update(b"\0origins\0")
    for origin in origins:
        digest.update(repr(origin).encode("utf-8", "replace"))
    return digest.hexdigest()


def snapshot_current_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'digest'").fetchone()
            fmt = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if fmt is None or fmt[0] != SNAPSHOT_FORMAT or row is None:
        return None
    return str(row[0])


def write_snapshot(path: Path, rows: list[SuppressionRow], origins: list[tuple[str, str]]) -> bool:
    """Write the snapshot unless it already holds exactly these rows; True if written."""
    digest = snapshot_digest(rows, origins)
    if snapshot_current_digest(path) == digest:
        return False

    def produce(tmp: Path) -> None:
        db = sqlite3.connect(tmp)  # mkstemp's empty file: SQLite makes it a database
        try:
            db.executescript(
                """
                PRAGMA journal_mode = OFF;
                PRAGMA synchronous = OFF;
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE suppressed (
                    address TEXT NOT NULL, tenant TEXT NOT NULL, reason TEXT NOT NULL,
                    source TEXT NOT NULL, expires_at INTEGER,
                    PRIMARY KEY (address, tenant)) WITHOUT ROWID;
                CREATE TABLE complaint_origins (
                    address TEXT NOT NULL, tenant TEXT NOT NULL,
                    PRIMARY KEY (address, tenant)) WITHOUT ROWID;
                """
            )
            with db:
                db.executemany("INSERT OR REPLACE INTO suppressed VALUES (?, ?, ?, ?, ?)", rows)
                db.executemany("INSERT OR IGNORE INTO complaint_origins VALUES (?, ?)", origins)
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", SNAPSHOT_FORMAT), ("digest", digest)],
                )
        finally:
            db.close()
        with open(tmp, "rb") as fh:  # on disk before the rename makes it the snapshot
            os.fsync(fh.fileno())

    write_atomically(path, produce)
    return True


# --------------------------------------------------------------------------- the store


def suppression_rows(store: Store, tenants: Tenants) -> list[SuppressionRow]:
    """The rows in force that tenant mail meets: global ones and configured tenants'."""
    wanted = {""} | {t.name for t in tenants}
    return [
        (e.address, e.tenant, e.reason, e.source, e.expires_at)
        for e in store.suppressions(tenant=None)
        if e.tenant in wanted
    ]


def complaint_origins(
    store: Store, tenants: Tenants, rows: Iterable[SuppressionRow]
) -> list[tuple[str, str]]:
    """(address, tenant) for each global complaint row's address and each configured
    tenant whose mail it complained about; read only when some tenant takes only its
    own complaints (``complaints = "tenant"``), the one reader of it."""
    if not any(t.complaints == "tenant" for t in tenants):
        return []
    complainers = [a for a, who, _, source, _ in rows if who == "" and source == "complaint"]
    if not complainers:
        return []
    names = {t.name for t in tenants}
    found = store.complaint_origins(complainers)
    return sorted((a, t) for a, ts in found.items() for t in ts if t in names)


# --------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    queue_name: str
    sender: str


@dataclass
class QueueTools:
    postqueue: str = "postqueue"
    postsuper: str = "postsuper"
    timeout: float = 120.0
    problems: list[str] = field(default_factory=list)

    def messages(self) -> Iterator[QueuedMessage]:
        """Every queued message (``postqueue -j``, read line by line)."""
        proc = subprocess.Popen(
            [self.postqueue, "-j"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and item.get("queue_id"):
                    yield QueuedMessage(
                        queue_id=str(item["queue_id"]),
                        queue_name=str(item.get("queue_name", "")),
                        sender=str(item.get("sender", "")),
                    )
        finally:
            proc.stdout.close()
            try:
                err = proc.communicate(timeout=self.timeout)[1] or ""
            except subprocess.TimeoutExpired:
                proc.kill()
                err = proc.communicate()[1] or ""
        if proc.returncode != 0:
            raise QueueError(f"postqueue -j failed ({proc.returncode}): {_first_line(err)}")

    def _run(self, argv: list[str], stdin: str = "") -> None:
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise QueueError(f"{' '.join(argv[:2])}: {exc}") from None
        if proc.returncode != 0:
            raise QueueError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): {_first_line(proc.stderr)}"
            )

    def hold(self, ids: list[str]) -> None:
        if ids:
            self._run([self.postsuper, "-h", "-"], "".join(f"{i}\n" for i in ids))

    def release(self, ids: list[str]) -> None:
        if not ids:
            return
        self._run([self.postsuper, "-H", "-"], "".join(f"{i}\n" for i in ids))
        # Released mail waits for the next queue run: send it now (up to FLUSH_LIMIT).
        for queue_id in ids[:FLUSH_LIMIT]:
            try:
                self._run([self.postqueue, "-i", queue_id])
            except QueueError as exc:
                self.problems.append(str(exc))
        if len(ids) > FLUSH_LIMIT:
            self.problems.append(
                f"{len(ids) - FLUSH_LIMIT} released messages left to the queue manager's"
                " next scan of the deferred queue"
            )


class QueueError(Exception):
    pass


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def tenant_messages(
    tools: QueueTools, tenants: Tenants, names: set[str]
) -> dict[str, list[QueuedMessage]]:
    """Queued messages of the named tenants, by tenant (sender domain owned by it)."""
    found: dict[str, list[QueuedMessage]] = {name: [] for name in names}
    for message in tools.messages():
        tenant = tenants.for_address(message.sender) if message.sender else None
        if tenant is not None and tenant.name in names:
            found[tenant.name].append(message)
    return found


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    written: bool = False
    held: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # failed: tried again next run
    warnings: list[str] = field(default_factory=list)  # said with --verbose only


def _queue_plan(
    tenants: Iterable[Tenant], paused: Mapping[str, bool], previous: Mapping[str, Any]
) -> tuple[set[str], set[str]]:
    """Which tenants' mail to hold and which to release on this run."""
    hold: set[str] = set()
    release: set[str] = set()
    for tenant in tenants:
        before = previous.get(tenant.name, {})
        queue = before.get("queue", ACTIVE) if isinstance(before, dict) else ACTIVE
        if paused.get(tenant.name, False):
            hold.add(tenant.name)
        elif queue in (HELD, RELEASING):
            release.add(tenant.name)
    return hold, release


def sync_once(
    data: Mapping[str, Any], values: Mapping[str, Any], *, verbose: bool
) -> tuple[int, RunResult]:
    """One sync: (exit code, what it did).  A failed hold or release is in the result's
    problems with exit code 0: the loop goes on, and the next run tries again."""
    from mailops.store import StoreError, open_from_config

    tenants = load_tenants(data)
    state_path = Path(values["state"])
    snapshot_path = Path(values["snapshot"])
    try:
        with open_from_config(dict(data)) as store:
            states = store.tenant_states()
            rows = suppression_rows(store, tenants)
            origins = complaint_origins(store, tenants, rows)
    except StoreError as exc:
        _err(f"{exc}; keeping the last state and snapshot")
        return exitcodes.TEMPFAIL, RunResult()
    now = time.time()
    result = RunResult()
    try:
        result.written = write_snapshot(snapshot_path, rows, origins)
    except (OSError, sqlite3.Error) as exc:
        _err(f"{snapshot_path}: cannot write the snapshot ({exc})")
        return exitcodes.CANTCREAT, result
    previous = read_previous_state(state_path)
    paused = {name: s.paused for name, s in states.items()}
    entries: dict[str, dict[str, Any]] = {}
    for tenant in tenants:
        state = states.get(tenant.name)
        before = previous.get(tenant.name, {})
        carried = before.get("queue", ACTIVE) if isinstance(before, dict) else ACTIVE
        is_paused = bool(state and state.paused)
        entries[tenant.name] = {
            "paused": is_paused,
            "reason": state.reason if state else "",
            "changed_at": state.changed_at if state else 0,
            "changed_by": state.changed_by if state else "",
            # What was done to the queue so far: carried until this run does more.  A
            # paused tenant counts as held at once, whether or not this run's postsuper
            # works: the policy holds its new mail from this state file on, and a
            # resume must release that mail even if no hold of the queue ever succeeded.
            "queue": HELD if is_paused else carried,
        }
    try:
        write_state(state_path, entries, now)  # the policy acts on it from now on
    except OSError as exc:
        _err(f"{state_path}: cannot write the state file ({exc})")
        return exitcodes.CANTCREAT, result
    if values["hold"]:
        hold, release = _queue_plan(tenants, paused, previous)
        if hold or release:
            _queue_step(values, tenants, hold, release, entries, result)
            try:
                write_state(state_path, entries, time.time())
            except OSError as exc:
                _err(f"{state_path}: cannot write the state file ({exc})")
                return exitcodes.CANTCREAT, result
    for problem in result.problems:
        _err(problem)
    if verbose:
        for warning in result.warnings:
            _err(f"warning: {warning}")
        changed = "updated" if result.written else "unchanged"
        print(
            f"{len(entries)} tenants, {sum(e['paused'] for e in entries.values())} paused;"
            f" snapshot {changed}, {len(rows)} suppressions, {len(origins)} complaint origins;"
            f" held {sum(result.held.values())}, released {sum(result.released.values())}"
        )
    return exitcodes.OK, result


def _queue_step(
    values: Mapping[str, Any],
    tenants: Tenants,
    hold: set[str],
    release: set[str],
    entries: dict[str, dict[str, Any]],
    result: RunResult,
) -> None:
    tools = QueueTools(postqueue=values["postqueue"], postsuper=values["postsuper"])
    try:
        found = tenant_messages(tools, tenants, hold | release)
    except (OSError, QueueError) as exc:
        result.problems.append(f"cannot list the queue: {exc}; trying again next run")
        return
    for name in sorted(hold):
        ids = [m.queue_id for m in found[name] if m.queue_name != "hold"]
        try:
            tools.hold(ids)
        except QueueError as exc:
            result.problems.append(f"tenant {name}: holding {len(ids)} messages: {exc}")
            continue
        entries[name]["queue"] = HELD
        result.held[name] = len(ids)
    for name in sorted(release):
        ids = [m.queue_id for m in found[name] if m.queue_name == "hold"]
        try:
            tools.release(ids)
        except QueueError as exc:
            result.problems.append(f"tenant {name}: releasing {len(ids)} messages: {exc}")
            continue
        # The first release leaves one more for the next run (see the module's text).
        entries[name]["queue"] = RELEASING if entries[name]["queue"] == HELD else ACTIVE
        result.released[name] = len(ids)
    # A message that could not be sent at once (delivered meanwhile, say) still goes on
    # the next queue run: worth a word with -v, not a failure.
    result.warnings.extend(tools.problems)


class _Lock:
    """An exclusive lock next to the state file, or None if another run holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def run(args: argparse.Namespace) -> int:
    data = config.load(args.config)
    values = config.table(data, "tenants_sync", {"every": args.every})
    config.table(data, "store")
    load_tenants(data)  # a broken [tenants] is a configuration error (78), at once
    problems = config.transport_class_problems(data.get("transport_classes", {}))
    if problems:
        raise config.ConfigError(*problems)
    lock = _Lock(Path(str(values["state"]) + ".lock"))
    try:
        if not lock.acquire():
            _err("another sync is running; leaving it to that one")
            return exitcodes.OK
    except OSError as exc:
        _err(f"{lock.path}: {exc.strerror or exc}")
        return exitcodes.CANTCREAT
    failed_queue = False

    def once() -> int:
        nonlocal failed_queue
        code, result = sync_once(data, values, verbose=args.verbose)
        failed_queue = failed_queue or bool(result.problems)
        return code

    try:
        code = repeat_within_minute(once, values["every"] or None)
    finally:
        lock.release()
    # The queue could not be put in step: tell cron (the files are up to date).
    return exitcodes.TEMPFAIL if code == exitcodes.OK and failed_queue else code


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sync",
        help="bulk nodes: tenant states and suppressions for the policy; hold/release mail",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--every",
        type=float,
        metavar="S",
        help="sync again every S seconds until the minute is over (for a cron job)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="say what happened")
    p.set_defaults(func=run)
