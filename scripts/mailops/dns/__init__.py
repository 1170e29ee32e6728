"""``mailops dns``: plan every record the cluster needs, and check the live state.

Usage::

    mailops dns plan  --inventory PATH [--format zone|json|route53] [--zone ZONE]
                      [--dkim-keys DIR] [--playbook-dir DIR] [--mta-sts-policy-out FILE]
    mailops dns mta-sts --inventory PATH [--dkim-keys DIR] [--playbook-dir DIR]
    mailops dns check [DOMAIN] [--nameserver IP[:PORT]] [--json] [--inventory PATH]
                      [--dkim-keys DIR] [--sending-ip IP ...] [--dnsbl ZONE ...]
                      [--mta-sts-url-base URL] [--https-port PORT] [--cafile FILE]
                      [--timeout S] [--smtp-timeout S] [--smtp-port PORT]

``plan`` reads the inventory through ``ansible-inventory --list`` and prints the MX,
A/AAAA, cluster round-robin, PTR, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records, and
for every tenant domain (``mail_tenants``) its SPF (exactly its pool's addresses),
DKIM and DMARC, with A and PTR for every pool address (see docs/dns.md for the
variables).  ``--zone`` keeps only the records of one zone (the mail domain, a tenant
domain or a reverse zone), with owner names relative to it, ready to follow that zone's
SOA and NS records.  ``mta-sts`` prints, as JSON, every MTA-STS policy to serve
(``[{domain, host, policy, id}]``: the mail domain's, and each tenant domain's whose MX
is the company's), made by the same code as the ``_mta-sts`` records' ids; the mta_sts
role serves them.  ``check`` resolves the live records with dnspython and prints one
row per check (pass, warn or fail) with the evidence and the fix; without a DOMAIN it
checks every domain the inventory plans (the mail domain, then each tenant domain).

Exit codes: ``plan`` 0; 65 when the inventory implies a record that must not be
published (SPF over 10 lookups, two hosts on one address); 66 when a DKIM key cannot be
read; 73 when the policy file cannot be written; 78 when the inventory cannot be read.
``check`` 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when it
could not check at all (no answer from DNS, unreadable inventory or keys).

Settings (table ``[dns]`` of the mailops settings file; flags override them)::

    inventory = ""            # inventory for plan and check ("" = none)
    playbook_dir = ""         # what {{ playbook_dir }} means ("" = nearest playbooks/)
    dkim_keys = ""            # key directory ("" = opendkim__keys_dir of the inventory)
    ansible_inventory = ""    # the ansible-inventory program ("" = beside python, PATH)
    format = "zone"
    nameserver = ""           # IP[:PORT]; "" = the system's resolvers
    sending_ips = []          # when there is no inventory
    dnsbls = []               # zones, when there is no inventory (or to override it)
    mta_sts_url_base = ""     # e.g. "http://127.0.0.1:8080": fetch the policy there
                              # ("" = https://mta-sts.<domain>, its address from the DNS checked)
    cafile = ""               # extra CA for the MX certificates and the policy server
    timeout = 5.0             # seconds per DNS query
    smtp_timeout = 5.0        # seconds per SMTP connection
    smtp_port = 25
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from mailops import config, exitcodes

DEFAULTS: dict[str, Any] = config.defaults("dns")
FORMATS = config.SCHEMA["dns"]["format"].choices


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the [dns] table, then the flags that were given, all checked by
    the settings reader that `mailops config check` runs."""
    flags = {key: getattr(args, key, None) for key in DEFAULTS if key != "nameserver"}
    merged = config.table(config.load(getattr(args, "config", None)), "dns", flags)
    if getattr(args, "nameserver", None):  # cmd_check says what is wrong with it (exit 2)
        merged["nameserver"] = args.nameserver
    return merged


def _err(cmd: str, message: str) -> None:
    print(f"mailops dns {cmd}: {message}", file=sys.stderr)


def load_keys(st: Any) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
    """DKIM keys in force of the mail domain and of every tenant domain, and the notes
    about each domain's keys (raises dkim.KeyError_ for a key that cannot be read)."""
    from mailops.dns import dkim

    domains = [st.domain, *st.tenant_domains]
    keys: dict[str, list[Any]] = {d: [] for d in domains}
    notes: dict[str, list[str]] = {d: [] for d in domains}
    if st.dkim_keys_dir is None:
        notes[st.domain].append("no DKIM key directory (--dkim-keys or opendkim__keys_dir)")
        return keys, notes
    for d in domains:
        keys[d], notes[d] = dkim.load(st.dkim_keys_dir, d)
    for t in st.tenants:
        for d in t.domains:
            where = st.dkim_keys_dir / d
            if not where.is_dir() or (where / "state.yml").exists():
                continue  # noted already, or the rotation state says what is in force
            have = {k.selector for k in keys[d]}
            for sel in t.selectors:
                if sel not in have:
                    notes[d].append(
                        f"tenant {t.name}'s selector {sel} (dkim_selectors) has no key in {where}"
                    )
    return keys, notes


def cmd_plan(args: argparse.Namespace) -> int:
    from mailops.dns import dkim, inventory, plan, records

    s = settings(args)
    if not s["inventory"]:
        _err("plan", "no inventory (--inventory PATH or [dns] inventory)")
        return exitcodes.USAGE
    try:
        inv = inventory.load(
            s["inventory"], s["ansible_inventory"] or None, s["playbook_dir"] or None
        )
        st = inventory.settings(inv, s["dkim_keys"] or None)
    except inventory.InventoryError as exc:
        _err("plan", str(exc))
        return exitcodes.CONFIG
    try:
        keys, key_notes = load_keys(st)
    except dkim.KeyError_ as exc:
        _err("plan", str(exc))
        return exitcodes.NOINPUT
    try:
        p = plan.build(st, keys[st.domain], {d: keys[d] for d in st.tenant_domains})
    except plan.PlanError as exc:
        _err("plan", str(exc))
        return exitcodes.DATAERR
    for note in [n for ns in key_notes.values() for n in ns] + p.notes:
        _err("plan", f"note: {note}")
    chosen = records.select(p.records, args.zone)
    if args.zone and not chosen:
        _err("plan", f"note: no planned record is in zone {args.zone}")
    if args.mta_sts_policy_out:
        if p.mta_sts_policy is None:
            _err("plan", "no MTA-STS policy planned (dns_mta_sts_mode: off)")
            return exitcodes.USAGE
        try:
            with open(args.mta_sts_policy_out, "w", encoding="utf-8", newline="") as fh:
                fh.write(p.mta_sts_policy)
        except OSError as exc:
            _err("plan", f"{args.mta_sts_policy_out}: {exc.strerror}")
            return exitcodes.CANTCREAT
    fmt = s["format"]
    if fmt == "json":
        sys.stdout.write(records.render_json(chosen))
    elif fmt == "route53":
        sys.stdout.write(records.render_route53(chosen))
    else:
        tenant_domains = [t.domain for t in p.tenants]
        also = f" and the tenant domains {', '.join(tenant_domains)}" if tenant_domains else ""
        header = (
            f"Records for {p.domain}{also} planned by `mailops dns plan` from "
            f"{s['inventory']}.\n"
            f"SPF needs {p.spf_lookups} DNS lookups of its own (limit 10, "
            "includes' own not counted here: `mailops dns check` counts them)."
        )
        if tenant_domains:
            header += "\nEach tenant domain's SPF lists exactly its pool's addresses (no lookups)."
        if p.mta_sts_id:
            header += f"\nMTA-STS policy id {p.mta_sts_id} (--mta-sts-policy-out writes it)."
        sys.stdout.write(records.render_zone(chosen, header, args.zone))
    return exitcodes.OK


def cmd_mta_sts(args: argparse.Namespace) -> int:
    """The policies to serve, as JSON: what the mta_sts role writes for nginx."""
    from mailops.dns import dkim, inventory, plan

    s = settings(args)
    if not s["inventory"]:
        _err("mta-sts", "no inventory (--inventory PATH or [dns] inventory)")
        return exitcodes.USAGE
    try:
        _, p, _ = _inventory_plan(s)
    except inventory.InventoryError as exc:
        _err("mta-sts", str(exc))
        return exitcodes.CONFIG
    except dkim.KeyError_ as exc:
        _err("mta-sts", str(exc))
        return exitcodes.NOINPUT
    except plan.PlanError as exc:
        _err("mta-sts", str(exc))
        return exitcodes.DATAERR
    print(json.dumps([m.as_json() for m in p.mta_sts], indent=1))
    return exitcodes.OK


def _inventory_plan(s: dict[str, Any]) -> tuple[Any, Any, dict[str, list[str]]]:
    """Settings, plan and per-domain key notes of the inventory the check compares with."""
    from mailops.dns import inventory, plan

    inv = inventory.load(s["inventory"], s["ansible_inventory"] or None, s["playbook_dir"] or None)
    st = inventory.settings(inv, s["dkim_keys"] or None)
    keys, notes = load_keys(st)
    p = plan.build(st, keys[st.domain], {d: keys[d] for d in st.tenant_domains})
    return st, p, notes


def _expect(
    args: argparse.Namespace,
    s: dict[str, Any],
    domain: str,
    planned: tuple[Any, Any, dict[str, list[str]]] | None,
) -> Any:
    """Expectations for the check: from the plan of an inventory, then the flags."""
    from mailops.dns import check, dkim, inventory

    e = check.Expect(domain=domain)
    if planned is not None:
        st, p, notes = planned
        e.dnsbls = list(st.dnsbls)
        tp = p.tenant(domain)
        if st.domain == domain:
            e.sending = sorted(
                ((a, h.fqdn) for h in st.sending_hosts for a in h.addresses),
                key=lambda pair: (
                    ipaddress.ip_address(pair[0]).version,
                    ipaddress.ip_address(pair[0]),
                ),
            )
            e.mx_names = [h.fqdn for h in st.mx_hosts] + [h for _, h in p.ses_inbound_mx]
            e.ses_inbound_mx = list(p.ses_inbound_mx)
            e.ses_inbound_mode = st.ses_inbound.mode if st.ses_inbound else ""
            e.keys = p.keys
            e.mta_sts_policy = p.mta_sts_policy
            e.mta_sts_id = p.mta_sts_id
            e.mta_sts_planned = p.mta_sts_policy is not None
            e.tlsrpt_planned = bool(st.tlsrpt_rua)
        elif tp is not None:
            t = st.tenant_of(domain)
            e.tenant = tp.tenant
            e.pool = t.pool
            e.sending = list(tp.sending)
            e.mx_names = list(tp.mx_names)
            e.keys = tp.keys
            e.spf_exact = [a for a, _ in tp.sending]
            e.spf_planned = tp.spf_record
            if tp.mta_sts is not None:
                e.mta_sts_policy = tp.mta_sts.policy
                e.mta_sts_id = tp.mta_sts.id
                e.mta_sts_planned = True
            e.tlsrpt_planned = tp.tlsrpt
        else:
            planned_domains = ", ".join([st.domain, *st.tenant_domains])
            raise inventory.InventoryError(
                f"{s['inventory']} plans {planned_domains}, not {domain}"
            )
        e.keys_source = "; ".join(notes.get(domain, []))
        if p.ses is not None and p.ses.domain == domain:
            e.ses = p.ses
    elif s["dkim_keys"]:
        keys, key_notes = dkim.load(Path(s["dkim_keys"]).expanduser(), domain)
        e.keys = keys
        e.keys_source = "; ".join(key_notes)
    if args.sending_ip or (planned is None and s["sending_ips"]):
        ips = args.sending_ip or s["sending_ips"]
        e.sending = [(str(ipaddress.ip_address(a)), None) for a in ips]
    if args.dnsbl is not None or (planned is None and s["dnsbls"]):
        e.dnsbls = [z.lower().rstrip(".") for z in (args.dnsbl or s["dnsbls"])]
    return e


def cmd_check(args: argparse.Namespace) -> int:
    from mailops.dns import check, dkim, inventory, plan, resolve

    s = settings(args)
    try:
        planned = _inventory_plan(s) if s["inventory"] else None
        if args.domain:
            domains = [args.domain.lower().rstrip(".")]
        elif planned is None:
            _err("check", "no DOMAIN and no inventory: name a domain, or give --inventory")
            return exitcodes.USAGE
        elif args.sending_ip:
            _err("check", "--sending-ip needs a DOMAIN: each domain has its own addresses")
            return exitcodes.USAGE
        else:
            domains = [planned[0].domain, *planned[0].tenant_domains]
        expects = [_expect(args, s, domain, planned) for domain in domains]
    except (inventory.InventoryError, dkim.KeyError_, plan.PlanError) as exc:
        _err("check", f"could not check: {exc}")
        return exitcodes.USAGE
    except ValueError as exc:  # a --sending-ip that is not an address
        _err("check", f"could not check: {exc}")
        return exitcodes.USAGE
    ns, port = None, 53
    if s["nameserver"]:
        try:
            ns, port = resolve.parse_nameserver(s["nameserver"])
        except ValueError as exc:
            _err("check", f"--nameserver: {exc}")
            return exitcodes.USAGE
    d = resolve.Dns(nameserver=ns, port=port, timeout=float(s["timeout"]))
    o = check.Options(
        smtp_port=int(s["smtp_port"]),
        smtp_timeout=float(s["smtp_timeout"]),
        cafile=s["cafile"] or None,
        mta_sts_url_base=s["mta_sts_url_base"] or None,
        https_port=args.https_port or 443,
    )
    results: list[dict[str, Any]] = []
    worst = exitcodes.OK
    for e in expects:
        try:
            rows = check.run(d, e, o)
        except check.CannotCheck as exc:
            _err("check", f"could not check: {exc}")
            if args.domain:
                return exitcodes.USAGE
            results.append({"domain": e.domain, "error": str(exc), "rows": []})
            worst = exitcodes.USAGE
            continue
        if any(r["status"] == "fail" for r in rows) and worst == exitcodes.OK:
            worst = exitcodes.FAIL
        summary = {st: sum(1 for r in rows if r["status"] == st) for st in ("pass", "warn", "fail")}
        results.append({"domain": e.domain, "rows": rows, "summary": summary})
    if args.json:
        if args.domain:
            print(json.dumps(results[0], indent=1))
        else:
            total = {
                st: sum(r.get("summary", {}).get(st, 0) for r in results)
                for st in ("pass", "warn", "fail")
            }
            print(json.dumps({"domains": results, "summary": total}, indent=1))
    else:
        for r in results:
            if not args.domain:
                sys.stdout.write(f"== {r['domain']}\n")
            if "error" in r:
                sys.stdout.write(f"could not check: {r['error']}\n")
            else:
                sys.stdout.write(check.render_text(r["rows"]))
    return worst


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError("must be between 0 and 300 seconds")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dns",
        help="plan the DNS records of the cluster and check the live ones",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="dns_command", metavar="ACTION")
    sub.required = True

    pp = sub.add_parser("plan", help="print every record the inventory implies")
    pp.add_argument("--inventory", metavar="PATH", help="Ansible inventory (file or directory)")
    pp.add_argument("--format", choices=FORMATS, help="zone (default), json or route53")
    pp.add_argument("--zone", metavar="ZONE", help="only the records of this zone")
    pp.add_argument(
        "--dkim-keys",
        dest="dkim_keys",
        metavar="DIR",
        help="DKIM key directory (default: the inventory's opendkim__keys_dir)",
    )
    pp.add_argument(
        "--playbook-dir",
        dest="playbook_dir",
        metavar="DIR",
        help="what {{ playbook_dir }} means in the inventory",
    )
    pp.add_argument(
        "--mta-sts-policy-out",
        dest="mta_sts_policy_out",
        metavar="FILE",
        help="write the MTA-STS policy file there",
    )
    pp.set_defaults(func=cmd_plan)

    mp = sub.add_parser("mta-sts", help="print the MTA-STS policies to serve, as JSON")
    mp.add_argument("--inventory", metavar="PATH", help="Ansible inventory (file or directory)")
    mp.add_argument("--dkim-keys", dest="dkim_keys", metavar="DIR", help=argparse.SUPPRESS)
    mp.add_argument(
        "--playbook-dir",
        dest="playbook_dir",
        metavar="DIR",
        help="what {{ playbook_dir }} means in the inventory",
    )
    mp.set_defaults(func=cmd_mta_sts)

    cp = sub.add_parser("check", help="check the live records, one row per check")
    cp.add_argument(
        "domain",
        metavar="DOMAIN",
        nargs="?",
        help="the domain to check (default: every domain the inventory plans)",
    )
    cp.add_argument("--nameserver", metavar="IP[:PORT]", help="ask this server only")
    cp.add_argument("--json", action="store_true", help="rows as JSON")
    cp.add_argument("--inventory", metavar="PATH", help="expect what this inventory plans")
    cp.add_argument(
        "--dkim-keys", dest="dkim_keys", metavar="DIR", help="compare DKIM records with these keys"
    )
    cp.add_argument("--playbook-dir", dest="playbook_dir", metavar="DIR")
    cp.add_argument(
        "--sending-ip",
        dest="sending_ip",
        action="append",
        metavar="IP",
        help="a sending address (repeat; overrides the inventory's)",
    )
    cp.add_argument(
        "--dnsbl",
        nargs="+",
        action="extend",
        metavar="ZONE",
        help="DNSBL zones to query (override the inventory's dns_dnsbls)",
    )
    cp.add_argument(
        "--mta-sts-url-base",
        dest="mta_sts_url_base",
        metavar="URL",
        help="fetch the MTA-STS policy from URL/.well-known/mta-sts.txt",
    )
    cp.add_argument(
        "--https-port",
        dest="https_port",
        type=int,
        metavar="PORT",
        help="HTTPS port of the MTA-STS policy hosts (443; other values for tests)",
    )
    cp.add_argument("--cafile", metavar="FILE", help="extra CA certificates to trust")
    cp.add_argument("--timeout", type=_seconds, metavar="S", help="seconds per DNS query")
    cp.add_argument("--smtp-timeout", dest="smtp_timeout", type=_seconds, metavar="S")
    cp.add_argument(
        "--smtp-port",
        dest="smtp_port",
        type=int,
        metavar="PORT",
        help="SMTP port of the MX hosts (25; other values for tests)",
    )
    cp.set_defaults(func=cmd_check)
