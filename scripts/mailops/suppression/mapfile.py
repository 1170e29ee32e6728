"""The Postfix access map of suppressed recipients, and keeping it in step with the store.

One line per address, refused at RCPT TO by ``check_recipient_access``::

    user@example.com 550 5.1.1 <user@example.com>: recipient is suppressed (userunknown)

``sync`` writes the text to a temporary file next to the map, compares it with the map
in place, and only when it differs runs ``postmap TYPE:tmp`` and renames the indexed
file, then the text, over the old ones.  Each rename is atomic, so Postfix reads either
the old table or the new one, never half of one; an unchanged list touches nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mailops.store.db import Suppression
from mailops.store.text import valid_address, valid_reason

HEADER = "# Suppressed recipients, written by `mailops suppression sync`: do not edit.\n"
# What postmap makes of TYPE:file (texthash needs no postmap at all).
MAP_SUFFIX: dict[str, str | None] = {
    "hash": ".db",
    "btree": ".db",
    "lmdb": ".lmdb",
    "cdb": ".cdb",
    "texthash": None,
}


class MapError(Exception):
    """The map could not be written or indexed."""


@dataclass(frozen=True)
class SyncResult:
    changed: bool
    entries: int
    skipped: int  # entries whose address cannot be a map key (reported, left out)


def map_line(entry: Suppression) -> str | None:
    """The access(5) line for one entry, or None when the address cannot be a key."""
    if not valid_address(entry.address):
        return None
    reason = entry.reason if valid_reason(entry.reason) else "suppressed"
    return f"{entry.address} 550 5.1.1 <{entry.address}>: recipient is suppressed ({reason})\n"


def write_map(entries: Iterable[Suppression], out: TextIO) -> tuple[int, int]:
    """Write the map text; return (lines written, entries skipped)."""
    written = skipped = 0
    out.write(HEADER)
    for entry in entries:
        line = map_line(entry)
        if line is None:
            skipped += 1
            continue
        out.write(line)
        written += 1
    return written, skipped


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 16):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync(
    entries: Iterable[Suppression],
    path: Path,
    *,
    map_type: str = "hash",
    postmap: str | None = None,
    timeout: float = 300.0,
) -> SyncResult:
    """Bring ``path`` (and its indexed file, when ``postmap`` is given) up to date."""
    if map_type not in MAP_SUFFIX:
        raise MapError(f"map type {map_type!r} is not one of {', '.join(MAP_SUFFIX)}")
    suffix = MAP_SUFFIX[map_type] if postmap else None
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise MapError(f"cannot create a file in {directory}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    indexed_tmp = Path(tmp_name + suffix) if suffix else None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            written, skipped = write_map(entries, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        indexed = Path(str(path) + suffix) if suffix else None
        same_text = _file_sha256(tmp) == _file_sha256(path)
        index_fresh = indexed is None or (
            indexed.exists() and indexed.stat().st_mtime >= path.stat().st_mtime
        )
        if same_text and index_fresh:
            tmp.unlink()
            return SyncResult(False, written, skipped)
        if postmap and indexed_tmp is not None and indexed is not None:
            try:
                proc = subprocess.run(
                    [postmap, f"{map_type}:{tmp}"],
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except OSError as exc:
                raise MapError(f"cannot run {postmap}: {exc.strerror or exc}") from None
            except subprocess.TimeoutExpired:
                raise MapError(f"{postmap} took longer than {timeout:g} s") from None
            if proc.returncode != 0 or not indexed_tmp.exists():
                said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                raise MapError(
                    f"{postmap} {map_type}:{tmp} failed ({proc.returncode}): "
                    f"{said[-1] if said else 'no indexed file'}"
                )
            indexed_tmp.chmod(0o644)
            indexed_tmp.replace(indexed)
        tmp.replace(path)
        _fsync_dir(directory)
        return SyncResult(True, written, skipped)
    except OSError as exc:
        raise MapError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if indexed_tmp is not None:
            indexed_tmp.unlink(missing_ok=True)
