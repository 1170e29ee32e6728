"""From the bytes of a file or a mail to the report documents inside it, safely.

A DMARC aggregate report arrives as XML, gzip or zip (RFC 7489 section 7.2.1.1); a
TLS-RPT report as JSON, usually gzip (RFC 8460 section 5.3); either may come as a whole
report mail whose attachment holds it.  :func:`documents` finds every report document in
such bytes, by content rather than by name: gzip and zip by their magic numbers, a mail
by its header section, XML and JSON by their first character.

Everything here is bounded: the decompressed size of one input (``limit``, all its
documents together), the members of a zip, and how deep containers nest, so a zip or
gzip bomb ends in :class:`UnpackError` and never in an exhausted host.  XML is read by
:func:`parse_xml`, which refuses any DTD (so no entity can expand, internal or
external) and builds the tree with expat directly.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from xml.etree import ElementTree as ET
from xml.parsers import expat

DEFAULT_LIMIT = 64 * 1024 * 1024
MAX_MEMBERS = 50
MAX_DEPTH = 4
_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
# A mail starts with header fields (RFC 5322: name, colon); mbox's "From " line too.
_HEADER_LINE = re.compile(rb"^(From |[!-9;-~]{1,76}:)")


class UnpackError(Exception):
    """The input is not something a report can be read from; the text says why."""


@dataclass(frozen=True)
class Document:
    """One report document: where it was found, and its bytes (BOM and leading blanks
    removed)."""

    where: str  # "" for the file itself, else e.g. "attachment report.xml.gz > gzip"
    data: bytes

    @property
    def kind(self) -> str:
        return "xml" if self.data[:1] == b"<" else "json" if self.data[:1] in (b"{", b"[") else ""


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise UnpackError(
                f"more than {self.limit} bytes once decompressed (a compression bomb?)"
            )


def documents(data: bytes, limit: int = DEFAULT_LIMIT) -> list[Document]:
    """Every report document in ``data`` (a file's or a mail's bytes)."""
    budget = _Budget(limit)
    budget.take(len(data))
    found = _walk(data, "", budget, 0)
    if not found:
        raise UnpackError("no XML or JSON report found in it")
    return found


def _join(where: str, step: str) -> str:
    return f"{where} > {step}" if where else step


def _walk(data: bytes, where: str, budget: _Budget, depth: int) -> list[Document]:
    if depth > MAX_DEPTH:
        raise UnpackError(f"{where}: containers nested too deep")
    if data.startswith(b"\x1f\x8b"):
        return _walk(_gunzip(data, budget, where), _join(where, "gzip"), budget, depth + 1)
    if data.startswith(b"PK\x03\x04"):
        out: list[Document] = []
        for name, member in _unzip(data, budget, where):
            out += _walk(member, _join(where, f"zip member {name}"), budget, depth + 1)
        return out
    text = data[len(_BOM) :] if data.startswith(_BOM) else data
    text = text.lstrip(b" \t\r\n")
    if text[:1] in (b"<", b"{", b"["):
        return [Document(where, text)]
    if _HEADER_LINE.match(text):
        return _mail(text, where, budget, depth)
    return []


def _gunzip(data: bytes, budget: _Budget, where: str) -> bytes:
    # Several gzip members are one stream (RFC 1952); a reporter may write more than one.
    out = bytearray()
    rest = data
    try:
        while rest.startswith(b"\x1f\x8b"):
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = rest
            while pending and not d.eof:
                chunk = d.decompress(pending, _CHUNK)
                budget.take(len(chunk))
                out += chunk
                pending = d.unconsumed_tail
            while not d.eof and (chunk := d.decompress(b"", _CHUNK)):
                budget.take(len(chunk))
                out += chunk
            if not d.eof:
                raise UnpackError(f"{_join(where, 'gzip')}: truncated gzip data")
            rest = d.unused_data
    except zlib.error as exc:
        raise UnpackError(f"{_join(where, 'gzip')}: not valid gzip data ({exc})") from None
    return bytes(out)


def _unzip(data: bytes, budget: _Budget, where: str) -> list[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_MEMBERS:
                raise UnpackError(
                    f"{_join(where, 'zip')}: {len(infos)} members, at most {MAX_MEMBERS}"
                )
            out: list[tuple[str, bytes]] = []
            for info in infos:
                buf = bytearray()
                with zf.open(info) as fh:
                    while chunk := fh.read(_CHUNK):
                        budget.take(len(chunk))
                        buf += chunk
                out.append((info.filename, bytes(buf)))
            return out
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UnpackError(
            f"{_join(where, 'zip')}: not a zip file that can be read ({exc})"
        ) from None


# Parts of a report mail that may hold the report: by type, or by an attachment's name.
_REPORT_TYPES = (
    "application/gzip",
    "application/x-gzip",
    "application/zip",
    "application/x-zip-compressed",
    "application/x-zip",
    "application/octet-stream",
    "application/xml",
    "text/xml",
    "application/json",
    "application/tlsrpt+gzip",
    "application/tlsrpt+json",
)


def _mail(data: bytes, where: str, budget: _Budget, depth: int) -> list[Document]:
    msg = message_from_bytes(data, policy=compat32)
    if not msg.keys():
        return []
    out: list[Document] = []
    for n, part in enumerate(_leaves(msg)):
        ctype = part.get_content_type()
        name = part.get_filename() or ""
        if ctype not in _REPORT_TYPES and not name:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        budget.take(len(payload))
        label = f"attachment {name}" if name else f"part {n + 1} ({ctype})"
        out += _walk(payload, _join(where, label), budget, depth + 1)
    return out


def _leaves(msg: Message) -> list[Message]:
    if not msg.is_multipart():
        return [msg]
    out: list[Message] = []
    payload = msg.get_payload()
    for part in payload if isinstance(payload, list) else []:
        if isinstance(part, Message) and part.get_content_type() != "message/rfc822":
            out += _leaves(part)
    return out


# --------------------------------------------------------------------------- XML


class XMLRefused(UnpackError):
    """XML that is malformed, or that uses what a report never needs (a DTD)."""


def _local(tag: str) -> str:
    return tag.rsplit(":", 1)[-1]


def parse_xml(data: bytes) -> ET.Element:
    """A tree of ``data``, tags without their namespace prefix.

    Namespace declarations are not interpreted: ``<feedback>``, ``<dmarc:feedback>`` and
    ``<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">`` read alike.  A DOCTYPE, and so
    any entity declaration, is refused before anything is expanded.
    """
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    builder = ET.TreeBuilder()

    def refuse(*_: object) -> None:
        raise XMLRefused("a DTD or entity declaration (never needed in a report)")

    def start(tag: str, attrs: dict[str, str]) -> None:
        builder.start(_local(tag), attrs)

    def end(tag: str) -> None:
        builder.end(_local(tag))

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
        root = builder.close()
    except expat.ExpatError as exc:
        raise XMLRefused(f"not well-formed XML: {exc}") from None
    except AssertionError:
        raise XMLRefused("not well-formed XML: no root element") from None
    return root
