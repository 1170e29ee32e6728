"""Drive the lab's hosts from tests: run commands in them, send real SMTP, read Maildirs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab"
PREFIX = "mailops-lab"
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "tools" / "podman" / "containers.conf"))


@dataclass
class Result:
    rc: int
    out: str
    err: str


def sh(host: str, script: str, timeout: float = 60) -> Result:
    """Run a shell script in a lab host; never raises on a non-zero exit."""
    proc = subprocess.run(
        ["podman", "exec", f"{PREFIX}-{host}", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def inventory() -> dict[str, dict[str, str]]:
    """host -> {ip, fqdn, group} from inventories/lab."""
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    domain = yaml.safe_load((INVENTORY / "group_vars/all/main.yml").read_text())["mail_domain"]
    hosts: dict[str, dict[str, str]] = {}
    for group, node in inv["all"]["children"].items():
        for name, hv in (node.get("hosts") or {}).items():
            hosts[name] = {
                "ip": hv["public_ipv4"],
                "fqdn": hv.get("mail_fqdn", f"{name}.{domain}"),
                "group": group,
            }
    return hosts


def mail_domain() -> str:
    data = yaml.safe_load((INVENTORY / "group_vars/all/main.yml").read_text())
    return str(data["mail_domain"])


def token() -> str:
    return uuid.uuid4().hex[:12]


def letters(n: int = 12) -> str:
    """A token of letters only: Postgrey folds digits and +extensions out of senders,
    so only letters make a triplet it has never seen."""
    return "".join(chr(ord("a") + b % 26) for b in uuid.uuid4().bytes[:n])


def reply_to(res: Result, command: str) -> str:
    """The server's reply to one command (e.g. 'RCPT'), as '<- 250 ...' or '<** 450 ...'."""
    lines = res.out.splitlines()
    for i, ln in enumerate(lines):
        if ln.lstrip(" ~->").startswith(command) and ln.lstrip().startswith(("->", "~>")):
            for nxt in lines[i + 1 :]:
                if nxt.startswith(("<**", "<~*")):
                    return "<** " + nxt[3:].strip()
                if nxt.startswith(("<-", "<~")):
                    return "<- " + nxt[2:].strip()
    return ""


def swaks(host: str, args: str, timeout: float = 60) -> Result:
    """Run swaks in a lab host (the real SMTP dialogue is in the output)."""
    return sh(host, f"swaks --timeout 20 {args} 2>&1", timeout=timeout)


def smtp_reply(res: Result) -> str:
    """The server's first error reply, else its last reply, as '<** 550 ...'/'<- 250 ...'.

    swaks marks replies '<-' and errors '<**' in clear text, '<~' and '<~*' under TLS.
    """
    errors, replies = [], []
    for ln in res.out.splitlines():
        if ln.startswith(("<**", "<~*")):
            errors.append("<** " + ln[3:].strip())
        elif ln.startswith(("<-", "<~")):
            replies.append("<- " + ln[2:].strip())
    return errors[0] if errors else (replies[-1] if replies else "")


def wait_for_maildir(address: str, needle: str, timeout: float = 60) -> str:
    """Wait until a message containing `needle` is in inbox's Maildir for `address`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = sh("inbox", f"grep -l -r -F '{needle}' /srv/inbox/{address}/new/ 2>/dev/null")
        if res.rc == 0 and res.out.strip():
            path = res.out.split()[0]
            return sh("inbox", f"cat {path}").out
        time.sleep(1)
    raise AssertionError(f"no message with {needle!r} reached /srv/inbox/{address}/new/")


def headers(message: str) -> list[tuple[str, str]]:
    """Unfolded (name, value) header pairs of a message."""
    out: list[tuple[str, str]] = []
    for line in message.split("\n\n", 1)[0].splitlines():
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        elif ":" in line:
            name, value = line.split(":", 1)
            out.append((name.strip(), value.strip()))
    return out


def wait_for(what: str, probe: Callable[[], bool], timeout: float, every: float = 1) -> float:
    """Seconds until ``probe()`` is true; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if probe():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


SINK_PID = "/run/lab-sink.pid"


@contextlib.contextmanager
def sink_on_inbox(command: str) -> Iterator[None]:
    """Put ``command`` (a sink such as smtp-sink) on inbox's port 25 in place of its Postfix.

    The outside world then takes mail as fast as it comes and verifies nothing, so what
    a check or benchmark measures is the sending side.  Afterwards the sink is stopped
    and inbox's Postfix started again, also when the body failed.
    """
    ip = inventory()["inbox"]["ip"]
    sh("inbox", "postfix stop >/dev/null 2>&1")
    try:
        wait_for("inbox's Postfix to stop", lambda: sh("inbox", "pgrep -x master").rc != 0, 30)
        res = sh(
            "inbox",
            f"setsid sh -c 'echo $$ > {SINK_PID}; exec {command}' "
            "</dev/null >/tmp/lab-sink.log 2>&1 &",
        )
        assert res.rc == 0, f"the sink did not start: {res.out}{res.err}"
        wait_for(
            f"the sink to listen on {ip}:25 (/tmp/lab-sink.log on inbox)",
            lambda: sh("inbox", f"ss -Hltn 'sport = :25' | grep -qF '{ip}:25'").rc == 0,
            30,
            every=0.5,
        )
        yield
    finally:
        sh("inbox", f"kill $(cat {SINK_PID}) 2>/dev/null; sleep 1; rm -f {SINK_PID}")
        sh("inbox", "postfix start >/dev/null 2>&1")


def submission_reply(node: str, address: str) -> str:
    """A bulk node's reply at RCPT when app1 submits mail to ``address`` (as the
    applications do): '<** 550 ... suppressed' for a suppressed address."""
    ip = inventory()[node]["ip"]
    res = swaks(
        "app1", f"--server {ip} --from bounces@{mail_domain()} --to {address} --quit-after RCPT"
    )
    return smtp_reply(res)


def lab_tool() -> ModuleType:
    """tools/lab.py as a module (its lab_lock(), recreate(), ...); it is a script, not a
    package, so it is loaded from its path."""
    spec = importlib.util.spec_from_file_location("mailops_lab", ROOT / "tools" / "lab.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look themselves up there)
    spec.loader.exec_module(mod)
    return mod


def file_mtime(host: str, path: str) -> float | None:
    """When a file in a lab host was last written (seconds since the epoch), None if absent.

    The containers share this machine's kernel clock, so it compares with time.time().
    """
    res = sh(host, f"stat -c %Y {path}")
    return float(res.out) if res.rc == 0 and res.out.strip() else None


_T = TypeVar("_T")


def wait_for_value(
    what: str,
    probe: Callable[[], _T],
    accept: Callable[[_T], bool],
    timeout: float,
    every: float = 2,
) -> _T:
    """The first value of ``probe()`` that ``accept`` takes, read every ``every`` seconds;
    AssertionError naming ``what`` and the last value after ``timeout`` seconds.

    For the effect of a scheduled job: the check waits for what the job changed and never
    runs the job itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if accept(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last seen: {last!r:.300})")
        time.sleep(every)


def start_again(host: str) -> None:
    """After ``podman start`` of a stopped host, bring back what its converge set up: the
    containers have no init, so nothing a role started comes back by itself (its daemons'
    init scripts are there, as a boot would run them), nor the extra addresses (a bulk
    node's pool addresses, roles/lab_addresses)."""
    entry = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    hv: dict[str, object] = {}
    for node in entry["all"]["children"].values():
        hv = (node.get("hosts") or {}).get(host) or hv
    ip = inventory()[host]["ip"]
    pools = hv.get("mail_pool_addresses", []) if isinstance(hv, dict) else []
    assert isinstance(pools, list)
    adds = "; ".join(
        f"ip addr add {p['address']}/32 dev $dev label $dev:lab 2>/dev/null" for p in pools
    )
    res = sh(
        host,
        f"dev=$(ip -o -4 addr show | awk '$4 ~ /^{ip}\\//{{print $2; exit}}'); {adds or ':'}; "
        "postfix start; "
        # The milters and policy daemons Postfix asks (the DKIM signer, OpenDKIM or
        # Rspamd, whichever the converge enabled; the tenants' policy, the unsubscribe
        # milter: /etc/init.d/mailops-*), and Dovecot's SASL.
        "for s in opendkim rspamd dovecot $(cd /etc/init.d && ls -d mailops-* 2>/dev/null); do "
        "[ -x /etc/init.d/$s ] && ls /etc/rc2.d/S??$s >/dev/null 2>&1 && service $s start; done; "
        "service ssh start; service cron start; true",
    )
    assert res.rc == 0, res.out + res.err
    # Back means Postfix can reach every milter and policy service it names again:
    # one missing would answer 451 to all mail from here on.
    wait_for_value(
        f"{host}: every unix socket Postfix's milters and policy services name accepts",
        lambda: sh(host, f"python3 -c {shlex.quote(_SOCKETS_UP)}").out.strip(),
        lambda out: out.startswith("ok"),
        timeout=30,
    )


# Runs on a lab host: connects to each unix: socket in smtpd_milters, non_smtpd_milters
# and the check_policy_service entries of main.cf; prints "ok N" or what refused.
_SOCKETS_UP = r"""
import re, socket, subprocess
conf = subprocess.run(["postconf"], capture_output=True, text=True).stdout
queue = subprocess.run(["postconf", "-h", "queue_directory"], capture_output=True,
                       text=True).stdout.strip()
names = set()
for line in conf.splitlines():
    key = line.split("=", 1)[0].strip()
    if key.endswith("_milters") or "check_policy_service" in line:
        names.update(re.findall(r"unix:([^\s,{}]+)", line.split("=", 1)[-1]))
down = []
for name in sorted(names):
    path = name if name.startswith("/") else f"{queue}/{name}"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError as exc:
        down.append(f"{path}: {exc}")
    finally:
        s.close()
print("; ".join(down) if down else f"ok {len(names)}")
"""
