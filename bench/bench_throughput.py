"""A bulk node's throughput with DKIM signing, side by side with stock Debian Postfix.

In the lab: ``smtp-source`` on app1 hands 20,000 messages of 5 KB (20 sessions at a time)
to mail1, which relays them to ``smtp-sink`` listening on inbox's address in place of
inbox's Postfix.  Throughput is counted from mail1's log: delivered messages over the
seconds from its first to its last ``status=sent`` line to inbox.  Four runs on the
same containers, one after the other:

* ours: mail1 as the roles converge it (OpenDKIM signing every message, header checks,
  the per-destination transport for gmail.test: 10 connections);
* stock Postfix: Debian's own main.cf and master.cf (main.cf.debian, master.cf.dist)
  with only the host name, app1 in mynetworks and the lab's log file set (and long
  queue ids, so that queue files keep their names across the swap), no milter: the
  ceiling (its default is 20 connections per destination);
* stock Postfix with stock OpenDKIM: the same, plus Debian's packaged opendkim.conf
  (taken from the .deb at run time) with what signing needs at least (Domain, Selector,
  KeyFile, app1 as an internal host) and an inet socket, as Debian's guides set it up;
* the same OpenDKIM switched to ``Mode v``: the message still goes through every milter
  round trip but is not signed.  Not a target, a bound reported in the ceiling's notes:
  what the milter hop alone costs any milter-based signer on this machine.

Before each run one message goes through a sink that keeps it, to prove that the
signing runs sign and the others do not.  mail1's /etc/postfix, /etc/opendkim.conf
and /etc/default/opendkim are copied aside first and copied back afterwards (OpenDKIM
and Postfix restarted; the benchmark fails if that fails), and inbox's Postfix takes
port 25 back.  Target: ours at least 70% of the ceiling.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchlib import Result
from lablib import lab, log_lines, log_since, must, sh, sink_on_inbox, stamp, wait_for

MESSAGES = 20_000
SIZE = 5 * 1024
SESSIONS = 20
TARGET = 0.70
RUN_TIMEOUT = 900
SAVED = "/root/bench-saved"

SAVE = f"""set -e
rm -rf {SAVED}; mkdir -p {SAVED}
cp -a /etc/postfix {SAVED}/postfix
cp -a /etc/opendkim.conf {SAVED}/opendkim.conf
[ -e /etc/default/opendkim ] && cp -a /etc/default/opendkim {SAVED}/default-opendkim || true
"""

RESTORE = f"""set -e
[ -d {SAVED}/postfix ] || exit 0
postfix stop >/dev/null 2>&1 || true
for i in $(seq 30); do pgrep -x master >/dev/null || break; sleep 1; done
rm -rf /etc/postfix && cp -a {SAVED}/postfix /etc/postfix
cp -a {SAVED}/opendkim.conf /etc/opendkim.conf
[ -e {SAVED}/default-opendkim ] && cp -a {SAVED}/default-opendkim /etc/default/opendkim || true
service opendkim restart >/dev/null 2>&1
postfix start >/dev/null 2>&1
rm -rf {SAVED}
"""

STOCK_POSTFIX = """set -e
postfix stop >/dev/null 2>&1 || true
for i in $(seq 30); do pgrep -x master >/dev/null || break; sleep 1; done
cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
postconf -e "myhostname=$(hostname -f)" 'mydestination=$myhostname, localhost' \
  "mynetworks=127.0.0.0/8 $1/32" relayhost= inet_protocols=ipv4 \
  maillog_file=/var/log/mail.log enable_long_queue_ids=yes
service opendkim stop >/dev/null 2>&1 || true
service postfix start >/dev/null
"""

# The same OpenDKIM in the path, verifying only: every milter round trip, no signature.
# How much of the ceiling the milter hop alone leaves for any milter-based signer.
NOT_SIGNING = """set -e
sed -i '/^Mode[[:space:]]/d' /etc/opendkim.conf
echo 'Mode v' >> /etc/opendkim.conf
service opendkim restart >/dev/null
"""

# Debian's packaged opendkim.conf, from the .deb of the installed version, then what
# signing needs at least.
STOCK_OPENDKIM = """set -e
cd /tmp
pkg="opendkim=$(dpkg-query -W -f '${Version}' opendkim)"
apt-get download "$pkg" >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get download "$pkg" >/dev/null; }
dpkg-deb --fsys-tarfile opendkim_*.deb | tar -xO ./etc/opendkim.conf > /etc/opendkim.conf
rm -f opendkim_*.deb
key=$(ls /etc/opendkim/keys/$2/*.private | head -n 1)
sed -i 's/^Socket[[:space:]].*/Socket inet:8891@localhost/' /etc/opendkim.conf
printf 'Domain %s\\nSelector %s\\nKeyFile %s\\nInternalHosts 127.0.0.1, %s\\n' \
  "$2" "$(basename "$key" .private)" "$key" "$1" >> /etc/opendkim.conf
[ -e /etc/default/opendkim ] && sed -i 's/^SOCKET=/#SOCKET=/' /etc/default/opendkim || true
service opendkim restart >/dev/null
postconf -e smtpd_milters=inet:localhost:8891 'non_smtpd_milters=$smtpd_milters'
postfix reload >/dev/null
"""


def queue_empty() -> bool:
    return not sh("mail1", "postqueue -j | head -c 1").out


def send(app1: str, mail1: str, count: int, sender: str, rcpt: str) -> None:
    must(
        "app1",
        f"timeout {RUN_TIMEOUT} smtp-source -s {min(SESSIONS, count)} -l {SIZE} -m {count} "
        f"-f {sender} -t {rcpt} -M {app1} {mail1}:25",
        timeout=RUN_TIMEOUT + 30,
    )


def proof(hosts: dict[str, dict[str, str]], sender: str, rcpt: str, signed: bool) -> None:
    """One message through a sink that keeps it: signed when it should be, else not."""
    inbox = hosts["inbox"]["ip"]
    dump = "/tmp/bench-proof.eml"
    sh("inbox", f"rm -f {dump}")
    with sink_on_inbox(f"smtp-sink -4 -u postfix -D {dump} {inbox}:25 64"):
        send(hosts["app1"]["fqdn"], hosts["mail1"]["ip"], 1, sender, rcpt)
        wait_for(
            "the proof message at the sink",
            lambda: sh("inbox", f"grep -qi '^Subject\\|^From:' {dump}").rc == 0,
            120,
        )
        wait_for("mail1's queue to empty", queue_empty, 120)
    has = sh("inbox", f"grep -qi '^DKIM-Signature:' {dump}").rc == 0
    sh("inbox", f"rm -f {dump}")
    if has != signed:
        raise RuntimeError(
            f"the proof message was {'signed' if has else 'not signed'}; expected "
            f"{'a' if signed else 'no'} DKIM signature"
        )


def timed_run(hosts: dict[str, dict[str, str]], label: str, sender: str, rcpt: str) -> float:
    """Messages per second from mail1's first to last delivery to the sink."""
    inbox = hosts["inbox"]["ip"]
    wait_for("mail1's queue to empty", queue_empty, 300)
    start = log_lines("mail1")
    pattern = f"relay=[^,]*\\[{inbox}\\]:25,.* status=sent"
    began = time.monotonic()
    with sink_on_inbox(f"smtp-sink -4 -u postfix {inbox}:25 1024"):
        send(hosts["app1"]["fqdn"], hosts["mail1"]["ip"], MESSAGES, sender, rcpt)

        def count() -> int:
            out = sh(
                "mail1", f"tail -n +{start + 1} /var/log/mail.log | grep -cE '{pattern}'"
            ).out.strip()
            return int(out or 0)

        wait_for(f"{MESSAGES} deliveries ({label})", lambda: count() >= MESSAGES, RUN_TIMEOUT, 2)
    wall = time.monotonic() - began
    sent = log_since("mail1", start, pattern)
    seconds = stamp(sent[-1]) - stamp(sent[0])
    rate = len(sent) / max(seconds, 1.0)
    print(
        f"  {label}: {len(sent)} delivered in {seconds:.0f} s by the log "
        f"({rate:.0f} msg/s; {wall:.0f} s from the first connection)",
        flush=True,
    )
    return rate


def run(workdir: Path) -> list[Result]:
    del workdir  # everything happens in the lab's hosts
    with lab() as hosts:
        domain = hosts["mx1"]["fqdn"].split(".", 1)[1]
        sender, rcpt = f"bench@{domain}", "bench@gmail.test"
        app1_ip = hosts["app1"]["ip"]
        rates: dict[str, float] = {}
        must("mail1", SAVE)
        try:
            proof(hosts, sender, rcpt, signed=True)
            rates["ours"] = timed_run(hosts, "ours (role config, DKIM)", sender, rcpt)
            must("mail1", f"sh -s {app1_ip} <<'EOF'\n{STOCK_POSTFIX}EOF", timeout=120)
            proof(hosts, sender, rcpt, signed=False)
            rates["stock"] = timed_run(hosts, "stock Postfix, no milter", sender, rcpt)
            must(
                "mail1",
                f"sh -s {app1_ip} {domain} <<'EOF'\n{STOCK_OPENDKIM}EOF",
                timeout=300,
            )
            proof(hosts, sender, rcpt, signed=True)
            rates["stock_dkim"] = timed_run(hosts, "stock Postfix + stock OpenDKIM", sender, rcpt)
            must("mail1", NOT_SIGNING, timeout=120)
            proof(hosts, sender, rcpt, signed=False)
            rates["hop"] = timed_run(hosts, "stock Postfix + OpenDKIM not signing", sender, rcpt)
        finally:
            restored = sh("mail1", RESTORE, timeout=120)
            if restored.rc != 0:
                print(f"  mail1 NOT restored: {restored.out}{restored.err}", flush=True)
        if restored.rc != 0:
            raise RuntimeError("mail1's configuration could not be put back; converge the lab")
    shape = f"{MESSAGES} x {SIZE // 1024} KB, {SESSIONS} sessions from app1"
    peers = (
        ("no-milter ceiling", "stock", "stock Debian Postfix, no DKIM",
         f"{shape}; mail1 -> smtp-sink on inbox; counted from mail1's log; OpenDKIM in "
         f"the path verifying only (the milter round trips, no signature): "
         f"{rates['hop']:.0f} msg/s, {rates['hop'] / rates['stock']:.2f} of the ceiling"),
        ("stock DKIM", "stock_dkim", "stock Debian Postfix + stock OpenDKIM",
         f"{shape}; the same signing work with the packages' own settings"),
    )  # fmt: skip
    ours = rates["ours"]
    return [
        Result(
            name=f"bulk node throughput vs {what}",
            unit="msg/s",
            ours=round(ours, 1),
            peer=round(rates[key], 1),
            peer_name=peer_name,
            ratio=round(ours / rates[key], 3),
            target=TARGET,
            met=ours / rates[key] >= TARGET,
            notes=notes,
        )
        for what, key, peer_name, notes in peers
    ]
