"""Open a page in headless Chromium (Debian's package) the way a person's browser would,
and keep what it showed.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``:
file descriptors 3 and 4, messages ended by a NUL byte), so no WebSocket client and no
browser download is needed.  While the page loads, the session collects what "renders
with no error" means here:

- JavaScript errors: uncaught exceptions and ``console.error`` calls;
- the browser's own error log (a blocked or refused resource, a mixed-content load);
- subresources that failed (a network error, or an HTTP status of 400 or more);

and then keeps a PNG screenshot and the DOM as the page ended up (after scripts ran).

Screenshots and DOMs are kept as test artifacts in ``build/test-artifacts/`` (gitignored;
``MAILOPS_TEST_ARTIFACTS`` names another directory), one file pair per page:
``<name>.png`` and ``<name>.html``.

TLS is verified as a browser does: a test passes the lab CA's certificate (``ca_file``),
which goes into the NSS database of a throw-away profile (Chromium on Linux trusts the
roots of ``$HOME/.pki/nssdb``), never ``--ignore-certificate-errors``.  Host names are
mapped to the lab's addresses with ``--host-resolver-rules`` (``resolve``), so the URL,
the SNI and the Host header carry the real name.

Without Chromium the checks that need it are skipped with the reason, except under CI
(``CI=true``) or when ``MAILOPS_REQUIRE_CHROMIUM=1``: there a missing browser is an
error, since ``make deps`` installs it (the Makefile's Debian packages).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("MAILOPS_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CERTUTIL = shutil.which("certutil")  # Debian's libnss3-tools


def required() -> bool:
    """True where a missing Chromium is a failure rather than a skip."""
    return os.environ.get("CI", "").lower() == "true" or (
        os.environ.get("MAILOPS_REQUIRE_CHROMIUM") == "1"
    )


def need_chromium(*, tls: bool = False) -> str:
    """Chromium's path; skips the calling test when it is absent (fails where required).

    ``tls=True`` also needs certutil, to trust the lab CA in the browser's profile.
    """
    missing = [
        what
        for what, path in (("chromium", CHROMIUM), ("certutil (libnss3-tools)", CERTUTIL))
        if path is None and (what == "chromium" or tls)
    ]
    if missing:
        reason = f"{' and '.join(missing)} not installed (Debian packages; `make deps-system`)"
        if required():
            pytest.fail(f"{reason}: required under CI / MAILOPS_REQUIRE_CHROMIUM=1")
        pytest.skip(reason)
    assert CHROMIUM is not None
    return CHROMIUM


@dataclass
class Page:
    """What one page load showed."""

    url: str
    status: int | None  # the main document's HTTP status
    title: str
    dom: str  # document.documentElement.outerHTML once loaded
    text: str  # document.body.innerText: what a person reads
    screenshot: Path
    js_errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """Everything that says the page did not render cleanly; [] when it did."""
        out = list(self.js_errors) + list(self.log_errors) + list(self.failed_loads)
        if self.status is None or self.status >= 400:
            out.insert(0, f"main document: HTTP status {self.status}")
        if self.screenshot.stat().st_size == 0:
            out.append(f"empty screenshot {self.screenshot}")
        return out


class ChromiumError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process; ``open()`` loads pages in its one tab."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self._proc = proc
        self._out = to_browser
        self._in = from_browser
        self._buf = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._session = ""

    # -- the protocol --------------------------------------------------------------

    def _send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError("no answer from Chromium in time")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise ChromiumError(f"Chromium exited (rc {self._proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Send one command and wait for its answer (events that come meanwhile are kept)."""
        wanted = self._send(method, params, session=not method.startswith("Target."))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise ChromiumError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            if "method" in msg:
                self._events.append(msg)

    def _wait_event(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self._events):
            msg = self._read(deadline)
            if "method" in msg:
                self._events.append(msg)

    def _attach(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    # -- what tests use ----------------------------------------------------------

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        res = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout,
        )
        if "exceptionDetails" in res:
            raise ChromiumError(f"{expression!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def open(
        self,
        url: str,
        name: str,
        *,
        width: int = 1280,
        height: int = 900,
        timeout: float = 45,
        settle: float = 0.5,
    ) -> Page:
        """Load ``url``, wait for its load event, and keep ``<name>.png`` and ``<name>.html``."""
        self._events.clear()
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        nav = self.call("Page.navigate", {"url": url}, timeout)
        if nav.get("errorText"):
            raise ChromiumError(f"{url}: {nav['errorText']}")
        self._wait_event("Page.loadEventFired", timeout)
        self._drain(settle)  # late console messages and failures after the load event
        return self._page(url, name)

    def after_action(self, url: str, name: str, timeout: float = 45) -> Page:
        """The page after something in it navigated (a form submitted by ``evaluate``):
        waits for the next load event and keeps ``<name>.png`` and ``<name>.html``."""
        self._wait_event("Page.loadEventFired", timeout)
        self._drain(0.5)
        return self._page(url, name)

    def clear(self) -> None:
        """Forget the events seen so far (before an action whose outcome a test checks)."""
        self._events.clear()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with contextlib.suppress(ChromiumError):
            while time.monotonic() < deadline:
                msg = self._read(deadline)
                if "method" in msg:
                    self._events.append(msg)

    def _page(self, url: str, name: str) -> Page:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        shot = ARTIFACTS / f"{safe}.png"
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        shot.write_bytes(base64.b64decode(data["data"]))
        dom = str(self.evaluate("document.documentElement.outerHTML") or "")
        (ARTIFACTS / f"{safe}.html").write_text(dom, encoding="utf-8")
        page = Page(
            url=url,
            status=None,
            title=str(self.evaluate("document.title") or ""),
            dom=dom,
            text=str(self.evaluate("document.body ? document.body.innerText : ''") or ""),
            screenshot=shot,
        )
        self._classify(page)
        return page

    def _classify(self, page: Page) -> None:
        requests: dict[str, str] = {}
        for event in self._events:
            method, p = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                requests[p["requestId"]] = p["request"]["url"]
            elif method == "Network.responseReceived":
                status = int(p["response"]["status"])
                if p.get("type") == "Document" and page.status is None:
                    page.status = status
                elif status >= 400 and not _implicit_icon(p["response"]["url"]):
                    page.failed_loads.append(f"{p['response']['url']}: HTTP {status}")
            elif method == "Network.loadingFailed" and not p.get("canceled"):
                where = requests.get(p["requestId"], p["requestId"])
                if not _implicit_icon(where):
                    page.failed_loads.append(f"{where}: {p.get('errorText')}")
            elif method == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                page.js_errors.append(f"uncaught: {text}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                page.js_errors.append(f"console.{p['type']}: {args}")
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                entry = p["entry"]
                # A failed load is logged here too, without its URL at times: the
                # Network events above name it, so it is counted once, there.
                if entry.get("source") != "network":
                    page.log_errors.append(f"{entry.get('source')}: {entry.get('text')}")


def _implicit_icon(url: str) -> bool:
    """/favicon.ico, which the browser asks for by itself when a page names no icon:
    a person sees no error when it is absent."""
    return url.split("?", 1)[0].endswith("/favicon.ico")


def _high_fd(fd: int) -> int:
    """The same open file on a descriptor number of 10 or more (the old one closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _trust(home: Path, ca_file: Path) -> None:
    """A fresh NSS database in ``home`` that trusts ``ca_file`` as a root for TLS servers."""
    assert CERTUTIL is not None
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(
        [CERTUTIL, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True
    )
    subprocess.run(
        [CERTUTIL, "-A", "-d", f"sql:{nssdb}", "-n", "mailops test CA", "-t", "C,,", "-i",
         str(ca_file)],
        check=True, capture_output=True,
    )  # fmt: skip


@contextlib.contextmanager
def browser(
    *, ca_file: Path | None = None, resolve: dict[str, str] | None = None, timeout: float = 30
) -> Iterator[Browser]:
    """A headless Chromium with a throw-away profile; skips the test if Chromium is absent.

    ``ca_file``: a PEM root certificate the browser trusts (the lab CA).
    ``resolve``: host name -> address, so ``https://name/`` goes to a lab container.
    """
    chromium = need_chromium(tls=ca_file is not None)
    with tempfile.TemporaryDirectory(prefix="mailops-chromium-") as tmp:
        home = Path(tmp)
        if ca_file is not None:
            _trust(home, ca_file)
        args = [
            chromium,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={home / 'profile'}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",  # no calls home: loopback and the lab only
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--hide-scrollbars",
            "--mute-audio",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        if resolve:
            rules = ", ".join(f"MAP {name} {addr}" for name, addr in resolve.items())
            args.append(f"--host-resolver-rules={rules}, EXCLUDE localhost")
        # The browser reads commands on its fd 3 and writes answers on its fd 4; the
        # ends it gets are moved above 9 first, so the shell's 3<& and 4>& never
        # overwrite one another.
        to_r, to_w = (_high_fd(fd) for fd in os.pipe())
        from_r, from_w = (_high_fd(fd) for fd in os.pipe())
        env = dict(os.environ, HOME=str(home))
        log = (home / "chromium.log").open("wb")
        proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w}', *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            pass_fds=(to_r, from_w),
        )
        os.close(to_r)
        os.close(from_w)
        b = Browser(proc, to_w, from_r)
        try:
            try:
                b.call("Browser.getVersion", timeout=timeout)
                b._attach()
            except ChromiumError as exc:
                log.flush()
                tail = (home / "chromium.log").read_text(errors="replace")[-2000:]
                raise ChromiumError(f"{exc}; Chromium's log:\n{tail}") from exc
            yield b
        finally:
            with contextlib.suppress(OSError):
                os.write(to_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            os.close(to_w)
            os.close(from_r)
            log.close()


def render(
    url: str,
    name: str,
    *,
    ca_file: Path | None = None,
    resolve: dict[str, str] | None = None,
    width: int = 1280,
    height: int = 900,
) -> Page:
    """Open one page in a fresh browser: the usual case (see ``browser()`` for more)."""
    with browser(ca_file=ca_file, resolve=resolve) as b:
        return b.open(url, name, width=width, height=height)
