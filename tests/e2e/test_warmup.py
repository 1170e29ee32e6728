"""Issue 21 in the lab: the tenants' policy daemon and the warm-up caps it applies.

- The daemon stopped on mail1 (its init script, as `systemctl stop` elsewhere): a
  tenant's submission gets a 4xx from smtpd's default action, never a 5xx; started
  again, the same submission is accepted.
- A warm-up started by the operator on alpha's address of mail1 with a small day-1 cap:
  that many messages to one provider are accepted and delivered, the rest are refused
  with a 4xx at RCPT, and none bounces.  The warm-up is undone whatever happens (other
  checks send alpha's mail).

What is looked at is what a client and a receiver get: the SMTP replies at submission
(swaks from app1), inbox's Maildir, mail1's log for the accepted messages' fate.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.e2e.labhosts import INVENTORY, ROOT, inventory, letters, sh, smtp_reply, swaks, wait_for

HOSTS = inventory()
MAILOPS = "/opt/mailops/bin/mailops"
SERVICE = "mailops-tenants-policy"
SOCKET = "/var/spool/postfix/private/mailops-tenants"
SECRETS = ROOT / ".lab" / "secrets"
RCPT = "carol@outlook.test"  # a mailbox of inbox, provider class microsoft


def _alpha_on_mail1() -> str:
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    mail1 = inv["all"]["children"]["mail_bulk"]["hosts"]["mail1"]
    return str(next(e["address"] for e in mail1["mail_pool_addresses"] if e["pool"] == "alpha"))


def _password(login: str) -> str:
    return (SECRETS / f"sasl-tenant-{login}").read_text().strip()


def submit(tag: str, rcpt: str = RCPT) -> str:
    """alpha's login submits one message on mail1:587; the first refusal or the last
    reply (250 ... queued as ID)."""
    res = swaks(
        "app1",
        f"--server {HOSTS['mail1']['ip']}:587 -tls -a PLAIN -au alpha -ap '{_password('alpha')}'"
        f" --from news@alpha.test --to {rcpt} --header 'Subject: warm-up {tag}'",
    )
    first = smtp_reply(res)
    if first.startswith("<**"):
        return first
    queued = [
        ln for ln in res.out.splitlines() if "queued as" in ln and ln.startswith(("<-", "<~"))
    ]
    return "<- " + queued[0][2:].strip() if queued else first


def daemon_running() -> bool:
    return sh("mail1", f"service {SERVICE} status >/dev/null 2>&1 && test -S {SOCKET}").rc == 0


@pytest.fixture
def daemon_back() -> Iterator[None]:
    yield
    sh("mail1", f"service {SERVICE} start")
    wait_for("the policy daemon back on mail1", daemon_running, 30, every=0.5)


@pytest.mark.serial
def test_a_stopped_policy_daemon_means_4xx_never_5xx_and_started_mail_flows(
    daemon_back: None, evidence: list[str]
) -> None:
    assert daemon_running(), "the policy daemon is not running on mail1"
    res = sh("mail1", f"service {SERVICE} stop")
    assert res.rc == 0, res.out + res.err
    assert not daemon_running()
    tag = letters(10)
    stopped = submit(tag)
    evidence.append(f"daemon stopped: {stopped}")
    assert re.match(r"<\*\* 451 4\.3\.5 ", stopped), stopped
    assert "tenant policy service unavailable" in stopped
    res = sh("mail1", f"service {SERVICE} start")
    assert res.rc == 0, res.out + res.err
    wait_for("the policy daemon's socket", daemon_running, 30, every=0.5)
    started = submit(tag)
    evidence.append(f"started again: {started}")
    assert started.startswith("<- 250 ") and "queued as" in started, started
    wait_for(
        "the message in carol's mailbox",
        lambda: sh("inbox", f"grep -l -r -F 'warm-up {tag}' /srv/inbox/{RCPT}/new/").rc == 0,
        60,
    )


def _status(address: str) -> dict[str, object]:
    res = sh("mail1", f"{MAILOPS} warmup status --json")
    assert res.rc == 0, res.out + res.err
    rows: dict[str, dict[str, object]] = {r["address"]: r for r in json.loads(res.out)}
    return rows[address]


@pytest.mark.serial
def test_a_new_address_delivers_its_day_one_cap_and_defers_the_rest(
    evidence: list[str],
) -> None:
    address = _alpha_on_mail1()
    cap_new, extra = 4, 3
    starts = sh("mail1", "cat /var/lib/mailops/warmup-starts.json 2>/dev/null").out
    # What the address already sent to the provider today (the daemon writes its counts
    # every 2 s): the day-1 cap is that plus N, so exactly N more go.
    time.sleep(2.5)
    used = _status(address)["use"]
    assert isinstance(used, dict)
    before = int(used.get("microsoft", 0))
    tag = letters(10)
    try:
        res = sh("mail1", f"{MAILOPS} warmup start {address} --start {before + cap_new}")
        assert res.rc == 0, res.out + res.err
        row = _status(address)
        assert (row["phase"], row["day"], row["cap"]) == ("warming", 1, before + cap_new), row
        replies = [submit(f"{tag} {i}") for i in range(cap_new + extra)]
    finally:
        # Undo it whatever happened: the address had no operator's entry before.
        sh("mail1", f"{MAILOPS} warmup stop {address}")
    after = sh("mail1", "cat /var/lib/mailops/warmup-starts.json 2>/dev/null").out
    assert json.loads(after or '{"addresses": {}}')["addresses"].get(address) == (
        json.loads(starts or '{"addresses": {}}')["addresses"].get(address)
    )
    accepted = [r for r in replies if r.startswith("<- 250 ")]
    deferred = [r for r in replies if r.startswith("<** 450 4.7.1 ")]
    evidence.append(f"cap {before}+{cap_new}: {len(accepted)} accepted, {len(deferred)} deferred")
    if deferred:
        evidence.append(deferred[0][:200])
    assert len(accepted) == cap_new and len(deferred) == extra, replies
    assert all("is warming up (day 1)" in r and "at microsoft" in r for r in deferred), deferred
    assert not any(r.startswith("<** 5") for r in replies), replies
    # The accepted ones are delivered, and not one of them bounced.
    ids = [re.search(r"queued as ([0-9A-Za-z]+)", r).group(1) for r in accepted]  # type: ignore[union-attr]
    wait_for(
        f"{cap_new} messages in carol's mailbox",
        lambda: (
            len(sh("inbox", f"grep -l -r -F 'warm-up {tag} ' /srv/inbox/{RCPT}/new/").out.split())
            == cap_new
        ),
        90,
    )
    log = sh("mail1", f"grep -E '({'|'.join(ids)}): to=' /var/log/mail.log").out
    assert "status=bounced" not in log, log
    assert log.count("status=sent") == cap_new, log
    # The counts the daemon writes say so too.
    time.sleep(2.5)
    now = _status(address)["use"]
    assert isinstance(now, dict) and int(now["microsoft"]) >= before + cap_new


def test_policy_daemon_answers_on_both_bulk_nodes() -> None:
    """One daemon per node, no policy process per smtpd (master.cf has no spawn entry)."""
    for node in ("mail1", "mail2"):
        res = sh(
            node, f"test -S {SOCKET} && stat -c '%U %a' {SOCKET}; postconf -M mailops-tenants/unix"
        )
        assert res.out.split("\n")[0] == "postfix 660", (node, res.out, res.err)
        assert "spawn" not in res.out, (node, res.out)
