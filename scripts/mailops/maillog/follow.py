"""Read a log incrementally across runs: where we stopped, rotation, truncation, gzip.

The position saved between runs is the file's identity (device and inode), the byte
offset of the first unread line, and a SHA-256 of the file's first bytes (up to 4 KiB,
fewer while the file is shorter).  On the next run:

* same inode, same first bytes, not shorter than the offset: read on from the offset;
* a different inode (the log was renamed away and a new one started, as logrotate and
  postlogd's ``postfix logrotate`` do), or the same inode with other first bytes or
  fewer bytes than the offset (``copytruncate``): first finish the old file from the
  offset, then read the current file from its start.  The old file is looked for as
  ``LOG.1`` and ``LOG.1.gz``: the one with the remembered inode, else one whose first
  bytes hash to the remembered value (a compressed copy has a new inode);
* no old file to be found: say so on stderr (those lines are lost to us) and go on.

A gzipped log (by its magic bytes, whatever its name) is read through
:class:`mailops.maillog.files.GzipStream`; offsets then count uncompressed bytes.
Everything is streamed in blocks.

What reads the content is the caller's scanner: anything with ``feed(stream, final)``
that leaves in ``consumed`` how many bytes it took (:class:`mailops.saslblock.logscan.Scanner`
and the scanners of throttle and bounces).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from mailops.maillog.files import GZIP_MAGIC, DamagedGzip, GzipStream, LogError

HEAD_BYTES = 4096
ROTATED_SUFFIXES: tuple[str, ...] = (".1", ".1.gz")

Warn = Callable[[str], None]
T = TypeVar("T")


class Scanner(Protocol):
    consumed: int

    def feed(self, stream: BinaryIO, final: bool) -> int: ...


@dataclass
class Position:
    dev: int
    ino: int
    offset: int
    head_len: int
    head_sha256: str

    def as_json(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "ino": self.ino,
            "offset": self.offset,
            "head_len": self.head_len,
            "head_sha256": self.head_sha256,
        }

    @classmethod
    def from_json(cls, data: Any) -> Position:
        if not isinstance(data, dict):
            raise ValueError("log position must be an object")
        fields = {}
        for key in ("dev", "ino", "offset", "head_len"):
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"log position {key} must be a non-negative integer")
            fields[key] = value
        digest = data.get("head_sha256")
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError("log position head_sha256 must be a SHA-256 hex digest")
        return cls(head_sha256=digest, **fields)


class LogFile:
    """One open log file: identity from the open descriptor, so a rename between our
    stat and our read cannot mix two files up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.raw: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise LogError(f"{path}: cannot open ({exc.strerror})") from None
        st = os.fstat(self.raw.fileno())
        self.dev, self.ino, self.size = st.st_dev, st.st_ino, st.st_size
        try:
            self.gz = os.pread(self.raw.fileno(), 2, 0) == GZIP_MAGIC
        except OSError as exc:
            self.close()
            raise LogError(f"{path}: cannot read ({exc.strerror})") from None

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(self, offset: int) -> BinaryIO:
        """The content from ``offset`` (uncompressed bytes for a gzipped file)."""
        self.raw.seek(0 if self.gz else offset)
        if not self.gz:
            return self.raw
        gz = GzipStream(self.raw, self.path, own_raw=False)
        gz.skip(offset)
        return gz  # type: ignore[return-value]

    def head(self, length: int) -> bytes:
        """The first ``length`` bytes of the content (fewer if it is shorter)."""
        if length <= 0:
            return b""
        if not self.gz:
            out = b""
            while len(out) < length:
                part = os.pread(self.raw.fileno(), length - len(out), len(out))
                if not part:
                    break
                out += part
            return out
        try:
            gz = self.stream(0)
            assert isinstance(gz, GzipStream)
            return gz.read_exactly(length)
        except (OSError, DamagedGzip):
            return b""

    def head_matches(self, pos: Position) -> bool:
        data = self.head(pos.head_len)
        return len(data) == pos.head_len and hashlib.sha256(data).hexdigest() == pos.head_sha256

    def position(self, offset: int, previous: Position | None) -> Position:
        if (
            previous is not None
            and previous.head_len >= HEAD_BYTES
            and (previous.dev, previous.ino) == (self.dev, self.ino)
        ):
            head_len, digest = previous.head_len, previous.head_sha256
        else:
            data = self.head(HEAD_BYTES)
            head_len, digest = len(data), hashlib.sha256(data).hexdigest()
        return Position(self.dev, self.ino, offset, head_len, digest)


def _scan(log: LogFile, offset: int, scanner: Scanner, final: bool, warn: Warn) -> int:
    """Feed ``log`` from ``offset`` to the scanner; return the new offset."""
    try:
        stream = log.stream(offset)
    except DamagedGzip as exc:
        warn(f"{log.path}: damaged gzip data before byte {offset} ({exc})")
        return offset
    try:
        scanner.feed(stream, final=final or log.gz)
    except DamagedGzip as exc:
        warn(f"{log.path}: damaged gzip data, stopped reading ({exc})")
    except OSError as exc:
        raise LogError(f"{log.path}: read error ({exc.strerror})") from None
    finally:
        if stream is not log.raw:
            stream.close()
    return offset + scanner.consumed


def _finish_rotated(
    path: Path, pos: Position, current: LogFile, scanner: Scanner, warn: Warn
) -> None:
    """Read the rest of the file we were following before it was rotated away."""
    candidates: list[LogFile] = []
    try:
        for suffix in ROTATED_SUFFIXES:
            cand = path.with_name(path.name + suffix)
            try:
                candidates.append(LogFile(cand))
            except LogError:
                continue
        chosen = next(
            (c for c in candidates if not c.gz and (c.dev, c.ino) == (pos.dev, pos.ino)), None
        )
        if chosen is None:
            chosen = next(
                (
                    c
                    for c in candidates
                    if (c.dev, c.ino) != (current.dev, current.ino)
                    and (c.gz or c.size >= pos.offset)
                    and c.head_matches(pos)
                ),
                None,
            )
        if chosen is None:
            names = " or ".join(str(path) + s for s in ROTATED_SUFFIXES)
            warn(
                f"{path} was rotated or truncated and the old file is not at {names}; "
                f"what it held after byte {pos.offset} was not read"
            )
            return
        _scan(chosen, pos.offset, scanner, final=True, warn=warn)
    finally:
        for c in candidates:
            c.close()


def follow(path: Path, pos: Position | None, scanner: Scanner, warn: Warn) -> Position:
    """Scan what is new in the log at ``path`` since ``pos``; return the new position."""
    with LogFile(path) as log:
        start = 0
        if pos is not None:
            same_file = (log.dev, log.ino) == (pos.dev, pos.ino)
            if same_file and (log.gz or log.size >= pos.offset) and log.head_matches(pos):
                start = pos.offset
            else:
                _finish_rotated(path, pos, log, scanner, warn)
        offset = _scan(log, start, scanner, final=False, warn=warn)
        previous = pos if pos is not None and start else None
        return log.position(offset, previous)


def load_state(
    path: Path, fmt: int, warn: Warn, fresh: str, rest: Callable[[dict[str, Any]], T]
) -> tuple[Position | None, T] | None:
    """A follower's JSON state file: its log position and what ``rest`` reads from the
    rest of it (raising ``ValueError`` on what it cannot use).

    None when there is no file, or when it is unreadable, of another format than
    ``fmt`` or unusable: then after a warning that ends with ``fresh`` (what the run
    does instead, such as "reading the log from its start").
    """
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warn(f"{path}: unreadable ({exc}); {fresh}")
        return None
    try:
        if not isinstance(data, dict) or data.get("format") != fmt:
            raise ValueError(f"not a state file of format {fmt}")
        raw_pos = data.get("position")
        position = None if raw_pos is None else Position.from_json(raw_pos)
        return position, rest(data)
    except ValueError as exc:
        warn(f"{path}: {exc}; {fresh}")
        return None
