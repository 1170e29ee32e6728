"""The whole of a parsed message as nested tuples, to compare two parsers' trees."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from mailops.bounceparse._mime import IndexedMessage


def tree(msg: Message) -> tuple[Any, ...]:
    """Everything a compat32 parser sets on a message and its parts: headers, envelope
    line, default type, preamble, epilogue, the kinds of defects, the payload."""
    payload = msg.__dict__.get("_payload")
    body: Any = tuple(tree(part) for part in payload) if isinstance(payload, list) else payload
    return (
        type(msg).__name__,
        tuple(msg.raw_items()),
        msg.get_unixfrom(),
        msg.get_default_type(),
        msg.preamble,
        msg.epilogue,
        tuple(type(d).__name__ for d in msg.defects),
        body,
    )


def stdlib_tree(raw: bytes) -> tuple[Any, ...]:
    """The tree of the standard library's own compat32 parser."""
    return tree(BytesParser(_class=IndexedMessage, policy=compat32).parsebytes(raw))
