"""What the lab benchmarks share: the lab itself, commands in its hosts, the sink on inbox.

A benchmark that needs the lab holds the lab's lock for its whole run, uses the running
lab if there is one and otherwise brings one up (converged, without the checks) and
removes it afterwards.  Commands run in the hosts through ``podman exec`` (the helpers
of tests/e2e/labhosts.py).  Anything a benchmark changes on a host is put back before it
returns, also when it fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.labhosts import inventory, sh, sink_on_inbox, wait_for  # noqa: E402


def _lab_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mailops_lab", ROOT / "tools" / "lab.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look themselves up there)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def lab() -> Iterator[dict[str, dict[str, str]]]:
    """The running lab (started and converged first if it is not up); yields inventory()."""
    mod = _lab_module()
    with mod.lab_lock():
        started = False
        if not mod.lab_is_running(mod.load_lab()):
            print("  the lab is not running: bringing it up (no checks)", flush=True)
            _, _, ok = mod.up(run_checks=False)
            started = True
            if not ok:
                mod.down()
                raise RuntimeError("the lab did not converge; see .lab/converge.log")
        try:
            yield inventory()
        finally:
            if started:
                mod.down()


def must(host: str, script: str, timeout: float = 120) -> str:
    """Run a script in a host; raise with its output if it fails."""
    res = sh(host, script, timeout=timeout)
    if res.rc != 0:
        said = (res.out + res.err)[-600:]
        raise RuntimeError(f"{host}: `{script[:120]}` exited {res.rc}: {said}")
    return res.out


# --------------------------------------------------------------------------- the mail log

_TS = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) ")


def log_lines(host: str) -> int:
    """How many lines the host's mail log has now (where a run starts reading)."""
    return int(must(host, "wc -l < /var/log/mail.log").strip())


def log_since(host: str, start: int, pattern: str) -> list[str]:
    """Lines of the host's mail log after line ``start`` that match ``pattern`` (grep -E)."""
    out = sh(host, f"tail -n +{start + 1} /var/log/mail.log | grep -E '{pattern}'", timeout=120)
    return out.out.splitlines()


def stamp(line: str) -> float:
    """Seconds of a classic syslog timestamp (the year does not matter for differences)."""
    m = _TS.match(line)
    if not m:
        raise ValueError(f"no timestamp in {line[:60]!r}")
    return datetime.strptime("2000 " + m.group(1), "%Y %b %d %H:%M:%S").timestamp()


__all__ = ["lab", "log_lines", "log_since", "must", "sh", "sink_on_inbox", "stamp", "wait_for"]
