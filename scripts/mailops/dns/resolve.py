"""Live DNS through dnspython: one resolver, answers as plain strings, errors as data."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailops.dns import spf

Status = Literal["ok", "nxdomain", "nodata", "error"]


@dataclass(frozen=True)
class Answer:
    name: str
    rdtype: str
    status: Status
    values: tuple[str, ...] = ()
    error: str = ""

    @property
    def found(self) -> bool:
        return self.status == "ok" and bool(self.values)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
    t = text.strip()
    host, port = t, 53
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host = t[1:end]
        rest = t[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = int(rest[1:])
    elif t.count(":") == 1:
        host, p = t.split(":")
        port = int(p)
    ipaddress.ip_address(host)  # raises ValueError for names: a nameserver is an address
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port out of range")
    return host, port


@dataclass
class Dns:
    """A resolver; with a nameserver, every query goes to it (recursion not needed)."""

    nameserver: str | None = None
    port: int = 53
    timeout: float = 5.0
    queries: int = 0
    _cache: dict[tuple[str, str], Answer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nameserver:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [self.nameserver]
            self.resolver.port = self.port
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.lifetime = self.timeout
        self.resolver.timeout = min(self.timeout, 2.0)
        self.resolver.retry_servfail = False

    def query(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().rstrip("."), rdtype)
        if key in self._cache:
            return self._cache[key]
        self.queries += 1
        try:
            ans = self.resolver.resolve(
                dns.name.from_text(key[0]), rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            result = Answer(key[0], rdtype, "nxdomain")
        except dns.resolver.NoNameservers as exc:
            result = Answer(key[0], rdtype, "error", error=f"no server answered ({_short(exc)})")
        except dns.exception.Timeout:
            result = Answer(key[0], rdtype, "error", error=f"timed out after {self.timeout:g} s")
        except dns.exception.DNSException as exc:
            result = Answer(key[0], rdtype, "error", error=_short(exc))
        else:
            if ans.rrset is None:
                result = Answer(key[0], rdtype, "nodata")
            else:
                values = tuple(_text(r, rdtype) for r in ans.rrset)
                result = Answer(key[0], rdtype, "ok", values)
        self._cache[key] = result
        return result

    # --- the spf.Lookup protocol ---------------------------------------------

    def _values(self, name: str, rdtype: str) -> list[str]:
        a = self.query(name, rdtype)
        if a.status == "error":
            raise spf.DnsFailure(f"{name} {rdtype}: {a.error}")
        return list(a.values)

    def txt(self, name: str) -> list[str]:
        return self._values(name, "TXT")

    def addresses(self, name: str, version: int) -> list[str]:
        return self._values(name, "A" if version == 4 else "AAAA")

    def mx(self, name: str) -> list[str]:
        return [v.split()[-1].rstrip(".") for v in self._values(name, "MX")]

    def ptr(self, address: str) -> list[str]:
        rev = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        return [v.rstrip(".") for v in self._values(rev, "PTR")]


def _text(rdata: object, rdtype: str) -> str:
    if rdtype == "TXT":
        strings: tuple[bytes, ...] = getattr(rdata, "strings", ())
        return b"".join(strings).decode("utf-8", "replace")
    text = str(rdata.to_text())  # type: ignore[attr-defined]
    return text.lower() if rdtype in ("PTR", "MX", "CNAME", "NS") else text


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
