"""``mailops bounces``: classify bounces, complaints and auto-replies.

Subcommands, one module each (``register(sub)`` adds the subcommand's parser):

- ``parse``  (parse_cmd.py): the classifier over files, one line per recipient.
- ``ingest`` (ingest.py): the Postfix pipe on ``bounces@`` that stores what it reads.
- ``from-log`` (fromlog.py): cron on the bulk nodes; stores the bounces of tenant mail
  that the node's mail log holds (their notices go to the tenants, not to ``bounces@``).

A subcommand whose module is not there is left out; any other import error is a bug and
is raised, so a broken module never disappears silently.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

SUBCOMMANDS: tuple[str, ...] = (
    "parse_cmd",
    "ingest",
    "fromlog",
)


def wanted(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The subcommand modules to import for a command line: only the one it names after
    ``bounces`` (``parse`` is parse_cmd.py, ``from-log`` fromlog.py), so ``bounces
    parse`` never loads the store and pipe code of ``ingest``; every one for --help, a
    typo or no command line."""
    words = list(argv or ())
    if "bounces" not in words[:-1]:
        return SUBCOMMANDS
    word = words[words.index("bounces") + 1]
    names = (word, f"{word}_cmd", word.replace("-", ""))
    chosen = tuple(name for name in SUBCOMMANDS if name in names)
    return chosen or SUBCOMMANDS


def register(subparsers: Any, argv: Sequence[str] | None = None) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bounces",
        help="classify bounces, complaints and auto-replies (parse, ingest, from-log)",
        description="Classify bounces, feedback reports and auto-replies.",
    )
    sub = parser.add_subparsers(dest="bounces_command", metavar="SUBCOMMAND")
    sub.required = True
    for name in wanted(argv):
        qualified = f"{__name__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
            continue
        module.register(sub)
