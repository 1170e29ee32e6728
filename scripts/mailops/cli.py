"""The ``mailops`` command: one subcommand per tool.

Each tool module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code).  Modules
are imported only when listed here, so one tool's dependencies never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mailops import __version__, exitcodes
from mailops.config import ConfigError

# One line per tool module (mailops.<name>), each providing register(subparsers).
TOOLS: tuple[str, ...] = (
    # one per line, so tools land without touching each other's lines
    "config",
    "queues",
    "dns",
    "saslblock",
    "store",
    "suppression",
    "unsubscribe",
    "autoreply",
    "bounces",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailops", description="Operate a self-hosted Postfix mail cluster."
    )
    parser.add_argument("--version", action="version", version=f"mailops {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default: $MAILOPS_CONFIG or /etc/mailops/mailops.toml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in TOOLS:
        module = importlib.import_module(f"mailops.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"mailops: configuration error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
