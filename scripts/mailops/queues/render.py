"""Output of ``mailops queues``: the collection JSON (with the legacy shape) and Prometheus text.

The collection JSON::

    {"mailqueues": {"mail1": {"activemailqueue": "34", "deferredmailqueue": "1548"},
                    "mail2": {"error": "..."}},
     "hosts": {"mail1": {...HostReport...}, "mail2": {"error": "...", ...}},
     "generated_at": "2024-01-01T00:00:00Z"}

``mailqueues`` keeps exactly the shape older tools read (counts as strings); a host that
could not be read carries only ``"error"`` there, never invented counts.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailops.queues.local import QUEUES, HostReport


def legacy_entry(report: HostReport) -> dict[str, str]:
    if "error" in report:
        return {"error": report["error"]}
    queues = report.get("queues", {})
    return {
        "activemailqueue": str(queues.get("active") or 0),
        "deferredmailqueue": str(queues.get("deferred") or 0),
    }


def collection(reports: Mapping[str, HostReport], generated_at: str) -> dict[str, Any]:
    names = sorted(reports)
    return {
        "mailqueues": {name: legacy_entry(reports[name]) for name in names},
        "hosts": {name: reports[name] for name in names},
        "generated_at": generated_at,
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Sample = tuple[Mapping[str, str], float]


def family(name: str, help_text: str, samples: Iterable[Sample], kind: str = "gauge") -> list[str]:
    """One metric family: HELP, TYPE (``gauge`` or ``counter``), then its samples."""
    help_escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    lines = [f"# HELP {name} {help_escaped}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return lines


def prometheus(reports: Mapping[str, HostReport], generated_ts: float) -> str:
    """Text exposition format 0.0.4: every family with HELP and TYPE, families contiguous."""
    names = sorted(reports)
    up: list[Sample] = []
    duration: list[Sample] = []
    messages: list[Sample] = []
    oldest: list[Sample] = []
    dest: list[Sample] = []
    for host in names:
        rep = reports[host]
        ok = "error" not in rep
        up.append(({"host": host}, 1 if ok else 0))
        if "duration_seconds" in rep:
            duration.append(({"host": host}, rep["duration_seconds"]))
        if not ok:
            continue
        queues = rep.get("queues", {})
        for q in QUEUES:
            count = queues.get(q)
            if count is not None:
                messages.append(({"host": host, "queue": q}, count))
        age = rep.get("oldest_deferred_seconds")
        oldest.append(({"host": host}, 0.0 if age is None else age))
        dests = rep.get("destinations")
        if dests:
            sampled = "true" if dests["sampled"] else "false"
            for d in dests["top"]:
                labels = {"host": host, "domain": d["domain"], "sampled": sampled}
                dest.append((labels, d["messages"]))
    lines: list[str] = []
    lines += family(
        "mailops_queue_collect_up", "1 when the host's queues were read, 0 when not.", up
    )
    lines += family(
        "mailops_queue_collect_duration_seconds",
        "Seconds spent reading the host's queues (including SSH for collect).",
        duration,
    )
    lines += family(
        "mailops_queue_messages", "Messages in each Postfix queue of the host.", messages
    )
    lines += family(
        "mailops_queue_oldest_deferred_seconds",
        "Age of the oldest message in the deferred queue (0 when it is empty).",
        oldest,
    )
    lines += family(
        "mailops_queue_deferred_destination_messages",
        "Deferred messages per recipient domain, top domains only "
        '(counted in a sample of the defer logs when sampled="true").',
        dest,
    )
    from mailops.throttle.export import families

    for name, kind, help_text, samples in families(reports):  # docs/throttle.md
        lines += family(name, help_text, samples, kind)
    lines += family(
        "mailops_queue_generated_timestamp_seconds",
        "Unix time at which these figures were produced.",
        [({}, round(generated_ts, 3))],
    )
    return "\n".join(lines) + "\n"


@dataclass
class Included:
    text: str = ""
    problems: list[str] = field(default_factory=list)


def included(paths: Iterable[str]) -> Included:
    """The metric families other jobs wrote to ``paths``, to append to the collector's
    text: a missing file adds nothing (its job has not run yet), an unreadable one or one
    that is not exposition text adds nothing and is named in ``problems``."""
    out = Included()
    for path in paths:
        try:
            body = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            out.problems.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
            continue
        if body and not body.startswith("# HELP "):
            out.problems.append(f"{path}: not Prometheus text (no '# HELP' first)")
            continue
        out.text += body if not body or body.endswith("\n") else body + "\n"
    return out


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` in one rename, so a reader (nginx) never sees half a file."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.resolve().parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
