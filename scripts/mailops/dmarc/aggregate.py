"""Read one DMARC aggregate report (XML) into :class:`mailops.dmarc.model.DmarcReport`.

One reader for the schema's variants seen from real reporters:

- RFC 7489 appendix C, with or without ``<version>``, with or without a namespace
  (``xmlns="http://dmarc.org/dmarc-xml/0.1"``, XML Schema instance attributes as
  Microsoft writes them, a prefix such as ``<dmarc:feedback>``);
- the DMARCbis aggregate-reporting draft (2024): ``xmlns="urn:ietf:params:xml:ns:dmarc-2.0"``,
  ``<version>2.0</version>`` or none, ``<np>``, ``<testing>``, ``<discovery_method>``,
  ``<generator>``, a disposition of ``pass``, ``<extension>`` elements anywhere (ignored);
- several ``<dkim>`` and ``<spf>`` in ``<auth_results>``, optional elements left out
  (``<email>``, ``<envelope_from>``, ``<reason>``, even ``<auth_results>``), values with
  blanks or capitals around them, a byte-order mark, CRLF line ends, one long line.

What a report must have, or it is refused with a message that says what is missing:
``<feedback>`` as the root, ``<report_metadata>`` with ``<org_name>``, ``<report_id>`` and
a ``<date_range>`` of two integers, ``<policy_published>`` with ``<domain>``, and in
every ``<record>`` a ``<row>`` with a valid ``<source_ip>`` and a ``<count>`` >= 0.
"""

from __future__ import annotations

import ipaddress
from xml.etree import ElementTree as ET

from mailops.dmarc.model import AuthResult, DmarcReport, Record
from mailops.dmarc.unpack import UnpackError, parse_xml

MAX_COUNT = 10**12  # no reporter counts more messages in one row


class ReportError(UnpackError):
    """The document is XML but not a DMARC aggregate report this reader accepts."""


def _text(el: ET.Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return el.find(name)


def _path(el: ET.Element, *names: str) -> str:
    cur: ET.Element | None = el
    for name in names:
        if cur is None:
            return ""
        cur = cur.find(name)
    return _text(cur)


def _required(el: ET.Element, where: str, *names: str) -> str:
    value = _path(el, *names)
    if not value:
        raise ReportError(f"{where}: <{'/'.join(names)}> is missing or empty")
    return value


def _integer(value: str, what: str, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        # "1700000000.0" from a reporter that writes floats: whole seconds only
        try:
            as_float = float(value)
        except ValueError:
            raise ReportError(f"{what}: expected an integer, got {value[:40]!r}") from None
        if not as_float.is_integer():
            raise ReportError(f"{what}: expected an integer, got {value[:40]!r}") from None
        number = int(as_float)
    if not 0 <= number <= high:
        raise ReportError(f"{what}: {number} is out of range")
    return number


def parse(data: bytes) -> DmarcReport:
    """The report in ``data`` (one XML document); :class:`ReportError` (or the XML
    reader's :class:`~mailops.dmarc.unpack.XMLRefused`) when it is not one."""
    root = parse_xml(data)
    if root.tag != "feedback":
        raise ReportError(f"root element is <{root.tag[:40]}>, not <feedback>")
    meta = _child(root, "report_metadata")
    if meta is None:
        raise ReportError("<report_metadata> is missing")
    org = _required(meta, "report_metadata", "org_name")
    report_id = _required(meta, "report_metadata", "report_id")
    begin = _integer(_required(meta, "report_metadata", "date_range", "begin"), "begin", 2**40)
    end = _integer(_required(meta, "report_metadata", "date_range", "end"), "end", 2**40)
    published = _child(root, "policy_published")
    if published is None:
        raise ReportError("<policy_published> is missing")
    domain = _required(published, "policy_published", "domain").lower().rstrip(".")
    policy = {c.tag: _text(c) for c in published if len(c) == 0}
    records = tuple(_record(el, i) for i, el in enumerate(e for e in root if e.tag == "record"))
    return DmarcReport(
        org_name=org,
        report_id=report_id,
        policy_domain=domain,
        begin=begin,
        end=end,
        records=records,
        version=_path(root, "version"),
        email=_path(meta, "email"),
        policy=policy,
    )


def _record(el: ET.Element, index: int) -> Record:
    where = f"record {index + 1}"
    row = _child(el, "row")
    if row is None:
        raise ReportError(f"{where}: <row> is missing")
    ip_text = _required(row, where, "source_ip")
    try:
        source_ip = str(ipaddress.ip_address(ip_text))
    except ValueError:
        raise ReportError(f"{where}: source_ip {ip_text[:60]!r} is not an IP address") from None
    count = _integer(_required(row, where, "count"), f"{where}: count", MAX_COUNT)
    evaluated = _child(row, "policy_evaluated")
    disposition = dkim = spf = ""
    reasons: tuple[str, ...] = ()
    if evaluated is not None:
        disposition = _path(evaluated, "disposition").lower()
        dkim = _path(evaluated, "dkim").lower()
        spf = _path(evaluated, "spf").lower()
        reasons = tuple(
            _path(r, "type").lower() for r in evaluated.findall("reason") if _path(r, "type")
        )
    ids = _child(el, "identifiers")
    header_from = envelope_from = envelope_to = ""
    if ids is not None:
        header_from = _path(ids, "header_from").lower()
        envelope_from = _path(ids, "envelope_from").lower()
        envelope_to = _path(ids, "envelope_to").lower()
    auth: list[AuthResult] = []
    results = _child(el, "auth_results")
    if results is not None:
        for r in results:
            if r.tag in ("dkim", "spf"):
                auth.append(
                    AuthResult(
                        method=r.tag,
                        domain=_path(r, "domain").lower(),
                        result=_path(r, "result").lower(),
                        selector=_path(r, "selector"),
                        scope=_path(r, "scope").lower(),
                    )
                )
    return Record(
        index=index,
        source_ip=source_ip,
        count=count,
        disposition=disposition,
        dkim=dkim,
        spf=spf,
        header_from=header_from,
        envelope_from=envelope_from,
        envelope_to=envelope_to,
        reasons=reasons,
        auth=tuple(auth),
    )
