"""The one-click endpoint (WSGI): POST unsubscribes once, GET only shows, bad tokens fail."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from mailops.store import Store
from mailops.unsub.token import Sealer
from mailops.unsub.web import App, application

KEY = "w" * 48
ONE_CLICK = b"List-Unsubscribe=One-Click"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "keys").write_text(f"# current\n{KEY}\n")
    path = tmp_path / "mailops.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/mailops.db"\ntimeout = 1\n'
        f'[unsubscribe]\nkey_file = "{tmp_path}/keys"\nmax_age_days = 30\n'
    )
    return path


@pytest.fixture
def app(cfg: Path) -> App:
    return application(str(cfg))


def call(
    app: App,
    method: str,
    path: str,
    body: bytes = b"",
    ctype: str = "application/x-www-form-urlencoded",
) -> tuple[int, str]:
    seen: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": ctype,
        "wsgi.input": io.BytesIO(body),
    }
    out = b"".join(app(environ, start))
    assert seen["headers"]["Content-Length"] == str(len(out))
    return int(seen["status"].split()[0]), out.decode()


def rows(cfg: Path) -> list[dict[str, Any]]:
    url = cfg.read_text().split('"')[1]
    with Store.open(url) as s:
        return [dict(r) for r in s.rows("unsubscribes")]


def suppressed(cfg: Path, tenant: str, address: str) -> bool:
    url = cfg.read_text().split('"')[1]
    with Store.open(url) as s:
        return any(
            r["address"] == address and r["tenant"] == tenant for r in s.rows("suppressions")
        )


def token(tenant: str = "alpha", address: str = "bob@gmail.test") -> str:
    return Sealer([KEY], 86400).make(tenant, address)


def test_post_one_click_unsubscribes_from_that_tenant_once(app: App, cfg: Path) -> None:
    t = token()
    status, text = call(app, "POST", f"/u/{t}", b"List-Unsubscribe=One-Click")
    assert status == 200 and "unsubscribed" in text
    assert suppressed(cfg, "alpha", "bob@gmail.test")
    assert not suppressed(cfg, "beta", "bob@gmail.test")
    assert not suppressed(cfg, "", "bob@gmail.test")
    # replayed: 200 again, still one row
    assert call(app, "POST", f"/u/{t}", b"List-Unsubscribe=One-Click")[0] == 200
    (row,) = rows(cfg)
    assert (row["tenant"], row["address"], row["source"]) == (
        "alpha",
        "bob@gmail.test",
        "one-click",
    )


def test_multipart_post_is_understood(app: App, cfg: Path) -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        b"One-Click\r\n--XX--\r\n"
    )
    status, _ = call(app, "POST", f"/u/{token()}", body, "multipart/form-data; boundary=XX")
    assert status == 200 and len(rows(cfg)) == 1


def test_get_shows_a_button_and_changes_nothing(app: App, cfg: Path) -> None:
    t = token()
    status, text = call(app, "GET", f"/u/{t}")
    assert status == 200
    assert f'<form method="post" action="/u/{t}">' in text
    assert 'name="List-Unsubscribe" value="One-Click"' in text
    assert "bob@gmail.test" not in text and "b**@gmail.test" in text
    assert rows(cfg) == []


def test_bad_tokens_and_bodies_record_nothing(app: App, cfg: Path) -> None:
    t = token()
    forged = Sealer(["f" * 48], 86400).make("alpha", "bob@gmail.test")
    altered = t[:-3] + ("a" if t[-3] != "a" else "b") + t[-2:]
    for bad in (forged, altered, "a" * 40):
        assert call(app, "POST", f"/u/{bad}", b"List-Unsubscribe=One-Click")[0] == 403
        assert call(app, "GET", f"/u/{bad}")[0] == 403
    old = Sealer([KEY], 86400).make("alpha", "bob@gmail.test", now=1_000_000_000)
    assert call(app, "POST", f"/u/{old}", b"List-Unsubscribe=One-Click")[0] == 410
    assert call(app, "POST", f"/u/{t}", b"List-Unsubscribe=Yes")[0] == 400
    assert call(app, "POST", f"/u/{t}", b"")[0] == 400
    assert call(app, "GET", "/u/")[0] == 404
    assert call(app, "PUT", f"/u/{t}")[0] == 405
    assert rows(cfg) == []


def test_store_down_is_503(cfg: Path, tmp_path: Path) -> None:
    cfg.write_text(cfg.read_text().replace(f"{tmp_path}/mailops.db", "/nonexistent/dir/x.db"))
    status, _ = call(application(str(cfg)), "POST", f"/u/{token()}", b"List-Unsubscribe=One-Click")
    assert status == 503


def test_one_click_unsubscribes_are_in_the_tenants_figures(app: App, cfg: Path) -> None:
    """The figures (status, /metrics, the daily report) count them per tenant and day."""
    import datetime as dt

    from mailops.tenants import figures
    from mailops.tenants.model import load_tenants

    for address in ("a@gmail.test", "b@gmail.test"):
        assert call(app, "POST", f"/u/{token('alpha', address)}", ONE_CLICK)[0] == 200
    assert call(app, "POST", f"/u/{token('beta', 'a@gmail.test')}", ONE_CLICK)[0] == 200
    tenants = load_tenants(
        {"tenants": {t: {"domains": [f"{t}.test"], "logins": [t]} for t in ("alpha", "beta")}}
    )
    url = cfg.read_text().split('"')[1]
    with Store.open(url) as store:
        rows = figures.compute(tenants, {"gmail": "gmail.test"}, [], dt.date.today(), store)
    counted = {f.tenant: f.as_dict()["unsubscribed"] for f in rows}
    assert counted == {"alpha": 2, "beta": 1}
