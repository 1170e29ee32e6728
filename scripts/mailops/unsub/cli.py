"""``mailops unsub``: the milter, and tokens by hand (make, open, a new key)."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import string
from typing import Any

from mailops import config, exitcodes
from mailops.store.text import normalize_address
from mailops.tenants.model import load_tenants
from mailops.unsub.token import TokenError, load_sealer


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    data = config.load(args.config)
    return data, config.table(data, "unsubscribe")


def cmd_milter(args: argparse.Namespace) -> int:
    from mailops.unsub import milter

    data, values = _settings(args)
    tenants = load_tenants(data)
    sealer = load_sealer(values["key_file"], values["max_age_days"])
    if not values["url_base"].startswith("https://"):
        raise config.ConfigError("[unsubscribe] url_base: expected https://HOST/u/")
    settings = milter.Settings(
        url_base=values["url_base"],
        mailto_domain=values["mailto_domain"],
        transactional_header=values["transactional_header"],
        transactional_logins=frozenset(x.lower() for x in values["transactional_logins"]),
    )
    path = args.socket or values["milter_socket"]
    milter.log_to_stderr(f"listening on {path}; {len(tenants)} tenants")
    asyncio.run(
        milter.serve(path, lambda: milter.Session(tenants, settings, sealer, milter.log_to_stderr))
    )
    return exitcodes.OK


def cmd_token(args: argparse.Namespace) -> int:
    _, values = _settings(args)
    sealer = load_sealer(values["key_file"], values["max_age_days"])
    print(sealer.make(args.tenant, normalize_address(args.address)))
    return exitcodes.OK


def cmd_open(args: argparse.Namespace) -> int:
    _, values = _settings(args)
    sealer = load_sealer(values["key_file"], values["max_age_days"])
    try:
        claim = sealer.open(args.token)
    except TokenError as exc:
        print(f"mailops unsub open: {exc}")
        return 1
    print(json.dumps({"tenant": claim.tenant, "address": claim.address, "issued": claim.issued}))
    return exitcodes.OK


def cmd_keygen(_args: argparse.Namespace) -> int:
    alphabet = string.ascii_letters + string.digits
    print("".join(secrets.choice(alphabet) for _ in range(48)))
    return exitcodes.OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "unsub",
        help="one-click unsubscribe: the bulk nodes' milter, tokens by hand",
        description=__doc__,
    )
    sub = parser.add_subparsers(dest="unsub_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("milter", help="serve the List-Unsubscribe milter (a daemon)")
    p.add_argument("--socket", metavar="PATH", help="unix socket (default: [unsubscribe])")
    p.set_defaults(func=cmd_milter)
    p = sub.add_parser("token", help="print the token of TENANT and ADDRESS")
    p.add_argument("tenant")
    p.add_argument("address")
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("open", help="print what a token says (exit 1 when it is refused)")
    p.add_argument("token")
    p.set_defaults(func=cmd_open)
    p = sub.add_parser("keygen", help="print a new random key (48 letters and digits)")
    p.set_defaults(func=cmd_keygen)
