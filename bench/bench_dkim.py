"""What DKIM signing costs a bulk node: one session's wait per message, 20 sessions' rate.

In one lab bulk node (mail1, or ``BENCH_DKIM_HOST``), beside its own services and without
touching them: a second, stock Postfix instance takes ``smtp-source``'s messages on
127.0.0.1:10025 and relays them to ``smtp-sink`` on 127.0.0.1:10026, which keeps every
message; each row puts another signer in that instance's path (``bench/dkim_node.py``
does the work inside the node):

* ``none``: no milter, the ceiling;
* ``opendkim-stock-tcp``: Debian's packaged opendkim.conf (with Domain, Selector and
  KeyFile), over TCP on loopback, stock Postfix's milter settings: the peer;
* ``opendkim-stock-unix``: the same over a unix socket (the socket's gain alone);
* ``opendkim-role-unix``: the opendkim role's configuration, over a unix socket, with the
  postfix role's ``milter_*`` settings;
* ``rspamd-unix``: the rspamd_signer role's configuration (when the node has it), over a
  unix socket.

Per row and round: 1 session of ``LATENCY`` messages (milliseconds per message as the
client sees them; "added" is the difference to ``none``), then ``SESSIONS`` sessions of
``MESSAGES`` (messages per second from the first connection until the queue is empty),
each with the CPU seconds of the sender, Postfix, the sink and the signer read from
/proc, and how busy the whole machine was (other users included).  Every kept message
must carry a signature that verifies (python3-dkim, with the node's public keys), or
none in the ``none`` row.  Rows alternate within each round; the figures are the
medians over the rounds.  Targets (issue 26): a signer at >= 0.70 of the ceiling with
20 sessions, and <= 3 ms added per message with one session.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2

import lablib
from benchlib import Result
from lablib import lab, must, sh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE_BENCH = "/var/tmp/bench-dkim"  # dkim_node.py's BENCH and QUEUE
NODE_QUEUE = "/var/spool/bench-dkim"
NODE_SCRIPT = "/var/tmp/bench-dkim-node.py"
HOST = os.environ.get("BENCH_DKIM_HOST", "mail1")
MESSAGES = int(os.environ.get("BENCH_DKIM_MESSAGES", "5000"))
LATENCY = int(os.environ.get("BENCH_DKIM_LATENCY", "300"))
SESSIONS = 20
ROUNDS = int(os.environ.get("BENCH_DKIM_ROUNDS", "3"))
ROWS = os.environ.get(
    "BENCH_DKIM_ROWS", "none,opendkim-stock-tcp,opendkim-stock-unix,opendkim-role-unix,rspamd-unix"
).split(",")
RSPAMD_WORKERS = int(os.environ.get("BENCH_DKIM_RSPAMD_WORKERS", "2"))
STRACE = int(os.environ.get("BENCH_DKIM_STRACE", "0"))
# Tuning experiments: more parameters for every row, e.g. {"rspamd_workers": 1},
# {"signer_conf": {"FinalPolicyScript": ""}} (OpenDKIM; "" leaves a key out) or
# {"postconf": ["milter_protocol=2"]} (the bench Postfix).
EXTRA: dict[str, Any] = json.loads(os.environ.get("BENCH_DKIM_EXTRA", "{}"))
TARGET_RATIO = 0.70
TARGET_ADDED_MS = 3.0
DETAIL = HERE / "dkim_results.json"


@contextlib.contextmanager
def the_lab() -> Iterator[None]:
    """The running lab without its lock: the bench touches none of its services, so the
    other users' converges and checks go on meanwhile.  No lab: up (locked) and down."""
    mod = lablib._lab_module()
    if mod.lab_is_running(mod.load_lab()):
        yield
        return
    with lab():
        yield


def rspamd_files() -> tuple[str, str]:
    """The rspamd_signer role's rspamd.conf and rules.lua for the bench's instance: its
    conf directory, socket and tables under the bench's paths, the node's header lists
    and internal hosts (the opendkim role's, which the role takes over), no tenants'
    from-check (the bench's mail has no login, so it would pass it anyway)."""
    conf = {k: v for k, v in (ln.split(None, 1) for ln in
            must(HOST, "grep -E '^(SignHeaders|OversignHeaders) ' /etc/opendkim.conf")
            .splitlines())}  # fmt: skip
    sign = conf.get("SignHeaders", "From,To,Subject,Date").strip().split(",")
    over = conf.get("OversignHeaders", "From").strip().split(",")
    lower_over = [h.lower() for h in over]
    spec = ":".join(
        ("(o)" if h in lower_over else "") + h
        for h in dict.fromkeys(h.lower() for h in sign + over)
    )
    networks = [
        ln.strip()
        for ln in must(HOST, "cat /etc/opendkim/TrustedHosts").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    env = jinja2.Environment(keep_trailing_newline=True)  # noqa: S701 (config files, not HTML)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = lambda v: str(v).lower() in ("true", "yes", "1")
    values = {
        "ansible_managed": "rendered by bench/bench_dkim.py from roles/rspamd_signer",
        "rspamd_signer__conf_dir": f"{NODE_BENCH}/rspamd/signer",
        "rspamd_signer__log_level": "notice",
        "rspamd_signer__sign_networks": networks,
        "rspamd_signer__headers_spec": spec,
        "rspamd_signer__symbols": ["DKIM_SIGNED"],
        "rspamd_signer__socket_path": f"{NODE_QUEUE}/rspamd/bench.sock",
        "rspamd_signer__socket": "rspamd/bench.sock",
        "rspamd_signer__workers": RSPAMD_WORKERS,
        "rspamd_signer__tenant_from_check": False,
        "opendkim__tenants": [],
    }
    out = []
    for name in ("rspamd.conf.j2", "rules.lua.j2"):
        text = (ROOT / "roles" / "rspamd_signer" / "templates" / name).read_text()
        out.append(env.from_string(text).render(**values))
    return out[0], out[1]


def node(step: str, params: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """One step of dkim_node.py in the node, its parameters as JSON on stdin."""
    res = subprocess.run(
        ["podman", "exec", "-i", f"mailops-lab-{HOST}", "python3", NODE_SCRIPT, step],
        input=json.dumps(params), text=True, capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    for line in res.stderr.splitlines():
        print(line, flush=True)
    if res.returncode != 0:
        raise RuntimeError(f"{HOST}: dkim_node {step} exited {res.returncode}: {res.stdout[-800:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def copy_script() -> None:
    container = f"mailops-lab-{HOST}"
    subprocess.run(
        ["podman", "exec", "-i", container, "sh", "-c", f"cat > {NODE_SCRIPT}"],
        input=(HERE / "dkim_node.py").read_bytes(),
        check=True,
    )


def figures(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the rounds of one row."""

    def med(f: Any) -> float:
        return float(statistics.median(f(r) for r in runs))

    out = {
        "ms_per_msg_1": med(lambda r: 1000 * r["one"]["submit_s"] / r["one"]["messages"]),
        "rate_20": med(lambda r: r["many"]["messages"] / r["many"]["wall_s"]),
        "busy_20": med(lambda r: r["many"]["machine_busy"]),
        "busy_1": med(lambda r: r["one"]["machine_busy"]),
    }
    for part in ("signer", "postfix", "sink", "source", "machine"):
        for ph, key in (("one", "1"), ("many", "20")):
            if all(f"{part}_cpu_s" in r[ph] for r in runs):
                out[f"{part}_ms_{key}"] = med(
                    lambda r, p=part, h=ph: 1000 * r[h][f"{p}_cpu_s"] / r[h]["messages"]
                )
    return out


def run(workdir: Path) -> list[Result]:
    del workdir  # everything happens in the lab's node
    detail: dict[str, Any] = {"host": HOST, "messages": MESSAGES, "latency": LATENCY,
                              "sessions": SESSIONS, "rounds": ROUNDS, "runs": {}}  # fmt: skip
    with the_lab():
        copy_script()
        try:
            setup: dict[str, Any] = {"strace": STRACE > 0}
            if "rspamd-unix" in ROWS:
                conf, rules = rspamd_files()
                setup |= {"rspamd_conf": conf, "rspamd_rules": rules}
            info = node("setup", setup, timeout=900)
            print(f"  {HOST}: signing for {info['domain']} with selector {info['selector']}")
            role_milter = [
                ln.replace(" = ", "=", 1)
                for ln in must(HOST, "postconf -n").splitlines()
                if ln.startswith("milter_")
            ]
            rows = ROWS
            for rnd in range(ROUNDS):
                for name in rows:
                    print(f"  round {rnd + 1}/{ROUNDS}: {name}", flush=True)
                    params = {"row": name, "latency": LATENCY, "messages": MESSAGES,
                              "sessions": SESSIONS, "role_milter_settings": role_milter,
                              "strace": STRACE if rnd == 0 else 0} | EXTRA  # fmt: skip
                    try:
                        got = node("row", params)
                    except RuntimeError as exc:
                        # Once more, and said: the shared machine has killed a run before.
                        print(f"  {name} failed ({exc}); once more", flush=True)
                        detail.setdefault("retried", []).append(f"{rnd + 1}:{name}: {exc}")
                        got = node("row", params)
                    check = got["check"]
                    want_signed = name != "none"
                    ok = check["kept"] == got["sent"] and (
                        check["signed_valid"] == got["sent"] if want_signed
                        else check["unsigned"] == got["sent"]
                    )  # fmt: skip
                    if not ok:
                        raise RuntimeError(f"{name}: {got['sent']} sent, the sink kept {check}")
                    detail["runs"].setdefault(name, []).append(got)
        finally:
            node("teardown", {}, timeout=120)
            sh(HOST, f"rm -f {NODE_SCRIPT}")
    table = {name: figures(runs) for name, runs in detail["runs"].items()}
    detail["figures"] = table
    DETAIL.write_text(json.dumps(detail, indent=1) + "\n")
    print_table(table)
    print_breakdown(table)
    return results(table)


def print_table(table: dict[str, dict[str, float]]) -> None:
    ceiling = table["none"]
    print(f"\n  {'row':22} {'ms/msg 1s':>9} {'added':>6} {'msg/s 20s':>9} {'ratio':>6} "
          f"{'signer ms':>9} {'postfix ms':>10} {'busy':>5}")  # fmt: skip
    for name, f in table.items():
        print(
            f"  {name:22} {f['ms_per_msg_1']:9.2f} "
            f"{f['ms_per_msg_1'] - ceiling['ms_per_msg_1']:6.2f} {f['rate_20']:9.0f} "
            f"{f['rate_20'] / ceiling['rate_20']:6.2f} {f.get('signer_ms_20', 0):9.2f} "
            f"{f['postfix_ms_20']:10.2f} {f['busy_20']:5.0%}",
            flush=True,
        )


def print_breakdown(table: dict[str, dict[str, float]]) -> None:
    """Where the milliseconds of a message go: CPU per message of each part, and the rest
    of the machine's busy time (other users of the machine), per phase."""
    for key, what in (("1", "1 session"), ("20", f"{SESSIONS} sessions")):
        print(f"\n  CPU ms per message, {what}:")
        print(f"  {'row':22} {'wall':>6} {'source':>6} {'postfix':>7} {'sink':>5} "
              f"{'signer':>6} {'others':>6}")  # fmt: skip
        for name, f in table.items():
            wall = f["ms_per_msg_1"] if key == "1" else 1000 / f["rate_20"]
            parts = [f.get(f"{p}_ms_{key}", 0.0) for p in ("source", "postfix", "sink", "signer")]
            others = f.get(f"machine_ms_{key}", 0.0) - sum(parts)
            print(f"  {name:22} {wall:6.2f} " + " ".join(f"{v:6.2f}" for v in parts)
                  + f" {others:6.2f}")  # fmt: skip


def results(table: dict[str, dict[str, float]]) -> list[Result]:
    ceiling = table["none"]
    shape = (f"{MESSAGES} x 5 KB with {SESSIONS} sessions, {LATENCY} with 1, median of "
             f"{ROUNDS} rounds, {HOST} (a second Postfix instance)")  # fmt: skip
    stock = table.get("opendkim-stock-tcp")
    out: list[Result] = []
    for name in ("opendkim-role-unix", "rspamd-unix"):
        if name not in table:
            continue
        f = table[name]
        ratio = f["rate_20"] / ceiling["rate_20"]
        added = f["ms_per_msg_1"] - ceiling["ms_per_msg_1"]
        peer_note = ""
        if stock:
            stock_added = stock["ms_per_msg_1"] - ceiling["ms_per_msg_1"]
            peer_note = (f"; stock Postfix + stock OpenDKIM over TCP: {stock['rate_20']:.0f} "
                         f"msg/s ({stock['rate_20'] / ceiling['rate_20']:.2f}), "
                         f"{stock_added:.1f} ms added")  # fmt: skip
        out.append(Result(
            name=f"dkim {name}, {SESSIONS} sessions", unit="msg/s",
            ours=round(f["rate_20"], 1), peer=round(ceiling["rate_20"], 1),
            peer_name="stock Postfix, no milter", ratio=round(ratio, 3),
            target=TARGET_RATIO, met=ratio >= TARGET_RATIO,
            notes=f"{shape}; signer {f.get('signer_ms_20', 0):.2f} ms CPU/msg; machine "
                  f"{f['busy_20']:.0%} busy{peer_note}",
        ))  # fmt: skip
        out.append(Result(
            name=f"dkim {name}, 1 session, added", unit="ms/msg",
            ours=round(added, 2), peer=round(ceiling["ms_per_msg_1"], 2),
            peer_name="stock Postfix, no milter (ms/msg)", ratio=None,
            target=f"<= {TARGET_ADDED_MS:g} ms", met=added <= TARGET_ADDED_MS,
            notes=f"{shape}; {f['ms_per_msg_1']:.2f} ms/msg in all{peer_note}",
        ))  # fmt: skip
    return out
