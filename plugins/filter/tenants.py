"""Check the inventory's tenants and work out each bulk host's pool transports.

The roles read the same ``mail_tenants`` list (docs/tenants.md) and each bulk host's
``mail_pool_addresses``.  Two filters hold what the Ansible side needs to know about
them, so the rules live in one place with their own tests (tests/test_postfix_tenants.py):

``mail_tenant_problems(tenants, password_logins, pools_by_host, mail_domain, ...)``
    every mistake in the data as one sentence that says what to fix; an empty list when
    all is well.  The postfix role asserts it is empty before it writes anything.

``mail_pool_transports(pool_addresses, host, mail_domain, classes)``
    the transports of one host's pool addresses: ``pool_<pool>_<n>`` (n counts from 1
    within the host and the pool, in inventory order) and ``pool_<pool>_<n>_<class>`` for
    each provider class, each with the address Postfix binds to and the HELO name, which
    is the name the DNS side publishes for the address (PTR and A).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

try:  # Ansible is present on the controller; the tests import this file directly.
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover

    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        pass


# The same rules as scripts/mailops/tenants/model.py, which reads the rendered copy.
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,20}$")
DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$"
)
# A login goes into a passwd-file (no ':'), a comma-separated owner list in
# sender_logins (no ',') and a Lua table; Postfix compares logins without case.
LOGIN_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
SELECTOR_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
COMPLAINT_SCOPES = ("global", "tenant")
_KEYS = {"name", "domains", "logins", "pool", "dkim_selectors", "contact", "complaints", "limits"}
_POOL_KEYS = {"pool", "address", "private_address", "name"}


def _ipv4(value: Any) -> bool:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def mail_tenant_problems(
    tenants: Any,
    password_logins: Any = None,
    pools_by_host: Any = None,
    mail_domain: str = "",
    public_addresses: Any = None,
) -> list[str]:
    """Every mistake in the tenants and pools, each a sentence saying what to fix.

    ``password_logins``: the logins that have a password (the keys of
    mail_tenant_passwords), or None where passwords are not needed.  ``pools_by_host``:
    {bulk host: its mail_pool_addresses}, or None where pools are not checked.
    ``public_addresses``: {host: public_ipv4}, which no pool address may repeat.
    """
    problems: list[str] = []
    if tenants is None:
        tenants = []
    if not isinstance(tenants, list):
        return [f"mail_tenants must be a list of tenants, got {tenants!r}"]
    names: dict[str, int] = {}
    owner_of_domain: dict[str, str] = {}
    owner_of_login: dict[str, str] = {}
    pools_wanted: dict[str, list[str]] = {}
    for i, t in enumerate(tenants):
        if not isinstance(t, Mapping):
            problems.append(
                f"mail_tenants[{i}] must be a mapping with name, domains, ..., got {t!r}"
            )
            continue
        name = t.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            problems.append(
                f"mail_tenants[{i}] name must be 1-21 lower-case letters and digits starting with "
                f"a letter, got {name!r}"
            )
            name = f"#{i}"
        elif name in names:
            problems.append(f"mail_tenants: tenant name {name} appears twice")
        names[name] = i
        where = f"tenant {name}"
        unknown = sorted(set(t) - _KEYS)
        if unknown:
            problems.append(f"{where}: unknown keys {unknown} (known: {sorted(_KEYS)})")
        domains = t.get("domains")
        if not _str_list(domains) or not domains:
            problems.append(f"{where}: domains must be a non-empty list of domain names")
            domains = []
        for d in domains:
            if not DOMAIN_RE.match(d):
                problems.append(f"{where}: {d!r} is not a lower-case domain name")
            elif mail_domain and d == mail_domain:
                problems.append(
                    f"{where}: {d} is the company domain (mail_domain); a tenant needs its own"
                )
            elif d in owner_of_domain:
                problems.append(f"{where}: domain {d} is tenant {owner_of_domain[d]}'s already")
            else:
                owner_of_domain[d] = name
        # A tenant with no login could not submit, and its domains would have no owner
        # in sender_logins, leaving them open to any client in mynetworks.
        logins = t.get("logins")
        if not _str_list(logins) or not logins:
            problems.append(f"{where}: logins must be a non-empty list of SMTP login names")
            logins = []
        for login in logins:
            if not LOGIN_RE.match(login):
                problems.append(
                    f"{where}: login {login!r} must be lower-case letters, digits and . _ @ + -"
                )
            elif login in owner_of_login:
                problems.append(
                    f"{where}: login {login} is tenant {owner_of_login[login]}'s already"
                )
            else:
                owner_of_login[login] = name
                if password_logins is not None and login not in password_logins:
                    problems.append(
                        f"{where}: login {login} has no password in mail_tenant_passwords "
                        f"(add '{login}: ...' there, in ansible-vault)"
                    )
        pool = t.get("pool", name)
        if not isinstance(pool, str) or not NAME_RE.match(pool):
            problems.append(
                f"{where}: pool must be 1-21 lower-case letters and digits starting with a "
                f"letter, got {pool!r}"
            )
        else:
            pools_wanted.setdefault(pool, []).append(name)
        selectors = t.get("dkim_selectors")
        if not _str_list(selectors) or not selectors:
            problems.append(f"{where}: dkim_selectors must be a non-empty list (the first signs)")
        else:
            for s in selectors:
                if not SELECTOR_RE.match(s):
                    problems.append(f"{where}: DKIM selector {s!r} must be a lower-case DNS label")
            if len(set(selectors)) != len(selectors):
                problems.append(f"{where}: dkim_selectors lists a selector twice")
        complaints = t.get("complaints", "global")
        if complaints not in COMPLAINT_SCOPES:
            problems.append(
                f"{where}: complaints must be one of {', '.join(COMPLAINT_SCOPES)}, "
                f"got {complaints!r}"
            )
        contact = t.get("contact", "")
        if not isinstance(contact, str) or (contact and "@" not in contact):
            problems.append(f"{where}: contact must be a mail address, got {contact!r}")
        if not isinstance(t.get("limits", {}), Mapping):
            problems.append(f"{where}: limits must be a mapping")
    if pools_by_host is not None:
        problems += _pool_problems(pools_by_host, pools_wanted, public_addresses or {})
    return problems


def _pool_problems(
    pools_by_host: Mapping[str, Any],
    pools_wanted: Mapping[str, list[str]],
    public_addresses: Mapping[str, Any],
) -> list[str]:
    problems: list[str] = []
    have: set[str] = set()
    seen: dict[str, str] = {}
    for host, public in public_addresses.items():
        if public:
            seen[str(public)] = f"{host}'s public_ipv4"
    for host, entries in pools_by_host.items():
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(f"{host}: mail_pool_addresses must be a list, got {entries!r}")
            continue
        for i, e in enumerate(entries):
            where = f"{host}: mail_pool_addresses[{i}]"
            if not isinstance(e, Mapping):
                problems.append(f"{where} must be a mapping {{pool, address}}, got {e!r}")
                continue
            unknown = sorted(set(e) - _POOL_KEYS)
            if unknown:
                problems.append(f"{where}: unknown keys {unknown} (known: {sorted(_POOL_KEYS)})")
            pool = e.get("pool")
            if not isinstance(pool, str) or not NAME_RE.match(pool):
                problems.append(f"{where}: pool must be a pool name, got {pool!r}")
            elif pool not in pools_wanted:
                problems.append(
                    f"{where}: pool {pool} is no tenant's pool (tenants' pools: "
                    f"{', '.join(sorted(pools_wanted)) or 'none'})"
                )
            else:
                have.add(pool)
            address = e.get("address")
            if not _ipv4(address):
                problems.append(f"{where}: address must be an IPv4 address, got {address!r}")
            elif str(address) in seen:
                problems.append(f"{where}: address {address} is {seen[str(address)]} already")
            else:
                seen[str(address)] = f"{host}'s pool {pool}"
            private = e.get("private_address")
            if private is not None and not _ipv4(private):
                problems.append(
                    f"{where}: private_address must be an IPv4 address, got {private!r}"
                )
            fqdn = e.get("name")
            if fqdn is not None and (not isinstance(fqdn, str) or not DOMAIN_RE.match(fqdn)):
                problems.append(f"{where}: name must be a lower-case host name, got {fqdn!r}")
    for pool, tenants in sorted(pools_wanted.items()):
        if pool not in have:
            problems.append(
                f"pool {pool} (tenant {', '.join(tenants)}) has no address on any bulk host: "
                f"add {{pool: {pool}, address: ...}} to a bulk host's mail_pool_addresses"
            )
    return problems


def mail_pool_transports(
    pool_addresses: Any, host: str, mail_domain: str, classes: Any = None
) -> list[dict[str, Any]]:
    """The pool transports of one host, base transport first, then one per class.

    Each: {transport, pool, n, class ('default' or the class name), address,
    private_address, helo, and for a class its concurrency, recipients, rate_delay}.
    """
    if not pool_addresses:
        return []
    if not isinstance(pool_addresses, list):
        raise AnsibleFilterError(f"mail_pool_addresses must be a list, got {pool_addresses!r}")
    short = str(host).split(".")[0]
    counts: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for e in pool_addresses:
        if not isinstance(e, Mapping) or "pool" not in e or "address" not in e:
            raise AnsibleFilterError(f"{host}: pool address needs 'pool' and 'address': {e!r}")
        pool = str(e["pool"])
        n = counts[pool] = counts.get(pool, 0) + 1
        address = str(e["address"])
        base = {
            "transport": f"pool_{pool}_{n}",
            "pool": pool,
            "n": n,
            "class": "default",
            "address": address,
            "private_address": str(e.get("private_address") or address),
            "helo": str(e.get("name") or f"{short}-{pool}{n}.{mail_domain}"),
        }
        out.append(base)
        for c in classes or []:
            out.append(
                {
                    **base,
                    "transport": f"pool_{pool}_{n}_{c['name']}",
                    "class": str(c["name"]),
                    "concurrency": c.get("concurrency"),
                    "recipients": c.get("recipients"),
                    "rate_delay": c.get("rate_delay"),
                }
            )
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "mail_tenant_problems": mail_tenant_problems,
            "mail_pool_transports": mail_pool_transports,
        }
