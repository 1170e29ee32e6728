"""Issue 22 in the lab: the daily report's HTML, as a person sees it, in headless Chromium.

Two views of the same report (scripts/mailops/report/render.py builds both):

- the mail: the monitor's cluster report, which cron mails to the ops address (in the lab
  every two minutes; tests/e2e/test_cluster_report.py checks its figures).  The newest
  one in the inbox's ops mailbox is opened as a mail client shows it: its HTML part with
  the ``cid:`` charts taken from the message's own parts;
- the page: ``mailops report --format html`` (the standalone page, charts inside as
  ``data:`` URIs) over the node logs the monitor's job fetched, with the tenants, made on
  the monitor as the job's user.

Each must render with no error (no script error, no resource that failed to load, every
chart decoded), show the report's headings, and leave its screenshot in the test
artifacts (tests/support/chromium.py: build/test-artifacts/).  The check never runs the
cron job: it reads what the job left.
"""

from __future__ import annotations

import base64
import email
import functools
import http.server
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest

from tests.e2e.labhosts import mail_domain, sh, wait_for_value
from tests.support import chromium

DOMAIN = mail_domain()
MAILBOX = f"/srv/inbox/ops@{DOMAIN}/new"
LOG_DIR = "/var/lib/mailops-queues/cluster-logs"
USER = "mailops-queues"
MAILOPS = "/opt/mailops/bin/mailops"
SETTINGS = "/etc/mailops/mailops.toml"  # queue_monitor__settings_file
TITLE = "Postfix log summary for "  # render.title()
SUBJECT = "Postfix log summary for "
# What every daily report shows, in this order (render.as_html).
HEADINGS = [
    "Grand totals",
    "Traffic per hour",
    "Outcomes per destination",
    "Sending domains",
    "Bounce reasons",
    "Deferral reasons",
    "Reject reasons",
    "SASL authentication failures",
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on loopback (what a browser opens); its base URL."""
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield tmp_path, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def newest_report_mail() -> EmailMessage:
    """The newest cluster report in the ops mailbox (the mailbox holds other mail too).

    On a lab just made, the first one comes with the job's first run after the converge
    (every two minutes, greylisted once at the MX): waited for, never made here.
    """

    def newest() -> str:
        return sh(
            "inbox",
            f"cd {MAILBOX} 2>/dev/null && ls -1t | head -50 | "
            f'while read f; do grep -q \'^Subject: {SUBJECT}\' "$f" && echo "$f" && break; done',
        ).out.strip()

    name = wait_for_value(
        f"a cluster report in {MAILBOX} (does cron run the monitor's job?)",
        newest,
        bool,
        timeout=360,
        every=10,
    )
    raw = sh("inbox", f"cat {MAILBOX}/{name}").out
    msg = email.message_from_string(raw, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def as_a_mail_client_shows_it(msg: EmailMessage) -> str:
    """The HTML part with each ``cid:`` reference replaced by its part's data."""
    body = msg.get_body(("html",))
    assert body is not None, "the report mail has no HTML part"
    page = str(body.get_content())
    for part in msg.walk():
        cid = str(part.get("Content-ID") or "").strip().strip("<>")
        if cid:
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            uri = f"data:{part.get_content_type()};base64,{base64.b64encode(data).decode()}"
            page = page.replace(f"cid:{cid}", uri)
    assert "cid:" not in page, "a cid: reference names no part of the message"
    return page


def report_page() -> str:
    """``mailops report --format html`` over the logs the monitor's job fetched last.

    The job replaces the files every run; a copy is taken first, again if a file was
    missing meanwhile.
    """

    def snapshot() -> str:
        return sh(
            "monitor",
            f"rm -rf /tmp/report-page-logs && cp -r {LOG_DIR} /tmp/report-page-logs && "
            "ls /tmp/report-page-logs | wc -l",
        ).out.strip()

    wait_for_value("a whole copy of the job's node logs", snapshot, lambda n: n == "3", 150, 5)
    # The tenants, their provider classes and the store, as the job reads them.
    tenants = f"--tenants-config {SETTINGS}" if sh("monitor", f"test -r {SETTINGS}").rc == 0 else ""
    res = sh(
        "monitor",
        f"chown -R {USER} /tmp/report-page-logs && su -s /bin/sh {USER} -c "
        f"'{MAILOPS} --config /dev/null report --logs-from /tmp/report-page-logs "
        f"--day all {tenants} --format html'",
        timeout=180,
    )
    assert res.rc == 0, res.err
    return res.out


def check_rendered(page: chromium.Page, title_prefix: str) -> None:
    assert page.errors == [], page.errors
    assert page.title.startswith(title_prefix), page.title
    shown = [h.strip() for h in page.text.splitlines() if h.strip() in HEADINGS]
    assert shown == HEADINGS, f"headings shown: {shown}"


def _images_decoded(b: chromium.Browser) -> list[dict[str, object]]:
    found = b.evaluate(
        "Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && "
        "i.naturalWidth > 0, w: i.naturalWidth}))"
    )
    assert isinstance(found, list)
    return found


@pytest.mark.long_wait  # on a fresh lab, until the job's first report arrives
def test_the_mailed_report_renders_in_chromium(
    served: tuple[Path, str], evidence: list[str]
) -> None:
    msg = newest_report_mail()
    root, base = served
    (root / "report-mail.html").write_text(as_a_mail_client_shows_it(msg), encoding="utf-8")
    with chromium.browser() as b:
        page = b.open(f"{base}/report-mail.html", "report-mail", width=1100, height=900)
        images = _images_decoded(b)
    check_rendered(page, TITLE)
    assert len(images) == 2 and all(i["ok"] for i in images), images
    evidence.append(f"{msg['Subject']}: {len(images)} charts, screenshot {page.screenshot}")


def test_the_report_page_renders_in_chromium(served: tuple[Path, str], evidence: list[str]) -> None:
    root, base = served
    (root / "report-page.html").write_text(report_page(), encoding="utf-8")
    with chromium.browser() as b:
        page = b.open(f"{base}/report-page.html", "report-page", width=1100, height=900)
        images = _images_decoded(b)
    check_rendered(page, TITLE)
    assert len(images) == 2 and all(i["ok"] for i in images), images
    evidence.append(f"{page.title}: screenshot {page.screenshot}")
