"""``mailops unsubscribe``: the Postfix pipe on ``unsubscribe@`` (the List-Unsubscribe mailto).

Usage (master.cf, ``flags=Rq user=mailops``)::

    mailops unsubscribe [--sender ${sender}] [--recipient ${original_recipient}] [--tenant T]

Whoever writes to unsubscribe@ is put on the suppression list with reason
``unsubscribe`` (for good: only ``mailops suppression remove`` takes it off), and the
request is recorded in the ``unsubscribes`` table.  The address is the envelope sender
(``--sender``), or the From: address when no sender is given.  Mail sent by machines is
ignored: bounces (null sender, MAILER-DAEMON), Auto-Submitted other than "no",
auto-replies, list and bulk mail.  The same request delivered twice is recorded once.

Tenants: a request to ``unsubscribe+NAME@<domain>`` (Postfix's recipient_delimiter "+";
the List-Unsubscribe mailto of tenant NAME's mail) unsubscribes the sender from that
tenant only: the row and the suppression carry tenant NAME and never block another
tenant's mail.  The recipient is ``--recipient`` (``${original_recipient}``), else
$ORIGINAL_RECIPIENT (local(8) sets it for a command in aliases), else the first To:
address; an extension that is not a tenant of ``[tenants]``, or none, gives a global
unsubscribe (tenant '', or ``[store] tenant``).  ``--tenant`` names the tenant instead.

One-click tokens: a request to ``unsubscribe+TOKEN@<domain>`` (the mailto of the
List-Unsubscribe header the bulk nodes add, docs/unsubscribe.md) unsubscribes the
token's recipient from the token's tenant, whoever sent it; a token that is forged,
altered or expired is logged and nothing is recorded.

Exit status as ``bounces ingest``: 0 when recorded or deliberately ignored, 75 when the
store or the settings are broken (Postfix keeps the message and retries).

Settings (table ``[unsubscribe]``, plus ``[store]``)::

    max_message_bytes = 1048576    # only the header is read; the rest is drained
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any, BinaryIO

from mailops import config, exitcodes
from mailops.pipeio import (
    automatic_message,
    header,
    header_address,
    headers,
    log,
    machine_sender,
    read_message,
    run_pipe,
)
from mailops.store import open_from_config, store_settings
from mailops.store.text import normalize_address, valid_address
from mailops.tenants.model import Tenants, load_tenants
from mailops.unsub.token import TokenError, load_sealer

TOOL = "unsubscribe"
# A token is longer than any tenant name (21 characters at most).
TOKEN_MIN_CHARS = 32


def tenant_of_recipient(recipient: str, tenants: Tenants) -> str:
    """NAME of ``unsubscribe+NAME@domain`` (also ``+NAME+more``) when NAME is a tenant."""
    local, at, _ = normalize_address(recipient).rpartition("@")
    _, plus, extension = local.partition("+")
    name = extension.split("+", 1)[0]
    if at and plus and tenants.get(name) is not None:
        return name
    return ""


def token_of_recipient(recipient: str, tenants: Tenants) -> str:
    """TOKEN of ``unsubscribe+TOKEN@domain`` (the one-click header's mailto), else ''."""
    local = recipient.strip().strip("<>").rpartition("@")[0]
    _, plus, extension = local.partition("+")
    extension = extension.split("+", 1)[0]
    if plus and len(extension) >= TOKEN_MIN_CHARS and tenants.get(extension.lower()) is None:
        return extension
    return ""


def unsubscribe(
    stream: BinaryIO,
    *,
    config_path: str | None = None,
    sender: str | None = None,
    recipient: str = "",
    tenant: str | None = None,
    now: float | None = None,
) -> int:
    data = config.load(config_path)
    store_values = store_settings(data)
    values = config.table(data, "unsubscribe")
    tenants = load_tenants(data)
    recipient = recipient or os.environ.get("ORIGINAL_RECIPIENT", "")
    raw = read_message(stream, int(values["max_message_bytes"]))
    msg = headers(raw.data)
    if tenant is None:
        # Without the envelope recipient, the To: the mailto link wrote: a forged one
        # only narrows the sender's own unsubscribe to one tenant.
        to = recipient or header_address(msg, "To")
        tenant = tenant_of_recipient(to, tenants) or str(store_values["tenant"])
    source = "envelope sender" if sender is not None else "From:"
    address = normalize_address(sender) if sender is not None else header_address(msg, "From")
    why = machine_sender(address) or automatic_message(msg)
    if why:
        log(TOOL, f"ignored: {why} ({source} {address or '<>'})")
        return exitcodes.OK
    token = token_of_recipient(recipient or header_address(msg, "To"), tenants)
    if token:
        # unsubscribe+TOKEN@: the token says who and from which tenant, whoever sends.
        try:
            claim = load_sealer(values["key_file"], values["max_age_days"]).open(token)
        except TokenError as exc:
            log(TOOL, f"ignored: {exc} (request from {address or '<>'})")
            return exitcodes.OK
        address, tenant, source = claim.address, claim.tenant, "token"
    if not valid_address(address):
        log(TOOL, f"ignored: {source} {address!r} is not an address that can be suppressed")
        return exitcodes.OK
    message_id = header(msg, "Message-ID")
    if token:
        material = f"token\x00{token.lower()}"
    elif message_id:
        material = f"mid\x00{message_id}\x00{address}"
    else:
        material = f"raw\x00{raw.sha256}\x00{address}"
    key = hashlib.sha256(material.encode("utf-8")).hexdigest()
    with open_from_config(data) as store:
        added = store.record_unsubscribe(
            address,
            tenant=tenant,
            dedup_key=key,
            source="mail",
            message_id=message_id,
            envelope_to=recipient,
            subject=header(msg, "Subject"),
            now=now,
        )
    scope = f" from tenant {tenant}" if tenant else ""
    log(
        TOOL,
        f"{address} unsubscribed{scope}" if added else f"{address}: request already recorded",
    )
    return exitcodes.OK


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    return run_pipe(
        TOOL,
        lambda: unsubscribe(
            sys.stdin.buffer,
            config_path=args.config,
            sender=args.sender,
            recipient=args.recipient or "",
            tenant=args.tenant,
        ),
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "unsubscribe",
        help="Postfix pipe on unsubscribe@: suppress whoever asks (exit 0 or 75)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--sender", metavar="ADDR", help="envelope sender (${sender})")
    parser.add_argument(
        "--recipient",
        metavar="ADDR",
        help="envelope recipient (${original_recipient}): unsubscribe+TENANT@ scopes it",
    )
    parser.add_argument("--tenant", metavar="T", help="the tenant (default: from the recipient)")
    parser.set_defaults(func=cmd_unsubscribe)
    # The one-click parts (the milter, tokens by hand) live in mailops.unsub.
    from mailops.unsub import cli as unsub_cli

    unsub_cli.register(subparsers)
