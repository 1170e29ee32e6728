"""Opening mail logs: plain or gzip (told by the magic bytes, whatever the name), read
in bounded blocks; a log's rotated siblings, oldest first."""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# bytes read at a time
CHUNK = 1 << 18
GZIP_MAGIC = b"\x1f\x8b"
_ROTATED = re.compile(r"^\.(\d+)(\.gz)?$|^-(\d{8})(\.gz)?$")


class LogError(Exception):
    """A log file cannot be opened or read; the message names it and says why."""


class DamagedGzip(LogError):
    """A gzipped log is truncated or not valid gzip; the message names it."""


def rotated_set(path: Path, since: dt.date | None = None) -> list[Path]:
    """``path`` with its rotated siblings (``.1``, ``.2.gz``, ``-20241123[.gz]``), oldest
    first.  With ``since``, siblings last written before that day are left out: they
    cannot hold a line of it."""
    found: list[tuple[tuple[int, int], Path]] = []
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            if not sibling.name.startswith(path.name) or sibling == path:
                continue
            m = _ROTATED.match(sibling.name[len(path.name) :])
            if not m:
                continue
            # .N: higher is older; -YYYYMMDD: lower is older
            key = (0, -int(m.group(1))) if m.group(1) else (0, int(m.group(3)) - 10**9)
            found.append((key, sibling))
    found.sort()
    chosen = [p for _, p in found]
    if since is not None:
        start = dt.datetime.combine(since, dt.time()).timestamp()
        chosen = [p for p in chosen if _mtime(p) >= start]
    return [*chosen, path]


def host_logs(directory: Path) -> list[str]:
    """The logs in ``directory`` for ``--logs-from``: every regular file but those named
    after another plus a rotation suffix (``mail1.log.1``, ``mail1.log-20241123.gz``),
    which ``--rotated`` adds to that one; sorted by name."""
    try:
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise LogError(f"{directory}: {exc.strerror or exc}") from None
    present = set(names)
    logs = [
        n
        for n in names
        if not any(
            n.startswith(base) and _ROTATED.match(n[len(base) :]) for base in present if base != n
        )
    ]
    if not logs:
        raise LogError(f"{directory}: no log in it")
    return [str(directory / n) for n in logs]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def open_log(path: Path) -> BinaryIO:
    """Open a log for reading bytes: gzip is recognised by its magic number."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except FileNotFoundError:
        raise LogError(f"{path}: no such file") from None
    except PermissionError:
        raise LogError(f"{path}: permission denied (run as root or a member of adm)") from None
    except IsADirectoryError:
        raise LogError(f"{path}: is a directory") from None
    except OSError as exc:
        raise LogError(f"{path}: {exc.strerror}") from None
    if fh.peek(2)[:2] == GZIP_MAGIC:
        return GzipStream(fh, path)  # type: ignore[return-value]
    return fh


def blocks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    """The content of the log at ``path`` (plain or gzip) in blocks of about ``size``
    bytes; a read error is a :class:`LogError`."""
    fh = open_log(path)
    try:
        while block := fh.read(size):
            yield block
    except OSError as exc:
        raise LogError(f"{path}: {exc.strerror or exc}") from None
    finally:
        fh.close()


class GzipStream:
    """A gzip file (one or more members) read as bytes, in bounded blocks.

    ``read(size)`` returns at most ``4 * size`` bytes; ``b""`` at the end.  Damage
    (a truncated file, bytes that are not gzip) is a :class:`DamagedGzip`.
    ``close()`` closes the raw file only when ``own_raw``.
    """

    def __init__(self, raw: BinaryIO, path: Path, own_raw: bool = True) -> None:
        self.raw = raw
        self.path = path
        self.own_raw = own_raw
        self.z = zlib.decompressobj(wbits=31)
        self.pending = b""  # compressed input not yet given to the decompressor
        self.ahead = b""  # uncompressed bytes decompressed by skip() and not yet read

    def read(self, size: int = CHUNK) -> bytes:
        if self.ahead:
            out, self.ahead = self.ahead, b""
            return out
        while True:
            data = self.pending or self.z.unconsumed_tail or self.raw.read(size)
            self.pending = b""
            if not data:
                if not self.z.eof:
                    raise DamagedGzip(f"{self.path}: gzip file is truncated")
                return b""
            try:
                if self.z.eof:  # another gzip member follows
                    self.z = zlib.decompressobj(wbits=31)
                out = self.z.decompress(data, 4 * size)
            except zlib.error as exc:
                raise DamagedGzip(f"{self.path}: not a valid gzip file ({exc})") from None
            if self.z.eof:
                self.pending = self.z.unused_data
            if out:
                return out

    def read_exactly(self, count: int) -> bytes:
        """The next ``count`` bytes (fewer only at the end)."""
        parts: list[bytes] = []
        got = 0
        while got < count:
            data = self.read(min(count - got, CHUNK))
            if not data:
                break
            if got + len(data) > count:
                data, self.ahead = data[: count - got], data[count - got :]
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def skip(self, count: int) -> None:
        """Pass over the next ``count`` bytes (or to the end, if it comes first)."""
        while count > 0:
            data = self.read(min(count, CHUNK))
            if not data:
                return
            if len(data) > count:
                self.ahead = data[count:]
                return
            count -= len(data)

    def close(self) -> None:
        if self.own_raw:
            self.raw.close()
