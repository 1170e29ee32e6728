"""Postfix's side: read and set the transports' limits, reload, log a change.

Every command goes through one ``runner`` (argv -> (exit code, stdout, stderr)), so the
tests see exactly the commands a run would give: ``postconf`` to read, ``postconf -e``
to set, ``postfix reload`` once when something changed, and ``postlog`` for the line
each change leaves in the mail log (through Postfix's own logging: syslog, or
postlogd's ``maillog_file`` where there is no syslog daemon).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

from mailops.throttle.steps import Rung

Runner = Callable[[Sequence[str]], tuple[int, str, str]]
LOG_TAG = "mailops/throttle"


class PostfixError(Exception):
    """A Postfix command failed; the message has its words."""


def run_command(argv: Sequence[str]) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def parameters(transport: str) -> tuple[str, str]:
    return (
        f"{transport}_destination_concurrency_limit",
        f"{transport}_destination_rate_delay",
    )


class Postfix:
    def __init__(self, runner: Runner = run_command) -> None:
        self.runner = runner
        self.commands: list[list[str]] = []

    def _run(self, argv: Sequence[str]) -> str:
        self.commands.append(list(argv))
        rc, out, err = self.runner(argv)
        if rc != 0:
            raise PostfixError(f"{' '.join(argv[:2])} exited {rc}: {err.strip()[:300]}")
        return out

    def current(self, names: Sequence[str]) -> dict[str, str]:
        """``name -> value`` as main.cf has them (postconf without -h: each line names
        its parameter, so an unknown one is simply absent)."""
        if not names:
            return {}
        out = self._run(["postconf", *names])
        values: dict[str, str] = {}
        for line in out.splitlines():
            name, sep, value = line.partition(" = ")
            if sep:
                values[name.strip()] = value.strip()
        return values

    def set(self, values: Mapping[str, str]) -> None:
        self._run(["postconf", "-e", *(f"{k}={v}" for k, v in values.items())])

    def reload(self) -> None:
        self._run(["postfix", "reload"])

    def log(self, message: str) -> None:
        self._run(["postlog", "-t", LOG_TAG, "-p", "info", message])


def wanted_values(transport: str, rung: Rung) -> dict[str, str]:
    conc, delay = parameters(transport)
    return {conc: str(rung.concurrency), delay: f"{rung.rate_delay}s"}
