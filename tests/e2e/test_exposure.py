"""Issue 19, part 7 in the lab: the monitor's pages are for the cluster, not the Internet.

inbox plays the Internet; mail1 and the monitor itself are the cluster.  The same GET of
the same pages, by the monitor's public address, must be refused from the one and served
to the others.
"""

from __future__ import annotations

import json
from typing import TypedDict

import pytest

from tests.e2e.labhosts import inventory, sh

HOSTS = inventory()
MONITOR = HOSTS["monitor"]["ip"]
PAGES = ["/metrics", "/mailqueues/"]

# Runs in a lab host: one GET, printed as JSON {"status": int | None, "body": str,
# "error": str}.  A refused connection is status None.
GET = r"""
import json, sys, urllib.error, urllib.request
out = {"status": None, "body": "", "error": ""}
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        out["status"], out["body"] = r.status, r.read().decode(errors="replace")
except urllib.error.HTTPError as e:
    out["status"], out["body"] = e.code, e.read().decode(errors="replace")
except OSError as e:
    out["error"] = repr(e)
print(json.dumps(out))
"""


class Answer(TypedDict):
    status: int | None
    body: str
    error: str


def get(host: str, path: str) -> Answer:
    res = sh(host, f"python3 -c '{GET}' 'http://{MONITOR}{path}'", timeout=30)
    assert res.rc == 0, f"GET from {host} failed to run: {res.err[-500:]}"
    got: Answer = json.loads(res.out)
    return got


def served(page: str, body: str) -> bool:
    """The real page, not an error page: the data the collector wrote."""
    if page == "/metrics":
        return 'host="mail1"' in body
    return "mail1" in dict(json.loads(body).get("mailqueues", {}))


@pytest.mark.parametrize("page", PAGES)
def test_monitor_pages_are_refused_from_the_internet(page: str, evidence: list[str]) -> None:
    # Positive controls first: the page exists and the cluster reads it by the same URL,
    # so a refusal from inbox is the allow list's doing, not a missing page.
    for host in ("mail1", "monitor"):
        got = get(host, page)
        assert got["status"] == 200, f"{host} could not read {page}: {got}"
        assert served(page, got["body"]), f"{host} got no data at {page}: {got['body'][:300]}"
    got = get("inbox", page)
    refused = got["status"] == 403 or (got["status"] is None and "refused" in got["error"])
    assert refused, f"inbox (the Internet) read {page}: {got['status']} {got['body'][:300]}"
    assert "mail1" not in got["body"], got["body"][:300]
    evidence.append(f"{page}: mail1 200, monitor 200, inbox {got['status'] or got['error']}")
