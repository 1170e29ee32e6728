"""The tenants of the cluster as every mailops tool sees them.

The mailops role renders ``mail_tenants`` from the inventory into the ``[tenants.NAME]``
tables of mailops.toml (docs/tenants.md); :func:`load_tenants` turns those tables into
:class:`Tenant` values and checks what the tools rely on: names, domains and logins are
unique, so a sender domain or an SMTP login names at most one tenant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailops.config import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,20}$")
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$"
)
COMPLAINT_SCOPES = ("global", "tenant")


@dataclass(frozen=True)
class Tenant:
    name: str
    domains: tuple[str, ...]
    logins: tuple[str, ...]
    pool: str
    complaints: str = "global"
    contact: str = ""
    # Bulk nodes: this host's pool transports for the tenant's pool (base names).
    transports: tuple[str, ...] = ()
    limits: Mapping[str, Any] = field(default_factory=dict)

    def owns(self, domain: str) -> bool:
        """True if ``domain`` (or a parent of it) is one of the tenant's sender domains."""
        domain = domain.lower().rstrip(".")
        return any(domain == d or domain.endswith("." + d) for d in self.domains)


@dataclass(frozen=True)
class Tenants:
    """Every tenant, with the lookups the tools need."""

    by_name: Mapping[str, Tenant]

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> Tenant | None:
        return self.by_name.get(name)

    def for_login(self, login: str) -> Tenant | None:
        login = login.strip().lower()
        for tenant in self.by_name.values():
            if login in tenant.logins:
                return tenant
        return None

    def for_domain(self, domain: str) -> Tenant | None:
        """The tenant whose sender domain this is; the longest (most specific) match wins."""
        best: tuple[int, Tenant] | None = None
        domain = domain.lower().rstrip(".")
        for tenant in self.by_name.values():
            for d in tenant.domains:
                if (domain == d or domain.endswith("." + d)) and (best is None or len(d) > best[0]):
                    best = (len(d), tenant)
        return None if best is None else best[1]

    def for_address(self, address: str) -> Tenant | None:
        """The tenant of a sender address (``news@alpha.test``), if any."""
        _, at, domain = address.strip().strip("<>").rpartition("@")
        return self.for_domain(domain) if at and domain else None


def _strings(where: str, key: str, value: Any, *, nonempty: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} {key}: expected a list of strings, got {value!r}")
    if nonempty and not value:
        raise ConfigError(f"{where} {key}: expected a non-empty list of strings")
    return tuple(v.strip().lower() for v in value)


def load_tenants(data: Mapping[str, Any]) -> Tenants:
    """The ``[tenants]`` tables of a parsed mailops.toml (an absent table: no tenants)."""
    raw = data.get("tenants", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[tenants]: expected tables of tenants, got {raw!r}")
    tenants: dict[str, Tenant] = {}
    owner_of_domain: dict[str, str] = {}
    owner_of_login: dict[str, str] = {}
    for name, body in raw.items():
        where = f"[tenants.{name}]"
        if not NAME_RE.match(name):
            raise ConfigError(f"{where}: a tenant name is 1-21 lower-case letters and digits")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: expected a table, got {body!r}")
        domains = _strings(where, "domains", body.get("domains", []), nonempty=True)
        for d in domains:
            if not _DOMAIN_RE.match(d):
                raise ConfigError(f"{where} domains: {d!r} is not a domain name")
            if d in owner_of_domain:
                raise ConfigError(f"{where} domains: {d} is tenant {owner_of_domain[d]}'s already")
            owner_of_domain[d] = name
        logins = _strings(where, "logins", body.get("logins", []), nonempty=False)
        for login in logins:
            if login in owner_of_login:
                raise ConfigError(
                    f"{where} logins: {login} is tenant {owner_of_login[login]}'s already"
                )
            owner_of_login[login] = name
        pool = body.get("pool", name)
        if not isinstance(pool, str) or not NAME_RE.match(pool):
            raise ConfigError(
                f"{where} pool: expected a pool name (lower-case letters, digits), got {pool!r}"
            )
        complaints = body.get("complaints", "global")
        if complaints not in COMPLAINT_SCOPES:
            raise ConfigError(
                f"{where} complaints: expected one of {', '.join(COMPLAINT_SCOPES)},"
                f" got {complaints!r}"
            )
        contact = body.get("contact", "")
        if not isinstance(contact, str):
            raise ConfigError(f"{where} contact: expected an address, got {contact!r}")
        limits = body.get("limits", {})
        if not isinstance(limits, Mapping):
            raise ConfigError(f"{where} limits: expected a table, got {limits!r}")
        transports = _strings(where, "transports", body.get("transports", []), nonempty=False)
        tenants[name] = Tenant(
            name=name,
            domains=domains,
            logins=logins,
            pool=pool,
            complaints=complaints,
            contact=contact,
            transports=transports,
            limits=dict(limits),
        )
    return Tenants(tenants)


def names(tenants: Iterable[Tenant]) -> list[str]:
    return sorted(t.name for t in tenants)
