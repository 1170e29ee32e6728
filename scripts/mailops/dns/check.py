"""Live checks of a mail domain's DNS, one row per finding: pass, warn or fail.

Each row names the check, the subject (a name or an address), the evidence seen, and
for anything not passing what to change.  Expectations (sending addresses, DKIM keys,
the MTA-STS policy, DNSBLs) come from the plan of an inventory when one is given,
otherwise from the flags; without them the checks that need them say so (warn).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from mailops.dns import ses_inbound_records, ses_records, spf
from mailops.dns.dkim import DkimKey, decode_p, parse_tags
from mailops.dns.plan import policy_id, reverse_name
from mailops.dns.resolve import Answer, Dns

Status = Literal["pass", "warn", "fail"]


class Row(TypedDict):
    check: str
    status: Status
    subject: str
    evidence: str
    fix: str


class CannotCheck(Exception):
    """DNS itself does not answer: nothing can be checked (exit 2)."""


@dataclass
class Expect:
    domain: str
    sending: list[tuple[str, str | None]] = field(default_factory=list)  # address, PTR name
    sending_source: str = ""  # "" when given; else why they were guessed
    mx_names: list[str] | None = None
    keys: list[DkimKey] | None = None
    keys_source: str = ""
    dnsbls: list[str] = field(default_factory=list)
    mta_sts_policy: str | None = None
    mta_sts_id: str | None = None
    mta_sts_planned: bool | None = None  # None: no plan to compare with
    tlsrpt_planned: bool | None = None
    # A tenant domain: its mail is the tenant's, sent from its pool only.  An MX only if
    # planned (mx_names); MTA-STS and TLS-RPT only when that MX is the company's.
    tenant: str | None = None
    pool: str = ""
    spf_exact: list[str] | None = None  # the addresses SPF must list, and nothing else
    spf_planned: str = ""  # the planned record, for the fix
    ses: ses_records.Ses | None = None  # the SES records planned for this domain
    # SES's receiving MX planned for this domain (preference, host), its mode; SES's
    # hosts are in mx_names but not probed over SMTP: they are AWS's, not the cluster's
    ses_inbound_mx: list[tuple[int, str]] = field(default_factory=list)
    ses_inbound_mode: str = ""


@dataclass
class Options:
    smtp_port: int = 25
    smtp_timeout: float = 5.0
    cafile: str | None = None
    mta_sts_url_base: str | None = None  # None: https://mta-sts.<domain>, resolved here
    https_port: int = 443  # of the policy host (other values for tests)
    helo: str = "mailops-dns-check.invalid"


def row(check: str, status: Status, subject: str, evidence: str, fix: str = "") -> Row:
    return Row(check=check, status=status, subject=subject, evidence=evidence, fix=fix)


def fingerprint(key: bytes) -> str:
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]


# --- SMTP probe ---------------------------------------------------------------------


@dataclass
class SmtpProbe:
    banner: str = ""
    error: str = ""
    starttls: bool | None = None  # None: EHLO not reached
    tls_error: str = ""
    tls_version: str = ""


class _Lines:
    """Bounded line reader on a socket (no buffering past a line: STARTTLS-safe)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> str:
        while b"\n" not in self.buf:
            if len(self.buf) > 4096:
                raise OSError("reply line longer than 4096 bytes")
            chunk = self.sock.recv(1024)
            if not chunk:
                raise OSError("connection closed by the server")
            self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\n")
        return raw.decode("utf-8", "replace").rstrip("\r")

    def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        for _ in range(100):
            text = self.line()
            if len(text) < 3 or not text[:3].isdigit():
                raise OSError(f"not an SMTP reply: {text[:80]!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), lines
        raise OSError("reply of more than 100 lines")


def probe_smtp(
    address: str, port: int, name: str, timeout: float, cafile: str | None, helo: str
) -> SmtpProbe:
    """Banner, EHLO, STARTTLS with certificate verification for the MX name, QUIT."""
    out = SmtpProbe()
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        out.error = f"cannot connect to {address} port {port}: {exc.strerror or exc}"
        return out
    try:
        r = _Lines(sock)
        code, lines = r.reply()
        out.banner = f"{code} {lines[0]}" if lines else str(code)
        if code != 220:
            out.error = f"greeting is {out.banner!r}, not 220"
            return out
        sock.sendall(f"EHLO {helo}\r\n".encode())
        code, lines = r.reply()
        if code != 250:
            out.error = f"EHLO answered {code} {' '.join(lines)[:80]}"
            return out
        out.starttls = any(line.upper().split(" ")[0] == "STARTTLS" for line in lines)
        if not out.starttls:
            sock.sendall(b"QUIT\r\n")
            return out
        sock.sendall(b"STARTTLS\r\n")
        code, lines = r.reply()
        if code != 220:
            out.tls_error = f"STARTTLS answered {code} {' '.join(lines)[:80]}"
            return out
        if r.buf:
            out.tls_error = "server sent data before the TLS handshake"
            return out
        ctx = ssl.create_default_context(cafile=cafile)
        try:
            tls = ctx.wrap_socket(sock, server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            out.tls_error = f"certificate not valid for {name}: {exc.verify_message}"
            return out
        except (ssl.SSLError, OSError) as exc:
            out.tls_error = f"TLS handshake failed: {exc}"
            return out
        out.tls_version = tls.version() or "TLS"
        try:
            tls.sendall(b"QUIT\r\n")
        finally:
            tls.close()
    except OSError as exc:
        out.error = out.error or f"{address} port {port}: {exc}"
    finally:
        sock.close()
    return out


# --- the checks ---------------------------------------------------------------------


def _lookup_error(check: str, a: Answer) -> Row:
    return row(
        check,
        "warn",
        a.name,
        f"{a.rdtype} lookup failed: {a.error}",
        "check again; if it persists, check the zone's name servers",
    )


def check_mx(d: Dns, e: Expect, o: Options) -> tuple[list[Row], list[str]]:
    D = e.domain
    a = d.query(D, "MX")
    if a.status == "error":
        return [_lookup_error("mx", a)], []
    if a.status == "nxdomain":
        return [row("mx", "fail", D, f"{D} does not exist (NXDOMAIN)", "publish the zone")], []
    if not a.found:
        fix = "publish the MX record from `mailops dns plan`"
        return [row("mx", "fail", D, "no MX record", fix)], []
    entries = sorted((int(v.split()[0]), v.split()[1].rstrip(".")) for v in a.values)
    names = [n for _, n in entries]
    evidence = ", ".join(f"{p} {n}" for p, n in entries)
    if names == [""]:
        return [
            row(
                "mx",
                "fail",
                D,
                f"null MX ({evidence}): the domain accepts no mail",
                "publish MX records for the MX hosts",
            )
        ], []
    rows = []
    if e.mx_names is not None and set(e.mx_names) - set(names):
        missing = sorted(set(e.mx_names) - set(names))
        rows.append(
            row(
                "mx",
                "fail",
                D,
                f"MX is {evidence}; missing {', '.join(missing)}",
                "publish the MX record from `mailops dns plan`",
            )
        )
    elif e.mx_names is not None and set(names) - set(e.mx_names):
        extra = sorted(set(names) - set(e.mx_names))
        rows.append(
            row(
                "mx",
                "warn",
                D,
                f"MX is {evidence}; not in the inventory: {', '.join(extra)}",
                "remove the extra MX or add the host to mail_mx",
            )
        )
    else:
        rows.append(row("mx", "pass", D, evidence))
    managed = {h for _, h in e.ses_inbound_mx}
    for name in dict.fromkeys(names):
        if name not in managed:
            rows += check_mx_host(d, name, o)
    return rows, names


def check_mx_host(d: Dns, name: str, o: Options) -> list[Row]:
    addrs: list[str] = []
    errors = []
    for rtype in ("A", "AAAA"):
        a = d.query(name, rtype)
        if a.status == "error":
            errors.append(f"{rtype}: {a.error}")
        addrs += list(a.values)
    if not addrs:
        why = f" ({'; '.join(errors)})" if errors else ""
        return [
            row(
                "mx-smtp",
                "fail",
                name,
                f"MX host has no A or AAAA record{why}",
                f"publish an address for {name}",
            )
        ]
    rows = []
    for addr in addrs:
        subject = f"{name} [{addr}]:{o.smtp_port}"
        p = probe_smtp(addr, o.smtp_port, name, o.smtp_timeout, o.cafile, o.helo)
        if p.error and not p.banner:
            rows.append(
                row(
                    "mx-smtp",
                    "fail",
                    subject,
                    p.error,
                    "start Postfix / open port 25 to the Internet (security group)",
                )
            )
            continue
        if p.error:
            rows.append(row("mx-smtp", "fail", subject, p.error, "check the SMTP server"))
            continue
        rows.append(row("mx-smtp", "pass", subject, p.banner[:120]))
        if p.starttls is False:
            rows.append(
                row(
                    "mx-starttls",
                    "fail",
                    subject,
                    "EHLO does not offer STARTTLS",
                    "set smtpd_tls_security_level = may with a certificate",
                )
            )
        elif p.tls_error:
            rows.append(
                row(
                    "mx-starttls",
                    "fail",
                    subject,
                    p.tls_error,
                    f"install a certificate for {name} from a public CA "
                    "(or pass --cafile for a private one)",
                )
            )
        else:
            rows.append(
                row(
                    "mx-starttls",
                    "pass",
                    subject,
                    f"STARTTLS, {p.tls_version}, certificate valid for {name}",
                )
            )
    return rows


def check_tenant_mx(d: Dns, e: Expect, o: Options) -> tuple[list[Row], list[str]]:
    """A tenant domain's inbound mail is the tenant's own: its MX is checked only when
    the plan publishes one.  Otherwise the domain must still be able to take mail
    (MX, or an address as the implicit MX): receivers that check the envelope domain
    (Postfix's reject_unknown_sender_domain) refuse mail from one that cannot, and
    bounces to it are lost."""
    if e.mx_names:
        return check_mx(d, e, o)
    D = e.domain
    a = d.query(D, "MX")
    if a.status == "error":
        return [_lookup_error("mx", a)], []
    if a.status == "nxdomain":
        return [row("mx", "fail", D, f"{D} does not exist (NXDOMAIN)", "publish the zone")], []
    fix = (
        f"publish the MX of {D} (the tenant's own mail servers), or plan one with "
        f"mx: in its mail_tenants entry"
    )
    if a.found:
        entries = sorted((int(v.split()[0]), v.split()[1].rstrip(".")) for v in a.values)
        evidence = ", ".join(f"{p} {n}" for p, n in entries)
        if [n for _, n in entries] == [""]:
            return [
                row(
                    "mx",
                    "fail",
                    D,
                    f"null MX ({evidence}): receivers refuse mail whose envelope domain "
                    f"takes none (RFC 7505), so tenant {e.tenant}'s mail bounces",
                    fix,
                )
            ], []
        return [row("mx", "pass", D, f"{evidence} (tenant {e.tenant}'s own, not planned)")], []
    addrs = [v for rtype in ("A", "AAAA") for v in d.query(D, rtype).values]
    if addrs:
        return [row("mx", "pass", D, f"no MX; takes mail at {', '.join(addrs)} (A/AAAA)")], []
    return [
        row(
            "mx",
            "warn",
            D,
            "no MX and no address: receivers that check the envelope domain "
            "(reject_unknown_sender_domain) refuse its mail, and bounces to it are lost",
            fix,
        )
    ], []


def check_fcrdns(d: Dns, address: str, expected: str | None) -> Row:
    rev = reverse_name(address)
    want = f" to {expected}" if expected else " to a name that resolves back to it"
    fix = f"set the reverse DNS of {address} (the Elastic IP's, or PTR {rev}){want}"
    a = d.query(rev, "PTR")
    if a.status == "error":
        return _lookup_error("fcrdns", a)
    if not a.found:
        return row("fcrdns", "fail", address, f"no PTR record at {rev}", fix)
    names = [v.rstrip(".") for v in a.values]
    confirmed = []
    seen: list[str] = []
    version = ipaddress.ip_address(address).version
    for n in names:
        fa = d.query(n, "A" if version == 4 else "AAAA")
        found = [str(ipaddress.ip_address(v)) for v in fa.values]
        seen.append(f"{n} -> {', '.join(found) or fa.status}")
        if str(ipaddress.ip_address(address)) in found:
            confirmed.append(n)
    if not confirmed:
        return row(
            "fcrdns",
            "fail",
            address,
            f"PTR {', '.join(names)} does not resolve back ({'; '.join(seen)})",
            f"publish {names[0]} -> {address}, or {fix}",
        )
    if expected and expected not in names:
        return row(
            "fcrdns",
            "warn",
            address,
            f"PTR {', '.join(names)} (confirmed) but the inventory names {expected}",
            fix,
        )
    return row("fcrdns", "pass", address, f"PTR {confirmed[0]} -> {address}")


def check_spf(d: Dns, e: Expect) -> list[Row]:
    D = e.domain
    a = d.query(D, "TXT")
    if a.status == "error":
        return [_lookup_error("spf", a)]
    fix = "publish the SPF record from `mailops dns plan`"
    records = [v for v in a.values if spf.is_spf(v)]
    if not records:
        return [row("spf", "fail", D, "no SPF record (TXT v=spf1)", fix)]
    if len(records) > 1:
        return [
            row(
                "spf",
                "fail",
                D,
                f"{len(records)} SPF records (permerror): {records}",
                "merge them into one record",
            )
        ]
    text = records[0]
    try:
        spf.parse(text)
    except spf.SpfSyntaxError as exc:
        return [row("spf", "fail", D, f"does not parse: {exc}: {text}", fix)]
    rows: list[Row] = []
    if e.spf_exact is not None:
        rows.append(check_spf_pool(e, text))
    try:
        count = spf.count_tree(d, D)
    except spf.DnsFailure as exc:
        rows.append(row("spf", "warn", D, f"{text} (an include could not be read: {exc})"))
        count = None
    if count is not None:
        if count.errors:
            rows.append(
                row(
                    "spf",
                    "fail",
                    D,
                    f"{text}; {'; '.join(count.errors)}",
                    "fix or remove the includes named",
                )
            )
        else:
            rows.append(row("spf", "pass", D, text))
        detail = f"{count.lookups} lookups ({', '.join(count.detail) or 'none'})"
        if count.lookups > spf.MAX_LOOKUPS:
            rows.append(
                row(
                    "spf-lookups",
                    "fail",
                    D,
                    detail,
                    f"at most {spf.MAX_LOOKUPS}: replace includes with ip4:/ip6:",
                )
            )
        elif count.void > spf.MAX_VOID_LOOKUPS:
            rows.append(
                row(
                    "spf-lookups",
                    "warn",
                    D,
                    f"{detail}; {count.void} lookups find nothing (limit 2)",
                    "remove mechanisms that point at names without records",
                )
            )
        else:
            rows.append(row("spf-lookups", "pass", D, detail))
    for address, _ in e.sending:
        ctx = spf.Context(
            ip=ipaddress.ip_address(address), sender=f"postmaster@{D}", helo=D, domain=D, dns=d
        )
        result = spf.check_host(ctx, D)
        trail = "; ".join(ctx.trail[-3:])
        if result == "pass":
            rows.append(row("spf-coverage", "pass", address, f"pass ({trail})"))
        else:
            term = f"ip{ipaddress.ip_address(address).version}:{address}"
            rows.append(
                row(
                    "spf-coverage",
                    "fail",
                    address,
                    f"SPF of {D} gives {result} for {address} ({trail})",
                    f"add {term} to the SPF record of {D}",
                )
            )
    return rows


def pool_terms(record: spf.Record, pool: list[str]) -> tuple[list[str], list[str]]:
    """(extra terms, missing addresses) of a tenant's SPF record against its pool.

    Extra: every term that authorises (qualifier +) anything but a single pool address:
    another address, a range (even one around the pool), include, a, mx, ptr, exists,
    +all, redirect.  Missing: pool addresses without an ``ip4:``/``ip6:`` term of their
    own.  Terms qualified -, ~ or ? authorise nothing and are not counted.
    """
    want = {ipaddress.ip_address(a) for a in pool}
    listed: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    extra: list[str] = []
    for t in record.directives:
        if t.qualifier != "+":
            continue
        if t.kind in ("ip4", "ip6") and t.arg:
            net = ipaddress.ip_network(t.arg, strict=False)
            if net.num_addresses == 1 and net.network_address in want:
                listed.add(net.network_address)
                continue
        extra.append(t.text)
    redirect = record.modifier("redirect")
    if redirect is not None:
        extra.append(redirect.text)
    missing = [a for a in pool if ipaddress.ip_address(a) not in listed]
    return extra, missing


def check_spf_pool(e: Expect, text: str) -> Row:
    """A tenant's SPF lists exactly its pool: its mail may leave from nowhere else."""
    D = e.domain
    pool = e.spf_exact or []
    extra, missing = pool_terms(spf.parse(text), pool)
    fix = f'publish {D} TXT "{e.spf_planned}" (mailops dns plan)' if e.spf_planned else ""
    if not extra and not missing:
        return row("spf-pool", "pass", D, f"exactly pool {e.pool}: {', '.join(pool)}")
    problems = []
    if extra:
        problems.append(f"authorises more than pool {e.pool}: {' '.join(extra)}")
    if missing:
        problems.append(f"does not list pool {e.pool}'s {', '.join(missing)}")
    return row("spf-pool", "fail", D, f"{text}: {'; '.join(problems)}", fix)


def check_dkim(d: Dns, e: Expect) -> list[Row]:
    if not e.keys:
        why = e.keys_source or "no keys to compare with: pass --inventory or --dkim-keys DIR"
        return [
            row(
                "dkim",
                "warn",
                f"*._domainkey.{e.domain}",
                why,
                "give the key directory so each selector can be checked",
            )
        ]
    rows = []
    for k in e.keys:
        fix = f'publish {k.name} TXT "{k.txt[:40]}..." (mailops dns plan)'
        a = d.query(k.name, "TXT")
        if a.status == "error":
            rows.append(_lookup_error("dkim", a))
            continue
        found = [v for v in a.values if "p=" in v]
        if not found:
            rows.append(row("dkim", "fail", k.name, "no DKIM key record published", fix))
            continue
        if len(found) > 1:
            rows.append(
                row(
                    "dkim",
                    "fail",
                    k.name,
                    f"{len(found)} key records: verifiers may pick either",
                    "publish exactly one",
                )
            )
            continue
        try:
            tags = parse_tags(found[0])
            published = decode_p(tags.get("p", ""))
        except ValueError as exc:
            rows.append(row("dkim", "fail", k.name, f"record does not parse: {exc}", fix))
            continue
        if not published:
            rows.append(row("dkim", "fail", k.name, "key revoked (empty p=)", fix))
            continue
        kind = tags.get("k", "rsa")
        if published != k.public or kind != k.key_type:
            rows.append(
                row(
                    "dkim",
                    "fail",
                    k.name,
                    f"published key {kind} {fingerprint(published)} differs from "
                    f"{k.source} ({k.key_type} {fingerprint(k.public)}): mail signed "
                    "with this selector fails verification",
                    fix,
                )
            )
            continue
        rows.append(
            row("dkim", "pass", k.name, f"{kind} {fingerprint(published)} matches {k.source}")
        )
    return rows


_MAILTO = re.compile(
    r"^mailto:([^@\s!,]+)@([A-Za-z0-9.-]+\.[A-Za-z]{2,}|[A-Za-z0-9.-]+)(!\d+[kmgt]?)?$",
    re.IGNORECASE,
)


def check_dmarc(d: Dns, e: Expect) -> list[Row]:
    D = e.domain
    name = f"_dmarc.{D}"
    a = d.query(name, "TXT")
    if a.status == "error":
        return [_lookup_error("dmarc", a)]
    fix = "publish the DMARC record from `mailops dns plan`"
    records = [v for v in a.values if v.startswith("v=DMARC1")]
    if not records:
        return [row("dmarc", "fail", name, "no DMARC record (TXT v=DMARC1)", fix)]
    if len(records) > 1:
        return [
            row(
                "dmarc",
                "fail",
                name,
                f"{len(records)} DMARC records: receivers ignore all",
                "publish exactly one",
            )
        ]
    text = records[0]
    try:
        tags = parse_tags(text)
    except ValueError as exc:
        return [row("dmarc", "fail", name, f"does not parse: {exc}: {text}", fix)]
    problems = []
    if tags.get("p") not in ("none", "quarantine", "reject"):
        problems.append(f"p={tags.get('p', '(missing)')} (needs none, quarantine or reject)")
    for k in ("adkim", "aspf"):
        if tags.get(k, "r") not in ("r", "s"):
            problems.append(f"{k}={tags[k]} (needs r or s)")
    rua = [u.strip() for u in tags.get("rua", "").split(",") if u.strip()]
    bad = [u for u in rua if not _MAILTO.match(u)]
    if bad:
        problems.append(f"rua {', '.join(bad)} is not a mailto: address")
    if problems:
        return [row("dmarc", "fail", name, f"{text}: {'; '.join(problems)}", fix)]
    rows = []
    if not rua:
        rows.append(
            row(
                "dmarc",
                "warn",
                name,
                f"{text}: no rua, so no aggregate reports",
                f"add rua=mailto:dmarc@{D}",
            )
        )
    elif tags["p"] == "none":
        rows.append(
            row(
                "dmarc",
                "warn",
                name,
                f"{text}: p=none only monitors",
                "move to p=quarantine once reports show aligned mail",
            )
        )
    else:
        align = f"adkim={tags.get('adkim', 'r')} aspf={tags.get('aspf', 'r')}"
        rows.append(
            row(
                "dmarc",
                "pass",
                name,
                f"{text} ({align}: mail from {D} signed with "
                f"d={D} and sent with envelope domain {D} aligns)",
            )
        )
    for uri in rua:
        m = _MAILTO.match(uri)
        assert m is not None
        target = m.group(2).lower().rstrip(".")
        if target == D or target.endswith("." + D) or D.endswith("." + target):
            continue
        auth = f"{D}._report._dmarc.{target}"
        ra = d.query(auth, "TXT")
        if any(v.startswith("v=DMARC1") for v in ra.values):
            rows.append(row("dmarc-report", "pass", auth, f"{target} accepts reports for {D}"))
        else:
            rows.append(
                row(
                    "dmarc-report",
                    "warn",
                    auth,
                    f"{target} has not authorised reports for {D}: receivers drop them",
                    f'publish {auth} TXT "v=DMARC1" in {target}\'s zone',
                )
            )
    return rows


def _tags_record(
    d: Dns, name: str, version: str, check: str
) -> tuple[Row | None, dict[str, str], str]:
    a = d.query(name, "TXT")
    if a.status == "error":
        return _lookup_error(check, a), {}, ""
    records = [v for v in a.values if v.replace(" ", "").startswith(f"v={version}")]
    if not records:
        return None, {}, ""
    if len(records) > 1:
        return (
            row(check, "fail", name, f"{len(records)} {version} records", "publish exactly one"),
            {},
            "",
        )
    try:
        return None, parse_tags(records[0]), records[0]
    except ValueError as exc:
        return row(check, "fail", name, f"does not parse: {exc}", "fix the record"), {}, ""


def parse_policy(text: str) -> tuple[dict[str, str], list[str]]:
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"line {line[:60]!r} is not 'key: value'")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower())
        else:
            fields[key] = value
    return fields, mx


def _mx_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # RFC 8461 3.3: senders do not follow redirects


def fetch_policy(base: str, timeout: float, cafile: str | None) -> str:
    url = base.rstrip("/") + "/.well-known/mta-sts.txt"
    if not url.startswith(("https://", "http://")):
        raise OSError(f"{url}: not an http(s) URL")
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if url.startswith("https://"):
        handlers.append(
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile))
        )
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise OSError(f"{url}: HTTP {resp.status}")
            data: bytes = resp.read(65537)
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"{url}: {exc.reason}") from None
    if len(data) > 65536:
        raise OSError(f"{url}: policy larger than 64 KiB")
    return data.decode("utf-8", "replace")


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a given address with the policy host's name in SNI, in the certificate
    check and in Host: the name resolved through the checked name servers, not the
    system's (which may not know the domain yet, or the lab's names)."""

    def __init__(self, host: str, address: str, port: int, timeout: float, cafile: str | None):
        super().__init__(
            host, port, timeout=timeout, context=ssl.create_default_context(cafile=cafile)
        )
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def fetch_policy_at(host: str, address: str, port: int, timeout: float, cafile: str | None) -> str:
    """GET https://host/.well-known/mta-sts.txt from ``address`` (RFC 8461 3.3: HTTPS,
    a certificate valid for host, status 200, no redirect followed)."""
    where = f"https://{host}/.well-known/mta-sts.txt ({address} port {port})"
    conn = _PinnedHTTPS(host, address, port, timeout, cafile)
    try:
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"User-Agent": "mailops"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"{where}: HTTP {resp.status}")
        data: bytes = resp.read(65537)
    except ssl.SSLCertVerificationError as exc:
        raise OSError(f"{where}: certificate not valid for {host}: {exc.verify_message}") from None
    except (ssl.SSLError, http.client.HTTPException) as exc:
        raise OSError(f"{where}: {exc}") from None
    except OSError as exc:
        raise OSError(f"{where}: {exc.strerror or exc}") from None
    finally:
        conn.close()
    if len(data) > 65536:
        raise OSError(f"{where}: policy larger than 64 KiB")
    return data.decode("utf-8", "replace")


def _fetch(d: Dns, host: str, o: Options) -> str:
    """The policy of ``host``: from --mta-sts-url-base, else from the host's address in
    the checked DNS (what a sending MTA does)."""
    if o.mta_sts_url_base:
        return fetch_policy(o.mta_sts_url_base, o.smtp_timeout, o.cafile)
    answers = [d.query(host, rtype) for rtype in ("A", "AAAA")]
    addresses = [v for a in answers for v in a.values]
    if not addresses:
        errors = "; ".join(a.error for a in answers if a.error)
        raise OSError(f"{host} has no address{': ' + errors if errors else ''}")
    return fetch_policy_at(host, addresses[0], o.https_port, o.smtp_timeout, o.cafile)


def check_mta_sts(d: Dns, e: Expect, o: Options, mx_names: list[str]) -> list[Row]:
    D = e.domain
    name = f"_mta-sts.{D}"
    err, tags, text = _tags_record(d, name, "STSv1", "mta-sts")
    if err:
        return [err]
    if not text:
        if e.mta_sts_planned is False:
            return [
                row("mta-sts", "warn", name, "not published (not planned: dns_mta_sts_mode off)")
            ]
        return [
            row(
                "mta-sts",
                "fail",
                name,
                "no MTA-STS record (TXT v=STSv1)",
                "publish the record and policy from `mailops dns plan`",
            )
        ]
    pid = tags.get("id", "")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", pid):
        return [
            row(
                "mta-sts",
                "fail",
                name,
                f"{text}: id must be 1-32 letters or digits",
                "publish the record from `mailops dns plan`",
            )
        ]
    rows = []
    if e.mta_sts_id and pid != e.mta_sts_id:
        rows.append(
            row(
                "mta-sts",
                "fail",
                name,
                f"id={pid} but the planned policy has id={e.mta_sts_id}: senders keep "
                "a cached old policy",
                "publish the record from `mailops dns plan`",
            )
        )
    else:
        rows.append(row("mta-sts", "pass", name, text))
    policy_name = f"https://mta-sts.{D}/.well-known/mta-sts.txt"
    try:
        body = _fetch(d, f"mta-sts.{D}", o)
        fields, patterns = parse_policy(body)
    except (OSError, ValueError) as exc:
        rows.append(
            row(
                "mta-sts-policy",
                "fail",
                policy_name,
                str(exc),
                f"serve the policy (`mailops dns mta-sts`, the mta_sts role) at mta-sts.{D} "
                "with a certificate for that name, and publish its address (`mailops dns plan`)",
            )
        )
        return rows
    problems = []
    if fields.get("version") != "STSv1":
        problems.append("version is not STSv1")
    if fields.get("mode") not in ("enforce", "testing", "none"):
        problems.append(f"mode {fields.get('mode')!r}")
    if not fields.get("max_age", "").isdigit():
        problems.append("max_age missing")
    uncovered = [n for n in mx_names if not any(_mx_matches(p, n) for p in patterns)]
    if uncovered and fields.get("mode") != "none":
        problems.append(f"MX {', '.join(uncovered)} not listed (senders refuse it)")
    if e.mta_sts_policy is not None and body.replace("\r\n", "\n") != e.mta_sts_policy.replace(
        "\r\n", "\n"
    ):
        problems.append("served policy differs from the planned one")
    elif e.mta_sts_policy is not None and policy_id(body) != pid:
        # Planned ids are the policy's hash: a record that does not name the served
        # text means senders that cached an older policy keep it.
        problems.append(f"the served policy's id is {policy_id(body)}, the record says {pid}")
    if problems:
        rows.append(
            row(
                "mta-sts-policy",
                "fail",
                policy_name,
                "; ".join(problems),
                "serve the policy that `mailops dns mta-sts` prints (the mta_sts role)",
            )
        )
    else:
        rows.append(
            row(
                "mta-sts-policy",
                "pass",
                policy_name,
                f"mode {fields['mode']}, mx {', '.join(patterns)}, max_age {fields['max_age']}",
            )
        )
    return rows


def check_tlsrpt(d: Dns, e: Expect) -> list[Row]:
    name = f"_smtp._tls.{e.domain}"
    err, tags, text = _tags_record(d, name, "TLSRPTv1", "tls-rpt")
    if err:
        return [err]
    if not text:
        if e.tlsrpt_planned is False:
            return [
                row("tls-rpt", "warn", name, "not published (not planned: dns_tlsrpt_rua empty)")
            ]
        return [
            row(
                "tls-rpt",
                "fail",
                name,
                "no TLS-RPT record (TXT v=TLSRPTv1)",
                "publish the record from `mailops dns plan`",
            )
        ]
    rua = [u.strip() for u in tags.get("rua", "").split(",") if u.strip()]
    bad = [u for u in rua if not (_MAILTO.match(u) or u.startswith("https://"))]
    if not rua or bad:
        return [
            row(
                "tls-rpt",
                "fail",
                name,
                f"{text}: rua needs mailto: or https: URIs",
                "publish the record from `mailops dns plan`",
            )
        ]
    return [row("tls-rpt", "pass", name, text)]


def _dnsbl_name(address: str, zone: str) -> str:
    return reverse_name(address).rsplit(".", 2)[0] + "." + zone


def check_dnsbl(d: Dns, zone: str, addresses: list[str]) -> list[Row]:
    rows = []
    test = d.query(f"2.0.0.127.{zone}", "A")
    blocked = [v for v in test.values if v.startswith("127.255.255.")]
    if test.status == "error":
        rows.append(
            row(
                "dnsbl",
                "warn",
                zone,
                f"DNSBL error: {test.error}",
                "check that the list's servers are reachable from here",
            )
        )
        return rows
    if blocked:
        rows.append(
            row(
                "dnsbl",
                "warn",
                zone,
                f"DNSBL error: {zone} answers {blocked[0]}: query refused/blocked by the "
                "list operator",
                "query through a resolver of your own, or register with the list",
            )
        )
        return rows
    if not test.found:
        rows.append(
            row(
                "dnsbl",
                "warn",
                zone,
                "the RFC 5782 test address 127.0.0.2 is not "
                "listed: the zone may not be a working DNSBL",
                "check the zone name",
            )
        )
    for address in addresses:
        name = _dnsbl_name(address, zone)
        subject = f"{address} in {zone}"
        a = d.query(name, "A")
        if a.status == "error":
            rows.append(
                row("dnsbl", "warn", subject, f"DNSBL error: {a.error}", "check again later")
            )
            continue
        if not a.found:
            rows.append(row("dnsbl", "pass", subject, "not listed"))
            continue
        codes = sorted(a.values)
        if any(c.startswith("127.255.255.") for c in codes):
            rows.append(
                row(
                    "dnsbl",
                    "warn",
                    subject,
                    f"DNSBL error: answer {', '.join(codes)} means query refused/blocked "
                    "by the list operator, not a listing",
                    "query through a resolver of your own, or register with the list",
                )
            )
            continue
        if not all(c.startswith("127.") for c in codes):
            rows.append(
                row(
                    "dnsbl",
                    "warn",
                    subject,
                    f"unexpected answer {', '.join(codes)} (not 127.0.0.x): the list "
                    "may be gone and answering everything",
                    "drop the zone",
                )
            )
            continue
        reason = d.query(name, "TXT")
        why = "; ".join(reason.values) if reason.found else "no TXT reason"
        rows.append(
            row(
                "dnsbl",
                "fail",
                subject,
                f"listed in {zone} ({', '.join(codes)}): {why}",
                f"stop what got {address} listed, then request delisting from {zone}",
            )
        )
    return rows


def run(d: Dns, e: Expect, o: Options) -> list[Row]:
    """Every check for e.domain; CannotCheck when the name servers do not answer at all."""
    probe = d.query(e.domain, "SOA")
    if probe.status == "error":
        raise CannotCheck(f"{e.domain} SOA: {probe.error}")
    rows: list[Row] = []
    mx_rows, mx_names = check_tenant_mx(d, e, o) if e.tenant else check_mx(d, e, o)
    rows += mx_rows
    if e.ses_inbound_mx:
        rows += [
            row(*r)
            for r in ses_inbound_records.check(d, e.domain, e.ses_inbound_mode, e.ses_inbound_mx)
        ]
    sending = list(e.sending)
    if not sending:
        for n in mx_names:
            for rtype in ("A", "AAAA"):
                sending += [(v, n) for v in d.query(n, rtype).values]
        e.sending = sending
        rows.append(
            row(
                "sending-ips",
                "warn",
                e.domain,
                "no sending addresses given: checked the MX hosts' "
                f"({', '.join(a for a, _ in sending) or 'none'})",
                "pass --inventory or --sending-ip for every sending address",
            )
        )
    for address, expected in e.sending:
        rows.append(check_fcrdns(d, address, expected))
    rows += check_spf(d, e)
    rows += check_dkim(d, e)
    rows += check_dmarc(d, e)
    if not e.tenant or e.mta_sts_planned:  # a tenant domain whose MX is the company's
        rows += check_mta_sts(d, e, o, mx_names)
    if not e.tenant or e.tlsrpt_planned:
        rows += check_tlsrpt(d, e)
    if e.ses is not None:
        spf_planned = e.tenant is None or bool(e.ses.mail_from_domain)
        rows += [row(*r) for r in ses_records.check(d, e.ses, spf_planned)]
    if not e.dnsbls:
        rows.append(
            row(
                "dnsbl",
                "warn",
                e.domain,
                "no DNSBLs configured",
                "set dns_dnsbls in the inventory or pass --dnsbl ZONE",
            )
        )
    for zone in e.dnsbls:
        rows += check_dnsbl(d, zone, [a for a, _ in e.sending])
    return rows


def render_text(rows: list[Row]) -> str:
    width = max((len(r["check"]) for r in rows), default=5)
    lines = []
    for r in rows:
        lines.append(
            f"{r['status'].upper():4}  {r['check']:{width}}  {r['subject']}: {r['evidence']}"
        )
        if r["fix"] and r["status"] != "pass":
            lines.append(f"{'':4}  {'':{width}}  fix: {r['fix']}")
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("pass", "warn", "fail")}
    lines.append(f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines) + "\n"
