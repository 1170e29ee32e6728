"""``mailops bounces``: classify bounces, complaints and auto-replies.

Subcommands, one module each (``register(sub)`` adds the subcommand's parser):

- ``parse``  (parse_cmd.py): the classifier over files, one line per recipient.
- ``ingest`` (ingest.py): the Postfix pipe on ``bounces@`` that stores what it reads.

A subcommand whose module is not there is left out; any other import error is a bug and
is raised, so a broken module never disappears silently.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

SUBCOMMANDS: tuple[str, ...] = (
    "parse_cmd",
    "ingest",
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bounces",
        help="classify bounces, complaints and auto-replies (parse, ingest)",
        description="Classify bounces, feedback reports and auto-replies.",
    )
    sub = parser.add_subparsers(dest="bounces_command", metavar="SUBCOMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        qualified = f"{__name__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
            continue
        module.register(sub)
