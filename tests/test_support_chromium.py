"""The headless-Chromium helper (tests/support/chromium.py) on pages served on loopback:
a clean page renders with no error; a script error, a missing image and a certificate the
browser was not told to trust are each reported; screenshots land in the artifacts."""

from __future__ import annotations

import contextlib
import functools
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import chromium

CLEAN = """<!doctype html><html><head><title>Clean</title>
<link rel="icon" href="data:,"></head><body><h1>All good</h1>
<p id="x"></p><script>document.getElementById('x').textContent = 'script ran';</script>
</body></html>"""

BROKEN = """<!doctype html><html><head><title>Broken</title>
<link rel="icon" href="data:,"></head><body><h1>Broken</h1>
<img src="missing.png" alt=""><script>undefinedFunction();</script></body></html>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A static file server on 127.0.0.1 (a free port), HTTPS when given a context."""
    handler = functools.partial(_Quiet, directory=str(directory))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca_and_leaf(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A throw-away root CA and a server certificate for ``name`` signed by it."""
    ca_key, ca, key, csr, crt = (tmp / f for f in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem"))
    ext = tmp / "ext.cnf"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=test root",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, crt, key


def test_a_clean_page_renders_with_no_error_and_leaves_a_screenshot(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(CLEAN)
    with serve(tmp_path) as port:
        page = chromium.render(f"http://127.0.0.1:{port}/index.html", "selftest-clean")
    assert page.errors == []
    assert page.status == 200 and page.title == "Clean"
    assert "script ran" in page.text  # the DOM after scripts, not the file as sent
    assert page.screenshot.parent == chromium.ARTIFACTS
    assert page.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (chromium.ARTIFACTS / "selftest-clean.html").read_text().count("All good") == 1


def test_script_errors_and_missing_resources_are_reported(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(BROKEN)
    with serve(tmp_path) as port:
        page = chromium.render(f"http://127.0.0.1:{port}/index.html", "selftest-broken")
    assert any("undefinedFunction" in e for e in page.js_errors), page.errors
    assert any("missing.png: HTTP 404" in e for e in page.failed_loads), page.errors
    assert page.status == 200  # the document itself came; its parts did not


def test_https_is_verified_against_the_ca_given_and_only_that(tmp_path: Path) -> None:
    name = "page.mailops.test"
    ca, crt, key = make_ca_and_leaf(tmp_path, name)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(CLEAN)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    with serve(site, ctx) as port:
        url = f"https://{name}:{port}/index.html"
        page = chromium.render(url, "selftest-tls", ca_file=ca, resolve={name: "127.0.0.1"})
        assert page.errors == [] and "script ran" in page.text
        # The same server to a browser that does not know the CA: it refuses the page.
        other = tmp_path / "other"
        other.mkdir()
        other_ca, _, _ = make_ca_and_leaf(other, name)
        with pytest.raises(chromium.ChromiumError, match="CERT"):
            chromium.render(url, "selftest-tls-untrusted", ca_file=other_ca,
                            resolve={name: "127.0.0.1"})  # fmt: skip
