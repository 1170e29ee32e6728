"""Build DMARC aggregate and TLS-RPT reports as real reporters write them, and wrap them
the ways they arrive (raw, gzip, zip, a report mail), for the unit tests and the lab check.

The shapes are written here from the reporters' published samples and reports seen in
mailboxes (layout, namespace, which optional elements they give); the fixtures in
tests/data/dmarc and tests/data/tlsrpt are of the same shapes, written by hand.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from xml.sax.saxutils import escape

SHAPES = ("google", "microsoft", "yahoo", "mailru", "bis", "prefixed", "crlf_bom", "minimal")
WRAPS = ("raw", "gzip", "gzip2", "zip", "zip_gz", "eml_zip", "eml_gzip", "eml_xml")
TLS_WRAPS = ("raw", "gzip", "zip", "eml_gzip", "eml_json")


@dataclass
class Rec:
    source_ip: str
    count: int
    disposition: str = "none"
    dkim: str = "pass"
    spf: str = "pass"
    header_from: str = "company.test"
    dkim_results: list[tuple[str, str, str]] = field(default_factory=list)  # domain, sel, res
    spf_results: list[tuple[str, str]] = field(default_factory=list)  # domain, result


@dataclass
class Meta:
    org_name: str
    report_id: str
    domain: str
    begin: int
    end: int
    email: str = "reports@reporter.example"


def _auth(r: Rec, shape: str, p: str) -> list[str]:
    out = [f"<{p}auth_results>"]
    for d, sel, res in r.dkim_results:
        parts = [f"<{p}domain>{escape(d)}</{p}domain>"]
        if shape == "microsoft":
            parts += [f"<{p}selector>{sel}</{p}selector>", f"<{p}result>{res}</{p}result>"]
        elif shape == "minimal":
            parts += [f"<{p}result>{res}</{p}result>"]
        else:
            parts += [f"<{p}result>{res}</{p}result>", f"<{p}selector>{sel}</{p}selector>"]
        out.append(f"<{p}dkim>" + "".join(parts) + f"</{p}dkim>")
    for d, res in r.spf_results:
        scope = f"<{p}scope>mfrom</{p}scope>" if shape in ("microsoft", "bis") else ""
        out.append(
            f"<{p}spf><{p}domain>{escape(d)}</{p}domain>{scope}<{p}result>{res}</{p}result></{p}spf>"
        )
    out.append(f"</{p}auth_results>")
    return out


def shown_disposition(shape: str, r: Rec) -> str:
    """The disposition a shape writes: the DMARCbis draft adds "pass" for mail that
    passed and was delivered."""
    if shape == "bis" and r.disposition == "none" and (r.dkim == "pass" or r.spf == "pass"):
        return "pass"
    return r.disposition


def dmarc_xml(meta: Meta, records: list[Rec], shape: str) -> bytes:
    """One report in a reporter's shape (see SHAPES)."""
    p = "dmarc:" if shape == "prefixed" else ""
    if shape == "bis":
        root = '<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">'
    elif shape == "microsoft":
        root = (
            '<feedback xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        )
    elif shape == "prefixed":
        root = '<dmarc:feedback xmlns:dmarc="http://dmarc.org/dmarc-xml/0.1">'
    else:
        root = "<feedback>"
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', root]
    if shape in ("microsoft", "mailru"):
        lines.append(f"<{p}version>1.0</{p}version>")
    if shape == "bis":
        lines.append("<version>2.0</version>")
    pad = "  " if shape == "crlf_bom" else ""
    lines += [
        f"<{p}report_metadata>",
        f"<{p}org_name>{pad}{escape(meta.org_name)}{pad}</{p}org_name>",
    ]
    if shape != "minimal":
        lines.append(f"<{p}email>{escape(meta.email)}</{p}email>")
    lines += [
        f"<{p}report_id>{pad}{escape(meta.report_id)}{pad}</{p}report_id>",
        f"<{p}date_range><{p}begin>{meta.begin}</{p}begin><{p}end>{meta.end}</{p}end></{p}date_range>",
    ]
    if shape == "bis":
        lines.append("<generator>tests.support.reports</generator>")
    lines += [
        f"</{p}report_metadata>",
        f"<{p}policy_published>",
        f"<{p}domain>{meta.domain}</{p}domain>",
    ]
    if shape == "bis":
        lines += ["<discovery_method>psl</discovery_method>", "<testing>n</testing>"]
    lines += [f"<{p}p>quarantine</{p}p>"]
    if shape in ("google", "bis"):
        lines.append(f"<{p}np>reject</{p}np>")
    lines.append(f"</{p}policy_published>")
    if shape == "bis":
        lines.append("<extension><x:any xmlns:x='urn:example'>1</x:any></extension>")
    for r in records:
        disposition = shown_disposition(shape, r)
        dkim, spf = (r.dkim.upper(), r.spf.capitalize()) if shape == "crlf_bom" else (r.dkim, r.spf)
        lines += [
            f"<{p}record>",
            f"<{p}row><{p}source_ip>{pad}{r.source_ip}{pad}</{p}source_ip>"
            f"<{p}count>{pad}{r.count}{pad}</{p}count>",
            f"<{p}policy_evaluated><{p}disposition>{disposition}</{p}disposition>"
            f"<{p}dkim>{dkim}</{p}dkim><{p}spf>{spf}</{p}spf></{p}policy_evaluated></{p}row>",
            f"<{p}identifiers>"
            + (f"<{p}envelope_to>outlook.test</{p}envelope_to>" if shape == "microsoft" else "")
            + f"<{p}header_from>{r.header_from}</{p}header_from></{p}identifiers>",
        ]
        if shape != "minimal" or r.dkim_results or r.spf_results:
            lines += _auth(r, shape, p)
        lines.append(f"</{p}record>")
    lines.append(f"</{p}feedback>")
    if shape == "mailru":
        return "".join(lines).encode()
    text = "\n".join(lines) + "\n"
    if shape == "crlf_bom":
        return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode()
    return text.encode()


def random_dmarc(rng: random.Random, n: int) -> tuple[Meta, list[Rec]]:
    """A report of ``n`` random records (addresses, counts, results)."""
    begin = 1796515200 + rng.randrange(0, 30) * 86400
    meta = Meta(
        org_name=rng.choice(["google.com", "Yahoo", "Enterprise Outlook", "Mail.Ru", "x.example"]),
        report_id=f"r{rng.getrandbits(48):x}",
        domain=rng.choice(["company.test", "alpha.test", "beta.test"]),
        begin=begin,
        end=begin + 86399,
    )
    records = []
    for _ in range(n):
        v6 = rng.random() < 0.2
        ip = (
            f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}"
            if v6
            else f"198.51.100.{rng.randrange(1, 255)}"
        )
        dkim = rng.choice(["pass", "fail"])
        spf = rng.choice(["pass", "fail"])
        r = Rec(
            source_ip=ip,
            count=rng.choice([0, 1, 2, 7, rng.randrange(1, 10**6)]),
            disposition=rng.choice(["none", "quarantine", "reject"]),
            dkim=dkim,
            spf=spf,
            header_from=meta.domain,
        )
        for _ in range(rng.randrange(0, 3)):
            r.dkim_results.append((rng.choice([meta.domain, "esp.example"]), "s1", dkim))
        for _ in range(rng.randrange(0, 2)):
            r.spf_results.append((meta.domain, spf))
        records.append(r)
    return meta, records


def report_mail(
    payload: bytes,
    filename: str,
    ctype: str,
    *,
    to: str = "dmarc@company.test",
    sender: str = "noreply-dmarc-support@reporter.example",
    subject: str = "Report domain: company.test",
    tlsrpt: bool = False,
) -> bytes:
    """A report mail with ``payload`` attached, as reporters send them (RFC 7489 section
    7.2.1.1; RFC 8460 section 5.3: multipart/report; report-type=tlsrpt)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="reporter.example")
    if tlsrpt:
        msg["TLS-Report-Domain"] = "company.test"
        msg["TLS-Report-Submitter"] = "reporter.example"
    msg.set_content("This is an aggregate report.\n")
    maintype, subtype = ctype.split("/", 1)
    msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    if tlsrpt:
        msg.replace_header("Content-Type", msg.get("Content-Type", "").replace("mixed", "report"))
        msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes()


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def wrap(data: bytes, how: str, name: str = "report.xml") -> bytes:
    """``data`` as it arrives: see WRAPS and TLS_WRAPS."""
    if how == "raw":
        return data
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "gzip2":  # two gzip members, one stream (RFC 1952)
        cut = len(data) // 2
        return gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0)
    if how == "zip":
        return _zip(name, data)
    if how == "zip_gz":
        return _zip(name + ".gz", gzip.compress(data, mtime=0))
    if how == "eml_zip":
        return report_mail(_zip(name, data), name + ".zip", "application/zip")
    if how == "eml_gzip":
        return report_mail(gzip.compress(data, mtime=0), name + ".gz", "application/gzip")
    if how == "eml_xml":
        return report_mail(data, name, "text/xml")
    if how == "eml_json":
        return report_mail(data, name, "application/tlsrpt+json", tlsrpt=True)
    raise ValueError(how)


# --------------------------------------------------------------------------- TLS-RPT


def tlsrpt_json(
    org: str,
    report_id: str,
    policies: list[tuple[str, str, int, int, dict[str, int]]],
    *,
    begin: int = 1796515200,
    pretty: bool = False,
) -> bytes:
    """policies: (policy-type, policy-domain, successful, failed, {result-type: count})."""

    def iso(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    doc = {
        "organization-name": org,
        "date-range": {"start-datetime": iso(begin), "end-datetime": iso(begin + 86399)},
        "contact-info": "smtp-tls-reporting@reporter.example",
        "report-id": report_id,
        "policies": [
            {
                "policy": {
                    "policy-type": ptype,
                    "policy-string": ["version: STSv1", "mode: enforce"],
                    "policy-domain": domain,
                    "mx-host": ["mx1.company.test"],
                },
                "summary": {
                    "total-successful-session-count": ok,
                    "total-failure-session-count": failed,
                },
                "failure-details": [
                    {
                        "result-type": kind,
                        "sending-mta-ip": "192.0.2.1",
                        "receiving-mx-hostname": "mx1.company.test",
                        "failed-session-count": n,
                    }
                    for kind, n in failures.items()
                ],
            }
            for ptype, domain, ok, failed, failures in policies
        ],
    }
    return json.dumps(doc, indent=2 if pretty else None).encode()
