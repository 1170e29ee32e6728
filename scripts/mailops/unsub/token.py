"""Unsubscribe tokens: who asked to stop which tenant's mail, sealed with the cluster's key.

A token names a tenant and a recipient address and carries its issue time.  It is
made on the bulk node that adds the List-Unsubscribe header and opened by the monitor's
endpoint (and by the ``unsubscribe@`` pipe), so both ends share the key; nobody else can
make one or read the address out of it.

Layout (before encoding), version 1::

    version (1 byte, 0x01) | issued (4 bytes, Unix seconds, big-endian)
    | tag (12 bytes) | ciphertext (len(tenant) + 1 + len(address) bytes)

- ``tag`` is HMAC-SHA256 over version, issued and the plaintext ``tenant NUL address``,
  keyed with the MAC half of the key, cut to 96 bits.  A token whose tag does not match
  under any accepted key is refused: forged or altered.
- The plaintext is encrypted with AES-256-CTR under the encryption half of the key, the
  tag (padded with four zero bytes) as the initial counter block: a synthetic IV, so no
  random nonce needs to be stored and the token stays short (SIV construction with HMAC
  as the PRF).  The address is never in the token in clear.
- Both halves come from the one secret by HKDF-SHA256 with distinct labels.
- The encoding is base32 without padding, in lower case: letters and digits only, read
  back whatever their case, so the token survives a mail system that changes the case
  of a local part (``unsubscribe+TOKEN@``) and needs no escaping in a URL.

Expiry: a token older than ``max_age`` seconds (``[unsubscribe] max_age_days``) is
refused, and so is one issued more than five minutes in the future.

Keys: a list, the first signs, every one verifies.  To rotate, put the new key first
and keep the old one second for at least ``max_age_days``, then drop it (docs/unsubscribe.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
TAG_BYTES = 12
HEADER_BYTES = 1 + 4 + TAG_BYTES
# Clocks of the bulk nodes and the monitor may differ a little.
CLOCK_SKEW = 300
# A secret shorter than this is refused: 32 characters of letters and digits is about
# 190 bits.
MIN_SECRET_CHARS = 32
# The longest address (RFC 5321) and tenant name, with room.
MAX_PLAINTEXT = 64 + 1 + 320


class TokenError(ValueError):
    """The token is not one of ours, was altered, or has expired (the message says which)."""


@dataclass(frozen=True)
class Claim:
    tenant: str
    address: str
    issued: int


@dataclass(frozen=True)
class _Key:
    enc: bytes
    mac: bytes


def _derive(secret: str) -> _Key:
    material = secret.strip().encode("utf-8")
    if len(material) < MIN_SECRET_CHARS:
        raise ValueError(f"an unsubscribe key needs at least {MIN_SECRET_CHARS} characters")
    out = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=None, info=b"mailops unsubscribe token v1"
    ).derive(material)
    return _Key(enc=out[:32], mac=out[32:])


def _crypt(key: _Key, tag: bytes, data: bytes) -> bytes:
    ctx = Cipher(algorithms.AES(key.enc), modes.CTR(tag + b"\0\0\0\0")).encryptor()
    return ctx.update(data) + ctx.finalize()


def _tag(key: _Key, head: bytes, plaintext: bytes) -> bytes:
    return hmac.new(key.mac, head + plaintext, hashlib.sha256).digest()[:TAG_BYTES]


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _decode(text: str) -> bytes:
    text = text.strip().upper()
    if not text or not text.isascii() or not text.isalnum():
        raise TokenError("not a token (base32 letters and digits expected)")
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError as exc:
        raise TokenError("not a token (bad base32)") from exc


class Sealer:
    """Makes and opens tokens with a list of secrets (the first makes, all open)."""

    def __init__(self, secrets: Sequence[str], max_age: float) -> None:
        if not secrets:
            raise ValueError("no unsubscribe key")
        self._keys = [_derive(s) for s in secrets]
        self.max_age = max_age

    def make(self, tenant: str, address: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        plaintext = f"{tenant}\0{address}".encode()
        if "\0" in tenant or not tenant or len(plaintext) > MAX_PLAINTEXT:
            raise ValueError("tenant or address not fit for a token")
        head = struct.pack(">BI", VERSION, issued)
        key = self._keys[0]
        tag = _tag(key, head, plaintext)
        return _encode(head + tag + _crypt(key, tag, plaintext))

    def open(self, token: str, now: float | None = None) -> Claim:
        raw = _decode(token)
        if len(raw) < HEADER_BYTES + 3 or len(raw) > HEADER_BYTES + MAX_PLAINTEXT:
            raise TokenError("not a token (wrong length)")
        version, issued = struct.unpack(">BI", raw[:5])
        if version != VERSION:
            raise TokenError(f"unknown token version {version}")
        head, tag, sealed = raw[:5], raw[5:HEADER_BYTES], raw[HEADER_BYTES:]
        for key in self._keys:
            plaintext = _crypt(key, tag, sealed)
            if hmac.compare_digest(_tag(key, head, plaintext), tag):
                break
        else:
            raise TokenError("token not signed by any key of this cluster (forged or altered)")
        clock = time.time() if now is None else now
        if issued > clock + CLOCK_SKEW:
            raise TokenError("token issued in the future")
        if clock - issued > self.max_age:
            raise TokenError(f"token expired (issued {int(clock - issued) // 86400} days ago)")
        tenant, sep, address = plaintext.decode("utf-8", "replace").partition("\0")
        if not sep or not tenant or not address:
            raise TokenError("token carries no tenant and address")
        return Claim(tenant=tenant, address=address, issued=issued)


def read_secrets(lines: Iterable[str]) -> list[str]:
    """Keys from a key file's lines: one a line, blank lines and # comments skipped."""
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def load_sealer(key_file: str, max_age_days: float) -> Sealer:
    """The sealer of a key file (``[unsubscribe] key_file``); OSError/ValueError if unusable."""
    secrets = read_secrets(Path(key_file).read_text(encoding="utf-8").splitlines())
    if not secrets:
        raise ValueError(f"{key_file}: no key in it")
    return Sealer(secrets, max_age_days * 86400)
