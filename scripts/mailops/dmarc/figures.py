"""What the stored DMARC and TLS-RPT reports say, per domain: for the daily report, for
/metrics (Prometheus text) and for ``mailops dmarc figures``.

Definitions (over the reports *received* in a window: the daily report's day, or the
last ``--hours`` for /metrics):

- ``passed`` / ``failed``: messages (the records' counts) whose policy-evaluated DKIM or
  SPF passed, and those where neither did (RFC 7489 section 6.6.2).
- ``outside``: records whose source address is not one of the planned sending
  addresses (``[reports] planned_sources``, which the mailops role writes from the same
  inventory values ``mailops dns plan`` publishes in SPF: every mail_mx and mail_bulk
  host's public_ipv4/public_ipv6, and every pool address).  Each such source is listed
  with its messages, how many of them passed, and who reported it: spoofing when they
  fail, a forgotten sender (a newsletter service, a CRM) when they pass.
- TLS: per policy domain, successful and failed sessions, and failed sessions by
  ``result-type`` (RFC 8460 section 4.3: starttls-not-supported, certificate-expired,
  validation-failure, sts-policy-fetch-error, ...).
- ``quarantined``: report mails kept for a person in the window.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from mailops.store.db import Store

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def planned_networks(values: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def is_planned(ip: str, planned: list[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in planned if net.version == addr.version)


def compute(
    store: Store, since: int, until: int, planned: list[Network], top: int = 20
) -> dict[str, Any]:
    """The figures of the reports received in [since, until)."""
    domains: dict[str, dict[str, Any]] = {}
    outside: dict[tuple[str, str], dict[str, Any]] = {}
    for r in store.dmarc_records(since=since, until=until):
        domain = str(r["policy_domain"])
        d = domains.setdefault(
            domain,
            {"domain": domain, "reports": set(), "messages": 0, "passed": 0, "failed": 0},
        )
        n = int(r["messages"])
        ok = r["dkim"] == "pass" or r["spf"] == "pass"
        d["reports"].add((r["org_name"], r["report_id"]))
        d["messages"] += n
        d["passed" if ok else "failed"] += n
        ip = str(r["source_ip"])
        if not is_planned(ip, planned):
            o = outside.setdefault(
                (domain, ip),
                {"source_ip": ip, "messages": 0, "passed": 0, "failed": 0, "reporters": set()},
            )
            o["messages"] += n
            o["passed" if ok else "failed"] += n
            o["reporters"].add(str(r["org_name"]))
    dmarc = []
    for domain in sorted(domains):
        d = domains[domain]
        mine = sorted(
            (o for (dom, _), o in outside.items() if dom == domain),
            key=lambda o: (-o["messages"], o["source_ip"]),
        )
        d["reports"] = len(d["reports"])
        d["outside_sources"] = len(mine)
        d["outside_messages"] = sum(o["messages"] for o in mine)
        d["outside"] = [{**o, "reporters": sorted(o["reporters"])} for o in mine[:top]]
        dmarc.append(d)
    tls: dict[str, dict[str, Any]] = {}
    for p in store.tlsrpt_policies(since=since, until=until):
        domain = str(p["policy_domain"])
        t = tls.setdefault(
            domain,
            {"domain": domain, "policies": 0, "successful": 0, "failed": 0, "failures": {}},
        )
        t["policies"] += 1
        t["successful"] += int(p["successful"])
        t["failed"] += int(p["failed"])
        for kind, count in p["failures"].items():
            t["failures"][kind] = t["failures"].get(kind, 0) + int(count)
    quarantined = [
        {k: q[k] for k in ("id", "kind", "received_at", "sender", "subject", "error")}
        for q in store.quarantined_reports(since=since, until=until)
    ]
    return {
        "since": since,
        "until": until,
        "planned_sources": [str(n) for n in planned],
        "dmarc": dmarc,
        "tlsrpt": [tls[d] for d in sorted(tls)],
        "quarantined": quarantined,
    }


def day_bounds(day: dt.date | None) -> tuple[int, int]:
    if day is None:
        return 0, 2**62
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int(start.timestamp()), int((start + dt.timedelta(days=1)).timestamp())


# --------------------------------------------------------------------------- output


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus(fig: Mapping[str, Any], now: float, hours: float) -> str:
    """Gauges over the window (they go up and down as reports age out of it)."""
    window = f"{hours:g}h"
    out = [
        "# HELP mailops_dmarc_messages Messages in DMARC aggregate reports received over the"
        " window, by policy domain and DMARC result (pass: aligned DKIM or SPF passed).",
        "# TYPE mailops_dmarc_messages gauge",
    ]
    for d in fig["dmarc"]:
        for result in ("pass", "fail"):
            value = d["passed" if result == "pass" else "failed"]
            out.append(
                f'mailops_dmarc_messages{{domain="{_label(d["domain"])}",result="{result}",'
                f'window="{window}"}} {value}'
            )
    out += [
        "# HELP mailops_dmarc_outside_sources Sending addresses outside the cluster's plan"
        " seen in DMARC reports over the window, by policy domain.",
        "# TYPE mailops_dmarc_outside_sources gauge",
    ]
    for d in fig["dmarc"]:
        out.append(
            f'mailops_dmarc_outside_sources{{domain="{_label(d["domain"])}",window="{window}"}} '
            f"{d['outside_sources']}"
        )
    out += [
        "# HELP mailops_dmarc_outside_messages Messages from one address outside the plan"
        " (the largest sources per domain), by DMARC result.",
        "# TYPE mailops_dmarc_outside_messages gauge",
    ]
    for d in fig["dmarc"]:
        for o in d["outside"]:
            for result in ("pass", "fail"):
                value = o["passed" if result == "pass" else "failed"]
                out.append(
                    f'mailops_dmarc_outside_messages{{domain="{_label(d["domain"])}",'
                    f'source="{_label(o["source_ip"])}",result="{result}",window="{window}"}} '
                    f"{value}"
                )
    out += [
        "# HELP mailops_tlsrpt_sessions TLS sessions in TLS-RPT reports received over the"
        " window, by policy domain and outcome.",
        "# TYPE mailops_tlsrpt_sessions gauge",
    ]
    for t in fig["tlsrpt"]:
        for result, key in (("success", "successful"), ("failure", "failed")):
            out.append(
                f'mailops_tlsrpt_sessions{{domain="{_label(t["domain"])}",result="{result}",'
                f'window="{window}"}} {t[key]}'
            )
    out += [
        "# HELP mailops_tlsrpt_failures Failed TLS sessions by RFC 8460 result-type.",
        "# TYPE mailops_tlsrpt_failures gauge",
    ]
    for t in fig["tlsrpt"]:
        for kind in sorted(t["failures"]):
            out.append(
                f'mailops_tlsrpt_failures{{domain="{_label(t["domain"])}",type="{_label(kind)}",'
                f'window="{window}"}} {t["failures"][kind]}'
            )
    out += [
        "# HELP mailops_reports_quarantined Report mails kept for a person over the window.",
        "# TYPE mailops_reports_quarantined gauge",
        f'mailops_reports_quarantined{{window="{window}"}} {len(fig["quarantined"])}',
        "# HELP mailops_reports_figures_timestamp_seconds When these figures were computed.",
        "# TYPE mailops_reports_figures_timestamp_seconds gauge",
        f"mailops_reports_figures_timestamp_seconds {now:.3f}",
    ]
    return "\n".join(out) + "\n"


def _messages(n: int) -> str:
    return "message" if n == 1 else "messages"


def text_lines(fig: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if fig.get("store_error"):
        out.append(f"note: the store could not be read ({fig['store_error']})")
        return out
    if not fig["dmarc"] and not fig["tlsrpt"] and not fig["quarantined"]:
        return ["no DMARC or TLS-RPT report received"]
    out.append(f"{'domain':<30} {'reports':>8} {'messages':>9} {'passed':>9} {'failed':>9}")
    for d in fig["dmarc"]:
        out.append(
            f"{d['domain']:<30} {d['reports']:>8} {d['messages']:>9} {d['passed']:>9} "
            f"{d['failed']:>9}"
        )
    for d in fig["dmarc"]:
        if not d["outside"]:
            continue
        out.append("")
        out.append(
            f"{d['domain']}: {d['outside_sources']} sources outside the plan "
            f"({d['outside_messages']} messages; spoofing, or a forgotten sender):"
        )
        for o in d["outside"]:
            out.append(
                f"  {o['source_ip']:<40} {o['messages']:>7} {_messages(o['messages'])}, "
                f"{o['passed']} passed, "
                f"{o['failed']} failed; reported by {', '.join(o['reporters'])}"
            )
    if fig["tlsrpt"]:
        out.append("")
        out.append(f"{'TLS-RPT domain':<30} {'policies':>8} {'ok':>9} {'failed':>9}  by type")
        for t in fig["tlsrpt"]:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(t["failures"].items())) or "-"
            out.append(
                f"{t['domain']:<30} {t['policies']:>8} {t['successful']:>9} {t['failed']:>9}"
                f"  {kinds}"
            )
    if fig["quarantined"]:
        out.append("")
        out.append(
            f"{len(fig['quarantined'])} report mails kept for a person "
            "(mailops dmarc quarantine --show ID):"
        )
        for q in fig["quarantined"][:20]:
            out.append(f"  #{q['id']} {q['kind']} from {q['sender'] or '-'}: {q['error'][:120]}")
    return out


def html_tables(fig: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[Any]], set[int]]]:
    """(title, headers, rows, numeric columns) for the report's HTML page."""
    if fig.get("store_error"):
        return [("The store could not be read: " + str(fig["store_error"]), [], [], set())]
    tables: list[tuple[str, list[str], list[list[Any]], set[int]]] = [
        (
            "DMARC results by domain",
            ["domain", "reports", "messages", "passed", "failed", "sources outside the plan"],
            [
                [
                    d["domain"],
                    d["reports"],
                    d["messages"],
                    d["passed"],
                    d["failed"],
                    d["outside_sources"],
                ]
                for d in fig["dmarc"]
            ],
            {1, 2, 3, 4, 5},
        ),
        (
            "Sources outside the plan (spoofing, or a forgotten sender)",
            ["domain", "source", "messages", "passed", "failed", "reported by"],
            [
                [
                    d["domain"],
                    o["source_ip"],
                    o["messages"],
                    o["passed"],
                    o["failed"],
                    ", ".join(o["reporters"]),
                ]
                for d in fig["dmarc"]
                for o in d["outside"]
            ],
            {2, 3, 4},
        ),
        (
            "TLS-RPT by domain",
            ["domain", "policies", "successful", "failed", "failures by type"],
            [
                [
                    t["domain"],
                    t["policies"],
                    t["successful"],
                    t["failed"],
                    ", ".join(f"{k} {n}" for k, n in sorted(t["failures"].items())) or "-",
                ]
                for t in fig["tlsrpt"]
            ],
            {1, 2, 3},
        ),
    ]
    if fig["quarantined"]:
        tables.append(
            (
                "Report mails kept for a person",
                ["id", "kind", "sender", "error"],
                [[q["id"], q["kind"], q["sender"], q["error"][:200]] for q in fig["quarantined"]],
                {0},
            )
        )
    return tables


def section(data: Mapping[str, Any], day: dt.date | None) -> dict[str, Any] | None:
    """The daily report's DMARC/TLS section, when ``[reports] in_report`` is set; a store
    that cannot be read gives a section that says so."""
    from mailops import config
    from mailops.store.db import StoreError

    values = config.table(data, "reports")
    if not values["in_report"]:
        return None
    since, until = day_bounds(day)
    planned = planned_networks(values["planned_sources"])
    try:
        url = config.table(data, "store")["url"]
        with Store.open(url, timeout=10.0) as store:
            return compute(store, since, until, planned, int(values["top"]))
    except StoreError as exc:
        return {
            "store_error": str(exc),
            "dmarc": [],
            "tlsrpt": [],
            "quarantined": [],
            "planned_sources": [str(n) for n in planned],
        }
