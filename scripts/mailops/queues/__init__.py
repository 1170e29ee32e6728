"""``mailops queues``: queue sizes of one host (``local``) or of every node over SSH (``collect``).

Usage::

    mailops queues local   [--queue-directory DIR] [--method auto|files|postqueue]
                           [--json | --format text|json|prometheus] [--top N] [--sample N]
    mailops queues collect [--hosts H1,H2 | --inventory-json FILE [--group G]]
                           [--user U] [--key FILE] [--known-hosts FILE] [--port P]
                           [--timeout S] [--parallel N] [--command CMD]
                           [--format json|prometheus] [--output FILE]
                           [--prometheus-output FILE] [--prometheus-include FILE ...]

``local`` prints one host's report (counts of incoming, active, deferred, hold, maildrop
and corrupt; age of the oldest deferred message; top deferred destinations with their
last error).  ``collect`` runs on the monitor host: it opens an SSH session to each node,
whose authorized_keys entry forces ``mailops queues local --json``, and prints (or writes
atomically, mode 0644) the collection: ``{"mailqueues": {...legacy shape...}, "hosts":
{...}, "generated_at": ...}`` or its Prometheus text exposition; ``--prometheus-include
FILE`` appends the metric families another job wrote to FILE (the monitor's tenants'
figures) to that text, so one ``/metrics`` page serves both.

Privileges.  The queue directories belong to ``postfix`` (mode 0700), so counting files
needs root or the postfix user; ``postqueue -j`` works for anyone (setgid postdrop,
answered by showq) but showq reads every queue file in full, so it is slower on big
queues.  ``--method auto`` (the default) counts files when it can read the queue and
streams ``postqueue -j`` otherwise, so one forced command serves both set-ups on a node::

    # no sudo at all (postqueue -j): ~mailops-queues/.ssh/authorized_keys
    from="MONITOR_IP",command="/opt/mailops/bin/mailops queues local --json",restrict KEY
    # fast (files), as postfix rather than root:
    from="MONITOR_IP",command="sudo -n -u postfix /opt/mailops/bin/mailops queues local \\
      --json",restrict KEY      (one line in the file)
    # /etc/sudoers.d/mailops-queues (exactly this command line, nothing else):
    mailops-queues ALL=(postfix) NOPASSWD: /opt/mailops/bin/mailops queues local --json

sshd runs the forced command whatever the client asks (``SSH_ORIGINAL_COMMAND`` is
ignored); ``restrict`` forbids pty, forwarding and agent use.  The settings file, when
present, must be readable by whoever runs the count.

Exit codes: ``local`` 0, or 66 when the queue cannot be read.  ``collect`` 0 when every
host answered, 1 when some did not (the output is still written, with an ``"error"`` for
those hosts), 2 for no hosts or a bad host entry, 73 when the output file cannot be made.

Settings (table ``[queues]`` of the mailops settings file; flags override them)::

    # local
    queue_directory = ""        # "" = ask `postconf -h queue_directory` (/var/spool/postfix)
    method = "auto"             # auto: files when the queue is readable, else postqueue -j
    top = 10                    # destinations to report
    sample = 1000               # at most this many defer logfiles read for destinations
    postqueue = "postqueue"     # command used by --method postqueue
    postconf = "postconf"
    # collect
    hosts = []                  # "mail1", "mail1=198.51.100.11", "mail1=10.0.0.5:2222",
                                # or {name = "mail1", address = "198.51.100.11", port = 22}
    inventory_json = ""         # `ansible-inventory --list` output, used when hosts is empty
    group = ""                  # inventory group to query ("" = every host)
    user = "mailops-queues"     # the login on the nodes
    key = "~/.ssh/id_ed25519"   # private key of the collector (no passphrase)
    known_hosts = "~/.ssh/known_hosts"  # the only host keys trusted; never added to
    port = 22
    timeout = 10.0              # seconds per host, connect to last byte
    parallel = 16
    command = "mailops queues local --json"  # what the client asks; the node forces its own
    format = "json"
    output = ""                 # "" = stdout
    prometheus_output = ""      # also write the Prometheus text here (same collection run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mailops import config, exitcodes
from mailops.queues import local as local_mod
from mailops.queues import render
from mailops.queues.collect import (
    HostSpec,
    HostSpecError,
    SSHOptions,
    hosts_from_inventory,
    unique,
)

DEFAULTS: dict[str, Any] = config.defaults("queues")
METHODS = config.SCHEMA["queues"]["method"].choices


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the [queues] table, then the flags that were given, all checked by
    the settings reader that `mailops config check` runs."""
    # --hosts is a comma list, read by resolve_hosts(); `local` prints its own --format.
    skip = {"hosts", "format"} if getattr(args, "queues_command", "") == "local" else {"hosts"}
    flags = {key: getattr(args, key, None) for key in DEFAULTS if key not in skip}
    return config.table(config.load(getattr(args, "config", None)), "queues", flags)


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def cmd_local(args: argparse.Namespace) -> int:
    s = settings(args)
    fmt = "json" if args.json else (args.format or "text")
    try:
        report = local_mod.scan(
            s["method"],
            queue_dir=s["queue_directory"] or None,
            postqueue=s["postqueue"],
            postconf=s["postconf"],
            top=s["top"],
            sample=s["sample"],
        )
    except local_mod.QueueError as exc:
        print(f"mailops queues: {exc}", file=sys.stderr)
        return exitcodes.NOINPUT
    from mailops.throttle.export import node_section

    throttle = node_section()  # the node's back-off steps (docs/throttle.md), if any
    if throttle is not None:
        report["throttle"] = throttle
    if fmt == "json":
        print(json.dumps(report, indent=None, separators=(",", ":")))
    elif fmt == "prometheus":
        sys.stdout.write(render.prometheus({report["host"]: report}, time.time()))
    else:
        print(text_summary(report))
    return exitcodes.OK


def text_summary(report: local_mod.HostReport) -> str:
    queues = report.get("queues", {})
    lines = [f"{report.get('host')} ({report.get('method')}, {report.get('generated_at')})"]
    for q in local_mod.QUEUES:
        count = queues.get(q)
        lines.append(f"  {q:10} {'-' if count is None else count:>10}")
    age = report.get("oldest_deferred_seconds")
    lines.append(f"  oldest deferred: {'-' if age is None else f'{age:.0f} s'}")
    dests = report.get("destinations")
    if dests and dests["top"]:
        note = f" (sample of {dests['sample_size']})" if dests["sampled"] else ""
        lines.append(f"  top deferred destinations{note}:")
        for d in dests["top"]:
            reason = d["last_reason"] or ""
            lines.append(
                f"    {d['domain']:30} {d['messages']:>7} {d['last_status'] or '':7} {reason[:80]}"
            )
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def _expand(path: str) -> str:
    return str(Path(path).expanduser()) if path else path


def resolve_hosts(args: argparse.Namespace, s: dict[str, Any]) -> list[HostSpec]:
    port = int(s["port"])
    if args.hosts:
        specs = [HostSpec.parse(h, port) for h in args.hosts.split(",") if h.strip()]
    elif args.inventory_json or (not s["hosts"] and s["inventory_json"]):
        path = args.inventory_json or s["inventory_json"]
        try:
            data = json.loads(Path(_expand(path)).read_text())
        except (OSError, ValueError) as exc:
            raise HostSpecError(f"{path}: {exc}") from None
        specs = hosts_from_inventory(data, s["group"] or None, port)
    else:
        specs = [HostSpec.from_config(h, port) for h in s["hosts"]]
    return unique(specs)


def cmd_collect(args: argparse.Namespace) -> int:
    from mailops.queues.collect import collect

    s = settings(args)
    try:
        hosts = resolve_hosts(args, s)
    except HostSpecError as exc:
        print(f"mailops queues collect: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    if not hosts:
        print(
            "mailops queues collect: no hosts (--hosts, --inventory-json or [queues] hosts)",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    opts = SSHOptions(
        user=s["user"],
        key=_expand(s["key"]),
        known_hosts=_expand(s["known_hosts"]),
        timeout=float(s["timeout"]),
        command=s["command"],
    )
    now = time.time()
    reports = collect(hosts, opts, parallel=int(s["parallel"]))
    extra = render.included(args.prometheus_include or [])
    for problem in extra.problems:
        print(f"mailops queues collect: {problem}", file=sys.stderr)
    if s["format"] == "prometheus":
        text = render.prometheus(reports, now) + extra.text
    else:
        text = json.dumps(render.collection(reports, local_mod.iso(now)), indent=1) + "\n"
    outputs = [(s["output"], text)] if s["output"] else []
    if s["prometheus_output"]:
        outputs.append((s["prometheus_output"], render.prometheus(reports, now) + extra.text))
    for path, body in outputs:
        try:
            render.write_atomic(path, body)
        except OSError as exc:
            print(f"mailops queues collect: {path}: {exc.strerror}", file=sys.stderr)
            return exitcodes.CANTCREAT
    if not s["output"]:
        sys.stdout.write(text)
    failed = sorted(name for name, rep in reports.items() if "error" in rep)
    for name in failed:
        print(f"mailops queues collect: {name}: {reports[name]['error']}", file=sys.stderr)
    return exitcodes.FAIL if failed else exitcodes.OK


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "queues",
        help="queue sizes of this host or of every node (JSON, Prometheus)",
        description=__doc__.split("\n\n")[0].replace("``", "") if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="queues_command", metavar="ACTION")
    sub.required = True

    lp = sub.add_parser("local", help="count this host's Postfix queues")
    lp.add_argument(
        "--queue-directory",
        dest="queue_directory",
        metavar="DIR",
        help="Postfix's queue directory (default: what postconf says)",
    )
    lp.add_argument(
        "--method",
        choices=METHODS,
        help="files (count the queue files: root or postfix), postqueue (postqueue -j: "
        "anyone, slower) or auto (files when readable; the default)",
    )
    lp.add_argument("--json", action="store_true", help="same as --format json")
    lp.add_argument(
        "--format",
        choices=("text", "json", "prometheus"),
        help="text (default), json or the Prometheus text exposition",
    )
    lp.add_argument("--top", type=_positive, metavar="N", help="destinations to report")
    lp.add_argument("--sample", type=_positive, metavar="N", help="defer logfiles to read at most")
    lp.set_defaults(func=cmd_local)

    cp = sub.add_parser("collect", help="query every node over SSH")
    src = cp.add_mutually_exclusive_group()
    src.add_argument("--hosts", metavar="H1,H2", help="name[=address][:port],...")
    src.add_argument(
        "--inventory-json",
        dest="inventory_json",
        metavar="FILE",
        help="hosts from `ansible-inventory --list` output saved in FILE",
    )
    cp.add_argument("--group", metavar="G", help="inventory group (default: every host)")
    cp.add_argument("--user", metavar="U", help="SSH user on the nodes (default mailops-queues)")
    cp.add_argument("--key", metavar="FILE", help="SSH private key (default ~/.ssh/id_ed25519)")
    cp.add_argument(
        "--known-hosts",
        dest="known_hosts",
        metavar="FILE",
        help="the only host keys trusted, never added to (default ~/.ssh/known_hosts)",
    )
    cp.add_argument("--port", type=int, metavar="P", help="SSH port (default 22)")
    cp.add_argument("--timeout", type=float, metavar="S", help="seconds per host")
    cp.add_argument(
        "--parallel", type=_positive, metavar="N", help="hosts queried at once (default 16)"
    )
    cp.add_argument("--command", metavar="CMD", help="command asked for (the node forces its own)")
    cp.add_argument(
        "--format",
        choices=("json", "prometheus"),
        help="json (default) or the Prometheus text exposition",
    )
    cp.add_argument("--output", metavar="FILE", help="write atomically (mode 0644)")
    cp.add_argument(
        "--prometheus-output",
        dest="prometheus_output",
        metavar="FILE",
        help="also write the Prometheus text there, from the same run",
    )
    cp.add_argument(
        "--prometheus-include",
        dest="prometheus_include",
        action="append",
        metavar="FILE",
        help="append FILE's metric families to the Prometheus text (repeat; a missing "
        "file adds nothing): e.g. the tenants' figures that `mailops tenants status "
        "--format prometheus --output FILE` writes",
    )
    cp.set_defaults(func=cmd_collect)
