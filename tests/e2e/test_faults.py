"""Issue 10 in the lab: what the hosts do when what they depend on goes away.

- Postgrey, policyd-spf and the DNS resolver, each stopped in turn: mx1 answers good
  mail from outside with 4xx (never 5xx), and accepts it again by itself once the
  service is back.  (OpenDKIM down is test_filters' check: 4xx, never unsigned mail.)
- The next hop down: inbox stops accepting; mail1 keeps what it accepted and delivers
  every message once inbox is back.  With a shortened queue lifetime, each message
  that expires yields exactly one DSN, which reaches bounces@ on mx1 and the store.

Each check puts back what it stopped or changed, byte for byte, even when it fails.

Not here yet: kill -9 of master, qmgr and cleanup on mail1 during a 5,000-message burst.
Those checks passed for mail1, but the burst wedges the OpenDKIM that verifies on inbox
(the outside world's stand-in, 2.11.0~beta2 with a resolver file), which then answers
451 until restarted, so the burst is not delivered in time.  They come back once the
verifying OpenDKIM holds up under load (mx1 verifies the same way).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.e2e.labhosts import (
    inventory,
    letters,
    mail_domain,
    reply_to,
    sh,
    swaks,
    token,
)

pytestmark = [pytest.mark.serial, pytest.mark.slow]

HOSTS = inventory()
DOMAIN = mail_domain()
MX = HOSTS["mx1"]["ip"]
MAIL1 = HOSTS["mail1"]["ip"]


def wait_for(what: str, probe: Callable[[], bool], timeout: float, every: float = 1) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def good_mail_reply() -> str:
    """mx1's answer at RCPT to mail a healthy MX must accept: SPF-pass sender from
    inbox's own address, to a recipient Postgrey whitelists (so no greylisting)."""
    res = swaks(
        "inbox",
        f"--server {MX} --ehlo inbox.outside.test --from {letters()}@gmail.test "
        f"--to postmaster@{DOMAIN} --quit-after RCPT",
    )
    return reply_to(res, "RCPT") or res.out.strip().splitlines()[-1]


@contextmanager
def stopped(host: str, stop: str, start: str) -> Iterator[None]:
    sh(host, stop)
    try:
        yield
    finally:
        sh(host, start)


# name: (host, how to stop it, how to start it again)
DEPENDENCIES = {
    "postgrey": ("mx1", "service postgrey stop", "service postgrey start"),
    # Spawned by Postfix per request: take the program away and end the running ones.
    "policyd-spf": (
        "mx1",
        "mv /usr/bin/policyd-spf /usr/bin/policyd-spf.e2e-away && pkill -f /usr/bin/policyd-spf;"
        " true",
        "mv /usr/bin/policyd-spf.e2e-away /usr/bin/policyd-spf",
    ),
    # Every lab host resolves through ns1's unbound.
    "dns resolver": ("ns1", "service unbound stop", "service unbound start"),
}


@pytest.mark.parametrize("dependency", sorted(DEPENDENCIES))
def test_dependency_down_means_4xx_then_recovery(dependency: str, evidence: list[str]) -> None:
    host, stop, start = DEPENDENCIES[dependency]
    healthy = good_mail_reply()
    assert healthy.startswith("<- 250"), f"mx1 refuses good mail before the fault: {healthy}"
    with stopped(host, stop, start):
        down = good_mail_reply()
        assert down.startswith("<** 4"), f"{dependency} down: {down}"
    took = wait_for(
        f"mx1 accepting again after {dependency} is back",
        lambda: good_mail_reply().startswith("<- 250"),
        60,
    )
    evidence.append(f"{dependency} down: {down[:90]}; back: 250 after {took:.0f} s")


# ------------------------------------------------------------------ the next hop down
@contextmanager
def inbox_down() -> Iterator[None]:
    sh("inbox", "postfix stop >/dev/null 2>&1")
    try:
        yield
    finally:
        sh("inbox", "postfix start >/dev/null 2>&1")


@contextmanager
def mail1_settings(**settings: str) -> Iterator[None]:
    """Change main.cf on mail1 for a while; put the file back byte for byte after."""
    sh("mail1", "cp -p /etc/postfix/main.cf /etc/postfix/main.cf.e2e-saved")
    pairs = " ".join(f"'{k} = {v}'" for k, v in settings.items())
    sh("mail1", f"postconf -e {pairs} && postfix reload >/dev/null 2>&1")
    try:
        yield
    finally:
        sh("mail1", "mv /etc/postfix/main.cf.e2e-saved /etc/postfix/main.cf")
        sh("mail1", "postfix reload >/dev/null 2>&1")


def send_via_mail1(recipients: list[str], subject: str) -> None:
    """Hand one message per recipient to mail1 from app1, as the applications do."""
    loop = " ".join(recipients)
    res = sh(
        "app1",
        f"for r in {loop}; do swaks --timeout 20 --server {MAIL1} --from bounces@{DOMAIN} "
        f'--to $r --header "Subject: {subject} $r" >/dev/null 2>&1 && echo ok; done',
        timeout=120,
    )
    assert res.out.split() == ["ok"] * len(recipients), f"mail1 refused some: {res.out}"


def mail1_log(needle: str) -> list[str]:
    return sh("mail1", f"grep -F -- '{needle}' /var/log/mail.log || true").out.splitlines()


def test_next_hop_down_then_back_loses_nothing(evidence: list[str]) -> None:
    tag = token()
    count = 10
    with inbox_down():
        send_via_mail1(["alice@gmail.test"] * count, f"hop {tag}")
        wait_for(
            f"{count} deferrals on mail1 while inbox is down",
            lambda: (
                len([ln for ln in mail1_log("status=deferred") if "alice@gmail.test" in ln]) > 0
            ),
            60,
        )
        queued = sh("mail1", "postqueue -j | grep -c alice@gmail.test || true").out.strip()
        assert int(queued or 0) >= count, f"only {queued} queued on mail1 with inbox down"
    sh("mail1", "postqueue -f")
    box = "/srv/inbox/alice@gmail.test/new/"

    def delivered() -> int:
        return int(sh("inbox", f"grep -l -r -F 'hop {tag}' {box} | wc -l").out.strip() or 0)

    took = wait_for(f"all {count} delivered once inbox is back", lambda: delivered() >= count, 120)
    got = delivered()
    evidence.append(
        f"{queued} queued on mail1 while inbox was down; {got} of {count} delivered "
        f"{took:.0f} s after it came back ({got - count} duplicates)"
    )


def test_expired_messages_yield_one_dsn_each_into_the_store(evidence: list[str]) -> None:
    tag = letters(10)
    recipients = [f"expire-{tag}-{i}@gmail.test" for i in range(3)]
    with inbox_down(), mail1_settings(maximal_queue_lifetime="15s", bounce_queue_lifetime="15s"):
        send_via_mail1(recipients, "expires")
        wait_for(
            "the messages deferred on mail1",
            lambda: all(any(r in ln for ln in mail1_log("status=deferred")) for r in recipients),
            60,
        )
        time.sleep(16)  # older than the queue lifetime now
        qids = {
            ln.split(": ", 2)[1]
            for ln in mail1_log("status=deferred")
            if any(f"to=<{r}>" in ln for r in recipients)
        }
        assert len(qids) == len(recipients), qids
        sh("mail1", "postqueue -f")

        def returned() -> list[str]:
            lines = mail1_log("status=expired, returned to sender")
            return [ln for ln in lines if ln.split(": ", 2)[1] in qids]

        # The next attempt fails too, and qmgr returns each message as too old.
        wait_for("every message expired on mail1", lambda: len(returned()) == len(qids), 60)
    expired = returned()

    def stored() -> dict[str, int]:
        out = sh(
            "monitor",
            'su postgres -c "psql -d mailops -tAc '  # noqa: S608 (letters made here)
            f"\\\"select address, count(*) from bounces where address like 'expire-{tag}-%'"
            ' group by address\\""',
        ).out
        return {a: int(n) for a, n in (ln.split("|") for ln in out.split())}

    wait_for("one stored bounce per expired message", lambda: len(stored()) == 3, 120, every=3)
    time.sleep(3)  # a second DSN for the same message would arrive right behind the first
    rows = stored()
    assert rows == {r: 1 for r in recipients}, rows
    # One non-delivery notification per message, each handed on to mx1 (bounces@).
    notices = [
        ln for ln in mail1_log("sender non-delivery notification") if ln.split(": ", 2)[1] in qids
    ]
    assert len(notices) == len(qids), notices
    dsn_ids = [ln.rsplit(": ", 1)[1].strip() for ln in notices]
    sent = [
        ln
        for ln in mail1_log(f"to=<bounces@{DOMAIN}>")
        if ln.split(": ", 2)[1] in dsn_ids and "status=sent" in ln
    ]
    assert len(sent) == len(dsn_ids), (dsn_ids, sent)
    evidence.append(
        f"{len(expired)} expired on mail1, {len(notices)} DSNs to bounces@ "
        f"({sent[0].split('relay=', 1)[1].split(',')[0]}), one stored bounce each"
    )
