"""Issue 22 in the lab: one-click unsubscribe, as a mailbox provider and a person use it.

alpha's message goes from app1 through the bulk cluster to inbox.  What the checks look
at is what the receiver gets: both headers in the delivered message, inside the
DKIM-Signature's h= and with inbox's dkim=pass.  Then inbox POSTs the one-click request
to the link over HTTPS, trusting only the lab CA (Python's urllib on inbox, with the CA
file as its only root: what curl --cacert does, and inbox has no curl); alpha's next
message to that address is refused at submission on every bulk node within 60 s (cron's
`tenants sync` brings the store's suppression to the nodes; the check waits for it and
never runs it), while beta's is delivered; a forged token gets 4xx.  The page a person
sees at the link opens in headless Chromium (tests/support/chromium.py) and changes
nothing; its screenshot, and the confirmation page's after its button is pressed, are
kept in the test artifacts.

Every run uses a fresh address (bob+<letters>@gmail.test, delivered to bob's mailbox),
so the suppressions it leaves touch no other check.
"""

from __future__ import annotations

import re
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import yaml

from tests.e2e.labhosts import (
    INVENTORY,
    ROOT,
    headers,
    inventory,
    letters,
    reply_to,
    sh,
    swaks,
    wait_for_value,
)
from tests.support import chromium

HOSTS = inventory()
BULK = ("mail1", "mail2")
MAILBOX = "/srv/inbox/bob@gmail.test/new"
LAB_CA_HOST = "/usr/local/share/ca-certificates/mailops-lab-ca.crt"  # common__ca_certificates
LAB_CA = ROOT / ".lab" / "secrets" / "pki" / "ca.crt"
SECRETS = ROOT / ".lab" / "secrets"
# The bound: every bulk node refuses the tenant's next message within 60 s.
DEADLINE = 60
MAILOPS = "/opt/mailops/bin/mailops"


def _domains() -> dict[str, str]:
    data = yaml.safe_load((INVENTORY / "group_vars/all/tenants.yml").read_text())
    return {t["name"]: t["domains"][0] for t in data["mail_tenants"]}


DOMAINS = _domains()


def send(tenant: str, rcpt: str, subject: str) -> None:
    """One message from the tenant's application on app1 (sendmail, its login by sender)."""
    sender = f"news@{DOMAINS[tenant]}"
    body = (
        f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\n"
        f"Message-ID: <{letters(16)}@{DOMAINS[tenant]}>\n\nHello from {tenant}.\n"
    )
    res = sh("app1", f"/usr/sbin/sendmail -f {sender} {rcpt} <<'EOF'\n{body}EOF")
    assert res.rc == 0, res.out + res.err


def delivered(subject: str, timeout: float = 60) -> str:
    """The message with this subject in bob's mailbox (bob+anything@ lands there)."""

    def probe() -> str:
        found = sh("inbox", f"grep -l -r -F 'Subject: {subject}' {MAILBOX}/ 2>/dev/null").out
        return sh("inbox", f"cat {found.split()[0]}").out if found.strip() else ""

    return wait_for_value(f"{subject!r} delivered to inbox", probe, bool, timeout, every=1)


def header(msg: str, name: str) -> list[str]:
    return [v for n, v in headers(msg) if n.lower() == name.lower()]


def signed_headers(msg: str) -> list[str]:
    (sig,) = header(msg, "DKIM-Signature")
    tags = {k.strip(): v for k, _, v in (t.partition("=") for t in sig.split(";"))}
    return [h.strip().lower() for h in re.sub(r"\s+", "", tags["h"]).split(":")]


def post(url: str, body: str = "List-Unsubscribe=One-Click", method: str = "POST") -> int:
    """HTTP status of a request made from inbox, trusting the lab CA only."""
    script = (
        "import ssl, sys, urllib.request, urllib.error\n"
        f"ctx = ssl.create_default_context(cafile={LAB_CA_HOST!r})\n"
        f"req = urllib.request.Request({url!r}, data={body.encode()!r} if {method!r} == 'POST'"
        f" else None, method={method!r}, headers={{'Content-Type':"
        " 'application/x-www-form-urlencoded'})\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, context=ctx, timeout=20).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    res = sh("inbox", f"python3 - <<'EOF'\n{script}EOF")
    assert res.rc == 0 and res.out.strip().isdigit(), res.out + res.err
    return int(res.out.strip())


def login(tenant: str) -> tuple[str, str]:
    return tenant, (SECRETS / f"sasl-tenant-{tenant}").read_text().split()[0]


def rcpt_reply(tenant: str, node: str, rcpt: str) -> str:
    """The node's reply to RCPT when the tenant's login submits on 587 (swaks on app1)."""
    user, password = login(tenant)
    res = swaks(
        "app1",
        f"--server {HOSTS[node]['ip']}:587 -tls -a PLAIN -au {user} -ap '{password}' "
        f"--from news@{DOMAINS[tenant]} --to {rcpt} --quit-after RCPT",
    )
    return reply_to(res, "RCPT")


def links(msg: str) -> tuple[str, str]:
    (value,) = header(msg, "List-Unsubscribe")
    https = re.search(r"<(https://[^>]+)>", value)
    mailto = re.search(r"<mailto:([^>]+)>", value)
    assert https and mailto, value
    return https.group(1), mailto.group(1)


def forged(url: str) -> str:
    """The same link with one character of its token changed."""
    head, token = url.rsplit("/", 1)
    i = len(token) // 2
    return f"{head}/{token[:i]}{'b' if token[i] != 'b' else 'c'}{token[i + 1 :]}"


@pytest.fixture
def alpha_message() -> tuple[str, str]:
    """(address, delivered message) of one fresh message of alpha's."""
    address = f"bob+{letters(10)}@gmail.test"
    subject = f"one-click {letters(8)}"
    send("alpha", address, subject)
    return address, delivered(subject)


def test_the_headers_arrive_signed(alpha_message: tuple[str, str], evidence: list[str]) -> None:
    address, msg = alpha_message
    assert header(msg, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    url, mailto = links(msg)
    token = url.rsplit("/", 1)[1]
    assert urlsplit(url).path == f"/u/{token}"
    assert mailto.startswith(f"unsubscribe+{token}@")
    local = address.split("@")[0]
    assert local not in url.lower() and local.split("+")[1] not in url.lower()
    h = signed_headers(msg)
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h, h
    results = " ; ".join(header(msg, "Authentication-Results"))
    assert re.search(
        rf"dkim=pass (\([^)]*\) )?header\.d={re.escape(DOMAINS['alpha'])}\b", results
    ), results
    evidence.append(f"h={':'.join(h)} | {url[:60]}...")


def test_the_page_opens_in_chromium_and_changes_nothing(
    alpha_message: tuple[str, str], evidence: list[str]
) -> None:
    address, msg = alpha_message
    url, _ = links(msg)
    host = urlsplit(url).hostname
    assert host
    with chromium.browser(ca_file=LAB_CA, resolve={host: HOSTS["monitor"]["ip"]}) as b:
        page = b.open(url, "unsubscribe-page", width=800, height=600)
    assert page.errors == [], page.errors
    assert page.title == "Unsubscribe", page.title
    assert "Nothing changes until you press the button" in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.dom
    # A scanner's GET changed nothing: the store (which the nodes copy) holds no
    # unsubscribe of the address, for alpha or anyone.
    for scope in ("--tenant alpha ", ""):
        check = sh("monitor", f"{MAILOPS} suppression check {scope}{address}")
        assert check.rc == 1, check.out + check.err
    evidence.append(f"page {page.title!r}, screenshot {page.screenshot}")


@pytest.mark.long_wait  # up to a minute for cron's tenants sync on the nodes
def test_one_click_stops_only_that_tenant_within_a_minute(
    alpha_message: tuple[str, str], evidence: list[str]
) -> None:
    address, msg = alpha_message
    url, _ = links(msg)
    assert all(rcpt_reply("alpha", n, address).startswith("<- 250") for n in BULK)
    # forged and altered tokens: 4xx, nothing recorded
    bad = forged(url)
    assert 400 <= post(bad) < 500
    assert 400 <= post(url.rsplit("/", 1)[0] + "/" + "a" * 60) < 500
    assert post(url) == 200
    answered = time.monotonic()
    assert post(url) == 200  # a replay: the same answer, still one request recorded
    replies = wait_for_value(
        f"alpha's mail to {address} refused on every bulk node",
        lambda: {n: rcpt_reply("alpha", n, address) for n in BULK},
        lambda r: all(v.startswith("<** 5") for v in r.values()),
        timeout=DEADLINE,
        every=3,
    )
    took = time.monotonic() - answered
    assert took <= DEADLINE
    assert all(rcpt_reply("beta", n, address).startswith("<- 250") for n in BULK)
    subject = f"beta after the unsubscribe {letters(8)}"
    send("beta", address, subject)
    assert header(delivered(subject), "From") == [f"news@{DOMAINS['beta']}"]
    # the store holds the request as alpha's, scoped to alpha
    rows = sh("monitor", f"{MAILOPS} suppression check --tenant alpha {address}; echo rc=$?").out
    assert "rc=0" in rows, rows
    evidence.append(f"refused {took:.0f} s after the 200: {replies['mail1'][:70]}")


def test_the_confirmation_page_after_the_button(
    alpha_message: tuple[str, str], evidence: list[str]
) -> None:
    """A person presses the button: the POST is the same one-click request."""
    _, msg = alpha_message
    url, _ = links(msg)
    host = urlsplit(url).hostname
    assert host
    with chromium.browser(ca_file=LAB_CA, resolve={host: HOSTS["monitor"]["ip"]}) as b:
        b.open(url, "unsubscribe-page-before", width=800, height=600)
        b.clear()
        b.evaluate("document.querySelector('form button').click(), true")
        page = b.after_action(url, "unsubscribe-confirmed")
    assert page.errors == [], page.errors
    assert page.title == "You are unsubscribed", page.title
    assert "will get no more mail from alpha" in page.text
    evidence.append(f"confirmed: screenshot {page.screenshot}")


def test_the_unsubscribe_key_is_not_in_the_repository() -> None:
    key = (SECRETS / "unsubscribe-key").read_text().split()[0]
    assert len(key) >= 32
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "grep", "-l", "-F", key],
        capture_output=True,
        text=True,
        check=False,
    )
    assert tracked.returncode == 1 and tracked.stdout == "", tracked.stdout


def test_the_mailto_link_unsubscribes_too(
    alpha_message: tuple[str, str], evidence: list[str]
) -> None:
    """RFC 2369's mailto: a message to unsubscribe+TOKEN@ at the MX; the token, not the
    sender (a person, but another one here), says who is unsubscribed."""
    address, msg = alpha_message
    _, mailto = links(msg)
    res = swaks(
        "inbox",
        f"--server {HOSTS['mx1']['ip']} --from alice@gmail.test --to {mailto} "
        "--header 'Subject: unsubscribe'",
    )
    assert "Ok: queued as" in res.out, res.out[-600:]
    check = f"{MAILOPS} suppression check --tenant alpha {address}"
    wait_for_value(
        f"{address} unsubscribed from alpha by the mailto link",
        lambda: sh("monitor", check).rc,
        lambda rc: rc == 0,
        timeout=60,
    )
    assert sh("monitor", f"{MAILOPS} suppression check --tenant beta {address}").rc == 1
    evidence.append(f"mailto {mailto[:40]}...: {address} suppressed for alpha only")
