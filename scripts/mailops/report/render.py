"""Render a report dict as greppable text, JSON, a standalone HTML page, or a mail with
inline charts."""

from __future__ import annotations

import base64
import html
import json
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from mailops.report import png
from mailops.report.build import HOURLY

TOTAL_LINES = (
    ("received", "received"),
    ("delivered", "delivered"),
    ("forwarded", "forwarded"),
    ("deferred", "deferred"),
    ("deferrals", "deferrals"),
    ("bounced", "bounced"),
    ("rejected", "rejected"),
    ("rejected_percent", "rejected percent"),
    ("reject_warnings", "reject warnings"),
    ("held", "held"),
    ("discarded", "discarded"),
    ("discarded_percent", "discarded percent"),
    ("bytes_received", "bytes received"),
    ("bytes_delivered", "bytes delivered"),
    ("senders", "senders"),
    ("sending_hosts_domains", "sending hosts/domains"),
    ("recipients", "recipients"),
    ("recipient_hosts_domains", "recipient hosts/domains"),
)


def title(rep: dict[str, Any]) -> str:
    day = "all days in the log" if rep["day"] == "all" else rep["day"]
    return f"Postfix log summary for {day} on {rep['host']}"


def subject(rep: dict[str, Any]) -> str:
    t = rep["totals"]
    return (
        f"{title(rep)}: {t['delivered']} delivered, {t['deferred']} deferred, "
        f"{t['bounced']} bounced, {t['rejected']} rejected"
    )


def as_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, indent=2, ensure_ascii=False) + "\n"


def _section(out: list[str], name: str) -> None:
    out += ["", name, "-" * len(name)]


def as_text(rep: dict[str, Any]) -> str:
    """pflogsumm's layout, with exact numbers (no k/m) so that grep and awk can read it."""
    out = [title(rep), *(f"Warning: {w}" for w in rep.get("warnings", []))]
    _section(out, "Grand Totals")
    t = rep["totals"]
    for key, label in TOTAL_LINES:
        out.append(f" {t[key]:>12}  {label}")

    _section(out, "Per-Hour Traffic")
    out.append(f"    {'time':12}" + "".join(f"{name:>11}" for name in HOURLY))
    for row in rep["hourly"]:
        h = row["hour"]
        out.append(f"    {h:02d}00-{h + 1:02d}00   " + "".join(f"{row[n]:>11}" for n in HOURLY))
    if len(rep["daily"]) > 1:
        _section(out, "Per-Day Traffic")
        for row in rep["daily"]:
            out.append(f"    {row['date']:12}" + "".join(f"{row[n]:>11}" for n in HOURLY))

    _section(out, "Recipient Domains (delivered, bytes, deferred, bounced, avg/max delay s)")
    for d in rep["recipient_domains"]:
        out.append(
            f" {d['delivered']:>9} {d['bytes']:>13} {d['deferred']:>8} {d['bounced']:>8}"
            f" {d['avg_delay']:>9.1f} {d['max_delay']:>9.1f}  {d['domain']}"
        )
    _section(out, "Sender Domains (messages, bytes)")
    for d in rep["sender_domains"]:
        out.append(f" {d['messages']:>9} {d['bytes']:>13}  {d['domain']}")
    _section(out, "Bounce Reasons (by relay)")
    for r in rep["bounce_reasons"]:
        out.append(f" {r['count']:>9}  {r['relay']}: {r['reason']}")
    _section(out, "Deferral Reasons")
    for r in rep["deferral_reasons"]:
        out.append(f" {r['count']:>9}  {r['program']}: {r['reason']}")
    _section(out, "Reject Reasons")
    for r in rep["reject_reasons"]:
        out.append(f" {r['count']:>9}  {r['action']} {r['stage']}: {r['reason']}")
    _section(out, "SASL Authentication Failures")
    sasl = rep["sasl"]
    out.append(f" {sasl['failures']:>9}  failures")
    out.append(f" {sasl['server_faults']:>9}  authentication server faults (not counted)")
    for c in sasl["clients"]:
        out.append(f" {c['failures']:>9}  {c['client']}")
    if rep["problems"]["fatal"] or rep["problems"]["panic"]:
        _section(out, "Problems")
        out.append(f" {rep['problems']['fatal']:>9}  fatal")
        out.append(f" {rep['problems']['panic']:>9}  panic")
    if rep.get("tenants"):
        from mailops.report import tenants

        _section(out, "Tenants (per recipient; rates in %)")
        out += [" " + line for line in tenants.text_lines(rep["tenants"])]
    if rep.get("dmarc"):
        from mailops.dmarc.figures import text_lines as reports_lines

        _section(out, "DMARC and TLS Reports Received")
        out += [" " + line if line else "" for line in reports_lines(rep["dmarc"])]
    _section(out, "Sources")
    for s in rep["sources"]:
        out.append(f" {s['lines']:>9}  {s['path']}")
    if rep["truncated"]:
        out.append("")
        out.append(
            "note: tables capped, counts there are lower bounds: " + ", ".join(rep["truncated"])
        )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- HTML mail

_CSS_TD = "padding:2px 10px;border-bottom:1px solid #e2e6ea;"
_CSS_NUM = _CSS_TD + "text-align:right;font-variant-numeric:tabular-nums;"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int]) -> str:
    head = "".join(
        f'<th style="{_CSS_NUM if i in numeric else _CSS_TD}">{html.escape(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="{_CSS_NUM if i in numeric else _CSS_TD}">{html.escape(str(v))}</td>'
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    if not rows:
        body = f'<tr><td style="{_CSS_TD}" colspan="{len(headers)}">none</td></tr>'
    return f'<table style="border-collapse:collapse;margin:4px 0 16px 0;">{head}{body}</table>'


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def page(rep: dict[str, Any]) -> str:
    """The report as a standalone HTML page: the charts are in it (``data:`` URIs), so
    the one file shows everything in a browser, saved or served."""
    return as_html(
        rep,
        _data_uri(png.hourly_chart(rep["hourly"], HOURLY)),
        _data_uri(png.domains_chart(rep["recipient_domains"])),
    )


def as_html(rep: dict[str, Any], hourly_src: str, domains_src: str) -> str:
    """The HTML of the report; ``hourly_src`` and ``domains_src`` are where the two
    charts come from (``cid:...`` in a mail, ``data:...`` in a page)."""
    t = rep["totals"]
    totals = [[label, f"{t[key]:,}"] for key, label in TOTAL_LINES]
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title(rep))}</title></head>",
        '<body style="font-family:Helvetica,Arial,sans-serif;color:#212529;">',
        f"<h2>{html.escape(title(rep))}</h2>",
        *(
            f'<p style="color:#b35900;"><b>Warning:</b> {html.escape(w)}</p>'
            for w in rep.get("warnings", [])
        ),
        "<h3>Grand totals</h3>",
        _table(["", "count"], totals, {1}),
        "<h3>Traffic per hour</h3>",
        f'<img src="{html.escape(hourly_src)}" alt="messages per hour">',
        "<h3>Outcomes per destination</h3>",
        f'<img src="{html.escape(domains_src)}" alt="delivered, deferred, bounced per domain">',
        _table(
            ["domain", "delivered", "bytes", "deferred", "bounced", "avg delay s", "max delay s"],
            [
                [
                    d["domain"],
                    f"{d['delivered']:,}",
                    f"{d['bytes']:,}",
                    f"{d['deferred']:,}",
                    f"{d['bounced']:,}",
                    f"{d['avg_delay']:.1f}",
                    f"{d['max_delay']:.1f}",
                ]
                for d in rep["recipient_domains"]
            ],
            {1, 2, 3, 4, 5, 6},
        ),
        "<h3>Sending domains</h3>",
        _table(
            ["domain", "messages", "bytes"],
            [[d["domain"], f"{d['messages']:,}", f"{d['bytes']:,}"] for d in rep["sender_domains"]],
            {1, 2},
        ),
        "<h3>Bounce reasons</h3>",
        _table(
            ["count", "relay", "reason"],
            [[r["count"], r["relay"], r["reason"]] for r in rep["bounce_reasons"]],
            {0},
        ),
        "<h3>Deferral reasons</h3>",
        _table(
            ["count", "program", "reason"],
            [[r["count"], r["program"], r["reason"]] for r in rep["deferral_reasons"]],
            {0},
        ),
        "<h3>Reject reasons</h3>",
        _table(
            ["count", "action", "stage", "reason"],
            [[r["count"], r["action"], r["stage"], r["reason"]] for r in rep["reject_reasons"]],
            {0},
        ),
        *_tenants_html(rep),
        *_reports_html(rep),
        "<h3>SASL authentication failures</h3>",
        f"<p>{rep['sasl']['failures']:,} failures "
        f"({rep['sasl']['server_faults']:,} authentication server faults not counted)</p>",
        _table(
            ["client", "failures"],
            [[c["client"], c["failures"]] for c in rep["sasl"]["clients"]],
            {1},
        ),
        '<p style="color:#6e7681;font-size:small;">'
        + html.escape(
            ", ".join(f"{s['path']} ({s['lines']:,} lines)" for s in rep["sources"])
            + f"; generated {rep['generated_at']} by mailops report"
        )
        + "</p></body></html>",
    ]
    return "\n".join(parts)


def _tenants_html(rep: dict[str, Any]) -> list[str]:
    """The per-tenant table, when the report has one."""
    part = rep.get("tenants")
    if not part:
        return []
    from mailops.report import tenants

    out = [
        "<h3>Tenants</h3>",
        _table(tenants.HTML_HEADERS, tenants.html_rows(part), set(range(2, 12))),
    ]
    out += [f"<p>{html.escape(line)}</p>" for line in tenants.ses_lines(part)]
    if part["store_error"]:
        out.append(
            f"<p>{html.escape('The store could not be read: ' + part['store_error'])}; "
            "no complaints, unsubscribes, asynchronous bounces or pause states here.</p>"
        )
    return out


def _reports_html(rep: dict[str, Any]) -> list[str]:
    """The DMARC and TLS-RPT tables (mailops.dmarc.figures), when the report has them."""
    part = rep.get("dmarc")
    if not part:
        return []
    from mailops.dmarc.figures import html_tables

    out = ["<h3>DMARC and TLS reports received</h3>"]
    for title, headers, rows, numeric in html_tables(part):
        out.append(f"<h4>{html.escape(title)}</h4>")
        if headers:
            out.append(_table(headers, rows, numeric))
    return out


def mail(
    rep: dict[str, Any], fmt: str, mail_from: str, mail_to: list[str], subject_text: str = ""
) -> EmailMessage:
    """The report as a mail: for ``mail`` (and ``html``) a text alternative and the HTML
    with its PNG charts as inline parts of a multipart/related, referenced by ``cid:``
    (mail clients do not show ``data:`` images); text/plain for text and json."""
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = ", ".join(mail_to)
    msg["Subject"] = subject_text or subject(rep)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    if fmt == "json":
        msg.set_content(as_json(rep), subtype="plain")
        return msg
    msg.set_content(as_text(rep))
    if fmt not in ("html", "mail"):
        return msg
    hourly_cid = make_msgid("hourly")
    domains_cid = make_msgid("domains")
    msg.add_alternative(
        as_html(rep, f"cid:{hourly_cid[1:-1]}", f"cid:{domains_cid[1:-1]}"), subtype="html"
    )
    parts = msg.get_payload()
    assert isinstance(parts, list)
    related = parts[1]
    assert isinstance(related, EmailMessage)
    related.add_related(
        png.hourly_chart(rep["hourly"], HOURLY),
        maintype="image",
        subtype="png",
        cid=hourly_cid,
        disposition="inline",
        filename="hourly.png",
    )
    related.add_related(
        png.domains_chart(rep["recipient_domains"]),
        maintype="image",
        subtype="png",
        cid=domains_cid,
        disposition="inline",
        filename="domains.png",
    )
    return msg
