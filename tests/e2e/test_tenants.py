"""Issue 20 in the lab: two tenants, alpha and beta, kept apart on the bulk cluster.

app1 submits for both through its local Postfix, which picks each tenant's login by the
envelope sender.  What the checks look at is what users get: the message in inbox's
Maildir (its Authentication-Results and the address it came from), the bulk nodes'
replies at submission, their queues, and the monitor's `mailops tenants` commands.
Pauses and suppressions reach the nodes through cron's sync job; the checks wait for its
effect and never run it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.labhosts import (
    INVENTORY,
    ROOT,
    headers,
    inventory,
    letters,
    mail_domain,
    reply_to,
    sh,
    smtp_reply,
    swaks,
    wait_for,
    wait_for_maildir,
    wait_for_value,
)

HOSTS = inventory()
DOMAIN = mail_domain()
MAILOPS = "/opt/mailops/bin/mailops"
BULK = ("mail1", "mail2")
SECRETS = ROOT / ".lab" / "secrets"
# The bound for a pause to take effect on every bulk node, plus the time for
# cron's minute to come round (the job starts on the minute) and a margin.
PAUSE_DEADLINE = 60 + 15
# A suppression reaches the nodes by the same job (and the store by mx1's pipe first).
SUPPRESSION_DEADLINE = 180


def _tenants() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((INVENTORY / "group_vars/all/tenants.yml").read_text())
    return {t["name"]: t for t in data["mail_tenants"]}


def _pools() -> dict[str, set[str]]:
    """pool -> every public address of it on the bulk hosts (from the inventory)."""
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    pools: dict[str, set[str]] = {}
    for hv in inv["all"]["children"]["mail_bulk"]["hosts"].values():
        for entry in hv.get("mail_pool_addresses", []):
            pools.setdefault(entry["pool"], set()).add(entry["address"])
    return pools


TENANTS = _tenants()
POOLS = _pools()


def _domain(tenant: str) -> str:
    domains = TENANTS[tenant]["domains"]
    assert isinstance(domains, list)
    return str(domains[0])


def _login(tenant: str) -> tuple[str, str]:
    logins = TENANTS[tenant]["logins"]
    assert isinstance(logins, list)
    login = str(logins[0])
    return login, (SECRETS / f"sasl-tenant-{login}").read_text().strip()


def app1_sends(sender: str, rcpt: str, subject: str, from_header: str | None = None) -> None:
    """Submit one message on app1 with sendmail(1), as an application there does."""
    body = (
        f"From: {from_header or sender}\nTo: {rcpt}\nSubject: {subject}\n"
        f"Message-ID: <{letters(16)}@{sender.split('@')[1]}>\n\nHello from {sender}.\n"
    )
    res = sh("app1", f"/usr/sbin/sendmail -f {sender} {rcpt} <<'EOF'\n{body}EOF")
    assert res.rc == 0, res.out + res.err


def auth_results(msg: str) -> str:
    return " ; ".join(v for n, v in headers(msg) if n.lower() == "authentication-results")


def arrival_address(msg: str) -> str:
    """The address inbox took the message from: its own (topmost) Received: header."""
    received = [v for n, v in headers(msg) if n.lower() == "received"]
    assert received, "no Received: header"
    found = re.search(r"\[(\d+\.\d+\.\d+\.\d+)\]", received[0])
    assert found, received[0]
    return found.group(1)


def submit_as(tenant: str, node: str, sender: str, rcpt: str, *, quit_after: str = "") -> str:
    """The node's reply when ``tenant``'s login submits on port 587 (swaks from app1)."""
    login, password = _login(tenant)
    stop = f" --quit-after {quit_after}" if quit_after else ""
    res = swaks(
        "app1",
        f"--server {HOSTS[node]['ip']}:587 -tls -a PLAIN -au {login} -ap '{password}' "
        f"--from {sender} --to {rcpt} --header 'Subject: identity check {letters(6)}'{stop}",
    )
    # After --quit-after the last reply is QUIT's 221: take the one to that command, or
    # the first refusal before it (a 5xx to MAIL or AUTH).
    return (reply_to(res, quit_after) if quit_after else "") or smtp_reply(res)


def held_on_nodes(needle: str) -> list[str]:
    """Queue ids (node:id) on hold whose sender or recipient contains ``needle``."""
    found = []
    for node in BULK:
        for line in sh(node, "postqueue -j").out.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            text = json.dumps(entry)
            if entry.get("queue_name") == "hold" and needle in text:
                found.append(f"{node}:{entry['queue_id']}")
    return found


def in_inbox(address: str, needle: str) -> int:
    res = sh("inbox", f"grep -l -r -F '{needle}' /srv/inbox/{address}/new/ 2>/dev/null")
    return len(res.out.split())


def tenant_status(tenant: str) -> dict[str, object]:
    res = sh("monitor", f"{MAILOPS} tenants status --json", timeout=120)
    assert res.rc == 0, res.out + res.err
    rows: dict[str, dict[str, object]] = {r["tenant"]: r for r in json.loads(res.out)}
    return rows[tenant]


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("tenant", sorted(TENANTS))
def test_tenant_mail_is_signed_as_itself_and_leaves_from_its_pool(
    tenant: str, evidence: list[str]
) -> None:
    domain = _domain(tenant)
    own = POOLS[str(TENANTS[tenant]["pool"])]
    tag = letters(12)
    # Several messages, so that both nodes (round robin on mail.company.test) and every
    # address of the pool get a chance to show up.
    for i in range(4):
        app1_sends(f"news@{domain}", "alice@gmail.test", f"tenant {tenant} {tag} {i}")
    seen: set[str] = set()
    for i in range(4):
        msg = wait_for_maildir("alice@gmail.test", f"tenant {tenant} {tag} {i}", timeout=90)
        ar = auth_results(msg)
        assert re.search(rf"dkim=pass(?:\s*\([^)]*\))?[^;(]*header\.d={re.escape(domain)}", ar), ar
        assert "spf=pass" in ar, ar
        assert re.search(r"dmarc=pass", ar), ar
        address = arrival_address(msg)
        assert address in own, f"{tenant}'s message came from {address}, not its pool {own}"
        seen.add(address)
    evidence.append(f"{tenant}: 4 messages dkim/spf/dmarc=pass d={domain} from {sorted(seen)}")


def test_a_login_cannot_send_as_another_tenant(evidence: list[str]) -> None:
    alpha, beta = _domain("alpha"), _domain("beta")
    envelope = submit_as("alpha", "mail1", f"news@{beta}", "alice@gmail.test", quit_after="RCPT")
    assert envelope.startswith("<** 5"), envelope
    assert "not owned" in envelope or "beta" in envelope, envelope
    evidence.append(f"alpha as news@{beta}: {envelope[:100]}")
    header = submit_as_with_from("alpha", "mail2", f"news@{alpha}", f"news@{beta}")
    # 550 from OpenDKIM's from-check, 554 from Rspamd's (the node's signer decides).
    assert re.match(r"<\*\* 55[04] 5\.7\.1 ", header), header
    assert beta in header or "tenant" in header, header
    evidence.append(f"alpha with From: news@{beta}: {header[:100]}")


def submit_as_with_from(tenant: str, node: str, sender: str, from_header: str) -> str:
    login, password = _login(tenant)
    res = swaks(
        "app1",
        f"--server {HOSTS[node]['ip']}:587 -tls -a PLAIN -au {login} -ap '{password}' "
        f"--from {sender} --to alice@gmail.test --header 'From: {from_header}' "
        f"--header 'Subject: header check {letters(6)}'",
    )
    return smtp_reply(res)


# --------------------------------------------------------------------------- pause


@pytest.fixture
def alpha_paused() -> Iterator[None]:
    res = sh("monitor", f"{MAILOPS} tenants pause alpha --reason 'lab check'")
    assert res.rc == 0, res.out + res.err
    try:
        yield
    finally:
        sh("monitor", f"{MAILOPS} tenants resume alpha")


@pytest.mark.serial
def test_pause_holds_one_tenant_and_resume_delivers_it_once(
    alpha_paused: None, evidence: list[str]
) -> None:
    paused_at = time.monotonic()
    state = tenant_status("alpha")
    assert state["state"] == "paused", state
    # Within the bound every node holds alpha's new mail: wait that long, then send.
    time.sleep(max(0.0, PAUSE_DEADLINE - (time.monotonic() - paused_at)))
    tag = letters(12)
    app1_sends(f"news@{_domain('alpha')}", "alice@gmail.test", f"paused alpha {tag}")
    app1_sends(f"news@{_domain('beta')}", "alice@gmail.test", f"flowing beta {tag}")
    wait_for_maildir("alice@gmail.test", f"flowing beta {tag}", timeout=90)
    held = wait_for_value(
        "alpha's message on hold on a bulk node",
        lambda: held_on_nodes("news@alpha.test"),
        lambda ids: bool(ids),
        timeout=60,
    )
    assert in_inbox("alice@gmail.test", f"paused alpha {tag}") == 0
    for node in BULK:
        bounced = sh(node, f"grep -F 'status=bounced' /var/log/mail.log | grep -c -F '{tag}'")
        assert bounced.out.strip() in ("", "0"), f"{node} bounced: {bounced.out}"
    evidence.append(f"paused: beta delivered, alpha held as {held}")

    res = sh("monitor", f"{MAILOPS} tenants resume alpha")
    assert res.rc == 0, res.out + res.err
    took = wait_for(
        "alpha's held message delivered after resume",
        lambda: in_inbox("alice@gmail.test", f"paused alpha {tag}") >= 1,
        PAUSE_DEADLINE + 60,
    )
    time.sleep(20)  # a second copy would come within the same queue run
    copies = in_inbox("alice@gmail.test", f"paused alpha {tag}")
    assert copies == 1, f"{copies} copies delivered"
    evidence.append(f"resumed: delivered once, {took:.0f} s after resume")


# --------------------------------------------------------------------------- suppression


def _tell_mx(sender: str, rcpt: str, data: str) -> None:
    path = f"/tmp/tenant-{letters(8)}.eml"
    sh("inbox", f"cat > {path} <<'EOF'\n{data}EOF")
    res = swaks(
        "inbox",
        f"--server {HOSTS['mx1']['ip']} --ehlo inbox.outside.test --from {sender} "
        f"--to {rcpt} --data {path}",
    )
    assert "Ok: queued" in res.out, res.out


ARF = """From: <fbl-reports@outlook.test>
To: <fbl@{domain}>
Subject: complaint
Message-ID: <{token}.fbl@outlook.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b{token}"

--b{token}
Content-Type: text/plain

This is an abuse report.

--b{token}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: LabFBL/1.0
Version: 1
Original-Mail-From: <news@{tenant_domain}>
Original-Rcpt-To: <{address}>
Source-IP: {source_ip}
Reported-Domain: {tenant_domain}

--b{token}
Content-Type: message/rfc822

From: News <news@{tenant_domain}>
To: {address}
Subject: news
Message-ID: <{token}.news@{tenant_domain}>

Hello.

--b{token}--
"""


def _replies(address: str) -> dict[str, str]:
    return {
        t: submit_as(t, node, f"news@{_domain(t)}", address, quit_after="RCPT")
        for t in ("alpha", "beta")
        for node in ("mail1",)
    }


@pytest.mark.long_wait
def test_an_unsubscribe_stops_only_its_tenant(evidence: list[str]) -> None:
    address = f"bob-{letters(8)}@gmail.test"
    before = _replies(address)
    assert all(r.startswith("<- 250") for r in before.values()), before
    _tell_mx(
        address,
        f"unsubscribe+alpha@{DOMAIN}",
        f"From: {address}\nTo: unsubscribe+alpha@{DOMAIN}\nSubject: unsubscribe\n\nplease\n",
    )
    replies = wait_for_value(
        f"alpha's mail to {address} refused on mail1",
        lambda: _replies(address),
        lambda r: r["alpha"].startswith("<** 5"),
        timeout=SUPPRESSION_DEADLINE,
        every=5,
    )
    assert replies["beta"].startswith("<- 250"), replies
    evidence.append(f"alpha: {replies['alpha'][:90]} | beta: {replies['beta'][:40]}")


@pytest.mark.long_wait
def test_a_complaint_through_one_tenant_stops_both(evidence: list[str]) -> None:
    token = letters(10)
    address = f"carol-{token}@outlook.test"
    before = _replies(address)
    assert all(r.startswith("<- 250") for r in before.values()), before
    body = ARF.format(
        domain=DOMAIN,
        token=token,
        address=address,
        tenant_domain=_domain("beta"),
        source_ip=sorted(POOLS[str(TENANTS["beta"]["pool"])])[0],
    )
    _tell_mx("fbl-reports@outlook.test", f"fbl@{DOMAIN}", body)
    replies = wait_for_value(
        f"both tenants' mail to {address} refused",
        lambda: _replies(address),
        lambda r: all(v.startswith("<** 5") for v in r.values()),
        timeout=SUPPRESSION_DEADLINE,
        every=5,
    )
    evidence.append(f"alpha: {replies['alpha'][:80]} | beta: {replies['beta'][:80]}")


@pytest.mark.long_wait
def test_a_hard_bounce_of_one_tenant_stops_both(evidence: list[str]) -> None:
    """alpha's mail to an unknown user: the receiver refuses it at RCPT, the bulk node's
    DSN goes to alpha's own domain, and cron's `bounces from-log` on the node brings the
    bounce to the store, where it suppresses the address for every tenant."""
    address = f"nobody-{letters(8)}@gmail.test"
    app1_sends(f"news@{_domain('alpha')}", address, f"to nobody {letters(6)}")
    replies = wait_for_value(
        f"both tenants' mail to {address} refused after alpha's hard bounce",
        lambda: _replies(address),
        lambda r: all(v.startswith("<** 5") for v in r.values()),
        timeout=SUPPRESSION_DEADLINE,
        every=5,
    )
    stored = sh("monitor", f"{MAILOPS} suppression list | grep -i '{address}'").out
    assert "userunknown" in stored, stored
    evidence.append(f"beta: {replies['beta'][:90]}")


# --------------------------------------------------------------------------- figures


def num(row: dict[str, object], key: str) -> int:
    value = row[key]
    assert isinstance(value, int), (key, value)
    return value


def _mix_sends(tenant: str, tag: str, delivered: int, unknown: int) -> None:
    domain = _domain(tenant)
    for i in range(delivered):
        app1_sends(f"news@{domain}", "alice@gmail.test", f"mix {tenant} {tag} ok {i}")
    for i in range(unknown):
        app1_sends(f"news@{domain}", f"nobody-{tag}-{i}@gmail.test", f"mix {tenant} {tag} bad {i}")


@pytest.mark.serial
def test_status_figures_follow_a_known_mix(evidence: list[str]) -> None:
    """Sends, hard bounces and complaints for alpha: status moves by exactly that much."""
    before = tenant_status("alpha")
    beta_before = tenant_status("beta")
    tag = letters(8)
    delivered, unknown, complaints = 3, 2, 1
    _mix_sends("alpha", tag, delivered, unknown)
    for i in range(delivered):
        wait_for_maildir("alice@gmail.test", f"mix alpha {tag} ok {i}", timeout=90)
    for _ in range(complaints):
        token = letters(10)
        _tell_mx(
            "fbl-reports@outlook.test",
            f"fbl@{DOMAIN}",
            ARF.format(
                domain=DOMAIN,
                token=token,
                address=f"dave-{token}@outlook.test",
                tenant_domain=_domain("alpha"),
                source_ip=sorted(POOLS[str(TENANTS["alpha"]["pool"])])[0],
            ),
        )

    def moved(now: dict[str, object]) -> bool:
        return (
            num(now, "sent") - num(before, "sent") >= delivered + unknown
            and num(now, "bounced") - num(before, "bounced") >= unknown
            and num(now, "complained") - num(before, "complained") >= complaints
        )

    after = wait_for_value(
        "alpha's figures to take in the mix", lambda: tenant_status("alpha"), moved, 180, every=10
    )
    deltas = {
        k: num(after, k) - num(before, k)
        for k in ("sent", "delivered", "bounced", "complained", "unsubscribed")
    }
    assert deltas == {
        "sent": delivered + unknown,
        "delivered": delivered,
        "bounced": unknown,
        "complained": complaints,
        "unsubscribed": 0,
    }, deltas
    # (rounded to 6 places in the JSON)
    assert after["bounce_rate"] == pytest.approx(
        num(after, "bounced") / num(after, "sent"), abs=1e-6
    )
    beta_after = tenant_status("beta")
    assert beta_after["complained"] == beta_before["complained"], (beta_before, beta_after)
    evidence.append(f"alpha moved by {deltas}; beta's complaints unchanged")


def test_tenant_secrets_are_not_in_the_repository() -> None:
    tracked = Path(ROOT / "inventories/lab/group_vars/all/tenants.yml").read_text()
    for login in ("alpha", "beta"):
        password = _login(login)[1]
        assert password and password not in tracked
