"""``mailops bounces ingest``: the Postfix pipe on ``bounces@`` (and the feedback address).

Usage (master.cf, ``flags=Rq user=mailops``)::

    mailops bounces ingest [--envelope-to ${original_recipient}] [--tenant T]

Reads one message on stdin, classifies it (:func:`mailops.bounceparse.parse_message`),
stores bounces and feedback reports with every recipient's status, reason and the links
to what was sent, and applies the suppression policy, all in one transaction.
Auto-replies and mail that is not a report are logged and ignored.

Tenants: the rows of a report carry the tenant whose mail it is about, the tenant of
the returned message's envelope sender (Return-Path, ARF's Original-Mail-From), else of
its From: domain (``[tenants.NAME] domains``), else none ('').  The suppressions a hard
bounce, a complaint or repeated soft bounces cause stay global whatever the tenant:
nobody on the cluster mails that address again.  ``--tenant`` names the tenant instead.

At most ``max_message_bytes`` of the message are kept and classified (the report parts
come first in a DSN or ARF message; what is cut is the returned original); the rows then
say ``truncated = 1``, and the hash that recognises a second arrival covers every byte.

Exit status, Postfix's contract: 0 when stored, already stored, or deliberately ignored;
75 (EX_TEMPFAIL, Postfix keeps the message and retries) when the store is unreachable,
locked or read-only, when the settings file is broken, and on any unexpected error.
Never a traceback: one line on stderr (Postfix quotes it in the defer reason) and in
syslog.

Settings (table ``[bounces]``, shared with ``bounces parse``; plus ``[store]`` and the
policy keys of ``[suppression]``)::

    max_message_bytes = 10485760   # keep and classify at most this much of a message
    unrecognized_dir = ""          # when set, messages classified "other" are saved
                                   # here (<sha256>.eml) to improve the classifier
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from mailops import config, exitcodes
from mailops.bounceparse.model import Report
from mailops.pipeio import log, read_message, run_pipe
from mailops.store import RawInfo, open_from_config, policy_from_config, store_settings
from mailops.store.text import clean
from mailops.tenants.model import Tenants, load_tenants

TOOL = "bounces ingest"

Parser = Callable[[bytes, str], Report]


def settings(data: dict[str, Any]) -> dict[str, Any]:
    return config.table(data, "bounces")


def _default_parser() -> Parser:
    # Imported here, by name: the classifier is a separate module with its own cost and
    # life, and a classifier that fails to import must still end in exit 75.
    module = importlib.import_module("mailops.bounceparse")
    return cast(Parser, module.parse_message)


def _save_unrecognized(directory: str, data: bytes, sha256: str) -> None:
    """Keep a copy of an unrecognised message; failure is logged, never fatal."""
    try:
        target = Path(directory) / f"{sha256}.eml"
        if target.exists():
            return
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log(TOOL, f"could not save unrecognized message in {directory}: {exc}", error=True)


def tenant_of(report: Report, tenants: Tenants) -> str:
    """The tenant whose mail the report is about: the original's envelope sender's
    domain first, then its From: domain; '' when neither is a tenant's."""
    for address in (report.original_sender, report.original_from):
        tenant = tenants.for_address(address) if address else None
        if tenant is not None:
            return tenant.name
    return ""


def ingest(
    stream: BinaryIO,
    *,
    config_path: str | None = None,
    envelope_to: str = "",
    tenant: str | None = None,
    parse: Parser | None = None,
    now: float | None = None,
) -> int:
    """Classify and store one message from ``stream``; return the exit status.

    Raises on failures (the caller, :func:`run_pipe`, turns them into 75).
    """
    data = config.load(config_path)
    store_values = store_settings(data)
    policy_from_config(data)  # a broken policy is a settings error before anything else
    tenants = load_tenants(data)  # so is a broken [tenants]: the message stays queued
    values = settings(data)
    raw = read_message(stream, int(values["max_message_bytes"]))
    report = (parse or _default_parser())(raw.data, envelope_to)
    summary = f"{report.kind} ({clean(report.detector, 40) or '-'}), {raw.size} bytes"
    if raw.truncated:
        summary += f", truncated to {len(raw.data)}"
    if report.kind not in ("bounce", "feedback"):
        if report.kind == "other" and values["unrecognized_dir"]:
            _save_unrecognized(str(values["unrecognized_dir"]), raw.data, raw.sha256)
        log(TOOL, f"ignored {summary}, sha256 {raw.sha256[:16]}")
        return exitcodes.OK
    info = RawInfo(
        sha256=raw.sha256, size=raw.size, truncated=raw.truncated, envelope_to=envelope_to
    )
    scope = str(store_values["tenant"])
    origin = tenant if tenant is not None else (tenant_of(report, tenants) or scope)
    with open_from_config(data) as store:
        outcome = store.record_report(report, info, tenant=origin, scope=scope, now=now)
    parts = [f"stored {summary}: {outcome.stored} new rows"]
    if origin:
        parts[0] += f" for tenant {origin}"
    if outcome.duplicates:
        parts.append(f"{outcome.duplicates} already stored")
    if outcome.cleared:
        parts.append(f"{outcome.cleared} soft entries cleared by delivery")
    if outcome.suppressed:
        shown = ", ".join(outcome.suppressed[:5])
        more = f" and {len(outcome.suppressed) - 5} more" if len(outcome.suppressed) > 5 else ""
        parts.append(f"suppressed {shown}{more}")
    log(TOOL, "; ".join(parts))
    return exitcodes.OK


def cmd_ingest(args: argparse.Namespace) -> int:
    return run_pipe(
        TOOL,
        lambda: ingest(
            sys.stdin.buffer,
            config_path=args.config,
            envelope_to=args.envelope_to or "",
            tenant=args.tenant,
        ),
    )


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "ingest",
        help="Postfix pipe: classify one message on stdin and store it (exit 0 or 75)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--envelope-to",
        dest="envelope_to",
        metavar="ADDR",
        help="the address the message came to (${original_recipient}): VERP token",
    )
    parser.add_argument(
        "--tenant", metavar="T", help="the tenant whose mail it is (default: from the report)"
    )
    parser.set_defaults(func=cmd_ingest)
