"""DKIM public keys from the directory the opendkim role keeps on the controller.

Layout (roles/opendkim/tasks/keys.yml, playbooks/dkim_rotate.yml)::

    <keys_dir>/<domain>/<selector>.private   RSA private key (PEM), made by the role
    <keys_dir>/<domain>/<selector>.pem       its public half (PEM)
    <keys_dir>/<domain>/<selector>.txt       the TXT value, "v=DKIM1; k=rsa; p=..."
    <keys_dir>/<domain>/state.yml            written by dkim_rotate.yml: {selectors: [...],
                                             active: <selector>, retiring: {<sel>: unix time}}
    <keys_dir>/<domain>/retired/             keys whose grace period is over (not published)

With state.yml its ``selectors`` are the keys in force (the active one and those still
retiring); without it every key file in the directory is.  The same layout without
state.yml is what a signing host has under /etc/opendkim/keys, so ``--dkim-keys
/etc/opendkim/keys`` compares DNS with the keys a host signs with.

The public key comes from the private key when there is one (``openssl pkey -pubout``:
what signs is what must be published), else from the .pem, else from the .txt (the
role's one-line value or opendkim-genkey's zone-file snippet).
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# DER SubjectPublicKeyInfo prefixes: Ed25519 keys are published raw (RFC 8463), RSA keys
# as the whole SubjectPublicKeyInfo (RFC 6376 3.6.1).
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
_RSA_OID = bytes.fromhex("06092a864886f70d010101")
_SELECTOR = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")


class KeyError_(Exception):
    """A key file cannot be read or is not a key; the message names the file."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_type: str  # "rsa" or "ed25519"
    public: bytes  # what p= carries, decoded
    source: Path

    @property
    def p(self) -> str:
        return base64.b64encode(self.public).decode("ascii")

    @property
    def txt(self) -> str:
        return f"v=DKIM1; k={self.key_type}; p={self.p}"

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def parse_tags(text: str) -> dict[str, str]:
    """DKIM/DMARC-style tag list: ``a=b; c=d`` (white space around parts ignored)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"tag {part!r} has no '='")
        key = key.strip()
        if key in tags:
            raise ValueError(f"tag {key!r} appears twice")
        tags[key] = value.strip()
    return tags


def decode_p(value: str) -> bytes:
    """The key bytes of a p= value (white space inside is allowed, RFC 6376 3.6.1)."""
    compact = "".join(value.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("p= is not base64") from None


def txt_file_value(text: str) -> str:
    """The TXT value in a .txt file: a bare value, or opendkim-genkey's zone snippet."""
    if '"' in text:
        parts = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
        return "".join(p.replace('\\"', '"').replace("\\\\", "\\") for p in parts)
    return " ".join(text.split())


def _from_der(der: bytes, source: Path) -> tuple[str, bytes]:
    if der.startswith(_ED25519_SPKI) and len(der) == len(_ED25519_SPKI) + 32:
        return "ed25519", der[len(_ED25519_SPKI) :]
    if _RSA_OID in der[:32]:
        return "rsa", der
    raise KeyError_(f"{source}: neither an RSA nor an Ed25519 key")


def public_from_private(path: Path, openssl: str = "openssl") -> tuple[str, bytes]:
    exe = shutil.which(openssl)
    if not exe:
        raise KeyError_(f"{path}: openssl not found on PATH (needed to read private keys)")
    try:
        proc = subprocess.run(
            [exe, "pkey", "-in", str(path), "-pubout", "-outform", "DER", "-passin", "pass:"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyError_(f"{path}: cannot run openssl: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KeyError_(f"{path}: openssl cannot read the key ({why[0] if why else 'no output'})")
    return _from_der(proc.stdout, path)


def public_from_pem(path: Path) -> tuple[str, bytes]:
    lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    body = "".join(line.strip() for line in lines if line.strip() and not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{path}: not a PEM public key") from None
    return _from_der(der, path)


def public_from_txt(path: Path) -> tuple[str, bytes]:
    value = txt_file_value(path.read_text(encoding="utf-8", errors="replace"))
    try:
        tags = parse_tags(value)
        key = decode_p(tags["p"])
    except (ValueError, KeyError):
        raise KeyError_(f"{path}: not a DKIM TXT value with a p= tag") from None
    return tags.get("k", "rsa"), key


def read_state(path: Path) -> list[str]:
    """The ``selectors`` list of dkim_rotate.yml's state.yml (to_nice_yaml output).

    Only that shape is read (a mapping with a block or flow list of plain or quoted
    scalars), so the tool needs no YAML library on the hosts.
    """
    selectors: list[str] = []
    in_list = False
    found = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        if not line[0].isspace() and not line.startswith("-"):
            key, _, rest = line.partition(":")
            in_list = key.strip() == "selectors"
            if in_list:
                found = True
                rest = rest.strip()
                if rest.startswith("["):
                    if not rest.endswith("]"):
                        raise KeyError_(f"{path}: cannot read the selectors list")
                    selectors += [_scalar(s) for s in rest[1:-1].split(",") if s.strip()]
                    in_list = False
                elif rest:
                    raise KeyError_(f"{path}: selectors is not a list")
            continue
        if in_list:
            item = line.strip()
            if not item.startswith("- "):
                raise KeyError_(f"{path}: cannot read the selectors list at {raw!r}")
            selectors.append(_scalar(item[2:]))
    if not found:
        raise KeyError_(f"{path}: no 'selectors' list")
    for s in selectors:
        if not _SELECTOR.match(s):
            raise KeyError_(f"{path}: {s!r} is not a selector")
    return selectors


def _scalar(text: str) -> str:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def load(keys_dir: Path, domain: str) -> tuple[list[DkimKey], list[str]]:
    """The keys in force for domain, and notes (warnings) about what was found."""
    notes: list[str] = []
    d = keys_dir / domain
    if not d.is_dir():
        notes.append(
            f"no DKIM keys under {d} (converge site.yml first: the opendkim role makes them)"
        )
        return [], notes
    state = d / "state.yml"
    try:
        if state.exists():
            selectors = read_state(state)
        else:
            stems = {
                p.name.rsplit(".", 1)[0]
                for p in d.iterdir()
                if p.is_file() and p.suffix in (".private", ".pem", ".txt")
            }
            selectors = sorted(stems)
    except OSError as exc:
        raise KeyError_(f"{d}: {exc.strerror}") from None
    keys: list[DkimKey] = []
    for sel in selectors:
        private, pem, txt = d / f"{sel}.private", d / f"{sel}.pem", d / f"{sel}.txt"
        try:
            if private.exists():
                kind, public = public_from_private(private)
                src = private
                if txt.exists():
                    _, written = public_from_txt(txt)
                    if written != public:
                        notes.append(
                            f"{txt} does not match {private}: the private key is what signs, "
                            "so its public half is used"
                        )
            elif pem.exists():
                kind, public = public_from_pem(pem)
                src = pem
            elif txt.exists():
                kind, public = public_from_txt(txt)
                src = txt
            else:
                raise KeyError_(f"{d}: selector {sel} (in state.yml) has no key file")
        except OSError as exc:
            raise KeyError_(f"{d}/{sel}: {exc.strerror}") from None
        keys.append(DkimKey(domain=domain, selector=sel, key_type=kind, public=public, source=src))
    if not keys:
        notes.append(f"no DKIM keys in {d}")
    return keys, notes
