"""Work done in a forked child that hands its result back through a temporary file.

A temporary file rather than a pipe: the child exits as soon as it is done, and its
memory is gone before the parent loads what it wrote.  The parent waits for the child
and reads the file (``os.waitpid``, then ``out.seek(0)``); a child that failed exits 1
after saying so on stderr, and the parent does the work itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import BinaryIO

# processes at the most for one command (default_jobs)
MAX_JOBS = 4


def default_jobs() -> int:
    """The cores this process may run on, at most ``MAX_JOBS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_JOBS))


def fork_to_file(work: Callable[[BinaryIO], None], failed: str) -> tuple[int, BinaryIO]:
    """Run ``work(out)`` in a child; return its pid and ``out``, the file it wrote.

    ``failed`` is what the child writes on stderr when ``work`` raises, with ``{exc}``
    standing for the exception's repr.  The child never returns.
    """
    out = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    try:
        pid = os.fork()
    except OSError:
        out.close()
        raise
    if pid == 0:  # the child: work, hand the result back, never return
        code = 1
        try:
            work(out)
            out.flush()
            code = 0
        except BaseException as exc:  # (whatever it is, the parent does the work itself)
            try:
                sys.stderr.write(failed.format(exc=repr(exc)) + "\n")
                sys.stderr.flush()
            except BaseException:  # noqa: S110 - nothing left to tell
                pass
        finally:
            os._exit(code)
    return pid, out
