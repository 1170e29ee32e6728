"""``mailops autoreply``: the Postfix pipe on ``donotreply@``: one polite automatic reply.

Usage (master.cf, ``flags=Rq user=mailops``)::

    mailops autoreply --sender ${sender} --recipient ${original_recipient} [--tenant T]

Replies with the configured text, as RFC 3834 asks of an automatic responder:
the reply goes out with a null envelope sender (``sendmail -f '<>'``), so it can never
bounce back into a loop; it says ``Auto-Submitted: auto-replied``, carries In-Reply-To
and References, and a Subject of "Auto: " and the original subject.

No reply to: a null sender or MAILER-DAEMON (bounces), machine senders (postmaster,
noreply, bounces, owner-*, *-request, ...), mail that says it is automatic
(Auto-Submitted other than "no", X-Autoreply, Precedence bulk/list/junk,
X-Auto-Response-Suppress), list and bulk mail (List-Id, List-Unsubscribe, List-Post,
Feedback-ID), a suppressed address, our own address, and a sender who already got a
reply within ``period_days`` (remembered in the store, table ``autoreplies``).

Exit status: 0 when replied or deliberately not, 75 when the store, the settings or
sendmail fail (Postfix keeps the message and retries; the reply is recorded only once
sendmail has accepted it).

Settings (table ``[autoreply]``, plus ``[store]``)::

    text = "This address does not receive mail."   # the body of the reply
    text_file = ""           # read the body from this file instead (UTF-8)
    from = ""                # From: of the reply ("" = the --recipient address)
    subject_prefix = "Auto: "
    period_days = 7.0        # at most one reply per sender in this time
    sendmail = "/usr/sbin/sendmail"
    timeout = 60.0           # seconds sendmail may take
    max_message_bytes = 1048576   # only the header is read; the rest is drained
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any, BinaryIO

from mailops import config, exitcodes
from mailops.config import ConfigError
from mailops.pipeio import (
    PipeError,
    automatic_message,
    header,
    headers,
    log,
    machine_sender,
    read_message,
    run_pipe,
)
from mailops.store import open_from_config, store_settings
from mailops.store.db import DAY
from mailops.store.text import clean, normalize_address, valid_address

TOOL = "autoreply"
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
MAX_REFERENCES = 10


def settings(data: dict[str, Any]) -> dict[str, Any]:
    return config.table(data, "autoreply")


def reply_text(values: dict[str, Any]) -> str:
    if values["text_file"]:
        try:
            return Path(values["text_file"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"[autoreply] text_file {values['text_file']}: {exc}") from None
    return str(values["text"])


def decoded(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded (as is when they are broken)."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def build_reply(
    original: Message,
    *,
    to: str,
    sender: str,
    text: str,
    subject_prefix: str = "Auto: ",
    now: datetime | None = None,
) -> bytes:
    """The reply message (RFC 3834): bytes for sendmail, LF line ends."""
    reply = EmailMessage(policy=default_policy)
    reply["From"] = sender
    reply["To"] = to
    subject = clean(decoded(header(original, "Subject")), 200)
    reply["Subject"] = clean(subject_prefix + (subject or "your message"), 250)
    reply["Date"] = format_datetime(now or datetime.now(UTC))
    domain = sender.rsplit("@", 1)[-1] if "@" in sender else None
    reply["Message-ID"] = make_msgid(domain=domain)
    reply["Auto-Submitted"] = "auto-replied"
    # Ask Exchange and others not to answer this answer.
    reply["X-Auto-Response-Suppress"] = "All"
    msgid = _MSGID.search(header(original, "Message-ID"))
    if msgid:
        refs = _MSGID.findall(header(original, "References"))[-(MAX_REFERENCES - 1) :]
        reply["In-Reply-To"] = msgid.group(0)
        reply["References"] = " ".join([*refs, msgid.group(0)])
    reply.set_content(text if text.endswith("\n") else text + "\n")
    return reply.as_bytes()


def send(sendmail: str, recipient: str, message: bytes, timeout: float) -> None:
    """Hand the reply to sendmail with a null envelope sender."""
    argv = [sendmail, "-i", "-f", "<>", "--", recipient]
    try:
        proc = subprocess.run(
            argv, input=message, capture_output=True, timeout=timeout or None, check=False
        )
    except OSError as exc:
        raise PipeError(f"cannot run {sendmail}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise PipeError(f"{sendmail} took longer than {timeout:g} s") from None
    if proc.returncode != 0:
        said = clean(proc.stderr.decode("utf-8", "replace"), 200)
        raise PipeError(f"{sendmail} exited {proc.returncode}: {said}")


def autoreply(
    stream: BinaryIO,
    *,
    config_path: str | None = None,
    sender: str = "",
    recipient: str = "",
    tenant: str | None = None,
    now: float | None = None,
) -> int:
    data = config.load(config_path)
    store_values = store_settings(data)
    values = settings(data)
    text = reply_text(values)
    own = normalize_address(parseaddr(values["from"] or recipient)[1])
    if not valid_address(own):
        raise ConfigError("[autoreply] from is empty or not an address, and so is --recipient")
    raw = read_message(stream, int(values["max_message_bytes"]))
    msg = headers(raw.data)
    to = normalize_address(sender)
    why = machine_sender(to) or automatic_message(msg)
    if not why and to == own:
        why = "sender is our own address"
    if not why and not valid_address(to):
        why = "sender is not an address we can reply to"
    if why:
        log(TOOL, f"no reply to {to or '<>'}: {why}")
        return exitcodes.OK
    moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    try:
        message = build_reply(
            msg,
            to=to,
            sender=values["from"] or own,
            text=text,
            subject_prefix=str(values["subject_prefix"]),
            now=moment,
        )
    except (ValueError, TypeError, IndexError) as exc:
        log(TOOL, f"no reply to {to}: cannot build a reply ({exc})")
        return exitcodes.OK
    tenant = store_values["tenant"] if tenant is None else tenant
    with open_from_config(data) as store:
        entry = store.get(to, tenant=tenant, now=now)
        if entry is not None:
            log(TOOL, f"no reply to {to}: suppressed ({entry.reason})")
            return exitcodes.OK
        period = int(float(values["period_days"]) * DAY)
        with store.autoreply_slot(to, period=period, tenant=tenant, now=now) as allowed:
            if not allowed:
                log(TOOL, f"no reply to {to}: replied within {values['period_days']:g} days")
                return exitcodes.OK
            send(str(values["sendmail"]), to, message, float(values["timeout"]))
    log(TOOL, f"replied to {to}")
    return exitcodes.OK


def cmd_autoreply(args: argparse.Namespace) -> int:
    return run_pipe(
        TOOL,
        lambda: autoreply(
            sys.stdin.buffer,
            config_path=args.config,
            sender=args.sender,
            recipient=args.recipient or "",
            tenant=args.tenant,
        ),
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "autoreply",
        help="Postfix pipe on donotreply@: one automatic reply per sender and period",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--sender", required=True, metavar="ADDR", help="${sender}")
    parser.add_argument(
        "--recipient", metavar="ADDR", help="${original_recipient}: From: of the reply"
    )
    parser.add_argument("--tenant", metavar="T", help="client id ([store] tenant)")
    parser.set_defaults(func=cmd_autoreply)
