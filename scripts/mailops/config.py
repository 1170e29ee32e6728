"""One settings file for every tool: /etc/mailops/mailops.toml (written by the role).

Each tool reads its own table (``[bounces]``, ``[saslblock]``, ...) and the shared
``[mailops]`` table; command-line flags override what the file says.  The path comes from
``--config``, else ``$MAILOPS_CONFIG``, else the default.  A missing default file is an
empty configuration (tools then run on their documented defaults); a missing file that
was asked for explicitly, or a file that does not parse, is an error that names the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/mailops/mailops.toml")


class ConfigError(Exception):
    """The settings file is missing or malformed; the message says which and where."""


def config_path(explicit: str | None = None) -> tuple[Path, bool]:
    """Return the path to read and whether the caller asked for it explicitly."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get("MAILOPS_CONFIG")
    if env:
        return Path(env), True
    return DEFAULT_PATH, False


def load(explicit: str | None = None) -> dict[str, Any]:
    path, required = config_path(explicit)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: settings file not found") from None
        return {}
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read settings file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return data


def section(data: dict[str, Any], name: str) -> dict[str, Any]:
    """Return one tool's table, or an empty one; a non-table value is an error."""
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, not {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- mailops config


def _check(args: Any) -> int:
    """`mailops config check|show`: parse the settings file, say what is wrong or print it."""
    data = load(args.config)
    for name, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"top-level key {name!r} must be a table ([{name}])")
    if args.action == "show":
        for name in sorted(data):
            print(f"[{name}]")
            for key, value in sorted(data[name].items()):
                shown = "********" if key in {"url", "password"} and "@" in str(value) else value
                print(f"{key} = {shown!r}")
    else:
        path, _ = config_path(args.config)
        print(f"{path}: ok ({len(data)} tables)")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check or show the settings file")
    parser.add_argument("action", choices=["check", "show"])
    parser.set_defaults(func=_check)
