"""Issue 4 in the lab: DKIM signing and verification, greylisting, SPF, by real SMTP."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.labhosts import (
    headers,
    inventory,
    letters,
    mail_domain,
    reply_to,
    sh,
    smtp_reply,
    swaks,
    token,
    wait_for_maildir,
)
from tests.e2e.signers import signer, start_signer, stop_signer

HOSTS = inventory()
DOMAIN = mail_domain()
MX = HOSTS["mx1"]["fqdn"]
STRANGER = "198.51.100.67"  # lab_stranger_address: an inbox address mx1 has never seen


def _verdicts(msg: str) -> dict[str, str]:
    """method -> result from the receiver's Authentication-Results headers."""
    found: dict[str, str] = {}
    for name, value in headers(msg):
        if name.lower() != "authentication-results":
            continue
        for part in value.split(";")[1:]:
            part = part.strip()
            if "=" in part:
                method, result = part.split("=", 1)
                found.setdefault(method.strip(), result.split()[0])
    return found


def test_bulk_mail_from_mail1_passes_dkim_spf_dmarc(evidence: list[str]) -> None:
    tag = token()
    res = swaks(
        "app1",
        f"--server mail1.{DOMAIN} --from bounces@{DOMAIN} --h-From 'News <news@{DOMAIN}>' "
        f"--to alice@gmail.test --header 'Subject: signed {tag}'",
    )
    assert "250 2.0.0 Ok: queued" in res.out, res.out
    msg = wait_for_maildir("alice@gmail.test", tag)
    v = _verdicts(msg)
    assert (v.get("dkim"), v.get("spf"), v.get("dmarc")) == ("pass", "pass", "pass"), v
    sig = [val for n, val in headers(msg) if n == "DKIM-Signature"]
    assert sig and f"d={DOMAIN}" in sig[0], sig
    evidence.append(f"mail1 -> inbox: dkim={v['dkim']} spf={v['spf']} dmarc={v['dmarc']}")


def test_mail_from_app1_through_mx1_passes_dkim_spf_dmarc(evidence: list[str]) -> None:
    tag = token()
    sh(
        "app1",
        f"printf 'From: Ops <ops@{DOMAIN}>\\nSubject: relayed {tag}\\n\\nhi\\n'"
        f" | sendmail -f ops@{DOMAIN} bob@gmail.test",
    )
    msg = wait_for_maildir("bob@gmail.test", tag)
    v = _verdicts(msg)
    assert (v.get("dkim"), v.get("spf"), v.get("dmarc")) == ("pass", "pass", "pass"), v
    evidence.append(f"app1 -> mx1 -> inbox: dkim={v['dkim']} spf={v['spf']} dmarc={v['dmarc']}")


def test_every_selector_key_matches_dns(evidence: list[str]) -> None:
    seen = []
    for host in ("mx1", "mail1", "mail2"):
        # Each host's signer keeps its own copy of the keys (OpenDKIM's or Rspamd's).
        s = signer(host)
        keys = sh(host, f"ls {s.keys_dir}/*/*.private").out.split()
        assert keys, f"{host} has no DKIM keys"
        for path in keys:
            domain, selector = path.split("/")[-2], path.split("/")[-1].removesuffix(".private")
            # Signing-only hosts leave OpenDKIM's resolver unset (it needs none to sign);
            # opendkim-testkey gets the role's resolver file, which knows the .test zones.
            res = sh(
                host,
                "echo 'ResolverConfiguration /etc/opendkim/resolver.conf' > /tmp/testkey.conf"
                f" && opendkim-testkey -x /tmp/testkey.conf -d {domain} -s {selector} -k {path}"
                " -vvv 2>&1",
            )
            assert res.rc == 0 and "key OK" in res.out, f"{host} {selector}: {res.out}"
        mode = sh(host, f"stat -c '%a %U' {keys[0]}").out.strip()
        assert mode == f"600 {s.user}", f"{host}: {keys[0]} is {mode}"
        seen.append(f"{host} {len(keys)} keys 0600 {s.user}")
    evidence.append("opendkim-testkey: key OK; " + "; ".join(seen))


def test_milters_are_unix_sockets_only_postfix_can_reach(evidence: list[str]) -> None:
    """Every milter is a unix socket in Postfix's queue directory (TCP on loopback cost
    about 90 ms a message, docs/bench.md): named relative to the queue directory, in a
    setgid directory of its own owned by the milter's user and the group postfix, so the
    socket (0770, or 0660) takes the one group Postfix's daemons keep."""
    seen = []
    for host in ("mx1", "mail1", "mail2", "inbox"):
        out = sh(host, "postconf -h smtpd_milters non_smtpd_milters").out
        # Entries are "kind:name" or "{ kind:name, option = value, ... }" (per-milter
        # settings, as the unsubscribe milter's default_action): only the addresses.
        milters = sorted(set(re.findall(r"(?<![\w=])(\w+:[^\s,{}]+)", out)))
        assert milters, f"{host} has no milter"
        for milter in milters:
            kind, _, name = milter.partition(":")
            assert kind == "unix" and not name.startswith("/"), f"{host}: {milter}"
            path = f"/var/spool/postfix/{name}"
            found = sh(host, f"stat -c '%F %a %U:%G' {path} {path.rsplit('/', 1)[0]}").out
            lines = found.splitlines()
            owner = lines[-1].rsplit(" ", 1)[-1].split(":")[0]  # the milter's own user
            assert owner not in ("root", "postfix"), f"{host}: {found}"
            # The socket: read-write for the group, nothing for others (0660 or 0770).
            assert lines[0] in (f"socket 770 {owner}:postfix", f"socket 660 {owner}:postfix")
            assert lines[1] == f"directory 2750 {owner}:postfix", f"{host}: {found}"
        seen.append(f"{host} {' '.join(milters)}")
    evidence.append("milters: " + "; ".join(seen) + " (sockets 0770/0660, dirs 2750 :postfix)")


def test_unknown_client_is_greylisted_then_accepted(evidence: list[str]) -> None:
    args = (
        f"--server {MX} --local-interface {STRANGER} --ehlo mta2.outside.test "
        f"--from {letters()}@outlook.test --to bill@{DOMAIN} --quit-after RCPT"
    )
    first = reply_to(swaks("inbox", args), "RCPT")
    assert first.startswith("<** 450") and "Greylisted" in first, first
    time.sleep(12)  # postgrey__delay is 10 s in the lab
    second = reply_to(swaks("inbox", args), "RCPT")
    assert second.startswith("<- 250"), second
    evidence.append(f"first: {first[:60]} | after 12 s: {second}")


def test_whitelisted_recipient_is_not_greylisted(evidence: list[str]) -> None:
    reply = reply_to(
        swaks(
            "inbox",
            f"--server {MX} --local-interface {STRANGER} --ehlo mta2.outside.test "
            f"--from {letters()}@outlook.test --to postmaster@{DOMAIN} --quit-after RCPT",
        ),
        "RCPT",
    )
    assert reply.startswith("<- 250"), reply
    evidence.append(f"postmaster@: {reply}")


def test_spf_fail_is_refused_and_pass_is_recorded(evidence: list[str]) -> None:
    # gmail.test publishes "-all" without the stranger address.
    refused = smtp_reply(
        swaks(
            "inbox",
            f"--server {MX} --local-interface {STRANGER} --ehlo mta2.outside.test "
            f"--from alice@gmail.test --to bill@{DOMAIN} --quit-after RCPT",
        )
    )
    assert refused.startswith("<** 550") and "SPF" in refused, refused
    tag = token()
    res = swaks(
        "inbox",
        f"--server {MX} --from alice@gmail.test --to bill@{DOMAIN} --header 'Subject: spf {tag}'",
    )
    assert "250 2.0.0 Ok: queued" in res.out, res.out
    msg = wait_for_maildir(f"bill@{DOMAIN}", tag)
    spf = [v for n, v in headers(msg) if n == "Received-SPF"]
    assert spf and spf[0].startswith("Pass"), spf
    evidence.append(refused[:90])
    evidence.append(f"Received-SPF: {spf[0][:60]}")


@pytest.mark.serial
@pytest.mark.parametrize("node", ["mail1", "mail2"])
def test_signer_down_means_4xx_never_unsigned_mail(node: str, evidence: list[str]) -> None:
    """Each bulk node's signer (OpenDKIM or Rspamd, tests/e2e/signers.py) stopped: the
    node answers 4xx to the message, and takes mail again once the signer is back."""
    s = stop_signer(node)
    try:
        res = swaks(
            "app1",
            f"--server {node}.{DOMAIN} --from bounces@{DOMAIN} --to alice@gmail.test "
            "--header 'Subject: must not leave unsigned'",
        )
        reply = smtp_reply(res)
        assert reply.startswith("<** 4"), res.out
        evidence.append(f"{node}: {s.name} stopped: {reply[:80]}")
    finally:
        start_signer(node)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        res = swaks(
            "app1",
            f"--server {node}.{DOMAIN} --from bounces@{DOMAIN} --to alice@gmail.test "
            f"--header 'Subject: after {s.name} is back' --quit-after RCPT",
        )
        if not smtp_reply(res).startswith("<** 4"):
            break
        time.sleep(1)
    assert smtp_reply(res).startswith("<- "), res.out
    evidence.append(f"{node}: {s.name} back: accepted again")
