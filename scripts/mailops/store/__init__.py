"""``mailops store``: the one database of bounces, complaints, unsubscribes and suppressions.

Usage::

    mailops store migrate     bring the schema up to date (also done on every open)
    mailops store status      URL (without password), schema version, rows per table

Settings (table ``[store]``)::

    url = "sqlite:////var/lib/mailops/mailops.db"   # or postgresql://user:pw@host/db
    tenant = ""          # the scope of the suppressions reports cause, and the rows'
                         # tenant when a report names none ('' = global, the default)
    timeout = 30.0       # seconds: SQLite waits this long for a lock; PostgreSQL for a
                         # connection, a lock or a statement

The policy that turns bounces into suppressions reads table ``[suppression]`` (see
:mod:`mailops.suppression`).  Exit codes: 0, 75 when the store cannot be reached, 78 for
a bad URL or settings.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailops import config, exitcodes
from mailops.store.db import (
    DEFAULT_URL,
    Outcome,
    Policy,
    RawInfo,
    Store,
    StoreError,
    StoreURLError,
    Suppression,
    redact,
)

__all__ = [
    "DEFAULT_URL",
    "Outcome",
    "Policy",
    "RawInfo",
    "Store",
    "StoreError",
    "StoreURLError",
    "Suppression",
    "open_from_config",
    "policy_from_config",
    "store_settings",
]


def store_settings(data: dict[str, Any]) -> dict[str, Any]:
    return config.table(data, "store")


def policy_from_config(data: dict[str, Any]) -> Policy:
    """The policy keys of [suppression]; the whole table is checked, map keys included."""
    values = config.table(data, "suppression")
    return Policy(
        soft_threshold=int(values["soft_threshold"]),
        soft_window_days=float(values["soft_window_days"]),
        expire_days=float(values["expire_days"]),
    )


def open_from_config(data: dict[str, Any], *, migrate: bool = True) -> Store:
    values = store_settings(data)
    return Store.open(
        values["url"],
        timeout=float(values["timeout"]),
        policy=policy_from_config(data),
        migrate=migrate,
    )


def cmd_store(args: argparse.Namespace) -> int:
    data = config.load(args.config)
    url = store_settings(data)["url"]
    try:
        with open_from_config(data, migrate=args.store_command == "migrate") as store:
            if args.store_command == "migrate":
                version = store.schema_version()
                print(f"{redact(url)}: schema version {version}")
                return exitcodes.OK
            print(f"url: {redact(url)}")
            print(f"dialect: {store.dialect}")
            version = store.schema_version()
            print(f"schema version: {version}")
            if version:
                for table, count in store.counts().items():
                    print(f"{table}: {count}")
    except StoreError as exc:
        print(f"mailops store: {exc}", file=sys.stderr)
        return exitcodes.TEMPFAIL
    return exitcodes.OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "store",
        help="the bounce and suppression database: migrate, status",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("migrate", help="bring the schema up to date").set_defaults(func=cmd_store)
    sub.add_parser("status", help="schema version and rows per table").set_defaults(func=cmd_store)
