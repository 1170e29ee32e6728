"""Render the blocked clients as a Postfix access table and put it in place atomically.

The table (``/etc/postfix/access_dynamic``, read by ``check_client_access
hash:/etc/postfix/access_dynamic``) holds one ``ADDRESS REJECT text`` line per blocked
client.  Addresses are written as access(5) wants them for an exact client match: IPv4
dotted quad, IPv6 in compressed form without brackets (``2001:db8::9``).

Replacing it never leaves Postfix without a valid table:

1. the text goes to a temporary file in the same directory (same file system);
2. ``postmap TYPE:TEMP`` builds ``TEMP.db`` next to it (unless postmap is turned off);
3. ``TEMP.db`` is renamed over ``MAP.db``, then ``TEMP`` over ``MAP``.

A crash before step 3 leaves the old table in force and only stray temporary files
(removed by the next run); a crash between the two renames leaves the new ``.db`` in force
and an old text file, which the next run sees differs and writes again.  Nothing is
written when the text would not change and the indexed file exists.  Postfix notices the
replaced ``.db`` (its old inode has no links left) and smtpd processes reopen it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mailops.saslblock.blocks import Block, fsync_dir, sort_key

HEADER = "# Written by mailops saslblock; edits here are overwritten.\n"
# File name suffix postmap gives the indexed file, per map type.
DB_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
STALE_TEMP_SECONDS = 600


class MapError(Exception):
    """The table could not be written or indexed; the previous one is still in force."""


class PostmapMissing(MapError):
    """postmap is asked for but not installed."""


def _utc(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(blocks: Mapping[str, Block], reject_text: str, threshold: int, window: int) -> str:
    lines = [
        HEADER,
        f"# Clients with {threshold} or more SASL authentication failures within {window} s.\n",
        "# Lift a block with: mailops saslblock --unblock ADDRESS\n",
    ]
    for key in sorted(blocks, key=sort_key):
        block = blocks[key]
        lines.append(f"# {key}: blocked {_utc(block.since)} until {_utc(block.until)}\n")
        lines.append(f"{key} REJECT {reject_text}\n")
    return "".join(lines)


def _remove_stale_temps(directory: Path, name: str) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in directory.glob(f".{name}.*.tmp*"):
        try:
            if entry.lstat().st_mtime < cutoff:
                entry.unlink()
        except OSError:
            continue


def write_map(path: Path, content: str, postmap: str | None, map_type: str = "hash") -> bool:
    """Put ``content`` in place at ``path`` (and its index); return whether it changed.

    ``postmap`` is the command to index the table with, or None to write the text only.
    """
    suffix = DB_SUFFIX.get(map_type)
    if suffix is None:
        raise MapError(f"map type {map_type!r} is not one of {', '.join(DB_SUFFIX)}")
    db = path.with_name(path.name + suffix)
    try:
        old: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = None
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: cannot read the current table ({exc})") from None
    if old == content and (postmap is None or db.exists()):
        return False
    exe = None
    if postmap is not None:
        exe = shutil.which(postmap)
        if exe is None:
            raise PostmapMissing(
                f"{postmap!r} not found: install Postfix (postmap indexes the table) "
                "or run with --no-postmap to write the text table only"
            )
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o644
    _remove_stale_temps(path.parent, path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise MapError(
            f"{path}: cannot create a temporary file beside it ({exc.strerror})"
        ) from None
    tmp = Path(tmp_name)
    tmp_db = tmp.with_name(tmp.name + suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if exe is not None:
            try:
                proc = subprocess.run(
                    [exe, f"{map_type}:{tmp}"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise MapError(f"{postmap} {map_type}:{tmp}: {exc}") from None
            if proc.returncode != 0 or not tmp_db.exists():
                detail = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
                raise MapError(f"postmap failed on the new table: {detail}")
            tmp_db.replace(db)
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise MapError(f"{path}: cannot replace the table ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_db.unlink(missing_ok=True)
    return True
