"""Failures per client, blocks and their expiry, and the state file that keeps them.

A client is blocked when ``threshold`` failures fall within ``window`` seconds of each
other (by the log's time stamps, so re-reading an old log never blocks anyone today for
what they did last month), for ``expire`` seconds after the failure that tipped it over.
Only the last ``threshold`` failure times of each client are kept, and only while they
can still count (newer than ``window`` seconds), so the state stays small whatever the
log holds.  Addresses in the protected networks (mynetworks, ``allow``, loopback) are
never counted, never blocked, and an existing block on one is lifted.

The state file is JSON, replaced atomically (temporary file in the same directory,
fsync, rename), so a crash leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops.jobstate import StateError as StateError  # where it is defined
from mailops.maillog.follow import Position

STATE_VERSION = 1
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ALWAYS_PROTECTED: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass
class Block:
    first: float  # first of the failures that caused the block
    since: float  # the failure that tipped it over
    until: float
    failures: int

    def as_json(self) -> dict[str, float | int]:
        return {
            "first": self.first,
            "since": self.since,
            "until": self.until,
            "failures": self.failures,
        }


def canonical(text: str) -> tuple[str, Address] | None:
    """The address as Postfix writes it in access maps, or None if it is not one.

    IPv6 in compressed lower-case form without brackets (what inet_ntop and Python's
    ipaddress both produce); IPv4-mapped IPv6 as plain IPv4, as smtpd reports it.
    """
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            return None
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
    return str(addr), addr


def parse_network(text: str) -> Network:
    """A network from an allow/mynetworks entry: ``192.0.2.0/24``, ``2001:db8::/32``,
    ``[::1]/128`` (Postfix's bracketed form) or a single address."""
    value = text.strip()
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: unbalanced brackets")
        value = inner + rest
    return ipaddress.ip_network(value, strict=False)


@dataclass
class Changes:
    blocked: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    unblocked: list[tuple[str, str]] = field(default_factory=list)  # (address, why)


@dataclass
class Blocker:
    threshold: int
    window: float
    expire: float
    protected: tuple[Network, ...]
    failures: dict[str, list[float]] = field(default_factory=dict)
    blocks: dict[str, Block] = field(default_factory=dict)
    position: Position | None = None
    invalid_addresses: int = 0
    _cache: dict[bytes, str | None] = field(default_factory=dict, repr=False)

    def is_protected(self, addr: Address) -> bool:
        return any(addr.version == net.version and addr in net for net in self.protected)

    def _key(self, raw: bytes) -> str | None:
        """Canonical address for a raw log field, or None (invalid or protected)."""
        try:
            return self._cache[raw]
        except KeyError:
            pass
        parsed = canonical(raw.decode("ascii", "replace"))
        if parsed is None:
            self.invalid_addresses += 1
            key = None
        else:
            key = None if self.is_protected(parsed[1]) else parsed[0]
        if len(self._cache) < 100_000:
            self._cache[raw] = key
        return key

    def record(self, raw_addr: bytes, when: float) -> None:
        """One authentication failure of the client at ``raw_addr`` at time ``when``."""
        key = self._key(raw_addr)
        if key is None:
            return
        times = self.failures.setdefault(key, [])
        times.append(when)
        if len(times) > self.threshold:
            del times[: len(times) - self.threshold]
        if len(times) < self.threshold:
            return
        first, last = min(times), max(times)
        if last - first > self.window:
            return
        until = when + self.expire
        block = self.blocks.get(key)
        if block is None:
            self.blocks[key] = Block(first=first, since=when, until=until, failures=len(times))
        elif until > block.until:
            block.until = until
            block.failures += 1

    def finish(self, now: float, before: Iterable[str], unblock: Iterable[str] = ()) -> Changes:
        """Lift expired, protected and asked-for blocks; drop stale failures; say what
        changed since ``before`` (the blocked addresses at the start of the run)."""
        earlier = set(before)
        changes = Changes()
        wanted = {c[0] for c in (canonical(a) for a in unblock) if c is not None}
        for key in sorted(self.blocks, key=sort_key):
            block = self.blocks[key]
            parsed = canonical(key)
            why = None
            if key in wanted:
                why = "on request"
            elif parsed is None or self.is_protected(parsed[1]):
                why = "protected network"
            if why is not None:
                del self.blocks[key]
                if key in earlier:
                    changes.unblocked.append((key, why))
            elif block.until <= now:
                del self.blocks[key]
                if key in earlier:
                    changes.expired.append(key)
            elif key not in earlier:
                changes.blocked.append(key)
        for key in wanted:
            self.failures.pop(key, None)
        horizon = now - self.window
        for key in [k for k, times in self.failures.items() if max(times) < horizon]:
            del self.failures[key]
        return changes

    # ---------------------------------------------------------------- the state file

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "updated": now,
            "log": self.position.as_json() if self.position else None,
            "failures": {k: self.failures[k] for k in sorted(self.failures, key=sort_key)},
            "blocks": {k: self.blocks[k].as_json() for k in sorted(self.blocks, key=sort_key)},
        }

    def load(self, path: Path) -> None:
        """Read the state file; a missing one is a first run."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"{path}: cannot read state ({exc.strerror})") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"not a version {STATE_VERSION} saslblock state")
            log = data.get("log")
            self.position = None if log is None else Position.from_json(log)
            self.failures = {}
            for key, times in _table(data, "failures").items():
                if canonical(key) is None or not isinstance(times, list):
                    raise ValueError(f"bad failures entry {key!r}")
                self.failures[key] = [_number(t) for t in times][-self.threshold :]
            self.blocks = {}
            for key, b in _table(data, "blocks").items():
                if canonical(key) is None or not isinstance(b, dict):
                    raise ValueError(f"bad blocks entry {key!r}")
                self.blocks[key] = Block(
                    first=_number(b.get("first")),
                    since=_number(b.get("since")),
                    until=_number(b.get("until")),
                    failures=int(_number(b.get("failures"))),
                )
        except ValueError as exc:
            raise StateError(
                f"{path}: not a usable state file ({exc}); move it away to start afresh "
                "(the log is then read again from its start)"
            ) from None

    def save(self, path: Path, now: float) -> None:
        write_atomic(path, json.dumps(self.as_json(now), indent=1) + "\n", mode=0o600)


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def sort_key(key: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(key)
    return addr.version, int(addr)


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text``: temporary file beside it, fsync, rename, fsync dir."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StateError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StateError(f"{path}: cannot write ({exc.strerror})") from None


def fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
