"""``mailops ses smtp-password``: the SES SMTP password of an IAM secret access key.

Usage::

    mailops ses smtp-password --region eu-west-1 < secret-key-file

SES's SMTP interface takes the IAM user's access key id as the user name and, as the
password, a value derived from the user's secret access key and the region the
endpoint serves (a password works in one region only).  The derivation is AWS's
documented one: a SigV4 signing-key chain with fixed inputs (date ``11111111``, the
region, service ``ses``, terminal ``aws4_request``), an HMAC-SHA256 of the message
``SendRawEmail`` under that key, version byte 4 in front, base64.

The secret key is read from stdin (one line, surrounding whitespace ignored) so that it
never appears in a process list or a shell history, and the password is the only thing
written to stdout.  Nothing here ever prints either of them anywhere else: the messages
for bad input name what is wrong, never the value.

Exit codes: 0, 65 (EX_DATAERR) for an empty or malformed key, 64-style usage errors
from argparse (2) for a region that is not one.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import re
import sys
from typing import Any, TextIO

from mailops import exitcodes

# The fixed inputs of AWS's algorithm ("Obtaining Amazon SES SMTP credentials").
_DATE = "11111111"
_SERVICE = "ses"
_TERMINAL = "aws4_request"
_MESSAGE = "SendRawEmail"
_VERSION = b"\x04"

# us-east-1, eu-central-2, ap-southeast-4, us-gov-west-1, il-central-1 ...
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
# A secret access key is 40 characters of base64 today; accept any printable token
# without whitespace (the derivation works on bytes) but never an empty one.
_KEY = re.compile(r"^[\x21-\x7e]+$")


class BadKey(ValueError):
    """The input is not a secret access key (the message never quotes it)."""


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def smtp_password(secret_key: str, region: str) -> str:
    """The SES SMTP password for ``secret_key`` in ``region``."""
    if not REGION.match(region):
        raise ValueError(f"not an AWS region name: {region!r}")
    if not _KEY.match(secret_key):
        raise BadKey("the secret access key is empty or holds spaces or control characters")
    key = ("AWS4" + secret_key).encode("utf-8")
    for part in (_DATE, region, _SERVICE, _TERMINAL, _MESSAGE):
        key = _sign(key, part)
    return base64.b64encode(_VERSION + key).decode("ascii")


def read_secret(stream: TextIO) -> str:
    """One secret on the input: the first line, stripped; more lines are an error (a
    file with two keys is a mistake we must not guess about)."""
    lines = [ln.strip() for ln in stream.read(4096).splitlines() if ln.strip()]
    if len(lines) != 1:
        raise BadKey(f"expected one secret access key on stdin, found {len(lines)} lines")
    return lines[0]


def _region(value: str) -> str:
    if not REGION.match(value):
        raise argparse.ArgumentTypeError(f"not an AWS region name: {value!r}")
    return value


def cmd_smtp_password(args: argparse.Namespace) -> int:
    try:
        secret = read_secret(sys.stdin)
        password = smtp_password(secret, args.region)
    except BadKey as exc:
        print(f"mailops ses smtp-password: {exc}", file=sys.stderr)
        return exitcodes.DATAERR
    print(password)
    return exitcodes.OK


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "smtp-password",
        help="derive the SES SMTP password from an IAM secret key on stdin",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--region", required=True, type=_region, help="the region of the SMTP endpoint"
    )
    parser.set_defaults(func=cmd_smtp_password)
