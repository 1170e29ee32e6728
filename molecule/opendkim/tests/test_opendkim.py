"""The opendkim role behind Postfix: OpenDKIM runs on its unix socket inside Postfix's
queue directory, the key and tables are private, and a message submitted on loopback
arrives signed with a signature that verifies against the TXT value the role wrote for
DNS (checked here as a receiver would: relaxed headers, simple body, RSA-SHA256)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SOCKET = "/var/spool/postfix/opendkim/opendkim.sock"


def test_opendkim_listens_on_its_socket(host: Any) -> None:
    assert host.process.filter(user="opendkim", comm="opendkim"), "opendkim is not running"
    directory = host.file("/var/spool/postfix/opendkim")
    assert (directory.user, directory.group, directory.mode) == ("opendkim", "postfix", 0o2750)
    assert host.file(SOCKET).is_socket
    assert host.socket(f"unix://{SOCKET}").is_listening


def test_key_and_tables_are_private(host: Any) -> None:
    key = host.file("/etc/opendkim/keys/company.test/mail.private")
    assert (key.user, key.group, key.mode) == ("opendkim", "opendkim", 0o600)
    for table in ("KeyTable", "SigningTable", "TrustedHosts"):
        f = host.file(f"/etc/opendkim/{table}")
        assert (f.user, f.group, f.mode) == ("root", "opendkim", 0o640), table
    assert "mail._domainkey.company.test" in host.file("/etc/opendkim/KeyTable").content_string


def test_message_through_postfix_is_signed_and_verifies(
    host: Any, swaks: Callable[..., str], token: str, wait_for: Callable[..., None]
) -> None:
    out = swaks("--from", "ops@company.test", "--to", "root@localhost", "--header",
                f"Subject: {token}", "--body", f"signed body {token}\n\n\n")  # fmt: skip
    assert "250 2.0.0 Ok: queued" in out, out
    wait_for(lambda: host.run("grep -qF %s /var/mail/root", token).rc == 0, 30,
             f"{token} in /var/mail/root")  # fmt: skip
    message = delivered(host.file("/var/mail/root").content, token)
    published = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "dkim/company.test/mail.txt")
    tags = verify_dkim(message, published.read_text())
    assert (tags["d"], tags["s"], tags["a"]) == ("company.test", "mail", "rsa-sha256")
    assert "from" in tags["h"].lower().split(":")


def delivered(mbox: bytes, token: str) -> bytes:
    """The message of an mbox that carries `token`, without its From_ line, in CRLF."""
    for chunk in re.split(rb"(?m)^From .*\n", mbox):
        if token.encode() in chunk:
            return chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    raise AssertionError(f"no message with {token} in the mailbox")


def verify_dkim(message: bytes, txt_record: str) -> dict[str, str]:
    """Verify the first DKIM-Signature (c=relaxed/simple) of `message` with the key of
    `txt_record` (v=DKIM1; k=rsa; p=...); returns its tags, raises when it fails."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields: list[tuple[str, str]] = []  # (lower-case name, raw value, folding kept)
    for line in head.decode().split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + "\r\n" + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value))
    signature = next((v for n, v in fields if n == "dkim-signature"), None)
    assert signature is not None, "the delivered message carries no DKIM-Signature"
    tags = dict(
        (k.strip(), re.sub(r"\s+", "", v))
        for k, _, v in (t.partition("=") for t in signature.split(";") if t.strip())
    )
    assert tags.get("c") == "relaxed/simple", tags.get("c")

    # Body: simple canonicalization (trailing empty lines go), SHA-256.
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    body = body if body.endswith(b"\r\n") else body + b"\r\n"
    body_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert body_hash == tags["bh"], f"body hash {body_hash} != bh={tags['bh']}"

    def relaxed(name: str, value: str) -> str:
        unfolded = value.replace("\r\n", "")
        return name + ":" + re.sub(r"[ \t]+", " ", unfolded).strip()

    # Headers: each name of h= from the bottom up; a name with none left adds nothing.
    unused = list(fields)
    signed = ""
    for name in (n.strip().lower() for n in tags["h"].split(":")):
        for i in range(len(unused) - 1, -1, -1):
            if unused[i][0] == name:
                signed += relaxed(name, unused.pop(i)[1]) + "\r\n"
                break
    signed += relaxed("dkim-signature", re.sub(r"(^|;)(\s*b=)[^;]*", r"\1\2", signature))

    record = dict(t.strip().partition("=")[::2] for t in txt_record.split(";") if t.strip())
    key = serialization.load_der_public_key(base64.b64decode(record["p"]))
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(base64.b64decode(tags["b"]), signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return tags
