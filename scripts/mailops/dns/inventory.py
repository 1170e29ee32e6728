"""Read an Ansible inventory the way Ansible sees it, and the DNS settings in it.

``ansible-inventory -i PATH --list`` merges group_vars into every host's variables but
leaves Jinja2 templates unrendered.  The values the plan needs are plain in practice;
where one is a reference to another variable (``"{{ lab_secrets_dir }}/dkim"``) it is
resolved here against the host's other variables and Ansible's path variables
(``playbook_dir``, ``inventory_dir``, ``inventory_hostname``).  Anything richer (filters,
lookups) is refused with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops.dns import ses_inbound_records, ses_records
from mailops.dns.ses_records import Ses

MX_GROUP = "mail_mx"
BULK_GROUP = "mail_bulk"
MONITOR_GROUP = "mail_monitor"  # its nginx serves the MTA-STS policies
SENDING_GROUPS = (MX_GROUP, BULK_GROUP)

_REF = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ANY_TEMPLATE = re.compile(r"\{\{|\{%")


class InventoryError(Exception):
    """The inventory cannot be read, or a value the plan needs is missing or wrong."""


@dataclass
class Inventory:
    path: Path
    hostvars: dict[str, dict[str, Any]]
    groups: dict[str, set[str]]  # group -> every host in it or in its children
    playbook_dir: Path

    def group(self, name: str) -> list[str]:
        return sorted(self.groups.get(name, set()))

    def specials(self, host: str) -> dict[str, Any]:
        # Absolute, as Ansible gives it: a relative one would be read from playbook_dir.
        inventory_dir = (self.path if self.path.is_dir() else self.path.parent).absolute()
        return {
            "inventory_hostname": host,
            "inventory_hostname_short": host.split(".")[0],
            "inventory_dir": str(inventory_dir),
            "playbook_dir": str(self.playbook_dir),
        }

    def var(self, host: str, name: str, default: Any = None) -> Any:
        """A host variable with simple ``{{ var }}`` references resolved."""
        hv = self.hostvars.get(host, {})
        if name not in hv:
            return default
        return resolve(hv[name], {**self.specials(host), **hv}, name)


def resolve(value: Any, variables: dict[str, Any], name: str, depth: int = 0) -> Any:
    """Render the ``{{ var }}`` references in value (recursively, through lists and dicts)."""
    if depth > 20:
        raise InventoryError(f"{name}: references nest too deep (a loop?)")
    if isinstance(value, list):
        return [resolve(v, variables, name, depth) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, variables, name, depth) for k, v in value.items()}
    if not isinstance(value, str) or not _ANY_TEMPLATE.search(value):
        return value
    whole = _REF.fullmatch(value.strip())
    if whole:  # "{{ other }}" alone stands for the other value, whatever its type
        ref = whole.group(1)
        if ref not in variables:
            raise InventoryError(f"{name}: {value!r} refers to {ref}, which is not defined")
        return resolve(variables[ref], variables, ref, depth + 1)

    def one(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref not in variables:
            raise InventoryError(f"{name}: {value!r} refers to {ref}, which is not defined")
        got = resolve(variables[ref], variables, ref, depth + 1)
        if isinstance(got, (list, dict)):
            raise InventoryError(f"{name}: {ref} is not a string")
        return str(got)

    out = _REF.sub(one, value)
    if _ANY_TEMPLATE.search(out):
        raise InventoryError(
            f"{name}: {value!r} is a template this tool does not render (only "
            "'{{ variable }}' references are); set it to a plain value"
        )
    return out


def find_ansible_inventory(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "ansible-inventory"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-inventory")
    if not found:
        raise InventoryError(
            "ansible-inventory not found (next to this Python or on PATH): install "
            "ansible into this environment, or give its path in [dns] ansible_inventory"
        )
    return found


def default_playbook_dir(path: Path) -> Path:
    """Where Ansible's playbook_dir would point: the nearest playbooks/ above the inventory."""
    start = path.resolve()
    for parent in [start, *start.parents]:
        if (parent / "playbooks").is_dir():
            return parent / "playbooks"
    return start if start.is_dir() else start.parent


def unwrap_unsafe(value: Any) -> Any:
    """ansible-inventory --list (ansible-core 2.19) writes values that came from a
    dynamic inventory as {"__ansible_unsafe": "..."}: take the value inside."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap_unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_unsafe(v) for v in value]
    return value


def parse_listing(data: Any, path: Path, playbook_dir: Path) -> Inventory:
    data = unwrap_unsafe(data)
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: ansible-inventory did not print a JSON object")
    meta = data.get("_meta", {})
    hostvars = meta.get("hostvars", {}) if isinstance(meta, dict) else {}
    direct: dict[str, set[str]] = {}
    children: dict[str, list[str]] = {}
    for group, body in data.items():
        if group == "_meta" or not isinstance(body, dict):
            continue
        direct[group] = set(body.get("hosts", []))
        children[group] = list(body.get("children", []))
        for h in direct[group]:
            hostvars.setdefault(h, {})

    def members(group: str, seen: frozenset[str]) -> set[str]:
        if group in seen:
            return set()
        out = set(direct.get(group, set()))
        for child in children.get(group, []):
            out |= members(child, seen | {group})
        return out

    groups = {g: members(g, frozenset()) for g in direct}
    return Inventory(path=path, hostvars=hostvars, groups=groups, playbook_dir=playbook_dir)


def load(path: str, executable: str | None = None, playbook_dir: str | None = None) -> Inventory:
    """Run ``ansible-inventory -i PATH --list`` and read what it prints."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InventoryError(f"{path}: no such inventory")
    exe = find_ansible_inventory(executable)
    try:
        proc = subprocess.run(
            [exe, "-i", str(p), "--list"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except OSError as exc:
        raise InventoryError(f"cannot run {exe}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise InventoryError(f"{exe} -i {path} --list took more than 300 s") from None
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise InventoryError(f"ansible-inventory -i {path} failed: {tail}")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise InventoryError(f"ansible-inventory -i {path} printed no JSON") from None
    pb = Path(playbook_dir).expanduser().resolve() if playbook_dir else default_playbook_dir(p)
    return parse_listing(data, p, pb)


# --- the settings the plan reads ----------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    fqdn: str
    ipv4: str | None
    ipv6: str | None
    groups: frozenset[str]
    weight: int | None = None
    mx_priority: int = 10

    @property
    def addresses(self) -> list[str]:
        return [a for a in (self.ipv4, self.ipv6) if a]


@dataclass(frozen=True)
class Dmarc:
    p: str = "quarantine"
    sp: str | None = None
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    adkim: str | None = None
    aspf: str | None = None
    pct: int | None = None
    fo: str | None = None
    ri: int | None = None


@dataclass(frozen=True)
class PoolAddress:
    """One extra public address of a bulk host (``mail_pool_addresses``), in a pool."""

    host: str  # inventory name of the bulk host
    pool: str
    address: str  # the public address (the Elastic IP on EC2)
    name: str  # its PTR and HELO name
    n: int  # 1, 2, ... within the host and the pool (transport pool_<pool>_<n>)

    @property
    def address_key(self) -> int:
        return int(ipaddress.ip_address(self.address))


@dataclass(frozen=True)
class TenantDns:
    """What the DNS plan needs of one ``mail_tenants`` entry."""

    name: str
    domains: tuple[str, ...]
    pool: str
    selectors: tuple[str, ...]
    dmarc: Dmarc
    mx: tuple[tuple[int, str], ...] = ()  # planned MX (preference, name); () for none


@dataclass
class Settings:
    domain: str
    hosts: list[Host]
    pool_addresses: list[PoolAddress] = field(default_factory=list)
    tenants: list[TenantDns] = field(default_factory=list)
    cluster_name: str = "mail"
    spf_includes: list[str] = field(default_factory=list)
    spf_all: str = "-all"
    dmarc: Dmarc = field(default_factory=Dmarc)
    mta_sts_mode: str = "testing"
    mta_sts_max_age: int = 604800
    mta_sts_server: str | None = None  # inventory name of the host serving the policy
    tlsrpt_rua: list[str] = field(default_factory=list)
    ttl: int = 3600
    dnsbls: list[str] = field(default_factory=list)
    dkim_keys_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    ses: Ses | None = None  # dns_ses: the records Amazon SES needs (ses_records.py)
    # dns_ses_inbound: SES's receiving MX next to mail_mx (ses_inbound_records.py)
    ses_inbound: ses_inbound_records.SesInbound | None = None

    def in_group(self, group: str) -> list[Host]:
        return [h for h in self.hosts if group in h.groups]

    @property
    def mx_hosts(self) -> list[Host]:
        return self.in_group(MX_GROUP)

    @property
    def policy_server(self) -> Host | None:
        """The host that serves https://mta-sts.<domain>/ (dns_mta_sts_server, else the
        first host of mail_monitor); None when there is none."""
        if self.mta_sts_server:
            return next((h for h in self.hosts if h.name == self.mta_sts_server), None)
        monitors = sorted(self.in_group(MONITOR_GROUP), key=lambda h: h.name)
        return monitors[0] if monitors else None

    @property
    def bulk_hosts(self) -> list[Host]:
        return self.in_group(BULK_GROUP)

    @property
    def sending_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.groups & set(SENDING_GROUPS)]

    def pool(self, name: str) -> list[PoolAddress]:
        """Every address of a pool, on every bulk host, in address order."""
        mine = [p for p in self.pool_addresses if p.pool == name]
        return sorted(mine, key=lambda p: (ipaddress.ip_address(p.address).version, p.address_key))

    def tenant_of(self, domain: str) -> TenantDns | None:
        d = domain.lower().rstrip(".")
        return next((t for t in self.tenants if d in t.domains), None)

    @property
    def tenant_domains(self) -> list[str]:
        return [d for t in self.tenants for d in t.domains]


MTA_STS_MODES = ("enforce", "testing", "none", "off")
DMARC_POLICIES = ("none", "quarantine", "reject")
DMARC_KEYS = ("p", "sp", "rua", "ruf", "adkim", "aspf", "pct", "fo", "ri")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_name(name: str, what: str) -> str:
    n = name.strip().rstrip(".").lower()
    if not n or len(n) > 253 or not all(_LABEL.match(label) for label in n.split(".")):
        raise InventoryError(f"{what}: {name!r} is not a domain name")
    return n


def _address(value: Any, version: int, what: str) -> str | None:
    if value in (None, ""):
        return None
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        raise InventoryError(f"{what}: {value!r} is not an IP address") from None
    if addr.version != version:
        raise InventoryError(f"{what}: {value!r} is not an IPv{version} address")
    return str(addr)


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise InventoryError(f"{what}: must be a number, not {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InventoryError(f"{what}: must be a number, not {value!r}") from None
    if not low <= n <= high:
        raise InventoryError(f"{what}: {n} is outside {low}..{high}")
    return n


def _str_list(value: Any, what: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, dict)) for v in value):
        raise InventoryError(f"{what}: must be a list of strings")
    out = []
    for v in value:
        if isinstance(v, dict):  # postfix__mx_dnsbls style: {zone: ..., ...}
            if not isinstance(v.get("zone"), str):
                raise InventoryError(f"{what}: entries that are tables need a 'zone'")
            out.append(v["zone"])
        else:
            out.append(v)
    return out


def _uris(value: Any, what: str, schemes: tuple[str, ...]) -> tuple[str, ...]:
    items = _str_list(value, what)
    out: list[str] = []
    for item in items:
        for uri in item.split(","):
            uri = uri.strip()
            if not uri:
                continue
            scheme = uri.split(":", 1)[0].lower()
            if scheme not in schemes or ":" not in uri:
                raise InventoryError(f"{what}: {uri!r} must be a {' or '.join(schemes)}: URI")
            if scheme == "mailto" and "@" not in uri:
                raise InventoryError(f"{what}: {uri!r} has no address")
            out.append(uri)
    return tuple(out)


def dmarc_from(value: Any, domain: str, what: str = "dns_dmarc") -> Dmarc:
    """A DMARC policy from its dictionary; reports go to dmarc@domain unless rua says."""
    if value in (None, ""):
        value = {}
    if not isinstance(value, dict):
        raise InventoryError(f"{what}: must be a dictionary (p, rua, ruf, adkim, aspf, pct)")
    unknown = sorted(set(value) - set(DMARC_KEYS))
    if unknown:
        raise InventoryError(f"{what}: unknown keys {', '.join(unknown)}")
    p = str(value.get("p", "quarantine"))
    if p not in DMARC_POLICIES:
        raise InventoryError(f"{what}.p: {p!r} must be one of {', '.join(DMARC_POLICIES)}")
    sp = value.get("sp")
    if sp is not None and sp not in DMARC_POLICIES:
        raise InventoryError(f"{what}.sp: {sp!r} must be one of {', '.join(DMARC_POLICIES)}")
    for key in ("adkim", "aspf"):
        if value.get(key) not in (None, "r", "s"):
            raise InventoryError(f"{what}.{key}: must be r (relaxed) or s (strict)")
    rua = value.get("rua", f"mailto:dmarc@{domain}")
    return Dmarc(
        p=p,
        sp=sp,
        rua=_uris(rua, f"{what}.rua", ("mailto",)),
        ruf=_uris(value.get("ruf"), f"{what}.ruf", ("mailto",)),
        adkim=value.get("adkim"),
        aspf=value.get("aspf"),
        pct=None if value.get("pct") is None else _int(value["pct"], f"{what}.pct", 0, 100),
        fo=None if value.get("fo") is None else str(value["fo"]),
        ri=None if value.get("ri") is None else _int(value["ri"], f"{what}.ri", 1, 2**31 - 1),
    )


POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,20}$")


def _any_address(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise InventoryError(f"{what}: {value!r} is not an IP address") from None


def pool_addresses(inv: Inventory, domain: str) -> list[PoolAddress]:
    """``mail_pool_addresses`` of every bulk host: [{pool, address, name?}, ...].

    ``n`` counts from 1 within the host and the pool, in list order; the default name
    is ``<host>-<pool><n>.<domain>`` (host: the inventory name's first label), the
    name the postfix role gives the pool transport's HELO.
    """
    bulk = set(inv.group(BULK_GROUP))
    out: list[PoolAddress] = []
    for host in sorted(inv.hostvars):
        raw = inv.var(host, "mail_pool_addresses")
        if raw in (None, "", []):
            continue
        if host not in bulk:
            raise InventoryError(
                f"{host}: mail_pool_addresses is read on {BULK_GROUP} hosts only "
                "(pools are the bulk nodes' extra addresses)"
            )
        if not isinstance(raw, list):
            raise InventoryError(f"{host}: mail_pool_addresses must be a list of entries")
        counts: dict[str, int] = {}
        short = host.split(".")[0].lower()
        for i, entry in enumerate(raw):
            what = f"{host}: mail_pool_addresses[{i}]"
            if not isinstance(entry, dict):
                raise InventoryError(f"{what}: must be a dictionary {{pool, address, name}}")
            pool = entry.get("pool")
            if not isinstance(pool, str) or not POOL_NAME.match(pool):
                raise InventoryError(
                    f"{what}: pool {pool!r} must be 1-21 lower-case letters and digits"
                )
            if entry.get("address") in (None, ""):
                raise InventoryError(f"{what}: no address (the public one, the EIP on EC2)")
            address = _any_address(entry["address"], f"{what}.address")
            counts[pool] = counts.get(pool, 0) + 1
            n = counts[pool]
            raw_name = entry.get("name")
            name = check_name(
                str(raw_name) if raw_name else f"{short}-{pool}{n}.{domain}", f"{what}.name"
            )
            out.append(PoolAddress(host=host, pool=pool, address=address, name=name, n=n))
    return out


def _tenant_mx(value: Any, what: str, mx_hosts: list[Host]) -> tuple[tuple[int, str], ...]:
    """No MX (default), ``company`` (the mail_mx hosts) or a list of host names."""
    if value in (None, "", False, [], "none"):
        return ()
    if value is True or value == "company":
        if not mx_hosts:
            raise InventoryError(f"{what}: 'company' but no host is in {MX_GROUP}")
        return tuple(sorted((h.mx_priority, h.fqdn) for h in mx_hosts))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InventoryError(f"{what}: must be 'company', a list of host names, or empty")
    return tuple((10 * (i + 1), check_name(v, what)) for i, v in enumerate(value))


def tenants_from(
    inv: Inventory,
    first: str,
    domain: str,
    mx_hosts: list[Host],
    pools: list[PoolAddress],
) -> list[TenantDns]:
    """``mail_tenants`` (checked by the tenants model every mailops tool shares).

    Only the plain keys are read (``mail_tenant_passwords`` never): name, domains,
    pool, dkim_selectors, and for DNS the optional ``dmarc`` (keys of dns_dmarc,
    merged over the company's) and ``mx``.
    """
    from mailops.config import ConfigError
    from mailops.tenants.model import load_tenants

    raw = inv.var(first, "mail_tenants", [])
    if raw in (None, "", []):
        return []
    if not isinstance(raw, list):
        raise InventoryError("mail_tenants: must be a list of tenants")
    tables: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InventoryError(f"mail_tenants[{i}]: each tenant is a dictionary with a name")
        if entry["name"] in tables:
            raise InventoryError(f"mail_tenants: two tenants are named {entry['name']}")
        tables[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
    try:
        model = load_tenants({"tenants": tables})
    except ConfigError as exc:
        raise InventoryError(f"mail_tenants: {exc}") from None
    company_dmarc = inv.var(first, "dns_dmarc", {}) or {}
    default_mx = inv.var(first, "dns_tenant_mx", None)
    have_pools = {p.pool for p in pools}
    out: list[TenantDns] = []
    for t in model:
        body = tables[t.name]
        where = f"mail_tenants[{t.name}]"
        for d in t.domains:
            if d == domain or domain.endswith("." + d):
                raise InventoryError(
                    f"{where}: {d} is the company's domain (or above it), not a tenant's"
                )
        if t.pool not in have_pools:
            raise InventoryError(
                f"{where}: pool {t.pool} has no address on any {BULK_GROUP} host "
                "(mail_pool_addresses): its SPF would authorise nothing"
            )
        selectors = body.get("dkim_selectors", [])
        if not isinstance(selectors, list) or not all(isinstance(x, str) for x in selectors):
            raise InventoryError(f"{where}.dkim_selectors: must be a list of selectors")
        own = body.get("dmarc") or {}
        if not isinstance(own, dict) or not isinstance(company_dmarc, dict):
            raise InventoryError(f"{where}.dmarc: must be a dictionary (the keys of dns_dmarc)")
        out.append(
            TenantDns(
                name=t.name,
                domains=t.domains,
                pool=t.pool,
                selectors=tuple(selectors),
                dmarc=dmarc_from({**company_dmarc, **own}, domain, f"{where}.dmarc"),
                mx=_tenant_mx(body.get("mx", default_mx), f"{where}.mx", mx_hosts),
            )
        )
    return out


def settings(inv: Inventory, dkim_keys: str | None = None) -> Settings:
    """The DNS settings of an inventory; the domain-wide ones from the first MX host."""
    mail_hosts = inv.group(MX_GROUP) + [
        h for h in inv.group(BULK_GROUP) if h not in inv.group(MX_GROUP)
    ]
    if not mail_hosts:
        raise InventoryError(
            f"{inv.path}: no host in {MX_GROUP} or {BULK_GROUP}: nothing to plan records for"
        )
    first = mail_hosts[0]
    raw_domain = inv.var(first, "mail_domain")
    if not isinstance(raw_domain, str) or not raw_domain:
        raise InventoryError(f"{first}: mail_domain is not set")
    domain = check_name(raw_domain, "mail_domain")
    for h in mail_hosts[1:]:
        other = inv.var(h, "mail_domain")
        if isinstance(other, str) and other.rstrip(".").lower() != domain:
            raise InventoryError(
                f"{h} has mail_domain {other!r} but {first} has {domain!r}: one plan is "
                "for one domain; give each domain its own inventory"
            )

    member: dict[str, set[str]] = {}
    for group, group_hosts in inv.groups.items():
        for h in group_hosts:
            member.setdefault(h, set()).add(group)
    hosts: list[Host] = []
    for name in sorted(inv.hostvars):
        v4 = _address(inv.var(name, "public_ipv4"), 4, f"{name}: public_ipv4")
        v6 = _address(inv.var(name, "public_ipv6"), 6, f"{name}: public_ipv6")
        if not v4 and not v6:
            continue
        fqdn_raw = inv.var(name, "mail_fqdn")
        if fqdn_raw:
            fqdn = check_name(str(fqdn_raw), f"{name}: mail_fqdn")
        elif name.lower().endswith("." + domain):
            fqdn = name.lower()
        else:
            fqdn = check_name(f"{name}.{domain}", f"{name}: inventory name")
        weight_raw = inv.var(name, "dns_weight")
        weight = None if weight_raw is None else _int(weight_raw, f"{name}: dns_weight", 0, 255)
        if "mail_bulk" in member.get(name, set()):
            weight = _warmup_weight(weight, inv.var(name, "mail_warmup"), v4)
        hosts.append(
            Host(
                name=name,
                fqdn=fqdn,
                ipv4=v4,
                ipv6=v6,
                groups=frozenset(member.get(name, set())),
                weight=weight,
                mx_priority=_int(
                    inv.var(name, "dns_mx_priority", 10), f"{name}: dns_mx_priority", 0, 65535
                ),
            )
        )
    missing = [h for h in mail_hosts if not any(x.name == h for x in hosts)]
    if missing:
        raise InventoryError(
            f"{', '.join(missing)}: no public_ipv4 or public_ipv6 (the address the "
            "Internet sees, the Elastic IP on EC2)"
        )

    def get(var: str, default: Any) -> Any:
        return inv.var(first, var, default)

    spf_all = get("dns_spf_all", "-all")
    if spf_all not in ("-all", "~all"):
        raise InventoryError(f"dns_spf_all: {spf_all!r} must be '-all' or '~all'")
    mode = str(get("dns_mta_sts_mode", "testing"))
    if mode not in MTA_STS_MODES:
        raise InventoryError(
            f"dns_mta_sts_mode: {mode!r} must be one of {', '.join(MTA_STS_MODES)}"
        )
    server = get("dns_mta_sts_server", None)
    if server not in (None, "") and not any(h.name == server for h in hosts):
        raise InventoryError(
            f"dns_mta_sts_server: {server!r} is not a host of the inventory with a public address"
        )
    cluster = get("dns_cluster_name", "mail")
    cluster_name = "" if cluster in (None, "", False) else str(cluster)
    keys_dir: Path | None = None
    if dkim_keys:
        keys_dir = Path(dkim_keys).expanduser()
    else:
        raw_dir = get("opendkim__keys_dir", None)
        if raw_dir:
            d = Path(str(raw_dir)).expanduser()
            if not d.is_absolute():  # Ansible reads relative paths from playbook_dir
                d = inv.playbook_dir / d
            keys_dir = Path(str(d.resolve()))
    pools = pool_addresses(inv, domain)
    return Settings(
        domain=domain,
        hosts=hosts,
        pool_addresses=pools,
        tenants=tenants_from(inv, first, domain, [h for h in hosts if MX_GROUP in h.groups], pools),
        cluster_name=cluster_name,
        spf_includes=_str_list(get("dns_spf_includes", []), "dns_spf_includes"),
        spf_all=str(spf_all),
        dmarc=dmarc_from(get("dns_dmarc", {}), domain),
        mta_sts_mode=mode,
        mta_sts_max_age=_int(
            get("dns_mta_sts_max_age", 604800), "dns_mta_sts_max_age", 1, 31557600
        ),
        mta_sts_server=str(server) if server else None,
        tlsrpt_rua=list(
            _uris(
                get("dns_tlsrpt_rua", f"mailto:tlsrpt@{domain}"),
                "dns_tlsrpt_rua",
                ("mailto", "https"),
            )
        ),
        ttl=_int(get("dns_ttl", 3600), "dns_ttl", 0, 2**31 - 1),
        dnsbls=[
            check_name(z, "dns_dnsbls") for z in _str_list(get("dns_dnsbls", []), "dns_dnsbls")
        ],
        dkim_keys_dir=keys_dir,
        ses=_ses(get("dns_ses", None), domain, get("ses_region", None) or get("aws_region", None)),
        ses_inbound=_ses_inbound(
            get("dns_ses_inbound", None), get("ses_region", None) or get("aws_region", None)
        ),
    )


def _ses(value: Any, domain: str, region: Any) -> Ses | None:
    try:
        return ses_records.from_inventory(value, domain, region)
    except ses_records.SesError as exc:
        raise InventoryError(str(exc)) from None


def _ses_inbound(value: Any, region: Any) -> ses_inbound_records.SesInbound | None:
    try:
        return ses_inbound_records.from_inventory(value, region)
    except ses_inbound_records.SesInboundError as exc:
        raise InventoryError(str(exc)) from None


def _warmup_weight(weight: int | None, warmup: Any, address: str | None) -> int | None:
    """The host's weight in the cluster name while its address warms up (docs/warmup.md):
    it follows the curve from the ``day1`` the inventory names for the address."""
    from mailops.dns.plan import DEFAULT_WEIGHT  # plan imports this module
    from mailops.warmup import schedule

    return schedule.dns_weight(weight, warmup, address, schedule.now(), DEFAULT_WEIGHT)
