"""SPF (RFC 7208): parse a record, count its DNS lookups, evaluate it for an address.

The plan uses the parser and the per-term lookup count to refuse a record that needs
more than 10 lookups; the check walks the published record and every record it
includes (counting lookups the way receivers do) and runs ``check_host()`` for every
sending address.  DNS access goes through a small ``Lookup`` protocol so the evaluator
is tested without a server and runs against the live one in ``mailops dns check``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import quote

MAX_LOOKUPS = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists, redirect
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: lookups answering NXDOMAIN or no data
MAX_MX_NAMES = 10  # per mx mechanism
MAX_PTR_NAMES = 10  # per ptr mechanism / %{p}

LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}

Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfSyntaxError(ValueError):
    """The record does not parse; the message names the offending term."""


@dataclass(frozen=True)
class Term:
    """One directive (``mechanism``) or modifier (``name=value``) of a record."""

    text: str
    kind: str  # mechanism name, or modifier name for modifiers
    modifier: bool = False
    qualifier: str = "+"
    arg: str | None = None  # domain-spec, network or modifier value
    cidr4: int | None = None
    cidr6: int | None = None

    @property
    def lookups(self) -> int:
        """DNS lookups this term costs against the limit of 10."""
        if self.modifier:
            return 1 if self.kind == "redirect" else 0
        return 1 if self.kind in LOOKUP_MECHANISMS else 0


@dataclass(frozen=True)
class Record:
    terms: tuple[Term, ...]

    @property
    def directives(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if not t.modifier)

    def modifier(self, name: str) -> Term | None:
        return next((t for t in self.terms if t.modifier and t.kind == name), None)

    @property
    def lookups(self) -> int:
        """Lookups of this record's own terms (included records not counted)."""
        return sum(t.lookups for t in self.terms)


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])([0-9]*)(r?)([.\-+,/_=]*)\}|%|_|-)")
_DUAL_CIDR = re.compile(r"^(.*?)(?:/([0-9]{1,2}))?(?://([0-9]{1,3}))?$")


def is_spf(text: str) -> bool:
    """Whether a TXT string is an SPF record (version tag followed by space or end)."""
    low = text.lower()
    return low == "v=spf1" or low.startswith("v=spf1 ")


def _check_domain_spec(spec: str, term: str) -> None:
    if not spec:
        raise SpfSyntaxError(f"{term!r}: empty domain")
    stripped = _MACRO.sub("x", spec)
    if "%" in stripped:
        raise SpfSyntaxError(f"{term!r}: bad macro in {spec!r}")
    if any(c.isspace() for c in stripped):
        raise SpfSyntaxError(f"{term!r}: white space in domain")
    if "%" not in spec:
        labels = spec.rstrip(".").split(".")
        if len(labels) < 2 or any(not label or len(label) > 63 for label in labels):
            raise SpfSyntaxError(f"{term!r}: {spec!r} is not a domain name")


def parse_term(text: str) -> Term:
    if "=" in text and _NAME.match(text.split("=", 1)[0]):
        name, value = text.split("=", 1)
        name = name.lower()
        if name in ("redirect", "exp"):
            _check_domain_spec(value, text)
        return Term(text=text, kind=name, modifier=True, arg=value)
    qualifier = "+"
    body = text
    if body[:1] in QUALIFIERS:
        qualifier, body = body[0], body[1:]
    name, sep, rest = body.partition(":")
    if not sep:
        name, sep, rest = body.partition("/")
        rest = sep + rest if sep else ""
        sep = ""
    name = name.lower()
    if name not in MECHANISMS:
        raise SpfSyntaxError(f"{text!r}: unknown mechanism {name!r}")
    if name == "all":
        if sep or rest:
            raise SpfSyntaxError(f"{text!r}: 'all' takes no argument")
        return Term(text=text, kind=name, qualifier=qualifier)
    if name in ("ip4", "ip6"):
        if not sep:
            raise SpfSyntaxError(f"{text!r}: {name} needs an address")
        try:
            net = ipaddress.ip_network(rest, strict=False)
        except ValueError:
            raise SpfSyntaxError(f"{text!r}: {rest!r} is not an address or network") from None
        if (name == "ip4") != (net.version == 4):
            raise SpfSyntaxError(f"{text!r}: not an IPv{name[-1]} network")
        length = rest.rpartition("/")[2] if "/" in rest else ""
        if len(length) > 1 and length.startswith("0"):  # RFC 7208 5.6: no leading zeros
            raise SpfSyntaxError(f"{text!r}: leading zero in prefix length")
        return Term(text=text, kind=name, qualifier=qualifier, arg=rest)
    if name in ("include", "exists"):
        if not sep:
            raise SpfSyntaxError(f"{text!r}: {name} needs a domain")
        _check_domain_spec(rest, text)
        return Term(text=text, kind=name, qualifier=qualifier, arg=rest)
    # a, mx, ptr: optional domain-spec, a and mx also an optional dual CIDR length
    spec = rest
    cidr4 = cidr6 = None
    if name in ("a", "mx"):
        m = _DUAL_CIDR.match(rest)
        if not m:  # pragma: no cover - the pattern matches every string
            raise SpfSyntaxError(f"{text!r}: bad prefix length")
        spec = m.group(1)
        if m.group(2) is not None:
            cidr4 = int(m.group(2))
            if cidr4 > 32:
                raise SpfSyntaxError(f"{text!r}: IPv4 prefix length over 32")
        if m.group(3) is not None:
            cidr6 = int(m.group(3))
            if cidr6 > 128:
                raise SpfSyntaxError(f"{text!r}: IPv6 prefix length over 128")
    if spec:
        _check_domain_spec(spec, text)
    elif sep:
        raise SpfSyntaxError(f"{text!r}: empty domain after ':'")
    return Term(
        text=text, kind=name, qualifier=qualifier, arg=spec or None, cidr4=cidr4, cidr6=cidr6
    )


def parse(record: str) -> Record:
    """Parse one SPF record (the TXT strings already joined)."""
    if not is_spf(record):
        raise SpfSyntaxError("does not start with 'v=spf1'")
    terms = [parse_term(t) for t in record.split(" ")[1:] if t]
    seen: set[str] = set()
    for t in terms:
        if t.modifier and t.kind in ("redirect", "exp"):
            if t.kind in seen:
                raise SpfSyntaxError(f"{t.kind}= appears more than once")
            seen.add(t.kind)
    return Record(tuple(terms))


# --- DNS access -------------------------------------------------------------------


class DnsFailure(Exception):
    """A lookup failed for a reason other than 'no such name / no data' (temperror)."""


class Lookup(Protocol):
    """What the evaluator needs from DNS; an empty list means NXDOMAIN or no data."""

    def txt(self, name: str) -> list[str]: ...
    def addresses(self, name: str, version: int) -> list[str]: ...
    def mx(self, name: str) -> list[str]: ...
    def ptr(self, address: str) -> list[str]: ...


# --- macros (RFC 7208 section 7) --------------------------------------------------


@dataclass
class Context:
    ip: IPAddress
    sender: str
    helo: str
    domain: str
    dns: Lookup
    lookups: int = 0
    void: int = 0
    trail: list[str] = field(default_factory=list)


def _ip_macro(ip: IPAddress) -> str:
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def expand(spec: str, ctx: Context, domain: str) -> str:
    local, _, sender_domain = ctx.sender.rpartition("@")
    values = {
        "s": ctx.sender,
        "l": local or "postmaster",
        "o": sender_domain,
        "d": domain,
        "i": _ip_macro(ctx.ip),
        "p": "unknown",  # validated names would cost lookups; RFC 7208 allows 'unknown'
        "v": "in-addr" if ctx.ip.version == 4 else "ip6",
        "h": ctx.helo,
    }

    def one(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "%%":
            return "%"
        if whole == "%_":
            return " "
        if whole == "%-":
            return "%20"
        letter, digits, reverse, delims = m.group(1), m.group(2), m.group(3), m.group(4)
        value = values.get(letter.lower(), "")
        parts = re.split("[" + re.escape(delims or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            keep = int(digits)
            if keep == 0:
                raise SpfSyntaxError(f"macro {whole!r}: zero digits")
            parts = parts[-keep:]
        out = ".".join(parts)
        if letter.isupper():
            out = quote(out, safe="")
        return out

    expanded = _MACRO.sub(one, spec)
    # RFC 7208 7.3: an expanded name over 253 characters loses labels from the left
    while len(expanded) > 253 and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    return expanded


# --- evaluation (RFC 7208 section 4) ----------------------------------------------


class PermError(Exception):
    pass


def _count(ctx: Context) -> None:
    ctx.lookups += 1
    if ctx.lookups > MAX_LOOKUPS:
        raise PermError(f"more than {MAX_LOOKUPS} DNS lookups")


def _void(ctx: Context, answers: list[str]) -> list[str]:
    if not answers:
        ctx.void += 1
        if ctx.void > MAX_VOID_LOOKUPS:
            raise PermError(f"more than {MAX_VOID_LOOKUPS} lookups found nothing")
    return answers


def _in_network(ip: IPAddress, address: str, cidr4: int | None, cidr6: int | None) -> bool:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if addr.version != ip.version:
        return False
    length = (
        (cidr4 if cidr4 is not None else 32)
        if ip.version == 4
        else (cidr6 if cidr6 is not None else 128)
    )
    return ip in ipaddress.ip_network(f"{addr}/{length}", strict=False)


def fetch_record(dns: Lookup, domain: str) -> tuple[str | None, str]:
    """The one SPF record of a domain: (record, '') or (None, reason 'none'/'permerror')."""
    records = [t for t in dns.txt(domain) if is_spf(t)]
    if not records:
        return None, "none"
    if len(records) > 1:
        return None, "permerror"
    return records[0], ""


def check_host(ctx: Context, domain: str) -> Result:
    """RFC 7208 check_host() for ctx.ip; lookups are counted across includes in ctx."""
    try:
        return _check_host(ctx, domain, depth=0)
    except PermError as exc:
        ctx.trail.append(f"permerror: {exc}")
        return "permerror"
    except SpfSyntaxError as exc:
        ctx.trail.append(f"permerror: {domain}: {exc}")
        return "permerror"
    except DnsFailure as exc:
        ctx.trail.append(f"temperror: {exc}")
        return "temperror"


def _check_host(ctx: Context, domain: str, depth: int) -> Result:
    if depth > MAX_LOOKUPS:
        raise PermError("include/redirect loop")
    text, why = fetch_record(ctx.dns, domain)
    if text is None:
        ctx.trail.append(f"{domain}: {'no SPF record' if why == 'none' else 'several SPF records'}")
        return "none" if why == "none" else "permerror"
    record = parse(text)
    for term in record.directives:
        matched = _match(ctx, term, domain, depth)
        if matched:
            ctx.trail.append(f"{domain}: matched {term.text}")
            return QUALIFIERS[term.qualifier]  # type: ignore[return-value]
    redirect = record.modifier("redirect")
    if (
        redirect is not None
        and redirect.arg
        and not any(t.kind == "all" for t in record.directives)
    ):
        _count(ctx)
        target = expand(redirect.arg, ctx, domain)
        ctx.trail.append(f"{domain}: redirect={target}")
        result = _check_host(ctx, target, depth + 1)
        return "permerror" if result == "none" else result
    ctx.trail.append(f"{domain}: nothing matched (neutral)")
    return "neutral"


def _match(ctx: Context, term: Term, domain: str, depth: int) -> bool:
    ip = ctx.ip
    kind = term.kind
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        assert term.arg is not None
        net = ipaddress.ip_network(term.arg, strict=False)
        return net.version == ip.version and ip in net
    _count(ctx)
    target = expand(term.arg, ctx, domain) if term.arg else domain
    if kind == "include":
        result = _check_host(ctx, target, depth + 1)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "temperror":
            raise DnsFailure(f"include:{target}")
        raise PermError(f"include:{target} gives {result}")
    if kind == "a":
        return any(
            _in_network(ip, a, term.cidr4, term.cidr6)
            for a in _void(ctx, ctx.dns.addresses(target, ip.version))
        )
    if kind == "mx":
        names = _void(ctx, ctx.dns.mx(target))
        if len(names) > MAX_MX_NAMES:
            raise PermError(f"mx:{target} has more than {MAX_MX_NAMES} names")
        return any(
            _in_network(ip, a, term.cidr4, term.cidr6)
            for name in names
            for a in ctx.dns.addresses(name, ip.version)
        )
    if kind == "ptr":
        names = ctx.dns.ptr(str(ip))[:MAX_PTR_NAMES]
        want = target.rstrip(".").lower()
        for name in names:
            n = name.rstrip(".").lower()
            if (n == want or n.endswith("." + want)) and str(ip) in {
                str(ipaddress.ip_address(a)) for a in ctx.dns.addresses(n, ip.version)
            }:
                return True
        return False
    if kind == "exists":
        return bool(_void(ctx, ctx.dns.addresses(target, 4)))
    raise PermError(f"unknown mechanism {kind}")  # pragma: no cover - parse() refuses


# --- counting the whole tree (what `dns check` reports as "stays within 10") -------


@dataclass
class Count:
    lookups: int = 0
    void: int = 0
    detail: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def count_tree(
    dns: Lookup,
    domain: str,
    record: Record | None = None,
    _count: Count | None = None,
    _seen: frozenset[str] = frozenset(),
    _fetch: Callable[[Lookup, str], tuple[str | None, str]] = fetch_record,
) -> Count:
    """Lookups the record costs in the worst case: every term of every included record.

    Receivers stop at the first match, so an address matched early costs less; but an
    address matched late (or not at all) pays for every term, and that is the count
    that must stay within 10.  Macro targets are counted once and not followed.
    """
    total = _count if _count is not None else Count()
    if record is None:
        text, why = _fetch(dns, domain)
        if text is None:
            total.void += 1
            total.errors.append(
                f"{domain}: {'no SPF record' if why == 'none' else 'several SPF records'}"
            )
            return total
        try:
            record = parse(text)
        except SpfSyntaxError as exc:
            total.errors.append(f"{domain}: {exc}")
            return total
    has_all = any(t.kind == "all" for t in record.directives)
    for term in record.terms:
        if term.modifier and (term.kind != "redirect" or has_all):
            continue
        cost = term.lookups
        if not cost:
            continue
        total.lookups += cost
        follow = term.kind in ("include", "redirect")
        target = term.arg or domain
        if follow and "%" not in target:
            key = target.lower().rstrip(".")
            if key in _seen:
                total.errors.append(f"{domain}: {term.text} loops back")
                continue
            before = total.lookups
            count_tree(dns, key, None, total, _seen | {domain.lower()}, _fetch)
            total.detail.append(f"{term.text} (+{total.lookups - before})")
        elif term.kind in ("a", "mx", "exists") and "%" not in target:
            found = (
                dns.mx(target)
                if term.kind == "mx"
                else dns.addresses(target, 4) or dns.addresses(target, 6)
            )
            if not found:
                total.void += 1
            total.detail.append(term.text)
        else:
            total.detail.append(term.text)
    return total
