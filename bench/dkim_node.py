"""The DKIM benchmark's side inside a bulk node (run there with the node's own python3).

``bench_dkim.py`` copies this file into the node and calls it once per step with the
step's parameters as JSON on stdin; each step prints one JSON object on stdout
(progress goes to stderr).  Everything it makes lives apart from the node's own
services, which it never touches:

* a second Postfix instance (``postfix -c /var/tmp/bench-dkim/postfix``) built from
  Debian's stock main.cf and master.cf, listening on 127.0.0.1:10025 only, relaying
  everything to ``smtp-sink`` on 127.0.0.1:10026, with its own queue directory;
* its own signer processes: OpenDKIM started with a copy of Debian's packaged
  opendkim.conf or of the role's, Rspamd with a copy of the role's configuration; each
  on its own socket (the unix ones inside the bench queue directory, where chrooted
  smtpd reaches them, the TCP one on 127.0.0.1:10027).

Steps: ``setup`` (files, packages the check needs), ``row NAME`` (one configuration: a
one-session run and a 20-session run, CPU read from /proc for each process group, every
message the sink kept checked for a DKIM signature and that signature verified) and
``teardown`` (stop all of it, remove its files).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path("/var/tmp/bench-dkim")
CONF = BENCH / "postfix"
DUMP = BENCH / "dump"
QUEUE = Path("/var/spool/bench-dkim")
DATA = Path("/var/lib/bench-dkim")
SMTPD = "127.0.0.1:10025"
SINK = "127.0.0.1:10026"
TCP_MILTER_PORT = 10027
HZ = os.sysconf("SC_CLK_TCK")
SENDER_LOCAL = "bench"
RCPT = "bench@sink.example"


def say(msg: str) -> None:
    print(f"    {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)
    if check and res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res


def postconf(*settings: str) -> None:
    run(["postconf", "-c", str(CONF), "-e", *settings])


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own ticks, reaped children's ticks) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    own = int(fields[11]) + int(fields[12])
    kids = int(fields[13]) + int(fields[14])
    return ppid, own, kids


def tree_ticks(roots: list[int]) -> dict[int, int]:
    """CPU ticks per process of the trees under ``roots``: a root counts its own time and
    its reaped children's, every live descendant its own."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                table[int(entry.name)] = st
    out: dict[int, int] = {}
    for root in roots:
        if root in table:
            out[root] = table[root][1] + table[root][2]
    added = True
    while added:
        added = False
        for pid, (ppid, own, _) in table.items():
            if pid not in out and ppid in out:
                out[pid] = own
                added = True
    return out


def ticks_between(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks used between two snapshots.  A process that ended in between is counted
    in its parent's reaped time (after), so it only drops out of ``before``."""
    return sum(after.values()) - sum(v for pid, v in before.items() if pid in after)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of the whole machine, all cores (other users included)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


# --------------------------------------------------------------------------- setup


def apt_install(package: str) -> None:
    """Install a Debian package; a service it brings is not started (policy-rc.d)."""
    say(f"installing {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    block = Path("/usr/sbin/policy-rc.d")
    ours = not block.exists()
    if ours:
        block.write_text("#!/bin/sh\nexit 101\n")
        block.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
        if run(install, check=False, env=env).returncode:
            run(["apt-get", "update", "-qq"])
            run(install, env=env)
    finally:
        if ours:
            block.unlink()


def keys() -> dict[str, Any]:
    """The domain the role signs for, its selector and key, and every key's DNS text."""
    domain = run(["sh", "-c", "hostname -d"]).stdout.strip()
    table = Path("/etc/opendkim/KeyTable").read_text().splitlines()
    signing = Path("/etc/opendkim/SigningTable").read_text().splitlines()
    entries: dict[str, tuple[str, str, str]] = {}
    for line in table:
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            d, sel, path = parts[1].split(":", 2)
            entries[parts[0]] = (d, sel, path)
    wanted = None
    for line in signing:
        parts = line.split()
        if len(parts) == 2 and parts[0].lstrip("*@") == domain:
            wanted = parts[1]
    if wanted is None or wanted not in entries:
        raise SystemExit(f"no signing key for {domain} in the role's SigningTable")
    txt: dict[str, str] = {}
    for d, sel, path in entries.values():
        der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                             capture_output=True, check=True).stdout  # fmt: skip
        b64 = base64.b64encode(der).decode()
        txt[f"{sel}._domainkey.{d}."] = f"v=DKIM1; k=rsa; p={b64}"
    d, sel, path = entries[wanted]
    return {"domain": d, "selector": sel, "keyfile": path, "txt": txt}


def setup(params: dict[str, Any]) -> dict[str, Any]:
    teardown({})
    for d in (BENCH, CONF, DUMP):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/share/postfix/main.cf.debian", CONF / "main.cf")
    master = Path("/usr/share/postfix/master.cf.dist").read_text()
    master = re.sub(r"^smtp(\s+inet)", SMTPD + r"\1", master, count=1, flags=re.M)
    (CONF / "master.cf").write_text(master)
    postconf(
        f"queue_directory={QUEUE}",
        f"data_directory={DATA}",
        f"myhostname=bench.{run(['hostname', '-d']).stdout.strip()}",
        "mydestination=",
        "inet_interfaces=127.0.0.1",
        "inet_protocols=ipv4",
        "mynetworks=127.0.0.0/8",
        f"relayhost=[{SINK.split(':')[0]}]:{SINK.split(':')[1]}",
        f"maillog_file={BENCH}/mail.log",
        "alias_maps=",
        "alias_database=",
    )
    for d in (QUEUE, DATA):
        d.mkdir(parents=True, exist_ok=True)
    run(["postfix", "-c", str(CONF), "set-permissions"], check=False)
    run(["postfix", "-c", str(CONF), "check"])
    shutil.copy(CONF / "main.cf", CONF / "main.cf.base")
    # The chroot's copies of the files smtpd and smtp read, as Debian's init script makes.
    etc = QUEUE / "etc"
    etc.mkdir(exist_ok=True)
    for name in ("hosts", "services", "resolv.conf", "nsswitch.conf", "host.conf", "localtime"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), etc / name, follow_symlinks=True)
    # Debian's packaged opendkim.conf, from the .deb of the installed version.
    version = run(["dpkg-query", "-W", "-f", "${Version}", "opendkim"]).stdout
    got = run(["apt-get", "download", f"opendkim={version}"], check=False, cwd=BENCH)
    if got.returncode != 0:
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "download", f"opendkim={version}"], cwd=BENCH)
    deb = next(BENCH.glob("opendkim_*.deb"))
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    stock = subprocess.run(
        ["tar", "-xO", "./etc/opendkim.conf"], input=tar.stdout, capture_output=True, check=True
    ).stdout.decode()
    deb.unlink()
    (BENCH / "opendkim-stock.conf").write_text(stock)
    shutil.copy("/etc/opendkim.conf", BENCH / "opendkim-role.conf")
    # The signature check's library.
    if run(["python3", "-c", "import dkim"], check=False).returncode != 0:
        apt_install("python3-dkim")
    if params.get("strace") and shutil.which("strace") is None:
        apt_install("strace")
    info = keys()
    (BENCH / "keys.json").write_text(json.dumps(info))
    if params.get("rspamd_conf"):
        setup_rspamd(params["rspamd_conf"], params.get("rspamd_rules", ""))
    # A directory per signer for its unix socket, group postfix, as the role makes it.
    for user in ("opendkim", "_rspamd"):
        if run(["id", user], check=False).returncode == 0:
            sock = QUEUE / user.lstrip("_")
            sock.mkdir(exist_ok=True)
            shutil.chown(sock, user, "postfix")
            sock.chmod(0o2750)
    return {"domain": info["domain"], "selector": info["selector"], "cpus": os.cpu_count()}


RSPAMD = BENCH / "rspamd"


def setup_rspamd(conf: str, rules: str) -> None:
    """Rspamd (the package, its service never started here) with the rspamd_signer role's
    configuration, rendered by the caller for this instance's paths; the node's signing
    keys copied for Rspamd's user and its tables in the role's form."""
    if shutil.which("rspamd") is None:
        apt_install("rspamd")
        # Never started on this node by anyone else either: a restarted lab node starts
        # every enabled init script among its signers (tests/e2e/labhosts.py).
        run(["update-rc.d", "rspamd", "disable"], check=False)
    signer = RSPAMD / "signer"
    (signer / "plugins").mkdir(parents=True)
    for plugin in ("dkim_signing", "settings"):
        (signer / "plugins" / f"{plugin}.lua").symlink_to(f"/usr/share/rspamd/plugins/{plugin}.lua")
    for d in ("run", "db", "log"):
        (RSPAMD / d).mkdir()
        shutil.chown(RSPAMD / d, "_rspamd", "_rspamd")
    keydir = RSPAMD / "dkim"
    keydir.mkdir(mode=0o700)
    key_lines = []
    for line in Path("/etc/opendkim/KeyTable").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            d, sel, path = parts[1].split(":", 2)
            copy = keydir / f"{d}.{sel}.private"
            shutil.copy(path, copy)
            shutil.chown(copy, "_rspamd", "_rspamd")
            copy.chmod(0o600)
            key_lines.append(f"{parts[0]} {d}:{sel}:{copy}")
    shutil.chown(keydir, "_rspamd", "_rspamd")
    (signer / "key_table.map").write_text("\n".join(key_lines) + "\n")
    signing = [ln for ln in Path("/etc/opendkim/SigningTable").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]  # fmt: skip
    (signer / "signing_table.map").write_text("\n".join(signing) + "\n")
    (signer / "rules.lua").write_text(rules)
    for var, d in (("$RUNDIR", "run"), ("$DBDIR", "db"), ("$LOGDIR", "log")):
        conf = conf.replace(var, str(RSPAMD / d))
    (RSPAMD / "rspamd.conf").write_text(conf)
    run(["rspamadm", "configtest", "-c", str(RSPAMD / "rspamd.conf")])


def start_rspamd(workers: int | None) -> int:
    """Rspamd as a daemon (with -f, 3.4 spun in its main process here and never bound
    its socket); returns the main process's pid."""
    conf = (RSPAMD / "rspamd.conf").read_text()
    if workers:
        conf = re.sub(r"^(\s*count\s*=\s*)\d+;", rf"\g<1>{workers};", conf, flags=re.M)
    # The socket's group must be postfix (smtpd runs as postfix): without group=, Rspamd
    # gives it its own user's group.
    conf = re.sub(r'(bind_socket = "[^"]*owner=_rspamd)"', r'\1 group=postfix"', conf)
    (RSPAMD / "rspamd-run.conf").write_text(conf)
    pidfile = RSPAMD / "run" / "rspamd.pid"
    pidfile.unlink(missing_ok=True)
    # (its output not captured: the daemon would hold the pipe open)
    subprocess.run(
        ["rspamd", "-u", "_rspamd", "-g", "_rspamd", "-c", str(RSPAMD / "rspamd-run.conf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=True,
    )  # fmt: skip
    wait_until("Rspamd's pid file", pidfile.exists, 120, 0.2)
    return int(pidfile.read_text().split()[0])


def stop_pid(pid: int, timeout: float = 60) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_until(f"process {pid} to end", lambda: not Path(f"/proc/{pid}").exists(), timeout)


def teardown(_: dict[str, Any]) -> dict[str, Any]:
    if (QUEUE / "pid" / "master.pid").exists():
        run(["postfix", "-c", str(CONF), "stop"], check=False)
    for pidfile in BENCH.rglob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
    for d in (BENCH, QUEUE, DATA):
        shutil.rmtree(d, ignore_errors=True)
    return {"removed": True}


# --------------------------------------------------------------------------- signers


def conf_with(path: Path, out: Path, settings: dict[str, str]) -> None:
    """An opendkim.conf with some keys replaced (or added)."""
    lines = [ln for ln in path.read_text().splitlines()
             if not ln.split() or ln.split()[0] not in settings]  # fmt: skip
    lines += [f"{k} {v}" for k, v in settings.items() if v]  # "": the key left out
    out.write_text("\n".join(lines) + "\n")


def start_opendkim(
    kind: str, socket: str, extra: dict[str, str], info: dict[str, Any]
) -> subprocess.Popen[bytes]:
    conf = BENCH / f"opendkim-{kind}-run.conf"
    settings = {"Socket": socket, "PidFile": str(BENCH / "opendkim.pid")}
    if kind == "stock":
        settings |= {"Domain": info["domain"], "Selector": info["selector"],
                     "KeyFile": info["keyfile"]}  # fmt: skip
    conf_with(BENCH / f"opendkim-{kind}.conf", conf, settings | extra)
    run(["opendkim", "-n", "-x", str(conf)])
    return subprocess.Popen(["opendkim", "-f", "-x", str(conf)])


# --------------------------------------------------------------------------- runs


def listening(milter: str) -> bool:
    """Whether a milter address as Postfix names it (unix: relative to the queue) accepts."""
    kind, _, where = milter.partition(":")
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    addr: str | tuple[str, int] = str(QUEUE / where)
    if kind == "inet":
        host, _, port = where.rpartition(":")
        addr = (host, int(port))
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect(addr)
        except OSError:
            return False
    return True


def queue_count() -> int:
    n = 0
    for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
        for _, _, files in os.walk(QUEUE / sub):
            n += len(files)
    return n


def wait_until(what: str, cond: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


class Meter:
    """CPU of each part (ticks from /proc) and of the whole machine over one phase."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self.before = {k: tree_ticks(v) for k, v in parts.items()}
        self.machine = machine_ticks()
        self.t0 = time.monotonic()

    def read(self, source_ticks: int) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        busy, total = machine_ticks()
        out = {f"{k}_cpu_s": ticks_between(self.before[k], tree_ticks(v)) / HZ
               for k, v in self.parts.items()}  # fmt: skip
        out["source_cpu_s"] = source_ticks / HZ
        out["wall_s"] = wall
        out["machine_busy"] = (busy - self.machine[0]) / max(total - self.machine[1], 1)
        out["machine_cpu_s"] = (busy - self.machine[0]) / HZ
        return out


def source(count: int, sessions: int, size: int, sender: str) -> int:
    """Send ``count`` messages; return smtp-source's own CPU ticks."""
    cmd = ["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(count),
           "-f", sender, "-t", RCPT, "-M", "client.bench.test", SMTPD]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        log = BENCH / "mail.log"
        lines = log.read_text(errors="replace").splitlines()[-2000:] if log.exists() else []
        said = [ln for ln in lines if re.search(r"(fatal|panic|warning|error):", ln)]
        for line in said[-10:]:
            say(f"mail.log: {line}")
        raise SystemExit(f"smtp-source exited {proc.returncode}: {err[-400:]}")
    return round((usage.ru_utime + usage.ru_stime) * HZ)


def phase(
    name: str, count: int, sessions: int, size: int, sender: str, parts: dict[str, list[int]]
) -> dict[str, float]:
    wait_until("an empty bench queue", lambda: queue_count() == 0, 300)
    meter = Meter(parts)
    t0 = time.monotonic()
    src = source(count, sessions, size, sender)
    submitted = time.monotonic() - t0
    wait_until("the bench queue to empty", lambda: queue_count() == 0, 900)
    out = meter.read(src)
    out["submit_s"] = submitted
    out["messages"] = count
    out["sessions"] = sessions
    say(f"{name}: {count} in {out['wall_s']:.2f} s (submitted in {submitted:.2f} s), "
        f"machine {out['machine_busy']:.0%} busy")  # fmt: skip
    return out


def verify(info: dict[str, Any], expect_signed: bool) -> dict[str, int]:
    import dkim  # type: ignore[import-not-found]  # python3-dkim, installed by setup

    txt: dict[bytes, bytes] = {k.encode(): v.encode() for k, v in info["txt"].items()}

    def dns(name: bytes, timeout: int = 5) -> bytes:
        del timeout
        return txt.get(name, b"")

    counts = {"kept": 0, "signed_valid": 0, "unsigned": 0, "invalid": 0}
    for entry in os.scandir(DUMP):
        raw = Path(entry.path).read_bytes()
        # smtp-sink's dump starts with its own X-Client-*/X-Helo/X-Mail/X-Rcpt lines.
        msg = re.sub(rb"\A(?:X-(?:Client|Helo|Mail|Rcpt)[-\w]*:[^\n]*\n)+", b"", raw)
        msg = msg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        counts["kept"] += 1
        if not re.search(rb"^DKIM-Signature:", msg, re.M | re.I):
            counts["unsigned"] += 1
        elif dkim.verify(msg, dnsfunc=dns):
            counts["signed_valid"] += 1
        else:
            counts["invalid"] += 1
        Path(entry.path).unlink()
    return counts


def row(args: dict[str, Any]) -> dict[str, Any]:
    info = json.loads((BENCH / "keys.json").read_text())
    signer: subprocess.Popen[bytes] | None = None
    signer_pid: int | None = None
    milter = ""
    kind = args["row"]
    sock_dir = QUEUE / "opendkim"
    if kind == "opendkim-stock-tcp":
        signer = start_opendkim("stock", f"inet:{TCP_MILTER_PORT}@127.0.0.1",
                                args.get("signer_conf", {}), info)  # fmt: skip
        milter = f"inet:127.0.0.1:{TCP_MILTER_PORT}"
    elif kind in ("opendkim-stock-unix", "opendkim-role-unix"):
        which = kind.split("-")[1]
        signer = start_opendkim(which, f"local:{sock_dir}/bench.sock",
                                args.get("signer_conf", {}), info)  # fmt: skip
        milter = "unix:opendkim/bench.sock"
    elif kind == "rspamd-unix":
        signer_pid = start_rspamd(args.get("rspamd_workers"))
        milter = "unix:rspamd/bench.sock"
    elif kind != "none":
        raise SystemExit(f"unknown row {kind}")
    settings = [f"smtpd_milters={milter}", "non_smtpd_milters="]
    if kind in ("opendkim-role-unix", "rspamd-unix"):
        settings += args.get("role_milter_settings", [])
    settings += args.get("postconf", [])
    # Reset what an earlier row's settings left, then this row's.
    shutil.copy(CONF / "main.cf.base", CONF / "main.cf")
    postconf(*settings)
    shutil.rmtree(DUMP, ignore_errors=True)
    DUMP.mkdir()
    shutil.chown(DUMP, "postfix", "postfix")
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-d", f"{DUMP}/%H%M%S.", SINK, "1024"])
    try:
        if signer is not None:
            signer_pid = signer.pid
        if signer_pid is not None:
            wait_until("the signer's socket", lambda: listening(milter), 120, 0.2)
        run(["postfix", "-c", str(CONF), "start"])
        master = int((QUEUE / "pid" / "master.pid").read_text().split()[0])
        parts = {"postfix": [master], "sink": [sink.pid]}
        if signer_pid is not None:
            parts["signer"] = [signer_pid]
        sender = f"{SENDER_LOCAL}@{info['domain']}"
        size = int(args.get("size", 5120))
        warm = phase("warm-up", int(args.get("warm", 40)), 4, size, sender, parts)
        del warm
        one = phase("1 session", int(args["latency"]), 1, size, sender, parts)
        many = phase(f"{args['sessions']} sessions", int(args["messages"]),
                     int(args["sessions"]), size, sender, parts)  # fmt: skip
        strace = None
        if args.get("strace") and signer_pid is not None:
            strace = profile(signer_pid, int(args["strace"]), size, sender, parts)
    finally:
        run(["postfix", "-c", str(CONF), "stop"], check=False)
        wait_until("the bench Postfix to stop",
                   lambda: not (QUEUE / "pid" / "master.pid").exists()
                   or run(["postfix", "-c", str(CONF), "status"], check=False).returncode != 0,
                   60)  # fmt: skip
        if signer is not None:
            signer.terminate()
            signer.wait(30)
        elif signer_pid is not None:
            stop_pid(signer_pid)
        sink.terminate()
        sink.wait(30)
    total = int(args.get("warm", 40)) + int(args["latency"]) + int(args["messages"])
    if strace:
        total += int(args["strace"])
    counts = verify(info, kind != "none")
    return {"row": kind, "one": one, "many": many, "check": counts, "sent": total,
            "strace": strace}  # fmt: skip


def profile(
    pid: int, count: int, size: int, sender: str, parts: dict[str, list[int]]
) -> dict[str, Any]:
    """One session of ``count`` messages with strace -c on the signer (all its threads)."""
    pids = [p for p in tree_ticks([pid])]
    out = BENCH / "strace.txt"
    args = ["strace", "-c", "-f", "-q", "-o", str(out)]
    for p in pids:
        args += ["-p", str(p)]
    tracer = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    time.sleep(1)
    res = phase("1 session under strace", count, 1, size, sender, parts)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls[f[-1]] = int(f[3])
    return {"phase": res, "calls": calls}


STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "setup": setup,
    "row": row,
    "teardown": teardown,
}


if __name__ == "__main__":
    params = json.loads(sys.stdin.read() or "{}")
    print(json.dumps(STEPS[sys.argv[1]](params)))
