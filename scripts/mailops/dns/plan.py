"""Every record the inventory implies, as data (``Plan``), refusing records that break.

What is planned, for mail_domain D (variables in docs/dns.md):

- ``D MX`` -> every host of mail_mx (``dns_mx_priority``, default 10);
- ``A``/``AAAA`` for every host with public_ipv4/public_ipv6 whose name is under D;
- the cluster name (``dns_cluster_name``, default ``mail`` -> ``mail.D``): one A/AAAA per
  mail_bulk host, a weighted set when any bulk host sets ``dns_weight``;
- ``PTR`` for every host address (what the Elastic IP's reverse DNS must be set to);
- SPF on D: ``ip4:``/``ip6:`` for every sending address (mail_mx and mail_bulk), the
  ``dns_spf_includes``, then ``dns_spf_all``; at most 10 lookups;
- DKIM TXT for every selector in force (from the opendkim key directory);
- ``_dmarc.D``, ``_mta-sts.D`` (id from the policy text), ``mta-sts.D`` (A/AAAA of the
  host whose nginx serves the policy: the monitor) and ``_smtp._tls.D``;
- for every pool address of a bulk host (``mail_pool_addresses``): ``A``/``AAAA`` of its
  name and its ``PTR`` (forward-confirmed reverse DNS);
- for every tenant domain T (``mail_tenants``), a zone of its own: SPF listing exactly
  the addresses of the tenant's pool (nothing else, not even the company's includes),
  DKIM for its selectors in force, ``_dmarc.T`` (the company's policy unless the tenant
  says otherwise), ``T._report._dmarc.<report domain>`` where the reports go to a
  planned zone of another domain (RFC 7489 7.1), and an MX only when asked (``mx``);
  when that MX is the company's, the cluster receives the domain's mail, and the domain
  gets MTA-STS (the same policy text, so the same id) and TLS-RPT as D does.

The policy text and its id come from one function (``mta_sts``): what nginx serves
(`mailops dns mta-sts`, the mta_sts role) and what the TXT record says cannot drift.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

import dns.reversename

from mailops.dns import ses_inbound_records, ses_records, spf
from mailops.dns.dkim import DkimKey
from mailops.dns.inventory import Dmarc, Settings, TenantDns
from mailops.dns.records import Record, in_zone, txt_value

DEFAULT_WEIGHT = 100  # a bulk host without dns_weight in a weighted set

_MECHANISM = re.compile(r"^[+\-~?]?(include|a|mx|ptr|exists|ip4|ip6)(?=$|[:/])", re.IGNORECASE)


class PlanError(Exception):
    """The inventory implies a record that must not be published; the message says why."""


@dataclass(frozen=True)
class MtaSts:
    """One domain's MTA-STS: the policy served at https://<host>/.well-known/mta-sts.txt
    and the id its ``_mta-sts`` record carries (derived from the policy text)."""

    domain: str
    host: str  # mta-sts.<domain>
    policy: str
    id: str

    def as_json(self) -> dict[str, str]:
        return {"domain": self.domain, "host": self.host, "policy": self.policy, "id": self.id}


@dataclass
class TenantPlan:
    """What was planned for one tenant domain (what `dns check` expects of it)."""

    tenant: str
    domain: str
    spf_record: str
    spf_lookups: int
    keys: list[DkimKey]
    sending: list[tuple[str, str]]  # the pool's (address, name), in address order
    mx_names: list[str]  # planned MX hosts; [] for none
    mta_sts: MtaSts | None = None  # only when the company's MX takes the domain's mail
    tlsrpt: bool = False  # _smtp._tls planned (with mta_sts)


@dataclass
class Plan:
    domain: str
    records: list[Record]
    spf_record: str
    spf_lookups: int
    mta_sts_policy: str | None
    mta_sts_id: str | None
    keys: list[DkimKey]
    notes: list[str] = field(default_factory=list)
    tenants: list[TenantPlan] = field(default_factory=list)
    ses: ses_records.Ses | None = None  # SES's records were planned (dns_ses)
    # SES's receiving MX entries (preference, host) in D's MX (dns_ses_inbound)
    ses_inbound_mx: list[tuple[int, str]] = field(default_factory=list)

    def tenant(self, domain: str) -> TenantPlan | None:
        d = domain.lower().rstrip(".")
        return next((t for t in self.tenants if t.domain == d), None)

    @property
    def mta_sts(self) -> list[MtaSts]:
        """Every policy to serve: the mail domain's, then the tenant domains' own."""
        out = []
        if self.mta_sts_policy is not None and self.mta_sts_id is not None:
            out.append(
                MtaSts(self.domain, f"mta-sts.{self.domain}", self.mta_sts_policy, self.mta_sts_id)
            )
        out += [t.mta_sts for t in self.tenants if t.mta_sts is not None]
        return out


def reverse_name(address: str) -> str:
    return dns.reversename.from_address(address).to_text(omit_final_dot=True).lower()


def reverse_zone(address: str) -> str:
    """The reverse zone a PTR goes in: the /24 (IPv4) or /64 (IPv6) around the address."""
    name = reverse_name(address)
    labels = name.split(".")
    if ipaddress.ip_address(address).version == 4:
        return ".".join(labels[1:])  # drop the last octet
    return ".".join(labels[16:])  # drop 16 nibbles: the /64


def spf_terms(s: Settings) -> list[str]:
    v4 = sorted({h.ipv4 for h in s.sending_hosts if h.ipv4}, key=lambda a: ipaddress.ip_address(a))
    v6 = sorted({h.ipv6 for h in s.sending_hosts if h.ipv6}, key=lambda a: ipaddress.ip_address(a))
    terms = [f"ip4:{a}" for a in v4] + [f"ip6:{a}" for a in v6]
    for entry in s.spf_includes:
        entry = entry.strip()
        terms.append(entry if _MECHANISM.match(entry) else f"include:{entry}")
    ses = s.ses
    if (
        ses
        and not ses.mail_from_domain
        and ses.domain == s.domain
        and ses_records.INCLUDE not in terms
    ):
        terms.append(ses_records.INCLUDE)  # SES sends for the domain from amazonses.com
    terms.append(s.spf_all)
    return terms


def tenant_spf(s: Settings, t: TenantDns) -> str:
    """Exactly the tenant's pool: its mail leaves from nowhere else."""
    addrs = [ipaddress.ip_address(p.address) for p in s.pool(t.pool)]
    return "v=spf1 " + " ".join([f"ip{a.version}:{a}" for a in addrs] + [s.spf_all])


def build_spf(s: Settings) -> tuple[str, int]:
    text = "v=spf1 " + " ".join(spf_terms(s))
    try:
        record = spf.parse(text)
    except spf.SpfSyntaxError as exc:
        raise PlanError(f"SPF record would not parse ({exc}): check dns_spf_includes") from None
    if any(t.modifier and t.kind == "redirect" for t in record.terms):
        raise PlanError("dns_spf_includes: redirect= does not belong in a record with addresses")
    lookups = record.lookups
    if lookups > spf.MAX_LOOKUPS:
        costly = [t.text for t in record.terms if t.lookups]
        raise PlanError(
            f"SPF for {s.domain} would need {lookups} DNS lookups, over the limit of "
            f"{spf.MAX_LOOKUPS} (receivers answer permerror): {' '.join(costly)}; "
            "replace includes by ip4:/ip6: ranges or drop some"
        )
    return text, lookups


def dmarc_text(d: Dmarc) -> str:
    tags = [f"v=DMARC1; p={d.p}"]
    if d.sp:
        tags.append(f"sp={d.sp}")
    if d.pct is not None:
        tags.append(f"pct={d.pct}")
    if d.rua:
        tags.append("rua=" + ",".join(d.rua))
    if d.ruf:
        tags.append("ruf=" + ",".join(d.ruf))
    if d.fo:
        tags.append(f"fo={d.fo}")
    if d.adkim:
        tags.append(f"adkim={d.adkim}")
    if d.aspf:
        tags.append(f"aspf={d.aspf}")
    if d.ri is not None:
        tags.append(f"ri={d.ri}")
    return "; ".join(tags)


def mta_sts_policy(mode: str, mx_names: list[str], max_age: int) -> str:
    """The policy file (RFC 8461 3.2), lines ending in CRLF."""
    lines = ["version: STSv1", f"mode: {mode}"]
    lines += [f"mx: {name}" for name in mx_names]
    lines.append(f"max_age: {max_age}")
    return "".join(line + "\r\n" for line in lines)


def policy_id(policy: str) -> str:
    """A policy id that changes whenever the policy does (RFC 8461 3.1: 1-32 alphanumerics)."""
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:20]


def mta_sts(domain: str, mode: str, mx_names: list[str], max_age: int) -> MtaSts:
    """The policy of one domain and its id, made together so that they cannot drift."""
    policy = mta_sts_policy(mode, mx_names, max_age)
    return MtaSts(domain, f"mta-sts.{domain}", policy, policy_id(policy))


def mta_sts_records(
    s: Settings, m: MtaSts, zone: str, tlsrpt: bool
) -> tuple[list[Record], list[str]]:
    """``_mta-sts`` TXT, the policy host's A/AAAA (the serving host's addresses) and,
    when asked, ``_smtp._tls`` TXT of one domain."""
    ttl = s.ttl
    recs = [
        Record(
            f"_mta-sts.{m.domain}",
            "TXT",
            ttl,
            (txt_value(f"v=STSv1; id={m.id}"),),
            zone,
            comment="MTA-STS",
        )
    ]
    notes: list[str] = []
    server = s.policy_server
    if server is None:
        notes.append(
            f"no host in mail_monitor (nor dns_mta_sts_server): {m.host} is not planned; "
            "serve the policy elsewhere and publish that name"
        )
    else:
        for rtype, addr in (("A", server.ipv4), ("AAAA", server.ipv6)):
            if addr:
                recs.append(
                    Record(
                        m.host, rtype, ttl, (addr,), zone, comment=f"MTA-STS policy, {server.name}"
                    )
                )
    if tlsrpt and s.tlsrpt_rua:
        recs.append(
            Record(
                f"_smtp._tls.{m.domain}",
                "TXT",
                ttl,
                (txt_value("v=TLSRPTv1; rua=" + ",".join(s.tlsrpt_rua)),),
                zone,
                comment="TLS-RPT",
            )
        )
    return recs, notes


def zone_apexes(s: Settings) -> list[str]:
    """The zones the plan fills: the mail domain, and each tenant domain that is not at
    or under one of them (a tenant's news.example.org lives in its example.org zone)."""
    out = [s.domain]
    for d in sorted(s.tenant_domains, key=lambda d: (d.count("."), d)):
        if not any(in_zone(d, z) for z in out):
            out.append(d)
    return out


def zone_of(name: str, apexes: list[str]) -> str | None:
    """The most specific planned zone that holds name (None: outside every one)."""
    holding = [z for z in apexes if in_zone(name, z)]
    return max(holding, key=len) if holding else None


def same_organisation(a: str, b: str) -> bool:
    """The approximation `dns check` uses too: one name at or under the other."""
    return in_zone(a, b) or in_zone(b, a)


def report_authorisations(
    domain: str, d: Dmarc, apexes: list[str], ttl: int
) -> tuple[list[Record], list[str]]:
    """RFC 7489 7.1: a report domain outside the policy domain's organisation must say
    it takes the reports.  Planned when the report domain is in a planned zone,
    otherwise a note says what to publish there."""
    recs: list[Record] = []
    notes: list[str] = []
    for uri in d.rua + d.ruf:
        target = uri.split("@", 1)[1].split("!", 1)[0].lower().rstrip(".")
        if same_organisation(domain, target):
            continue
        name = f"{domain}._report._dmarc.{target}"
        zone = zone_of(target, apexes)
        if zone is None:
            notes.append(
                f"DMARC reports go to {target}: it must publish {name} "
                'TXT "v=DMARC1" or receivers will not send them'
            )
        elif not any(r.name == name for r in recs):
            recs.append(
                Record(name, "TXT", ttl, (txt_value("v=DMARC1"),), zone, comment="DMARC reports")
            )
    return recs, notes


def build(
    s: Settings, keys: list[DkimKey], tenant_keys: dict[str, list[DkimKey]] | None = None
) -> Plan:
    """Every record of the inventory; tenant_keys: tenant domain -> its DKIM keys."""
    D = s.domain
    ttl = s.ttl
    notes = list(s.notes)
    records: list[Record] = []
    apexes = zone_apexes(s)
    tenant_keys = tenant_keys or {}

    seen_addr: dict[str, str] = {}
    for h in s.hosts:
        for a in h.addresses:
            if a in seen_addr:
                raise PlanError(
                    f"{h.name} and {seen_addr[a]} both have address {a}: one address has one PTR"
                )
            seen_addr[a] = h.name
    seen_name = {h.fqdn: h.name for h in s.hosts}
    for pa in s.pool_addresses:
        who = f"{pa.host}'s pool {pa.pool} address"
        if pa.address in seen_addr:
            raise PlanError(
                f"{who} {pa.address} is also {seen_addr[pa.address]}'s: one address has one PTR"
            )
        seen_addr[pa.address] = who
        if pa.name in seen_name:
            raise PlanError(
                f"{who} {pa.address} is named {pa.name}, which is {seen_name[pa.name]}'s "
                "name already: give the entry a name of its own"
            )
        seen_name[pa.name] = who

    mx = sorted(s.mx_hosts, key=lambda h: (h.mx_priority, h.fqdn))
    entries = [(h.mx_priority, h.fqdn) for h in mx]
    inbound_mx: list[tuple[int, str]] = []
    if s.ses_inbound is not None:
        try:
            inbound_mx = s.ses_inbound.mx([p for p, _ in entries])
        except ses_inbound_records.SesInboundError as exc:
            raise PlanError(str(exc)) from None
        entries = sorted(entries + inbound_mx)
    if entries:
        records.append(Record(D, "MX", ttl, tuple(f"{p} {n}." for p, n in entries), D))
    if not mx:
        notes.append(f"no host in mail_mx: no MX record planned for {D}")

    for h in sorted(s.hosts, key=lambda h: h.fqdn):
        if not (h.fqdn == D or h.fqdn.endswith("." + D)):
            notes.append(f"{h.name}: {h.fqdn} is outside {D}: its A/AAAA are not planned here")
            continue
        note = "" if h.fqdn.split(".")[0] == h.name.split(".")[0] else h.name
        if h.ipv4:
            records.append(Record(h.fqdn, "A", ttl, (h.ipv4,), D, comment=note))
        if h.ipv6:
            records.append(Record(h.fqdn, "AAAA", ttl, (h.ipv6,), D, comment=note))

    for pa in sorted(s.pool_addresses, key=lambda pa: pa.name):
        zone = zone_of(pa.name, apexes)
        if zone is None:
            notes.append(
                f"{pa.host}: pool address {pa.address} is named {pa.name}, outside every "
                "planned zone: its A/AAAA are not planned here (publish them where it lives)"
            )
            continue
        rtype = "A" if ipaddress.ip_address(pa.address).version == 4 else "AAAA"
        records.append(
            Record(pa.name, rtype, ttl, (pa.address,), zone, comment=f"pool {pa.pool}, {pa.host}")
        )

    bulk = sorted(s.bulk_hosts, key=lambda h: h.fqdn)
    if s.cluster_name and bulk:
        cname = s.cluster_name.lower().rstrip(".")
        cluster = cname if cname == D or cname.endswith("." + D) else f"{cname}.{D}"
        if cluster in seen_name:
            raise PlanError(
                f"the cluster name {cluster} is {seen_name[cluster]}'s name too: "
                "change dns_cluster_name or that name"
            )
        weighted = any(h.weight is not None for h in bulk)
        for rtype, attr in (("A", "ipv4"), ("AAAA", "ipv6")):
            members = [(h, getattr(h, attr)) for h in bulk if getattr(h, attr)]
            if not members:
                continue
            if weighted:
                for h, addr in members:
                    w = DEFAULT_WEIGHT if h.weight is None else h.weight
                    records.append(Record(cluster, rtype, ttl, (addr,), D, weight=w, set_id=h.name))
            else:
                records.append(
                    Record(
                        cluster,
                        rtype,
                        ttl,
                        tuple(a for _, a in members),
                        D,
                        comment="round robin over mail_bulk",
                    )
                )

    named = [(ipaddress.ip_address(a), h.fqdn) for h in s.hosts for a in h.addresses]
    named += [(ipaddress.ip_address(pa.address), pa.name) for pa in s.pool_addresses]
    for addr, fqdn in sorted(named, key=lambda pair: (pair[0].version, pair[0])):
        a = str(addr)
        records.append(Record(reverse_name(a), "PTR", ttl, (f"{fqdn}.",), reverse_zone(a)))

    spf_text, lookups = build_spf(s)
    records.append(Record(D, "TXT", ttl, (txt_value(spf_text),), D, comment="SPF"))

    for k in sorted(keys, key=lambda k: k.selector):
        records.append(Record(k.name, "TXT", ttl, (txt_value(k.txt),), D, comment="DKIM"))
    if not keys:
        notes.append(f"no DKIM selectors: no DKIM records planned for {D}")

    auth, auth_notes = report_authorisations(D, s.dmarc, apexes, ttl)
    notes += auth_notes
    records.append(
        Record(f"_dmarc.{D}", "TXT", ttl, (txt_value(dmarc_text(s.dmarc)),), D, comment="DMARC")
    )
    records += auth

    policy = pid = None
    if s.mta_sts_mode != "off":
        if not mx:
            raise PlanError("dns_mta_sts_mode is set but no host is in mail_mx")
        # SES's receiving hosts too: a sender that enforces the policy refuses an MX it
        # does not list (their certificates carry those names).
        names = [h.fqdn for h in mx] + [n for _, n in inbound_mx]
        m = mta_sts(D, s.mta_sts_mode, names, s.mta_sts_max_age)
        policy, pid = m.policy, m.id
        recs, mnotes = mta_sts_records(s, m, D, tlsrpt=False)
        records += recs
        notes += mnotes
    if s.tlsrpt_rua:
        records.append(
            Record(
                f"_smtp._tls.{D}",
                "TXT",
                ttl,
                (txt_value("v=TLSRPTv1; rua=" + ",".join(s.tlsrpt_rua)),),
                D,
                comment="TLS-RPT",
            )
        )

    tenants: list[TenantPlan] = []
    for t in s.tenants:
        for td in t.domains:
            tp, recs, tnotes = build_tenant(s, t, td, tenant_keys.get(td, []), apexes)
            tenants.append(tp)
            records += recs
            notes += tnotes
    ses = s.ses
    if ses is not None:
        zone = zone_of(ses.domain, apexes)
        if zone is None:
            raise PlanError(f"dns_ses.domain: {ses.domain} is not the mail domain nor a tenant's")
        if not ses.mail_from_domain and ses.domain != D:
            notes.append(
                f"SES sends for {ses.domain} from amazonses.com: its SPF (the tenant's pool) "
                "is not changed; set dns_ses.mail_from_domain for an SPF that aligns"
            )
        records += ses_records.records(ses, zone, ttl, s.spf_all)
    return Plan(
        domain=D,
        records=records,
        spf_record=spf_text,
        spf_lookups=lookups,
        mta_sts_policy=policy,
        mta_sts_id=pid,
        keys=list(keys),
        notes=notes,
        tenants=tenants,
        ses=ses,
        ses_inbound_mx=inbound_mx,
    )


def build_tenant(
    s: Settings, t: TenantDns, td: str, keys: list[DkimKey], apexes: list[str]
) -> tuple[TenantPlan, list[Record], list[str]]:
    """The records of one tenant domain: SPF of its pool, DKIM, DMARC, MX if asked."""
    ttl = s.ttl
    zone = zone_of(td, apexes)
    assert zone is not None  # every tenant domain is an apex or under the mail domain
    recs: list[Record] = []
    notes: list[str] = []
    if t.mx:
        recs.append(Record(td, "MX", ttl, tuple(f"{p} {n}." for p, n in t.mx), zone))
    text = tenant_spf(s, t)
    try:
        lookups = spf.parse(text).lookups
    except spf.SpfSyntaxError as exc:  # only ip4:/ip6: terms: cannot happen
        raise PlanError(f"SPF of {td} would not parse ({exc})") from None
    recs.append(Record(td, "TXT", ttl, (txt_value(text),), zone, comment=f"SPF, pool {t.pool}"))
    for k in sorted(keys, key=lambda k: k.selector):
        recs.append(Record(k.name, "TXT", ttl, (txt_value(k.txt),), zone, comment="DKIM"))
    if not keys:
        notes.append(f"no DKIM selectors: no DKIM records planned for {td} (tenant {t.name})")
    recs.append(
        Record(f"_dmarc.{td}", "TXT", ttl, (txt_value(dmarc_text(t.dmarc)),), zone, comment="DMARC")
    )
    auth, auth_notes = report_authorisations(td, t.dmarc, apexes, ttl)
    recs += auth
    notes += auth_notes
    # The cluster receives this domain's mail when its MX is the company's: then senders
    # get the same promise of TLS to it, and report their failures, as for the mail domain.
    company_mx = {h.fqdn for h in s.mx_hosts}
    m = None
    if t.mx and s.mta_sts_mode != "off" and all(n in company_mx for _, n in t.mx):
        m = mta_sts(td, s.mta_sts_mode, [n for _, n in t.mx], s.mta_sts_max_age)
        mrecs, mnotes = mta_sts_records(s, m, zone, tlsrpt=True)
        recs += mrecs
        notes += mnotes
    plan = TenantPlan(
        tenant=t.name,
        domain=td,
        spf_record=text,
        spf_lookups=lookups,
        keys=list(keys),
        sending=[(p.address, p.name) for p in s.pool(t.pool)],
        mx_names=[n for _, n in t.mx],
        mta_sts=m,
        tlsrpt=m is not None and bool(s.tlsrpt_rua),
    )
    return plan, recs, notes
