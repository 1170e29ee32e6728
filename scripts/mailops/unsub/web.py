"""The one-click unsubscribe endpoint (RFC 8058) on the monitor: a WSGI application.

- ``POST /u/TOKEN`` with the form field ``List-Unsubscribe=One-Click`` (urlencoded or
  multipart, as RFC 8058 allows): 200, and the token's recipient is unsubscribed from the
  token's tenant (a row in ``unsubscribes``, a suppression scoped to the tenant).  The
  same token again changes nothing and answers 200 (idempotent).
- ``GET /u/TOKEN``: a page with a button that makes that POST.  It changes nothing: mail
  scanners open links before people do.
- A token that is forged, altered or expired: 403 (410 when expired), nothing recorded;
  a POST without the one-click field: 400.  The store out of reach: 503, so the mailbox
  provider tries again.

Served by gunicorn behind nginx (roles/unsubscribe): ``gunicorn
'mailops.unsub.web:application()'``; the settings are mailops.toml's ``[unsubscribe]``
and ``[store]`` (``MAILOPS_CONFIG`` names another file).
"""

from __future__ import annotations

import hashlib
import html
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from mailops import config
from mailops.store import open_from_config
from mailops.unsub.token import Sealer, TokenError, load_sealer

StartResponse = Callable[..., Any]
PATH = re.compile(r"^/u/([A-Za-z0-9]{1,800})/?$")
MAX_BODY = 64 * 1024
ONE_CLICK = "List-Unsubscribe=One-Click"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 34rem; margin: 4rem auto;
       padding: 0 1rem; color: #222; line-height: 1.5; }}
h1 {{ font-size: 1.4rem; }}
button {{ font-size: 1rem; padding: .6rem 1.4rem; border: 0; border-radius: .3rem;
         background: #1f5fbf; color: #fff; cursor: pointer; }}
.note {{ color: #555; font-size: .9rem; }}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""


def mask(address: str) -> str:
    """bob@gmail.test -> b**@gmail.test: enough for a person to know it is theirs."""
    local, _, domain = address.partition("@")
    return (local[:1] + "*" * max(len(local) - 1, 2)) + "@" + domain


def page(title: str, body: str) -> bytes:
    return PAGE.format(title=html.escape(title), body=body).encode("utf-8")


def _one_click(environ: dict[str, Any]) -> bool:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    if length <= 0 or length > MAX_BODY:
        return False
    raw = environ["wsgi.input"].read(length)
    kind = str(environ.get("CONTENT_TYPE", "")).lower()
    if kind.startswith("multipart/form-data"):
        # One field is all RFC 8058 sends: name="List-Unsubscribe", value One-Click.
        return bool(
            re.search(
                rb'name="?List-Unsubscribe"?\r?\n(?:[^\r\n]+\r?\n)*\r?\nOne-Click\r?\n',
                raw,
                re.IGNORECASE,
            )
        )
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return "One-Click" in fields.get("List-Unsubscribe", [])


class App:
    def __init__(self, data: dict[str, Any], sealer: Sealer) -> None:
        self.data = data
        self.sealer = sealer

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        status, body = self.handle(environ)
        start_response(
            status,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                (
                    "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                ),
            ],
        )
        return [body]

    def handle(self, environ: dict[str, Any]) -> tuple[str, bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        found = PATH.match(environ.get("PATH_INFO", ""))
        if not found:
            return "404 Not Found", page("Not found", "<p>There is nothing here.</p>")
        if method not in ("GET", "HEAD", "POST"):
            return "405 Method Not Allowed", page("Not allowed", "<p>GET or POST only.</p>")
        token = found.group(1)
        try:
            claim = self.sealer.open(token)
        except TokenError as exc:
            expired = "expired" in str(exc)
            return (
                "410 Gone" if expired else "403 Forbidden",
                page(
                    "This link does not work",
                    "<p>This unsubscribe link is "
                    + ("too old" if expired else "not valid")
                    + ". Use the link of a recent message, or reply to the sender.</p>",
                ),
            )
        who = html.escape(mask(claim.address))
        if method != "POST":
            return "200 OK", page(
                "Unsubscribe",
                f"<p>Stop mail from <strong>{html.escape(claim.tenant)}</strong>"
                f" to <strong>{who}</strong>?</p>\n"
                f'<form method="post" action="/u/{token}">\n'
                '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
                '<button type="submit">Unsubscribe</button>\n</form>\n'
                '<p class="note">Nothing changes until you press the button.</p>',
            )
        if not _one_click(environ):
            return "400 Bad Request", page(
                "Not understood", f"<p>The request must carry {ONE_CLICK}.</p>"
            )
        key = hashlib.sha256(b"one-click\0" + token.lower().encode()).hexdigest()
        try:
            with open_from_config(self.data) as store:
                store.record_unsubscribe(
                    claim.address,
                    tenant=claim.tenant,
                    dedup_key=key,
                    source="one-click",
                )
        except Exception as exc:  # any store failure: try again later
            print(f"mailops-unsub-web: store error: {exc}", file=sys.stderr, flush=True)
            return "503 Service Unavailable", page(
                "Try again later", "<p>We could not record this now. Please try again later.</p>"
            )
        return "200 OK", page(
            "You are unsubscribed",
            f"<p><strong>{who}</strong> will get no more mail from"
            f" <strong>{html.escape(claim.tenant)}</strong>.</p>",
        )


def application(config_path: str | None = None) -> App:
    """The WSGI application for gunicorn (``mailops.unsub.web:application()``)."""
    data = config.load(config_path)
    values = config.table(data, "unsubscribe")
    return App(data, load_sealer(values["key_file"], values["max_age_days"]))
