"""Read every node's queue report over SSH, in parallel, each host bounded by a timeout.

The node runs a *forced command* for the collector's key (authorized_keys
``command="...",restrict``): the client only opens a session and reads stdout; sshd runs
the forced command whatever the client asks for.  Host keys are checked against one
known_hosts file and never learnt: an unknown or changed key fails that host.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailops.queues.local import HostReport

MAX_OUTPUT = 4 * 1024 * 1024  # a report is a few KiB; refuse to buffer a runaway stream
DEFAULT_COMMAND = "mailops queues local --json"


class HostSpecError(ValueError):
    """A host entry that cannot be understood."""


@dataclass(frozen=True)
class HostSpec:
    """A node: the name it is reported under, the address to connect to and the port."""

    name: str
    address: str
    port: int = 22

    @classmethod
    def parse(cls, text: str, default_port: int = 22) -> HostSpec:
        """``name``, ``name:port``, ``name=address``, ``name=address:port``, ``name=[v6]:port``."""
        text = text.strip()
        if not text:
            raise HostSpecError("empty host entry")
        name, sep, target = text.partition("=")
        if not sep:
            target = name
        port = default_port
        if target.startswith("["):
            addr, close, rest = target[1:].partition("]")
            if not close:
                raise HostSpecError(f"{text!r}: unbalanced [")
            if rest:
                port = _port(text, rest.removeprefix(":"))
        elif target.count(":") == 1:
            addr, _, p = target.partition(":")
            port = _port(text, p)
        else:
            addr = target
        if not sep:
            name = addr
        if not name or not addr:
            raise HostSpecError(f"{text!r}: no host name")
        return cls(name=name, address=addr, port=port)

    @classmethod
    def from_config(cls, item: Any, default_port: int = 22) -> HostSpec:
        """A config entry: a string as for :meth:`parse`, or a table name/address/port."""
        if isinstance(item, str):
            return cls.parse(item, default_port)
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            port = item.get("port", default_port)
            if not isinstance(port, int):
                raise HostSpecError(f"{item!r}: port must be an integer")
            return cls(name=item["name"], address=str(item.get("address", item["name"])), port=port)
        raise HostSpecError(f"{item!r}: expected a string or a table with a name")


def _port(text: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise HostSpecError(f"{text!r}: bad port {value!r}") from None
    if not 0 < port < 65536:
        raise HostSpecError(f"{text!r}: bad port {port}")
    return port


def hosts_from_inventory(data: Any, group: str | None, default_port: int = 22) -> list[HostSpec]:
    """Hosts of ``ansible-inventory --list`` output (members of ``group``, all when None).

    The address and port come from ``ansible_host``/``ansible_port`` hostvars when set.
    A plain JSON list of host entries is accepted as well.
    """
    if isinstance(data, list):
        return [HostSpec.from_config(item, default_port) for item in data]
    if not isinstance(data, dict):
        raise HostSpecError("inventory JSON must be an object or a list")
    hostvars: dict[str, Any] = data.get("_meta", {}).get("hostvars", {})
    names: list[str] = []
    seen_groups: set[str] = set()

    def visit(g: str) -> None:
        if g in seen_groups:
            return
        seen_groups.add(g)
        node = data.get(g)
        if not isinstance(node, dict):
            if g != "all":
                raise HostSpecError(f"inventory has no group {g!r}")
            return
        for h in node.get("hosts", []):
            if h not in names:
                names.append(h)
        for child in node.get("children", []):
            visit(child)

    visit(group or "all")
    if group is None or group == "all":
        for h in hostvars:
            if h not in names:
                names.append(h)
    specs = []
    for h in names:
        hv = hostvars.get(h, {})
        port = hv.get("ansible_port", default_port)
        specs.append(HostSpec(name=h, address=str(hv.get("ansible_host", h)), port=int(port)))
    return specs


@dataclass(frozen=True)
class SSHOptions:
    user: str
    key: str
    known_hosts: str
    timeout: float = 10.0
    command: str = DEFAULT_COMMAND


def _error(spec: HostSpec, message: str, started: float) -> HostReport:
    return HostReport(
        host=spec.name,
        error=message,
        duration_seconds=round(time.monotonic() - started, 3),
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def fetch(spec: HostSpec, opts: SSHOptions) -> HostReport:
    """Query one host; every failure becomes ``{"error": ...}`` for that host."""
    import paramiko

    started = time.monotonic()
    deadline = started + opts.timeout

    def left() -> float:
        return max(deadline - time.monotonic(), 0.01)

    client = paramiko.SSHClient()
    try:
        client.load_host_keys(opts.known_hosts)
        client.set_missing_host_key_policy(_alias_policy(spec, paramiko))
        client.connect(
            spec.address,
            port=spec.port,
            username=opts.user,
            key_filename=opts.key,
            timeout=left(),
            banner_timeout=left(),
            auth_timeout=left(),
            channel_timeout=left(),
            allow_agent=False,
            look_for_keys=False,
        )
        transport = client.get_transport()
        if transport is None:
            return _error(spec, "SSH transport closed", started)
        chan = transport.open_session(timeout=left())
        chan.settimeout(left())
        chan.exec_command(opts.command)
        chunks: list[bytes] = []
        size = 0
        while True:
            chan.settimeout(left())
            data = chan.recv(65536)
            if not data:
                break
            size += len(data)
            if size > MAX_OUTPUT:
                return _error(spec, f"output larger than {MAX_OUTPUT} bytes", started)
            chunks.append(data)
            if time.monotonic() > deadline:
                raise TimeoutError("timed out reading the report")
        if not chan.status_event.wait(left()):
            raise TimeoutError("timed out waiting for the exit status")
        status = chan.exit_status
        stderr = b""
        while chan.recv_stderr_ready() and len(stderr) < 4096:
            stderr += chan.recv_stderr(4096)
    except paramiko.BadHostKeyException as exc:
        return _error(spec, f"host key mismatch for {exc.hostname}: refusing to connect", started)
    except paramiko.AuthenticationException as exc:
        return _error(spec, f"authentication failed: {exc}", started)
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        why = "; ".join(f"{e.strerror or e}" for e in exc.errors.values())
        return _error(spec, f"cannot connect to {spec.address}:{spec.port}: {why}", started)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        if time.monotonic() >= deadline - 0.05:
            return _error(spec, f"timed out after {opts.timeout:g} s ({_describe(exc)})", started)
        return _error(spec, _describe(exc), started)
    finally:
        client.close()
    text = b"".join(chunks).decode("utf-8", "replace")
    if status != 0:
        tail = stderr.decode("utf-8", "replace").strip()[-500:]
        return _error(spec, f"remote command exited {status}: {tail}", started)
    try:
        report = json.loads(text)
    except ValueError:
        return _error(spec, f"not JSON from the node: {text[:200]!r}", started)
    if not isinstance(report, dict) or not isinstance(report.get("queues"), dict):
        return _error(spec, "the node's JSON has no queues", started)
    if isinstance(report.get("error"), str):
        return _error(spec, f"node: {report['error']}", started)
    report["node_hostname"] = report.get("host")
    report["host"] = spec.name
    report["collect_seconds"] = round(time.monotonic() - started, 3)
    result: HostReport = report  # type: ignore[assignment]
    return result


def _alias_policy(spec: HostSpec, paramiko: Any) -> Any:
    """RejectPolicy, except for a key recorded under the host's *name*.

    known_hosts may list a node by its inventory name while we connect to its address
    (``ansible_host``); paramiko looks keys up by the address only.  This accepts the key
    when the very same key is recorded for the name (a different one is a mismatch), and
    never writes to known_hosts.
    """

    class AliasRejectPolicy(paramiko.RejectPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            names = [spec.name] if spec.port == 22 else [f"[{spec.name}]:{spec.port}"]
            keys = client.get_host_keys()
            for alias in names:
                known = keys.lookup(alias)
                if known is None:
                    continue
                recorded = known.get(key.get_name())
                if recorded == key:
                    return
                if recorded is not None:
                    raise paramiko.BadHostKeyException(alias, key, recorded)
            super().missing_host_key(client, hostname, key)

    return AliasRejectPolicy()


def collect(
    hosts: Sequence[HostSpec], opts: SSHOptions, parallel: int = 16
) -> dict[str, HostReport]:
    """Query all hosts in parallel; each report is keyed by host name."""
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    if not Path(opts.known_hosts).is_file():
        msg = f"known_hosts file {opts.known_hosts} not found"
        return {h.name: HostReport(host=h.name, error=msg) for h in hosts}
    if not Path(opts.key).is_file():
        msg = f"key file {opts.key} not found"
        return {h.name: HostReport(host=h.name, error=msg) for h in hosts}
    results: dict[str, HostReport] = {}
    if not hosts:
        return results
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts))))
    futures = {pool.submit(fetch, h, opts): h for h in hosts}
    # Every socket operation in fetch() is bounded by the timeout; this is a backstop.
    done, pending = wait(futures, timeout=opts.timeout * 2 + 5)
    for fut in done:
        spec = futures[fut]
        try:
            results[spec.name] = fut.result()
        except Exception as exc:  # a bug must not spoil the other hosts
            results[spec.name] = HostReport(host=spec.name, error=_describe(exc))
    for fut in pending:
        spec = futures[fut]
        results[spec.name] = HostReport(host=spec.name, error="timed out")
    pool.shutdown(wait=False, cancel_futures=True)
    return results


def unique(hosts: Iterable[HostSpec]) -> list[HostSpec]:
    seen: dict[str, HostSpec] = {}
    for h in hosts:
        if h.name in seen and seen[h.name] != h:
            raise HostSpecError(f"host {h.name!r} listed twice with different addresses")
        seen.setdefault(h.name, h)
    return list(seen.values())
