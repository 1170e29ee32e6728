"""The ``mailops`` command: one subcommand per tool.

Each tool module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code).  Modules
are imported only when listed here, so one tool's dependencies never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    "report",
    "tenants",
    "guard",
    "dmarc",
    "tlsrpt",
    "ses",
    "throttle",
    "warmup",
)

# Tools whose register() is not in mailops.<name> itself.
MODULES: dict[str, str] = {"tenants": "mailops.tenants.cli"}


def wanted_tool(argv: Sequence[str]) -> str | None:
    """The tool a command line asks for, when it names one of ours; None for --help,
    --version or anything unknown (then every tool is loaded, for the full usage)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            i += 2
        elif arg.startswith("--config="):
            i += 1
        else:
            return arg if arg in TOOLS else None
    return None


def build_parser(
    only: str | None = None, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The parser with every tool, or with only the one asked for: a pipe that runs
    ``mailops bounces ingest`` never imports paramiko or the report code."""
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
    for name in (only,) if only else TOOLS:
        module = importlib.import_module(MODULES.get(name, f"mailops.{name}"))
        if name == "bounces" and argv is not None:
            module.register(sub, argv)  # imports only the bounces subcommand asked for
        else:
            module.register(sub)
    return parser


PIPE_ENV = "MAILOPS_PIPE"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one tool.  Under a Postfix pipe (``MAILOPS_PIPE=1`` in the environment, set by
    the mailops role's master.cf entries) every failure that is not the message's fault
    (a wrong argument after an upgrade, a broken settings file, a bug) exits 75, so
    Postfix keeps the message queued and retries instead of bouncing it."""
    in_pipe = os.environ.get(PIPE_ENV) == "1"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(wanted_tool(argv), argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if in_pipe and exc.code not in (0, None):
            print("mailops: bad command line in the pipe; message kept queued", file=sys.stderr)
            return exitcodes.TEMPFAIL
        raise
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:  # one line each, the same from a tool and config check
            print(f"mailops: configuration error: {problem}", file=sys.stderr)
        return exitcodes.TEMPFAIL if in_pipe else exitcodes.CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not in_pipe:
            raise
        # One line for Postfix's log and the defer reason, never a traceback.
        print(f"mailops: internal error, message kept queued: {type(exc).__name__}: {exc}"[:500],
              file=sys.stderr)  # fmt: skip
        return exitcodes.TEMPFAIL
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
