"""Issue 10 in the lab: what an attacker on the Internet tries, and what leaks would show.

Every probe comes from inbox, the lab's stand-in for the Internet, or from this machine,
and goes only to the lab's own hosts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.labhosts import PREFIX, ROOT, headers, inventory, mail_domain, sh, token
from tests.e2e.signers import Signer, signer

sys.path.insert(0, str(ROOT / "tools"))
import lab as labtool

HOSTS = inventory()
DOMAIN = mail_domain()
MX = HOSTS["mx1"]
# Every lab host except the outside world itself.
TARGETS = [h for h in HOSTS if h != "inbox"]

# Classic relay tricks: each must be refused on every port of every host.  The company
# domain is a relay domain on mx1; sender-specified routing is never honoured.
RELAY_TRICKS = [
    "alice@gmail.test",
    f"alice%gmail.test@{DOMAIN}",
    f"alice%gmail.test@mx1.{DOMAIN}",
    f'"alice@gmail.test"@{DOMAIN}',
    f'"alice%gmail.test"@{DOMAIN}',
    f"gmail.test!alice@{DOMAIN}",
    f"gmail.test!alice@mx1.{DOMAIN}",
    f"@{DOMAIN}:alice@gmail.test",
    f"@mx1.{DOMAIN}:alice@gmail.test",
    f"alice@gmail.test@{DOMAIN}",
    "alice@gmail.test.",
    "alice@[198.51.100.40]",
    "alice%gmail.test@[198.51.100.10]",
    "alice@gmail.test@[198.51.100.10]",
    '"alice@gmail.test"',
    "alice@GMAIL.TEST",
    f"alice@gmail.test%{DOMAIN}",
    f"{DOMAIN}!gmail.test!alice",
]
# Postfix refuses this one as bad syntax (a '%' in the domain) before any restriction.
SYNTAX_REFUSAL = {f"alice@gmail.test%{DOMAIN}": r"501 5\.1\.3 Bad recipient address syntax"}
STRANGER = "inbox"
HELO = "probe.gmail.test"
SENDER = "alice@gmail.test"
ADDR = "<[^>]*>"  # the recipient or the client, as Postfix names it in a refusal


@dataclass(frozen=True)
class Door:
    """A port of a group's hosts: who legitimately gets a recipient accepted there, and
    the reason a stranger's relay attempt is refused with."""

    control_client: str  # the lab host whose session of the probe's shape must be accepted
    control_rcpt: str
    control_auth: bool  # the control logs in (SASL) after STARTTLS
    refusal: str  # regex of the whole reply to every probe
    # Whose login the control uses (a file of .lab/secrets, and the user name), and its
    # sender: a tenant's login may send only from the tenant's domains.
    control_login: tuple[str, str] = (f"app1@{DOMAIN}", "sasl-app1")
    control_sender: str = SENDER


DOORS = {
    # The MX takes the company domain from anyone, and relays nothing else for strangers.
    ("mail_mx", 25): Door(STRANGER, f"bill@{DOMAIN}", False,
                          rf"554 5\.7\.1 {ADDR}: Relay access denied"),
    # Submission relays for logged-in clients only.
    ("mail_mx", 587): Door(STRANGER, "alice@gmail.test", True,
                           rf"554 5\.7\.1 {ADDR}: Recipient address rejected: Access denied"),
    # The bulk nodes take mail from the cluster's application servers only.
    ("mail_bulk", 25): Door("app1", "alice@gmail.test", False,
                            rf"554 5\.7\.1 {ADDR}: Client host rejected: Access denied"),
    # ... and from the tenants' logins on submission (docs/tenants.md).
    ("mail_bulk", 587): Door(STRANGER, "alice@gmail.test", True,
                             rf"554 5\.7\.1 {ADDR}: Recipient address rejected: Access denied",
                             control_login=("alpha", "sasl-tenant-alpha"),
                             control_sender="news@alpha.test"),
    # The SES SMTP stand-in (docs/ses.md) relays for SES's SMTP credentials only: the
    # bulk nodes log in with the access key id and the derived password.
    ("lab_aws", 587): Door("mail1", "alice@gmail.test", True,
                           rf"554 5\.7\.1 {ADDR}: Recipient address rejected: Access denied",
                           control_login=("AKIA{ses/access-key-id.txt}", "ses/smtp-password")),
}  # fmt: skip

# Runs in a lab host; reads {host, port, helo, sender, rcpts, control: rcpt | null, auth:
# [user, password] | null} as JSON on stdin (the password stays out of the process list).
# One SMTP session per batch of recipients (Postfix hangs up after smtpd_hard_error_limit
# errors, and slows down after the soft limit), each batch after the control recipient
# when there is one, STARTTLS whenever offered.  Prints JSON: {"listening": bool,
# "sessions": [{"ehlo", "auth_before_tls": bool, "login", "mail", "replies": {rcpt: "code
# text"}}]}; a session stops at the first command that is not answered 2xx.
SESSION = r"""
import json, smtplib, ssl, sys
job = json.load(sys.stdin)
out = {"listening": True, "sessions": []}
def text(code, msg):
    return f"{code} {msg.decode(errors='replace')}".replace("\n", " ")
try:
    rcpts = job["rcpts"]
    for i in range(0, len(rcpts) or 1, 6):
        got = {"ehlo": "", "auth_before_tls": False, "login": "", "mail": "", "replies": {}}
        out["sessions"].append(got)
        s = smtplib.SMTP(job["host"], job["port"], local_hostname=job["helo"], timeout=20)
        code, msg = s.ehlo()
        got["ehlo"] = text(code, msg.split(b"\n")[0])
        got["auth_before_tls"] = s.has_extn("auth")
        if code == 250 and s.has_extn("starttls"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            code, msg = s.ehlo()
            got["ehlo"] = text(code, msg.split(b"\n")[0] + b" (after STARTTLS)")
        if code == 250 and job["auth"]:
            try:
                code, msg = s.login(*job["auth"])
            except smtplib.SMTPAuthenticationError as e:
                code, msg = e.smtp_code, e.smtp_error
            got["login"] = text(code, msg)
        if code < 300:
            code, msg = s.mail(job["sender"])
            got["mail"] = text(code, msg)
        if code < 300:
            for r in ([job["control"]] if job["control"] else []) + rcpts[i:i + 6]:
                got["replies"][r] = text(*s.docmd("RCPT TO:<%s>" % r))
        try:
            s.quit()
        except smtplib.SMTPException:
            pass
except ConnectionRefusedError:
    out["listening"] = False
print(json.dumps(out))
"""


def smtp(
    client: str,
    host: str,
    port: int,
    rcpts: list[str],
    control: str = "",
    auth: tuple[str, str] | None = None,
    sender: str = SENDER,
) -> dict[str, Any]:
    """One client's SMTP sessions; ``auth``: (user, file of .lab/secrets) to log in with."""
    job = {
        "host": HOSTS[host]["ip"],
        "port": port,
        "helo": HELO,
        "sender": sender,
        "rcpts": rcpts,
        "control": control or None,
        "auth": [_login(auth[0]), _secret(auth[1])] if auth else None,
    }
    res = subprocess.run(
        ["podman", "exec", "-i", f"{PREFIX}-{client}", "python3", "-c", SESSION],
        input=json.dumps(job), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert res.returncode == 0, f"SMTP from {client} to {host}:{port} failed: {res.stderr[-800:]}"
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def _secret(name: str) -> str:
    return (ROOT / ".lab" / "secrets" / name).read_text().split()[0]


def _login(user: str) -> str:
    """A user name; ``{NAME}`` in it stands for a part made at run time, kept in
    .lab/secrets/NAME (the SES key id: group_vars/all/ses.yml)."""
    return re.sub(r"\{([^{}]+)\}", lambda m: _secret(m[1]), user)


def _reached_rcpt(where: str, session: dict[str, Any]) -> list[str]:
    """What kept a session from having its recipients judged, if anything."""
    problems = []
    if not session["ehlo"].startswith("250"):
        problems.append(f"{where}: EHLO {HELO} answered {session['ehlo']}")
    elif session["login"] and not session["login"].startswith("235"):
        problems.append(f"{where}: login answered {session['login']}")
    elif not session["mail"].startswith("250"):
        problems.append(f"{where}: MAIL FROM:<{SENDER}> answered {session['mail'] or '-'}")
    return problems


@pytest.mark.parametrize("port", [25, 587])
@pytest.mark.parametrize("host", TARGETS)
def test_no_host_relays_or_offers_auth_in_clear(host: str, port: int, evidence: list[str]) -> None:
    door = DOORS.get((HOSTS[host]["group"], port))
    # Where the stranger itself may deliver (the MX's port 25), every probe session holds
    # the control too, next to the probes.
    beside = door.control_rcpt if door and door.control_client == STRANGER else ""
    beside = "" if door and door.control_auth else beside
    out = smtp(STRANGER, host, port, RELAY_TRICKS, control=beside)
    if not out["listening"]:
        assert door is None, f"{host}:{port} is closed, yet it is a door: {door}"
        evidence.append(f"{host}:{port} closed")
        return
    assert door is not None, f"{host}:{port} listens, and no probe says what it may accept"
    # The positive control: a session of the same shape (HELO, sender, TLS) from a client
    # the host serves is accepted at RCPT, so the probes below are judged on their
    # recipients by the same path.
    control = smtp(
        door.control_client,
        host,
        port,
        [],
        door.control_rcpt,
        door.control_login if door.control_auth else None,
        door.control_sender,
    )
    where = f"control {door.control_client}->{host}:{port}"
    assert control["listening"], where
    (session,) = control["sessions"]
    assert not _reached_rcpt(where, session), _reached_rcpt(where, session)
    got = session["replies"][door.control_rcpt]
    assert got.startswith("250"), f"{where}: <{door.control_rcpt}> answered {got}"
    problems: list[str] = []
    replies: dict[str, str] = {}
    for session in out["sessions"]:
        problems += _reached_rcpt(f"{STRANGER}->{host}:{port}", session)
        if session["auth_before_tls"]:
            problems.append(f"{host}:{port} offers AUTH before STARTTLS")
        if beside and not session["replies"].get(beside, "").startswith("250"):
            problems.append(f"<{beside}> beside the probes: {session['replies'].get(beside)}")
        replies.update({r: v for r, v in session["replies"].items() if r != beside})
    for rcpt in RELAY_TRICKS:
        want = SYNTAX_REFUSAL.get(rcpt, door.refusal)
        if rcpt not in replies:
            problems.append(f"<{rcpt}> was never judged")
        elif not re.fullmatch(want, replies[rcpt].strip()):
            problems.append(f"<{rcpt}> answered {replies[rcpt]!r}, not /{want}/")
    assert not problems, problems
    reasons = sorted({re.sub(ADDR, "<>", r) for r in replies.values()})
    evidence.append(
        f"{host}:{port}: control {door.control_client} <{door.control_rcpt}> 250;"
        f" {len(replies)} probes refused: {'; '.join(reasons)}"
    )


# Runs in inbox: one session whose DATA hides a second message behind a non-standard
# end-of-data (<LF>.<LF> or <CR>.<CR>), the SMTP smuggling attack.  Prints the replies.
SMUGGLE = r"""
import socket, sys
host, rcpt, tag, eod = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
bad = {"LF": b"\n.\n", "CR": b"\r.\r"}[eod]
s = socket.create_connection((host, 25), timeout=30)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        ln = f.readline()
        if not ln:
            return "(connection closed)"
        lines.append(ln.decode(errors="replace").rstrip())
        if ln[3:4] != b"-":
            return lines[-1]
def cmd(line):
    s.sendall(line.encode() + b"\r\n")
    return reply()
got = [reply(), cmd("EHLO probe.gmail.test"), cmd("MAIL FROM:<alice@gmail.test>"),
       cmd(f"RCPT TO:<{rcpt}>"), cmd("DATA")]
data = (f"From: alice@gmail.test\r\nSubject: visible {tag}\r\n\r\none\r\n".encode() + bad
        + f"MAIL FROM:<alice@gmail.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        + f"From: alice@gmail.test\r\nSubject: smuggled {tag}\r\n\r\nhidden\r\n.\r\n".encode())
s.sendall(data)
got.append(reply())
s.settimeout(3)
try:
    while True:
        r = reply()
        got.append(r)
        if r == "(connection closed)":
            break
except OSError:
    pass
try:
    got.append(cmd("QUIT"))
except OSError:
    got.append("(connection closed)")
print("\n".join(got))
"""


@pytest.mark.parametrize("eod", ["LF", "CR"])
def test_smtp_smuggling_yields_one_message(eod: str, evidence: list[str]) -> None:
    tag = token()
    rcpt = f"bill@{DOMAIN}"
    res = subprocess.run(
        ["podman", "exec", f"{PREFIX}-inbox", "python3", "-c", SMUGGLE,
         MX["ip"], rcpt, tag, eod],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-800:]
    replies = res.stdout.splitlines()
    assert replies[4].startswith("354"), replies
    queued = [r for r in replies[5:] if r.startswith("250")]
    assert len(queued) <= 1, f"more than one message accepted in one session: {replies}"
    # Whatever was queued is delivered by now or soon; a smuggled second message would
    # arrive next to it as a file of its own.
    maildir = f"/srv/inbox/{rcpt}/new/"
    deadline = time.monotonic() + (60 if queued else 10)
    files: list[str] = []
    while time.monotonic() < deadline:
        files = sh("inbox", f"grep -l -r -F '{tag}' {maildir} 2>/dev/null").out.split()
        if queued and files:
            time.sleep(3)  # a second message from the same session would be right behind
            files = sh("inbox", f"grep -l -r -F '{tag}' {maildir} 2>/dev/null").out.split()
            break
        time.sleep(1)
    assert len(files) == len(queued), f"{len(queued)} queued, {len(files)} delivered: {replies}"
    # The smuggled commands may travel as text inside the one message (Postfix's
    # "normalize"), but never as a message of their own.
    for path in files:
        msg = sh("inbox", f"cat {path}").out
        subjects = [v for n, v in headers(msg) if n.lower() == "subject"]
        assert subjects == [f"visible {tag}"], msg[:2000]
    evidence.append(f"<{eod}>.<{eod}>: {replies[5][:80]}; {len(files)} message delivered")


def _testssl(target: str, workdir: str) -> dict[str, str]:
    out = f"{workdir}/{target.replace(':', '_')}.json"
    subprocess.run(
        ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--protocols",
         "--starttls", "smtp", "--jsonfile", out, target],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    with open(out) as fh:
        return {e["id"]: e["finding"] for e in json.load(fh)}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("testssl") is None, reason="testssl.sh is not installed")
@pytest.mark.parametrize("port", [587, 25])
def test_tls_below_1_2_is_refused(port: int, tmp_path: Path, evidence: list[str]) -> None:
    found = _testssl(f"{MX['ip']}:{port}", str(tmp_path))
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert old in found, found
        assert found[old].startswith("not offered"), f"{old}: {found[old]}"
    assert found.get("TLS1_2", "").startswith("offered"), found
    evidence.append(
        f"testssl.sh mx1:{port}: "
        + ", ".join(f"{k} {found.get(k, '?')}" for k in ("TLS1_1", "TLS1_2", "TLS1_3"))
    )


def _by_signer(hosts: list[str]) -> dict[Signer, list[str]]:
    found: dict[Signer, list[str]] = {}
    for host in hosts:
        found.setdefault(signer(host), []).append(host)
    return found


# The files each role promises to keep from other users: (hosts, path, mode, owner:group).
PROMISED = [
    (["mx1", "mail1", "mail2", "app1"], "/etc/postfix/tls/key.pem", "600", "root:root"),
    # The DKIM keys where each host's signer keeps them (OpenDKIM's or Rspamd's).
    *[
        row
        for s, hosts in _by_signer(["mx1", "mail1", "mail2"]).items()
        for row in (
            (hosts, f"{s.keys_dir}/{DOMAIN}", "700", f"{s.user}:{s.user}"),
            (hosts, f"{s.keys_dir}/{DOMAIN}/*.private", "600", f"{s.user}:{s.user}"),
        )
    ],
    (["mx1"], "/etc/dovecot/sasl-users", "640", "root:dovecot"),
    (["app1"], "/etc/postfix/sasl_passwd", "600", "root:root"),
    (["mx1", "mail1", "mail2", "monitor"], "/etc/mailops/mailops.toml", "640", "root:mailops"),
    (["mx1", "mail1", "mail2", "monitor"], "/etc/mailops/unsubscribe.keys", "640", "root:mailops"),
    (["monitor"], f"/etc/nginx/tls/unsubscribe.{DOMAIN}.key", "600", "root:root"),
]  # fmt: skip


def test_secret_files_have_the_promised_modes(evidence: list[str]) -> None:
    wrong = []
    checked = 0
    for hosts, path, mode, owner in PROMISED:
        for host in hosts:
            # A glob (the DKIM keys: one per selector) must match at least one file.
            res = sh(host, f"stat -c '%a %U:%G %n' {path}")
            if res.rc != 0 or not res.out.strip():
                wrong.append(f"{host}:{path}: {res.err.strip() or 'missing'}")
            for line in res.out.splitlines():
                got, name = line.rsplit(" ", 1)
                checked += 1
                if got != f"{mode} {owner}":
                    wrong.append(f"{host}:{name} is {got}, promised {mode} {owner}")
    assert not wrong, wrong
    evidence.append(f"{checked} key and password files with the promised modes")


def test_no_file_holding_a_secret_is_readable_by_others(evidence: list[str]) -> None:
    needles = [n for values in labtool.secret_strings().values() for n in values]
    assert needles, "the lab generated no secrets to look for"
    readable, holders = [], 0
    for host in HOSTS:
        res = subprocess.run(
            ["podman", "exec", "-i", f"{PREFIX}-{host}", "sh", "-c",
             "grep -rlsF -f /dev/stdin /etc /var/lib /var/spool/postfix/etc /opt 2>/dev/null"
             " | xargs -r stat -c '%a %U:%G %n'"],
            input="\n".join(needles) + "\n", capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        for line in res.stdout.splitlines():
            mode, _, path = line.split(" ", 2)
            holders += 1
            if int(mode, 8) & 0o007:
                readable.append(f"{host}:{path} ({mode})")
    assert holders, "no host holds any of the lab's secrets: the search is broken"
    assert not readable, f"secrets readable by any user: {readable}"
    evidence.append(f"{holders} files on the hosts hold a lab secret; none readable by others")
