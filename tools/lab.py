"""Bring the container lab up, converge it, prove mail flows, and tear it down again.

    tools/lab.py up [--no-check]   build images, start hosts, converge, run the checks
    tools/lab.py check             run the end-to-end checks against the running lab
    tools/lab.py test              as `up`, plus an idempotence run; removes the lab
                                   afterwards when it was not running before
    tools/lab.py down              remove exactly the containers, network and images
                                   that the lab made (they carry the label below)
    tools/lab.py status            what is running
    tools/lab.py recreate HOST     remove one host's container, start it again from the
                                   image and converge it alone

Everything the lab creates carries the label ``mailops.lab=1`` and a ``mailops-lab``
name prefix, so ``down`` can remove it and nothing else.  The hosts, their addresses
and groups come from inventories/lab/hosts.yml; the subnet is checked at run time
against this machine's routes and resolvers so the lab never shadows them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".lab"
INVENTORY = ROOT / "inventories" / "lab"
LABEL = "mailops.lab=1"
PREFIX = "mailops-lab"
NETWORK = f"{PREFIX}-net"
BASE_IMAGE = f"localhost/{PREFIX}-base:bookworm"
NODE_IMAGE = f"localhost/{PREFIX}-node:bookworm"
SUITE = "bookworm"

# Debian packages baked into the node image.  The roles still declare and install what
# they need (so the same roles work on a bare EC2 instance); baking them in only saves
# the lab from downloading them on every fresh start.
NODE_PACKAGES = [
    "python3", "python3-apt", "python3-venv", "ca-certificates", "openssl", "iproute2",
    "procps", "cron", "sudo", "less", "netcat-openbsd", "dnsutils", "swaks",
    "postfix", "postfix-pcre", "postfix-pgsql", "libsasl2-modules", "dovecot-core",
    "opendkim", "opendkim-tools", "opendmarc", "postgrey", "postfix-policyd-spf-python",
    "nsd", "unbound", "nginx-light", "openssh-server", "openssh-client",
    "postgresql", "python3-psycopg2", "rsync", "tzdata", "rspamd",
]  # fmt: skip


def log(msg: str) -> None:
    print(f"\033[1m>>> {msg}\033[0m" if sys.stdout.isatty() else f">>> {msg}", flush=True)


def run(cmd: list[str], check: bool = True, capture: bool = False, **kw: Any) -> str:
    proc = subprocess.run(cmd, check=False, text=True, capture_output=capture, **kw)
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip() if capture else ""
        raise SystemExit(f"lab: command failed ({proc.returncode}): {' '.join(cmd)}\n{detail}")
    return proc.stdout if capture else ""


def podman(*args: str, check: bool = True, capture: bool = True) -> str:
    return run(["podman", *args], check=check, capture=capture)


# --------------------------------------------------------------------------- inventory


@dataclass
class Host:
    name: str
    ip: str
    fqdn: str
    groups: list[str] = field(default_factory=list)
    caps: list[str] = field(default_factory=list)
    # More addresses the host carries on the lab network besides `ip` (a bulk node's
    # pool addresses): roles/lab_addresses adds them inside the container.
    extra: list[str] = field(default_factory=list)


@dataclass
class Lab:
    subnet: ipaddress.IPv4Network
    gateway: str
    dns_ip: str
    hosts: list[Host]


def load_lab() -> Lab:
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    allvars = yaml.safe_load((INVENTORY / "group_vars" / "all" / "lab.yml").read_text())
    domain = yaml.safe_load((INVENTORY / "group_vars" / "all" / "main.yml").read_text())[
        "mail_domain"
    ]
    hosts: dict[str, Host] = {}

    def walk(group: str, node: dict[str, Any]) -> None:
        for hname, hvars in (node.get("hosts") or {}).items():
            hvars = hvars or {}
            h = hosts.setdefault(
                hname,
                Host(
                    name=hname,
                    ip=hvars["public_ipv4"],
                    fqdn=hvars.get("mail_fqdn", f"{hname}.{domain}"),
                    caps=list(hvars.get("lab_caps", [])),
                    extra=[str(p["address"]) for p in hvars.get("mail_pool_addresses") or []],
                ),
            )
            h.groups.append(group)
        for child, cnode in (node.get("children") or {}).items():
            walk(child, cnode or {})

    walk("all", inv["all"])
    dns = [h for h in hosts.values() if "lab_dns" in h.groups]
    if len(dns) != 1:
        raise SystemExit("lab: inventories/lab/hosts.yml must put exactly one host in lab_dns")
    return Lab(
        subnet=ipaddress.ip_network(allvars["lab_subnet"]),
        gateway=allvars["lab_gateway"],
        dns_ip=dns[0].ip,
        hosts=list(hosts.values()),
    )


def preflight(lab: Lab) -> None:
    """Refuse a subnet that overlaps this machine's routes or resolvers."""
    routes = run(["ip", "-4", "route"], capture=True)
    for line in routes.splitlines():
        dest = line.split()[0]
        if dest == "default":
            continue
        try:
            net = ipaddress.ip_network(dest, strict=False)
        except ValueError:
            continue
        if net.overlaps(lab.subnet) and "podman" not in line and "cni" not in line:
            owner = line.split(" dev ")[1].split()[0] if " dev " in line else "?"
            if owner.startswith(("cni-podman", "podman")):
                continue
            raise SystemExit(
                f"lab: subnet {lab.subnet} overlaps the route '{line.strip()}'; "
                "set lab_subnet in inventories/lab/group_vars/all/lab.yml to a free range"
            )
    for ns in resolvers():
        if ipaddress.ip_address(ns) in lab.subnet:
            raise SystemExit(f"lab: the machine's resolver {ns} is inside {lab.subnet}")
    if not resolvers():
        raise SystemExit(
            "lab: /etc/resolv.conf names no resolver the containers can reach "
            "(a 127.x stub cannot be reached from containers); ns1 forwards to it"
        )
    problems = address_problems(lab)
    if problems:
        raise SystemExit("lab: " + "; ".join(problems))


def address_problems(lab: Lab) -> list[str]:
    """Addresses outside the lab subnet, or claimed twice (a host's own and the extra
    ones: two containers answering ARP for one address would take turns receiving it)."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    for h in lab.hosts:
        for what, addr in [("public_ipv4", h.ip)] + [("pool address", a) for a in h.extra]:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                problems.append(f"{h.name}'s {what} {addr!r} is not an IP address")
                continue
            if ip not in lab.subnet:
                problems.append(f"{h.name}'s {what} {addr} is not in {lab.subnet}")
            elif addr in owner:
                problems.append(f"{h.name}'s {what} {addr} is also {owner[addr]}'s")
            owner.setdefault(addr, h.name)
    return problems


def resolvers() -> list[str]:
    text = Path("/etc/resolv.conf").read_text()
    found = re.findall(r"(?m)^nameserver\s+(\S+)", text)
    return [a for a in found if ":" not in a and not a.startswith("127.")]


# --------------------------------------------------------------------------- images


def apt_mirror() -> str:
    """The Debian mirror this machine uses (LAB_APT_MIRROR overrides)."""
    if os.environ.get("LAB_APT_MIRROR"):
        return os.environ["LAB_APT_MIRROR"]
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            m = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    raise SystemExit("lab: no Debian mirror found in /etc/apt; set LAB_APT_MIRROR")


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def build_images() -> None:
    if not image_exists(BASE_IMAGE):
        mirror = apt_mirror()
        log(f"building {BASE_IMAGE} with debootstrap from the machine's mirror")
        with tempfile.TemporaryDirectory(prefix="mailops-lab-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(
                ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(rootfs),
                 mirror],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            run(
                ["podman", "import", "--change", "CMD=/bin/bash", "-",
                 BASE_IMAGE],
                stdin=tar.stdout, capture=True,
            )  # fmt: skip
            if tar.wait() != 0:
                raise SystemExit("lab: tar of the debootstrap tree failed")
        podman("image", "tag", BASE_IMAGE, BASE_IMAGE)
    if not image_exists(NODE_IMAGE):
        log(f"building {NODE_IMAGE}: Debian packages the roles use ({len(NODE_PACKAGES)})")
        builder = f"{PREFIX}-build"
        podman("rm", "-f", builder, check=False)
        script = (
            "set -e; printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; "
            "chmod 755 /usr/sbin/policy-rc.d; export DEBIAN_FRONTEND=noninteractive; "
            "echo 'postfix postfix/main_mailer_type select No configuration' "
            "| debconf-set-selections; apt-get update -qq; "
            f"apt-get install -y -qq --no-install-recommends {' '.join(NODE_PACKAGES)} "
            ">/dev/null; apt-get clean; rm -rf /var/lib/apt/lists/*; "
            # The roles start services; nothing should run at container start.
            "rm -f /usr/sbin/policy-rc.d"
        )
        run(
            ["podman", "run", "--name", builder, "--label", LABEL, BASE_IMAGE,
             "/bin/sh", "-c", script],
        )  # fmt: skip
        podman("commit", "--quiet", builder, NODE_IMAGE)
        podman("rm", "-f", builder)


# --------------------------------------------------------------------------- containers


def container(host: Host | str) -> str:
    return f"{PREFIX}-{host.name if isinstance(host, Host) else host}"


def running(name: str) -> bool:
    out = podman("ps", "--filter", f"name=^{name}$", "--format", "{{.Names}}", check=False)
    return name in out.split()


def mac_for(ip: str) -> str:
    """A fixed, locally administered MAC per address.  podman picks a new random one on
    every start, and the machine's neighbour cache then sends a restarted host's
    packets to its old MAC for half a minute."""
    return "02:00:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


def missing_caps(name: str, caps: list[str]) -> list[str]:
    """The capabilities of `caps` that the running container `name` lacks (podman
    grants capabilities when it starts a container, never later)."""
    if not caps:
        return []
    out = podman("inspect", "--format", "{{.EffectiveCaps}}", name, check=False)
    have = set(out.strip().strip("[]").split())
    return [c for c in caps if f"CAP_{c.upper().removeprefix('CAP_')}" not in have]


def start_hosts(lab: Lab) -> None:
    nets = podman("network", "ls", "--format", "{{.Name}}").split()
    if NETWORK not in nets:
        log(f"creating network {NETWORK} ({lab.subnet})")
        podman(
            "network", "create", "--label", LABEL, "--subnet", str(lab.subnet),
            "--gateway", lab.gateway, NETWORK,
        )  # fmt: skip
    for h in lab.hosts:
        name = container(h)
        if running(name):
            missing = missing_caps(name, h.caps)
            if missing:
                log(
                    f"{h.name} runs without {', '.join(missing)} (lab_caps in hosts.yml): "
                    f"`tools/lab.py recreate {h.name}` starts it again with them"
                )
            continue
        podman("rm", "-f", name, check=False)
        log(f"starting {h.name} ({h.fqdn}, {h.ip}) in groups {', '.join(h.groups)}")
        # SYS_PTRACE: Debian's init scripts find their daemons through /proc/PID/exe,
        # which root may only read for another user's process with this capability;
        # without it `service X status/stop` misses daemons that dropped privileges.
        caps: list[str] = ["--cap-add", "SYS_PTRACE"]
        for cap in h.caps:
            caps += ["--cap-add", cap]
        podman(
            "run", "-d", "--name", name, "--hostname", h.fqdn, "--label", LABEL,
            "--network", NETWORK, "--ip", h.ip, "--mac-address", mac_for(h.ip),
            "--dns", lab.dns_ip,
            "--dns-search", h.fqdn.split(".", 1)[1], "--init", *caps,
            NODE_IMAGE, "sleep", "infinity",
        )  # fmt: skip


SSH_DIR = STATE / "secrets" / "ssh"

# Run in every lab host (as root, through podman exec) before Ansible connects over SSH:
# each container gets host keys of its own (the image's are shared by all), the lab's
# key for root, and a running sshd.
SSHD_SETUP = """set -e
if [ ! -e /etc/ssh/.lab-host-keys ]; then
  rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; touch /etc/ssh/.lab-host-keys
fi
mkdir -p -m 0700 /root/.ssh; mkdir -p /run/sshd
printf '%s\\n' "$1" > /root/.ssh/authorized_keys; chmod 0600 /root/.ssh/authorized_keys
pgrep -x sshd >/dev/null || /usr/sbin/sshd
cat /etc/ssh/ssh_host_ed25519_key.pub
"""


def ssh_setup(lab: Lab) -> None:
    """Let Ansible reach the hosts over SSH with pipelining and persistent connections.

    podman's connection plugin copies every module with `podman cp` and runs it with
    several `podman exec` calls; SSH sends each task down one open connection, which
    makes a converge of the running lab several times faster.  The key is made here at
    run time (never committed); host keys are pinned in the lab's own known_hosts.
    """
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    key = SSH_DIR / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailops lab", "-f", str(key)])
    pub = key.with_suffix(".pub").read_text().strip()
    lines = []
    for h in lab.hosts:
        hostkey = podman("exec", container(h), "sh", "-c", SSHD_SETUP, "sshd-setup", pub)
        lines.append(f"{h.ip} {' '.join(hostkey.split()[:2])}")
    (SSH_DIR / "known_hosts").write_text("\n".join(lines) + "\n")
    for h in lab.hosts:
        for _ in range(50):
            probe = subprocess.run(
                ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={SSH_DIR / 'known_hosts'}",
                 "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                 "-o", "ConnectTimeout=2", f"root@{h.ip}", "true"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(
                f"lab: cannot reach {h.name} ({h.ip}) over SSH: {probe.stderr.strip()}"
            )


def down() -> None:
    names = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").split()
    if names:
        log(f"removing containers: {' '.join(names)}")
        podman("rm", "-f", "-t", "2", *names)
    nets = podman("network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}").split()
    for net in nets:
        log(f"removing network {net}")
        podman("network", "rm", net)
    for image in (NODE_IMAGE, BASE_IMAGE):
        if image_exists(image):
            log(f"removing image {image}")
            podman("rmi", "-f", image)
    if (STATE / "facts").exists():
        shutil.rmtree(STATE / "facts")


# --------------------------------------------------------------------------- converge


RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unr>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)"
)


def mitogen_env() -> dict[str, str]:
    """Settings that run a play with Mitogen's strategy, from the venv's ansible_mitogen.

    Mitogen keeps one Python interpreter per host and sends modules down it instead of
    starting one per task: on this lab a converge that changes nothing drops from about
    five minutes to about one.  The playbooks don't depend on it (no play names a
    strategy); `make test` runs a converge with the stock strategy as well.
    """
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or spec.origin is None:
        raise SystemExit("lab: mitogen is missing from the venv: run `make venv`")
    plugins = Path(spec.origin).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def converge(
    label: str, extra: tuple[str, ...] = (), fast: bool = True
) -> dict[str, dict[str, int]]:
    """Run site.yml against the lab, streaming its output; return the PLAY RECAP.

    With -v flags in `extra` the whole output goes to the log file and only the play,
    task and recap lines to the terminal.  `fast` runs it with Mitogen's strategy, the
    stock one otherwise.
    """
    STATE.mkdir(exist_ok=True)
    logfile = STATE / f"{label}.log"
    shown = " ".join(("site.yml", *extra))
    how = "Mitogen" if fast else "stock strategy"
    log(f"ansible-playbook -i inventories/lab playbooks/{shown} ({label}, {how}; log: {logfile})")
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", str(INVENTORY), str(ROOT / "playbooks" / "site.yml"), *extra,
    ]  # fmt: skip
    verbose = any(a.startswith("-v") for a in extra)
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    if fast:
        env.update(mitogen_env())
    recap: dict[str, dict[str, int]] = {}
    start = time.monotonic()
    with logfile.open("w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout
        for line in proc.stdout:
            fh.write(line)
            m = RECAP.match(line.strip())
            if not verbose or m or line.startswith(("PLAY", "TASK", "RUNNING", "fatal")):
                print(line, end="", flush=True)
            if m:
                recap[m["host"]] = {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        rc = proc.wait()
    log(f"{label}: ansible-playbook exited {rc} after {time.monotonic() - start:.0f} s")
    if rc != 0 and not recap:
        raise SystemExit(f"lab: ansible-playbook failed before any host ran (see {logfile})")
    return recap


def changed_tasks(logfile: Path, hosts: set[str]) -> list[str]:
    """The tasks and handlers in an ansible-playbook log that reported changed on
    `hosts`, as 'host: TASK [role : name]', so a failed idempotence check names them."""
    found: list[str] = []
    current = ""
    host_re = re.compile(r"^changed: \[(?P<host>[^\]]+)\]")
    for line in logfile.read_text(errors="replace").splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.rstrip("* ").strip()
        elif (m := host_re.match(line)) and m["host"] in hosts:
            found.append(f"{m['host']}: {current}")
    return found


def secret_strings() -> dict[str, list[str]]:
    """Every secret the lab generated (.lab/secrets), as strings to look for in output.

    Passwords are whole; private keys are their base64 body lines (any one of them in a
    log means the key leaked).  Public keys and certificates are not secret.
    """
    found: dict[str, list[str]] = {}
    public = {".pub", ".crt", ".csr", ".txt"}  # .txt: a DKIM key's DNS record
    for path in sorted((STATE / "secrets").rglob("*")):
        if not path.is_file() or path.suffix in public or path.name == "known_hosts":
            continue
        text = path.read_text(errors="replace")
        if "-----BEGIN" in text:
            if "PRIVATE KEY" not in text:
                continue  # a certificate or a public key
            body = [ln.strip() for ln in text.splitlines() if ln.strip() and "-----" not in ln]
            found[str(path.relative_to(STATE))] = [ln for ln in body if len(ln) >= 40]
        elif path.suffix == "" and len(text.split()[:1][0] if text.split() else "") >= 16:
            # ansible.builtin.password files hold "<password>[ salt=...]"; other files
            # (the DKIM rotation's state.yml, say) are bookkeeping, not secrets.
            found[str(path.relative_to(STATE))] = [text.split()[0]]
    # A line every key of a kind starts with (OpenSSH's "openssh-key-v1 none none")
    # says nothing about which key leaked: keep only lines of one secret each.  Nor does
    # a line that is public: an RSA key's modulus encodes to the same base64 in the
    # private key and in the public key (the DKIM record), so drop lines found there.
    public = "".join(
        re.sub(r'[\s"]', "", p.read_text(errors="replace"))
        for p in (STATE / "secrets").rglob("*")
        if p.is_file()
        and p.suffix in (".pub", ".crt", ".txt", ".pem")
        and "PRIVATE KEY" not in p.read_text(errors="replace")
    )
    seen: dict[str, int] = {}
    for lines in found.values():
        for ln in set(lines):
            seen[ln] = seen.get(ln, 0) + 1
    return {
        name: [ln for ln in lines if seen[ln] == 1 and ln not in public]
        for name, lines in found.items()
    }


def leaked_secrets(logfiles: list[Path]) -> tuple[int, list[str]]:
    """(how many secrets were looked for, which of them appear in the logs)."""
    secrets = secret_strings()
    leaks = []
    texts = [(p.name, p.read_text(errors="replace")) for p in logfiles]
    for name, needles in secrets.items():
        for logname, text in texts:
            if any(n in text for n in needles):
                leaks.append(f"{name} in {logname}")
    return len(secrets), leaks


# --------------------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    outcome: str
    evidence: str


# Most checks only send mail and read what happened, each with its own addresses, so
# they run side by side (they spend their time waiting on the lab, not on the CPU).
# Those marked `serial` stop or break something the others rely on (the store, a node,
# OpenDKIM, a DNS record) or count everybody's traffic: they run after, one at a time.
CHECK_WORKERS = 6


def checks(slow: bool = False) -> list[Check]:
    """Run the end-to-end suite (tests/e2e) and return each check with its evidence.

    `make lab` leaves out the checks marked slow (DKIM rotation, minutes long);
    `make test` runs them all.
    """
    STATE.mkdir(exist_ok=True)
    which = "lab" if slow else "lab and not slow"
    phases = [
        (
            f"checks side by side ({CHECK_WORKERS} at a time)",
            "side",
            f"{which} and not serial",
            ("-n", str(CHECK_WORKERS), "--dist", "loadscope"),
        ),
        ("checks that disturb the lab, one at a time", "serial", f"{which} and serial", ()),
    ]
    results: list[Check] = []
    for title, name, marks, opts in phases:
        junit = STATE / f"e2e-{name}.xml"
        junit.unlink(missing_ok=True)
        log(f"end-to-end {title} (pytest tests/e2e -m '{marks}')")
        cmd = [
            sys.executable, "-m", "pytest", "-m", marks, *opts,
            "-p", "no:cacheprovider",
            "-o", "junit_logging=no", "-o", "junit_family=xunit1", f"--junitxml={junit}", "-q",
            "--durations=15", "--durations-min=20", str(ROOT / "tests" / "e2e"),
        ]  # fmt: skip
        env = dict(os.environ, MAILOPS_LAB_RUNNING="1")
        started = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        log(f"{title}: {time.monotonic() - started:.0f} s")
        if not junit.exists():
            results.append(Check(f"e2e suite ({name})", "failed", "pytest wrote no report"))
            continue
        results += junit_checks(junit)
    return results


def junit_checks(junit: Path) -> list[Check]:
    """Each test case of one pytest junit report, with its outcome and evidence."""
    results: list[Check] = []
    # Our own pytest's report, written a moment ago: trusted input.
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
        name = case.get("name", "?")
        outcome = "passed"
        evidence = ""
        for prop in case.iter("property"):
            if prop.get("name") == "evidence":
                evidence = prop.get("value", "")
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                outcome = "failed"
                evidence = (el.get("message") or "").splitlines()[0][:300] or evidence
        if case.find("skipped") is not None:
            outcome = "skipped"
            el = case.find("skipped")
            evidence = (el.get("message") if el is not None else "") or ""
        results.append(Check(name, outcome, evidence))
    return results


def summary(lab: Lab, recap: dict[str, dict[str, int]], results: list[Check]) -> bool:
    ok = True
    print("\n" + "=" * 78)
    print("lab hosts")
    for h in lab.hosts:
        r = recap.get(h.name)
        if r is None:
            state, ok = "NOT CONVERGED", False
        elif r["failed"] or r["unr"]:
            state, ok = f"FAILED (failed={r['failed']} unreachable={r['unr']})", False
        else:
            state = f"ok={r['ok']} changed={r['changed']}"
        groups = ",".join(g for g in h.groups if g != "all")
        print(f"  {h.name:8} {h.ip:15} {groups:28} {state}")
    print("end-to-end checks")
    for c in results:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[c.outcome]
        if c.outcome == "failed":
            ok = False
        print(f"  {mark}  {c.name}")
        if c.evidence:
            print(f"        {c.evidence}")
    if not results:
        ok = False
        print("  (no checks ran)")
    print("=" * 78)
    print("lab: all hosts converged, every check passed" if ok else "lab: FAILED")
    return ok


def up(
    run_checks: bool = True, slow: bool = False, extra: tuple[str, ...] = ()
) -> tuple[Lab, dict[str, dict[str, int]], bool]:
    lab = load_lab()
    preflight(lab)
    build_images()
    start_hosts(lab)
    ssh_setup(lab)
    recap = converge("converge", extra)
    results = checks(slow=slow) if run_checks else []
    ok = (
        summary(lab, recap, results)
        if run_checks
        else not any(r["failed"] or r["unr"] for r in recap.values())
    )
    return lab, recap, ok


def recreate(name: str, extra: tuple[str, ...] = ()) -> dict[str, dict[str, int]]:
    """Remove one host's container and make it again from the image: started, reached
    over SSH and converged alone (site.yml --limit NAME, plus `extra`); return the PLAY
    RECAP.

    What losing a host looks like, and what a converge alone gives back (for the
    monitor: an empty store, which playbooks/restore.yml fills again).  The monitor is
    converged with it: it pins every node's SSH host key, and a new container has new
    ones, which the monitor would refuse (as it should) until it is told.
    """
    lab = load_lab()
    if name not in {h.name for h in lab.hosts}:
        raise SystemExit(f"lab: no host {name!r} in {INVENTORY / 'hosts.yml'}")
    log(f"removing {container(name)}")
    podman("rm", "-f", "-t", "2", container(name))
    start_hosts(lab)
    ssh_setup(lab)
    return converge(f"recreate-{name}", ("--limit", f"{name},mail_monitor", *extra))


def lab_is_running(lab: Lab) -> bool:
    return all(running(container(h)) for h in lab.hosts)


# --------------------------------------------------------------------------- one lab at a time
# Container names, the network and the images are machine-wide, so two checkouts running
# the lab at once would tear down each other's hosts halfway through.  Every action that
# touches the lab holds this lock; a second run waits (saying for whom) and gives up
# after LOCK_WAIT seconds rather than hang a CI job.
LOCK_FILE = Path("/run/lock/mailops-lab.lock")
LOCK_WAIT = int(os.environ.get("MAILOPS_LAB_LOCK_WAIT", "3600"))


# The pid of the run holding the lock, handed down to what it starts: a check that takes
# the lock itself (test_backup.py, around losing the monitor) would otherwise wait for
# the `lab.py test` that runs it, and time out after an hour.
LOCK_HOLDER_ENV = "MAILOPS_LAB_LOCK_HOLDER"


def _ancestors() -> set[int]:
    """The pids of this process's parent, its parent's parent, ... (from /proc)."""
    found: set[int] = set()
    pid = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        found.add(pid)
    return found


@contextlib.contextmanager
def lab_lock(wait: int = LOCK_WAIT) -> Iterator[None]:
    holder_pid = os.environ.get(LOCK_HOLDER_ENV, "")
    if holder_pid.isdigit() and int(holder_pid) in _ancestors():
        yield  # the run that started this process holds the lock for it
        return
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            log(f"another lab run holds {LOCK_FILE} ({holder}); waiting up to {wait} s")
            deadline = time.monotonic() + wait
            while True:
                time.sleep(2)
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SystemExit(
                            f"lab: still held by {holder} after {wait} s; stop that run "
                            f"(or wait for it) and try again"
                        ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} in {ROOT}\n")
        fh.flush()
        previous = os.environ.get(LOCK_HOLDER_ENV)
        os.environ[LOCK_HOLDER_ENV] = str(os.getpid())
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(LOCK_HOLDER_ENV, None)
            else:
                os.environ[LOCK_HOLDER_ENV] = previous
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("action", choices=["up", "check", "test", "down", "status", "recreate"])
    ap.add_argument("host", nargs="?", help="recreate: the host to remove and make again")
    ap.add_argument("--no-check", action="store_true", help="up: skip the end-to-end checks")
    ap.add_argument("--keep", action="store_true", help="test: keep the lab afterwards")
    args = ap.parse_args()
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "tools" / "podman" / "containers.conf"))
    os.chdir(ROOT)
    if args.action == "status":
        print(podman("ps", "-a", "--filter", f"label={LABEL}"))
        return 0
    with lab_lock():
        return run_action(args)


def run_action(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.action == "down":
        down()
        return 0
    if args.action == "check":
        lab = load_lab()
        blank = {"ok": 0, "changed": 0, "failed": 0, "unr": 0}
        ok = summary(lab, {h.name: dict(blank) for h in lab.hosts}, checks())
        return 0 if ok else 1
    if args.action == "recreate":
        if not args.host:
            raise SystemExit("lab: recreate needs a host name (tools/lab.py recreate monitor)")
        recap = recreate(args.host)
        return 0 if recap and not any(r["failed"] or r["unr"] for r in recap.values()) else 1
    if args.action == "up":
        _, _, ok = up(run_checks=not args.no_check)
        log(f"make lab took {time.monotonic() - started:.0f} s")
        return 0 if ok else 1
    # test: the same as `up`, then prove a second converge changes nothing.
    lab = load_lab()
    was_running = lab_is_running(lab)
    try:
        # Both converges print diffs, the second at -vvv, so that the secrets check
        # below sees everything a user running them that way would see.  The second
        # runs with Ansible's stock strategy, the one a user gets without the lab's
        # tooling: it must find nothing to change either.
        _, _, ok = up(run_checks=True, slow=True, extra=("--diff",))
        recap2 = converge("idempotence", ("--diff", "-vvv"), fast=False)
        changed = {h: r["changed"] for h, r in recap2.items() if r["changed"] or r["failed"]}
        if changed:
            ok = False
            log(f"idempotence: FAILED, hosts with changes on the second run: {json.dumps(changed)}")
            for what in changed_tasks(STATE / "idempotence.log", set(changed)):
                log(f"idempotence: changed on the second run: {what}")
        else:
            log("idempotence: a second converge changed nothing on any host")
        logs = [STATE / "converge.log", STATE / "idempotence.log"]
        searched, leaks = leaked_secrets(logs)
        if leaks or not searched:
            ok = False
            what = leaks or f"no secrets found under {STATE / 'secrets'} to look for"
            log(f"secrets: FAILED: {what}")
        else:
            size = sum(p.stat().st_size for p in logs) // 1024
            log(
                f"secrets: none of {searched} generated secrets in {size} KiB of --diff/-vvv output"
            )
    finally:
        if not was_running and not args.keep:
            down()
    log(f"lab test took {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
