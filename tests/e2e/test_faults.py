"""Issue 10 in the lab: what the hosts do when what they depend on goes away.

- Postgrey, policyd-spf and the DNS resolver, each stopped in turn: mx1 answers good
  mail from outside with 4xx (never 5xx), and accepts it again by itself once the
  service is back.  (OpenDKIM down is test_filters' check: 4xx, never unsigned mail.)
- The next hop down: inbox stops accepting; mail1 keeps what it accepted and delivers
  every message once inbox is back.  With a shortened queue lifetime, each message
  that expires yields exactly one DSN, which reaches bounces@ on mx1 and the store.

- kill -9 of mail1's master, qmgr and cleanup, each during a 5,000-message burst from
  app1: every message answered 250 reaches the next hop at least once (duplicates are
  counted, not failed), nothing lands in corrupt/, ``postfix check`` is clean.  The next
  hop is ``smtp-sink`` on inbox's address, keeping every message in one file: what is
  checked is mail1, and inbox's own Postfix, OpenDKIM and Maildir writes would
  otherwise set the pace (and its verifying OpenDKIM, 2.11.0~beta2 with a resolver
  file, has been seen to wedge under such a burst).
- mx1's verifying OpenDKIM, with the resolver setting the role writes for real domains,
  takes a burst of 800 signed messages from mail1 without dying or answering 4xx (with
  the lab's resolver file, which OpenDKIM parses for every message, it dies at once).

Each check puts back what it stopped or changed, byte for byte, even when it fails.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.labhosts import (
    PREFIX,
    inventory,
    letters,
    mail_domain,
    reply_to,
    sh,
    sink_on_inbox,
    token,
    wait_for,
)

pytestmark = [pytest.mark.serial, pytest.mark.slow]

HOSTS = inventory()
DOMAIN = mail_domain()
MX = HOSTS["mx1"]["ip"]
MAIL1 = HOSTS["mail1"]["ip"]


# A policy service that does not answer costs smtpd policyd_spf__policy_timeout (30 s
# in the role's defaults) once; a sender waits up to 5 minutes for RCPT's reply
# (RFC 5321, 4.5.3.2), swaks here up to this long.
REPLY_WAIT = 60


def good_mail_reply() -> str:
    """mx1's answer at RCPT to mail a healthy MX must accept: SPF-pass sender from
    inbox's own address, to a recipient Postgrey whitelists (so no greylisting)."""
    res = sh(
        "inbox",
        f"swaks --timeout {REPLY_WAIT} --server {MX} --ehlo inbox.outside.test "
        f"--from {letters()}@gmail.test --to postmaster@{DOMAIN} --quit-after RCPT 2>&1",
        timeout=REPLY_WAIT + 30,
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
        began = time.monotonic()
        down = good_mail_reply()
        answered = time.monotonic() - began
        assert down.startswith("<** 4"), f"{dependency} down: {down}"
    # Postfix's master waits service_throttle_time (60 s) before it tries a service
    # whose command failed to start again.
    took = wait_for(
        f"mx1 accepting again after {dependency} is back",
        lambda: good_mail_reply().startswith("<- 250"),
        150,
    )
    evidence.append(
        f"{dependency} down: {down[:90]} after {answered:.0f} s; back: 250 after {took:.0f} s"
    )


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


# ------------------------------------------------------------------ crashes on mail1
BURST = 5000
# The sender, run by app1's python3: BURST messages over a few connections, as an
# application would send them; prints "ok N" for each message answered 250 after
# DATA, and tries a message again on a new connection when the server went away.
SENDER = r"""
import smtplib, sys, threading, time
host, run, sender, rcpt = sys.argv[1], sys.argv[2], sys.argv[6], sys.argv[7]
total, conns, limit = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + limit
lock = threading.Lock()
state = {"next": 0}
def take():
    with lock:
        if state["next"] >= total:
            return None
        state["next"] += 1
        return state["next"] - 1
def work():
    conn, i = None, take()
    while i is not None and time.monotonic() < deadline:
        try:
            if conn is None:
                conn = smtplib.SMTP(host, 25, timeout=30)
                conn.ehlo("app1.burst")
            msg = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: burst {run} {i}\r\n"
                   f"X-Burst: {run}-{i}\r\n\r\n" + ("line of text " * 6 + "\r\n") * 12)
            conn.sendmail(sender, [rcpt], msg)
            print(f"ok {i}", flush=True)
            i = take()
        except (smtplib.SMTPException, OSError):
            try:
                conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.2)
threads = [threading.Thread(target=work) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

# what to kill: (the process name, what brings it back)
CRASHES = {
    "master": (
        "master",
        "for i in $(seq 30); do postfix start >/dev/null 2>&1 && break; sleep 1; done",
    ),
    "qmgr": ("qmgr", "true"),  # the master starts a new one
    "cleanup": ("cleanup", "true"),
}


DUMP = "/tmp/lab-burst.dump"


@pytest.mark.parametrize("victim", sorted(CRASHES))
def test_kill_9_during_a_burst_loses_no_accepted_message(
    victim: str, evidence: list[str], tmp_path: Path
) -> None:
    process, revive = CRASHES[victim]
    run = letters(8)
    rcpt = "alice@gmail.test"
    inbox = HOSTS["inbox"]["ip"]
    errors = (tmp_path / "sender.err").open("w+")
    sh("inbox", f"rm -f {DUMP}")
    with sink_on_inbox(f"smtp-sink -4 -u postfix -D {DUMP} {inbox}:25 256"):
        burst = subprocess.Popen(
            ["podman", "exec", "-i", f"{PREFIX}-app1", "python3", "-", MAIL1, run,
             str(BURST), "4", "600", f"bounces@{DOMAIN}", rcpt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
        )  # fmt: skip
        assert burst.stdin and burst.stdout
        burst.stdin.write(SENDER)
        burst.stdin.close()
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(burst.stdout.readline, "")))
        reader.start()
        try:
            # Let a good part of the burst in, then kill.
            wait_for("500 messages of the burst accepted", lambda: len(lines) >= 500, 300)
            killed = sh("mail1", f"pkill -9 -x {process} && echo killed").out.strip()
            assert killed == "killed", f"no {process} to kill on mail1"
            at = len(lines)
            sh("mail1", revive, timeout=60)
            burst.wait(timeout=900)
            reader.join(timeout=60)
        finally:
            if burst.poll() is None:
                burst.kill()
                # The sender runs on inside app1 when only the podman client is killed.
                sh("app1", f"pkill -f 'python3 - {MAIL1} {run} '")
        errors.seek(0)
        accepted = {int(ln.split()[1]) for ln in lines if ln.startswith("ok ")}
        assert len(accepted) == BURST, (
            f"{len(accepted)} of {BURST} accepted: {errors.read()[-300:]}"
        )

        def seen() -> dict[int, int]:
            out = sh(
                "inbox", f"grep -ah '^X-Burst: {run}-' {DUMP} | sort | uniq -c", timeout=120
            ).out
            counts: dict[int, int] = {}
            for line in out.splitlines():
                n, value = line.split()[0], line.split()[-1]
                counts[int(value.rsplit("-", 1)[1])] = int(n)
            return counts

        # mail1's deferred messages (those in flight when the process died) come back
        # on its own retry schedule; a flush stands in for the wait.
        def arrived() -> bool:
            if accepted <= set(seen()):
                return True
            sh("mail1", "postqueue -f")
            return False

        took = wait_for(
            f"every accepted message of the burst at the next hop after {victim} was killed",
            arrived,
            900,
            every=10,
        )
        counts = seen()
    sh("inbox", f"rm -f {DUMP}")
    duplicates = sum(n - 1 for n in counts.values())
    corrupt = sh("mail1", "find /var/spool/postfix/corrupt -type f | wc -l").out.strip()
    assert corrupt == "0", f"{corrupt} files in mail1's corrupt/"
    check = sh("mail1", "postfix check 2>&1")
    assert check.rc == 0 and not check.out.strip(), check.out
    evidence.append(
        f"kill -9 {process} after {at} accepted: all {len(accepted)} accepted delivered "
        f"({took:.0f} s to drain), {duplicates} duplicates, corrupt/ empty, postfix check clean"
    )


# ------------------------------------------------------- mx1's verifier under a burst
OPENDKIM_CONF = "/etc/opendkim.conf"
VERIFY_BURST = 800


@contextmanager
def mx1_resolver_as_in_production() -> Iterator[None]:
    """mx1's OpenDKIM with the resolver setting the role writes where no test zones are
    configured, as on every real MX: ``Nameservers`` (the same resolvers) in place of
    the lab's ``ResolverConfiguration`` file.  That file is only there because the lab's
    names sit under .test.  opendkim.conf is put back byte for byte afterwards."""
    saved = f"{OPENDKIM_CONF}.e2e-saved"
    resolvers = sh(
        "mx1", "awk '/forward-addr:/ {print $2}' /etc/opendkim/resolver.conf | paste -sd,"
    ).out.strip()
    assert resolvers, "no forward-addr in mx1's /etc/opendkim/resolver.conf"
    sh("mx1", f"cp -p {OPENDKIM_CONF} {saved}")
    try:
        res = sh(
            "mx1",
            f"sed -i 's|^ResolverConfiguration .*|Nameservers             {resolvers}|' "
            f"{OPENDKIM_CONF} && grep -q '^Nameservers ' {OPENDKIM_CONF} "
            "&& service opendkim restart >/dev/null",
        )
        assert res.rc == 0, res.out + res.err
        yield
    finally:
        sh("mx1", f"mv {saved} {OPENDKIM_CONF}; service opendkim restart >/dev/null 2>&1")


@contextmanager
def queued_mail_dropped(sender: str, hosts: tuple[str, ...]) -> Iterator[None]:
    """Afterwards, delete whatever mail from ``sender`` is still queued on ``hosts``: a
    burst that failed half way must not be retried into the next check."""
    try:
        yield
    finally:
        pick = (
            "import json, sys; [print(m['queue_id']) for m in map(json.loads, sys.stdin)"
            " if m['sender'] == sys.argv[1]]"
        )
        for host in hosts:
            sh(host, f'postqueue -j | python3 -c "{pick}" {sender} | postsuper -d - 2>/dev/null')


def opendkim_pid(host: str) -> str:
    """OpenDKIM's pid on ``host``, or "" when it is not running."""
    return sh(host, "p=$(cat /run/opendkim/opendkim.pid) && kill -0 $p && echo $p").out.strip()


def test_verifying_opendkim_survives_a_burst(evidence: list[str]) -> None:
    """OpenDKIM 2.11 parses ResolverConfiguration again for every message, and parses in
    parallel corrupt libunbound's parser: the verifier on mx1 died within about 300
    messages of such a burst, and with milter_default_action = tempfail the MX then
    answers everything with 451.  With the setting the role writes for real domains,
    a burst of signed mail from mail1 to the company domain goes through mx1's verifier
    in parallel (mail1 opens up to 20 connections) and OpenDKIM is still the same
    process at the end.  mx1 relays the mail on to smtp-sink in inbox's place (the
    lab's own receiver verifies with a resolver file too, and must not take the burst)."""
    sender = f"burst-{token()}@{DOMAIN}"
    dump = "/tmp/lab-verify-burst.dump"
    inbox = HOSTS["inbox"]["ip"]
    sh("inbox", f"rm -f {dump}")
    with (
        queued_mail_dropped(sender, ("mail1", "mx1")),
        mx1_resolver_as_in_production(),
        sink_on_inbox(f"smtp-sink -4 -u postfix -D {dump} {inbox}:25 256"),
    ):
        before = opendkim_pid("mx1")
        assert before, "mx1's OpenDKIM is not running"
        start = int(sh("mail1", "wc -l < /var/log/mail.log").out)
        res = sh(
            "app1",
            f"smtp-source -s 20 -l 2048 -m {VERIFY_BURST} -f {sender} -t bill@{DOMAIN} {MAIL1}:25",
            timeout=300,
        )
        assert res.rc == 0, f"mail1 refused the burst: {res.out}{res.err}"

        def arrived() -> int:
            out = sh("inbox", f"grep -c '^X-Mail-Args: .*{sender}' {dump} || true").out
            return int(out.strip() or 0)

        def all_arrived() -> bool:
            if not opendkim_pid("mx1"):
                raise AssertionError(f"mx1's OpenDKIM died after {arrived()} messages")
            return arrived() >= VERIFY_BURST

        took = wait_for(f"{VERIFY_BURST} messages through mx1", all_arrived, 600, every=3)
        after = opendkim_pid("mx1")
        refused = sh(
            "mail1",
            f"tail -n +{start + 1} /var/log/mail.log | grep -F 'to=<bill@{DOMAIN}>' "
            f"| grep -c 'said: 4' || true",
        ).out.strip()
        verified = sh(
            "inbox", f"grep -c '^Authentication-Results: {HOSTS['mx1']['fqdn']}' {dump} || true"
        ).out.strip()
    sh("inbox", f"rm -f {dump}")
    assert after == before, f"mx1's OpenDKIM restarted during the burst ({before} -> {after})"
    assert refused == "0", f"mx1 answered 4xx {refused} times during the burst"
    assert int(verified or 0) >= VERIFY_BURST, f"only {verified} messages carry mx1's verdict"
    evidence.append(
        f"{VERIFY_BURST} signed messages mail1 -> mx1 in {took:.0f} s, each with mx1's "
        f"Authentication-Results: OpenDKIM still pid {after}, no 4xx from mx1"
    )
