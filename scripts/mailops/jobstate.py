"""A cron job's state file: its error, and the lock that keeps to one run at a time.

``saslblock``, ``bounces from-log`` and ``throttle`` each follow the mail log from an
offset kept in a state file; two overlapping runs would read the same lines twice. Each
holds ``STATE.lock`` (``flock``) for its whole run.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from mailops import exitcodes


class StateError(Exception):
    """The state file (or its lock) cannot be read or written; the message names it."""


def hold(state: Path, wait: float = 0.0) -> TextIO | None:
    """``STATE.lock``, locked and open for the caller to keep; None when another run
    still holds it after ``wait`` seconds (0: do not wait)."""
    lock_path = state.with_name(state.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a")  # noqa: SIM115 (held open for the run)
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot open lock file ({exc.strerror})") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except OSError:
            if time.monotonic() >= deadline:
                fh.close()
                return None
            time.sleep(0.2)


def hold_or_skip(state: Path, warn: Callable[[str], None], verbose: bool) -> TextIO | int:
    """The lock of a cron run (see :func:`hold`, no waiting), or the exit code the run
    ends with instead: ``CANTCREAT`` when the lock file cannot be made (said through
    ``warn``), ``OK`` when another run holds it (said on stdout when ``verbose``)."""
    try:
        lock = hold(state)
    except StateError as exc:
        warn(str(exc))
        return exitcodes.CANTCREAT
    if lock is None:
        if verbose:
            print(f"another run holds {state}.lock; leaving it to that one")
        return exitcodes.OK
    return lock
