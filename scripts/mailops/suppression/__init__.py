"""``mailops suppression``: the list of recipients no node sends to, and its Postfix map.

Usage::

    mailops suppression list   [--tenant T] [--reason R] [--all] [--json]
    mailops suppression check  ADDR [--tenant T]          exit 0 suppressed, 1 not
    mailops suppression add    ADDR... [--reason R] [--note TEXT] [--expires-days D]
    mailops suppression remove ADDR... [--tenant T]
    mailops suppression export [--format csv|postfix] [--output FILE] [--reason R]
    mailops suppression import FILE|- [--reason R] [--tenant T] [--skip-invalid]
    mailops suppression sync   [--map FILE] [--map-type TYPE] [--postmap] [--every S] [-v]
    mailops suppression delivered [ADDR...] [--postfix-log FILE|-]
    mailops suppression prune

Entries carry a reason (a bounce reason such as ``userunknown``, or ``complaint``,
``unsubscribe``, ``manual``), the path that added them (``source``: bounce, soft,
complaint, unsubscribe, manual, import) and their times.  Hard bounces, complaints,
unsubscribes and operators' entries stay until removed; soft-bounce entries expire after
``expire_days``.  ``add`` replaces what is there; ``import`` never shortens a permanent
entry.

``export --format csv`` writes ``address,reason,source,created_at,updated_at,expires_at,
note,tenant`` (times in ISO 8601 UTC); ``import`` reads that, or any CSV with an
``address`` column, or a plain list with one address (and optionally a reason) per line.

``sync`` writes the Postfix access map that every bulk node checks with
``check_recipient_access hash:/etc/postfix/suppressed``; it only reads the store, so a
node can use a read-only database login.  Cron starts it once a minute; with ``--every S``
it syncs again every S seconds until that minute is over, so a new suppression reaches
the map within S seconds.  ``delivered`` feeds successful deliveries to
the policy: soft-bounce history up to the delivery is cleared (see docs/suppression.md).

Exit codes: 0; 1 ``check`` found nothing; 2 bad addresses or arguments; 65 a bad import
file; 73 the map or output cannot be written; 75 the store cannot be reached; 78 bad
settings.

Settings (table ``[suppression]``; the store is ``[store]``)::

    soft_threshold = 3           # soft bounces within the window that suppress (0: never)
    soft_window_days = 7.0
    expire_days = 30.0           # life of a soft-bounce entry (0: until removed)
    map = "/etc/postfix/suppressed"
    map_type = "hash"            # hash, btree, lmdb, cdb (postmap) or texthash
    postmap = "postmap"
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from mailops import config, exitcodes
from mailops.maillog.stamps import line_time
from mailops.store import (
    Store,
    StoreError,
    Suppression,
    open_from_config,
    store_settings,
)
from mailops.store.db import DAY
from mailops.store.text import clean, normalize_address, valid_address, valid_reason
from mailops.suppression import mapfile

CSV_FIELDS = (
    "address",
    "reason",
    "source",
    "created_at",
    "updated_at",
    "expires_at",
    "note",
    "tenant",
)


class ImportFileError(Exception):
    """A row of an import file is unusable; the message names the line."""


def settings(data: dict[str, Any]) -> dict[str, Any]:
    return config.table(data, "suppression")


def iso(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> int | None:
    """ISO 8601 (a naive time is UTC) or epoch seconds; '' is None."""
    text = text.strip()
    if not text:
        return None
    if re.fullmatch(r"\d{1,12}", text):
        return int(text)
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _tenant(args: argparse.Namespace, data: dict[str, Any]) -> str:
    return str(args.tenant if args.tenant is not None else store_settings(data)["tenant"])


def _reason(text: str | None, default: str) -> str:
    reason = (text or default).strip().lower()
    if not valid_reason(reason):
        raise ValueError(f"reason {text!r}: use letters, digits, '_', '.', '-' (at most 64)")
    return reason


def _err(text: str) -> None:
    print(f"mailops suppression: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- output


def _as_dict(entry: Suppression) -> dict[str, Any]:
    return {
        "address": entry.address,
        "reason": entry.reason,
        "source": entry.source,
        "created_at": iso(entry.created_at),
        "updated_at": iso(entry.updated_at),
        "expires_at": iso(entry.expires_at),
        "note": entry.note,
        "tenant": entry.tenant,
    }


def write_csv(entries: Iterable[Suppression], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for entry in entries:
        writer.writerow(_as_dict(entry))
        count += 1
    return count


def _write_output(path: str, produce: Any) -> None:
    """Run produce(fh) into ``path`` atomically (mode 0644), or into stdout for ''/'-'."""
    if path in ("", "-"):
        produce(sys.stdout)
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            produce(fh)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- import


def read_import(
    fh: TextIO, *, default_reason: str, skip_invalid: bool, now: int, skipped: list[str]
) -> Iterator[tuple[str, str, int | None, str]]:
    """Rows of a CSV or plain list as (address, reason, expires_at, note), streamed."""
    reader = csv.reader(fh)
    columns: dict[str, int] | None = None
    first = True
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if first:
            # A header row names an "address" column; otherwise it is a plain list.
            first = False
            names = [c.strip().lower() for c in row]
            if "address" in names:
                columns = {name: i for i, name in enumerate(names)}
                continue
        try:
            yield _import_row(row, columns, default_reason, now)
        except ImportFileError as exc:
            if not skip_invalid:
                raise ImportFileError(f"line {line}: {exc}") from None
            skipped.append(f"line {line}: {exc}")
        except _Expired:
            skipped.append(f"line {line}: already expired")


class _Expired(Exception):
    pass


def _import_row(
    row: list[str], columns: dict[str, int] | None, default_reason: str, now: int
) -> tuple[str, str, int | None, str]:
    def col(name: str, position: int) -> str:
        if columns is None:
            return row[position] if position < len(row) else ""
        index = columns.get(name)
        return row[index] if index is not None and index < len(row) else ""

    address = normalize_address(col("address", 0))
    if not valid_address(address):
        raise ImportFileError(f"not an address: {clean(col('address', 0), 80)!r}")
    reason_text = col("reason", 1).strip()
    try:
        reason = _reason(reason_text or None, default_reason)
    except ValueError as exc:
        raise ImportFileError(str(exc)) from None
    try:
        expires = parse_time(col("expires_at", 99))
    except ValueError:
        raise ImportFileError(f"expires_at {clean(col('expires_at', 99), 40)!r}") from None
    if expires is not None and expires <= now:
        raise _Expired
    return address, reason, expires, clean(col("note", 99))


# --------------------------------------------------------------------------- delivered

_SENT = re.compile(r"\bto=<([^>\s]*)>.*\bstatus=sent\b")


def log_time(line: str, now: float) -> int | None:
    """When a Postfix log line was written (RFC 3339 or classic syslog stamp)."""
    when = line_time(line[:64].encode("ascii", "replace"), now)
    return None if when is None else int(when)


def deliveries(lines: Iterable[str], now: float) -> Iterator[tuple[str, int | None]]:
    """(recipient, time) of every ``status=sent`` line."""
    for line in lines:
        if "status=sent" not in line:
            continue
        m = _SENT.search(line)
        if m:
            yield normalize_address(m.group(1)), log_time(line, now)


# --------------------------------------------------------------------------- commands


def text_input(path: str, newline: str | None = None) -> TextIO:
    """A file, or stdin for '-', as UTF-8 text (undecodable bytes replaced)."""
    if path == "-":
        return io.TextIOWrapper(
            sys.stdin.buffer, encoding="utf-8", errors="replace", newline=newline
        )
    return open(path, encoding="utf-8", errors="replace", newline=newline)


def _open(data: dict[str, Any]) -> Store:
    # Migrating an up-to-date store only reads schema_version, so a node with a read-only
    # database login (sync, list, export) works as long as the MX has migrated.
    return open_from_config(data)


def cmd_list(args: argparse.Namespace, data: dict[str, Any]) -> int:
    tenant = None if args.all_tenants else _tenant(args, data)
    with _open(data) as store:
        entries = store.suppressions(tenant=tenant, reason=args.reason, include_expired=args.all)
        if args.json:
            for entry in entries:
                print(json.dumps(_as_dict(entry), separators=(",", ":")))
            return exitcodes.OK
        count = 0
        for entry in entries:
            expires = iso(entry.expires_at) or "never"
            who = f" [{entry.tenant}]" if entry.tenant else ""
            print(
                f"{entry.address}{who}  {entry.reason}  {entry.source}  "
                f"since {iso(entry.created_at)}  expires {expires}"
                + (f"  ({entry.note})" if entry.note else "")
            )
            count += 1
        print(f"{count} suppressed", file=sys.stderr)
    return exitcodes.OK


def cmd_check(args: argparse.Namespace, data: dict[str, Any]) -> int:
    with _open(data) as store:
        entry = store.get(args.address, tenant=_tenant(args, data))
    if entry is None:
        print(f"{normalize_address(args.address)}: not suppressed")
        return exitcodes.FAIL
    line = mapfile.map_line(entry) or f"{entry.address} ({entry.reason})\n"
    sys.stdout.write(line)
    return exitcodes.OK


def _addresses(raw: list[str]) -> list[str] | None:
    out: list[str] = []
    for text in raw:
        address = normalize_address(text)
        if not valid_address(address):
            _err(f"not an address that can be suppressed: {clean(text, 80)!r}")
            return None
        out.append(address)
    return out


def cmd_add(args: argparse.Namespace, data: dict[str, Any]) -> int:
    addresses = _addresses(args.addresses)
    if addresses is None:
        return exitcodes.USAGE
    try:
        reason = _reason(args.reason, "manual")
    except ValueError as exc:
        _err(str(exc))
        return exitcodes.USAGE
    now = int(time.time())
    expires = now + int(args.expires_days * DAY) if args.expires_days else None
    with _open(data) as store:
        store.suppress_many(
            ((a, reason, expires, args.note or "") for a in addresses),
            tenant=_tenant(args, data),
            source="manual",
            force=True,
            now=now,
        )
    print(f"suppressed {len(addresses)} ({reason})")
    return exitcodes.OK


def cmd_remove(args: argparse.Namespace, data: dict[str, Any]) -> int:
    with _open(data) as store:
        removed = store.unsuppress(args.addresses, tenant=_tenant(args, data))
    print(f"removed {removed} of {len(args.addresses)}")
    return exitcodes.OK


def cmd_export(args: argparse.Namespace, data: dict[str, Any]) -> int:
    with _open(data) as store:
        entries = store.suppressions(tenant=_tenant(args, data), reason=args.reason)
        counts: list[int] = []

        def produce(fh: TextIO) -> None:
            if args.format == "postfix":
                written, skipped = mapfile.write_map(entries, fh)
                counts.extend([written, skipped])
            else:
                counts.extend([write_csv(entries, fh), 0])

        try:
            _write_output(args.output or "", produce)
        except OSError as exc:
            _err(f"{args.output}: {exc.strerror or exc}")
            return exitcodes.CANTCREAT
    if counts and counts[1]:
        _err(f"{counts[1]} entries left out: their address cannot be a Postfix map key")
    return exitcodes.OK


def cmd_import(args: argparse.Namespace, data: dict[str, Any]) -> int:
    try:
        default_reason = _reason(args.reason, "import")
    except ValueError as exc:
        _err(str(exc))
        return exitcodes.USAGE
    skipped: list[str] = []
    now = int(time.time())
    try:
        fh = text_input(args.file, newline="")
    except OSError as exc:
        _err(f"{args.file}: {exc.strerror or exc}")
        return exitcodes.NOINPUT
    try:
        with fh, _open(data) as store:
            changed, kept = store.suppress_many(
                read_import(
                    fh,
                    default_reason=default_reason,
                    skip_invalid=args.skip_invalid,
                    now=now,
                    skipped=skipped,
                ),
                tenant=_tenant(args, data),
                source="import",
                force=False,
                now=now,
            )
    except ImportFileError as exc:
        _err(f"{args.file}: {exc}; nothing imported")
        return exitcodes.DATAERR
    except csv.Error as exc:
        _err(f"{args.file}: not readable as CSV ({exc}); nothing imported")
        return exitcodes.DATAERR
    for note in skipped[:20]:
        _err(f"skipped {note}")
    print(f"imported {changed}; {kept} already suppressed for good; {len(skipped)} skipped")
    return exitcodes.OK


# A run with --every stops starting syncs this long before the minute is over, so that
# it has finished when cron starts the next one.
SYNC_MINUTE = 60.0
SYNC_MARGIN = 5.0


def cmd_sync(args: argparse.Namespace, data: dict[str, Any]) -> int:
    """One sync; with ``--every S``, one every S seconds until cron's minute is over.

    A failed sync ends the run with its exit code: the next minute tries again.
    """
    every = args.every
    if every is not None and not 1 <= every <= SYNC_MINUTE:
        _err(f"--every takes 1 to {SYNC_MINUTE:.0f} seconds (got {every:g})")
        return exitcodes.USAGE
    start = time.monotonic()
    n = 0
    while True:
        code = _sync_once(args, data)
        n += 1
        if code != exitcodes.OK or every is None:
            return code
        due = start + n * every
        if due > start + SYNC_MINUTE - SYNC_MARGIN:
            return code
        time.sleep(max(0.0, due - time.monotonic()))


def _sync_once(args: argparse.Namespace, data: dict[str, Any]) -> int:
    values = settings(data)
    path = Path(args.map or values["map"])
    map_type = args.map_type or values["map_type"]
    with _open(data) as store:
        entries = store.suppressions(tenant=_tenant(args, data))
        try:
            result = mapfile.sync(
                entries,
                path,
                map_type=map_type,
                postmap=values["postmap"] if args.postmap else None,
            )
        except mapfile.MapError as exc:
            _err(str(exc))
            return exitcodes.CANTCREAT
    if result.skipped:
        _err(f"{result.skipped} entries left out: their address cannot be a Postfix map key")
    if args.verbose:
        state = "updated" if result.changed else "unchanged"
        print(f"{path}: {state}, {result.entries} entries")
    return exitcodes.OK


def cmd_delivered(args: argparse.Namespace, data: dict[str, Any]) -> int:
    if not args.addresses and not args.postfix_log:
        _err("give addresses or --postfix-log FILE")
        return exitcodes.USAGE
    tenant = _tenant(args, data)
    now = time.time()
    cleared = 0
    with _open(data) as store:
        for address in args.addresses:
            cleared += store.record_delivery(address, tenant=tenant, now=now)
        if args.postfix_log:
            watched = store.soft_addresses(tenant=tenant, now=now)
            try:
                fh = text_input(args.postfix_log)
            except OSError as exc:
                _err(f"{args.postfix_log}: {exc.strerror or exc}")
                return exitcodes.NOINPUT
            with fh:
                for address, at in deliveries(fh, now):
                    if address in watched:
                        cleared += store.record_delivery(address, tenant=tenant, at=at, now=now)
    if args.verbose or args.addresses:
        print(f"cleared {cleared} soft entries")
    return exitcodes.OK


def cmd_prune(args: argparse.Namespace, data: dict[str, Any]) -> int:
    with _open(data) as store:
        removed = store.prune()
    if args.verbose:
        print(f"pruned {removed} expired entries")
    return exitcodes.OK


COMMANDS = {
    "list": cmd_list,
    "check": cmd_check,
    "add": cmd_add,
    "remove": cmd_remove,
    "export": cmd_export,
    "import": cmd_import,
    "sync": cmd_sync,
    "delivered": cmd_delivered,
    "prune": cmd_prune,
}


def run(args: argparse.Namespace) -> int:
    data = config.load(args.config)
    settings(data)
    try:
        return COMMANDS[args.suppression_command](args, data)
    except StoreError as exc:
        _err(str(exc))
        return exitcodes.TEMPFAIL


def _days(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "suppression",
        help="the suppression list: list, add, remove, export, import, sync the Postfix map",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="suppression_command", metavar="ACTION")
    sub.required = True

    def action(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=text)
        p.add_argument("--tenant", metavar="T", help="client id ([store] tenant)")
        p.set_defaults(func=run)
        return p

    p = action("list", "print the entries in force")
    p.add_argument("--reason", metavar="R", help="only this reason")
    p.add_argument("--all", action="store_true", help="expired entries too")
    p.add_argument("--all-tenants", action="store_true", help="every tenant's entries")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = action("check", "is this address suppressed? (exit 0 yes, 1 no)")
    p.add_argument("address", metavar="ADDR")

    p = action("add", "suppress addresses (replaces their entries)")
    p.add_argument("addresses", nargs="+", metavar="ADDR")
    p.add_argument("--reason", metavar="R", help="default: manual")
    p.add_argument("--note", metavar="TEXT")
    p.add_argument("--expires-days", type=_days, metavar="D", help="default: never")

    p = action("remove", "take addresses off the list (and clear their soft history)")
    p.add_argument("addresses", nargs="+", metavar="ADDR")

    p = action("export", "write the list as CSV or as a Postfix access map")
    p.add_argument("--format", choices=("csv", "postfix"), default="csv")
    p.add_argument("--output", metavar="FILE", help="write atomically (default: stdout)")
    p.add_argument("--reason", metavar="R", help="only this reason")

    p = action("import", "add entries from a CSV file or a list of addresses")
    p.add_argument("file", metavar="FILE", help="'-' for stdin")
    p.add_argument("--reason", metavar="R", help="for rows without one (default: import)")
    p.add_argument("--skip-invalid", action="store_true", help="skip bad rows, not abort")

    p = action("sync", "write the Postfix map when the list changed")
    p.add_argument("--map", metavar="FILE", help="default: [suppression] map")
    p.add_argument("--map-type", choices=tuple(mapfile.MAP_SUFFIX), help="default: hash")
    p.add_argument("--postmap", action="store_true", help="index it with postmap too")
    p.add_argument(
        "--every",
        type=float,
        metavar="S",
        help="sync again every S seconds until the minute is over (for a cron job)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="say what happened")

    p = action("delivered", "clear soft history of addresses that got mail")
    p.add_argument("addresses", nargs="*", metavar="ADDR")
    p.add_argument("--postfix-log", metavar="FILE", help="status=sent lines of this log")
    p.add_argument("-v", "--verbose", action="store_true")

    p = action("prune", "delete expired entries")
    p.add_argument("-v", "--verbose", action="store_true")
