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

import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchlib import Result
from lablib import lab, must, sh

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = "/var/tmp/bench-dkim-node.py"
HOST = os.environ.get("BENCH_DKIM_HOST", "mail1")
MESSAGES = int(os.environ.get("BENCH_DKIM_MESSAGES", "5000"))
LATENCY = int(os.environ.get("BENCH_DKIM_LATENCY", "300"))
SESSIONS = 20
ROUNDS = int(os.environ.get("BENCH_DKIM_ROUNDS", "3"))
ROWS = os.environ.get(
    "BENCH_DKIM_ROWS", "none,opendkim-stock-tcp,opendkim-stock-unix,opendkim-role-unix,rspamd-unix"
).split(",")
STRACE = int(os.environ.get("BENCH_DKIM_STRACE", "0"))
TARGET_RATIO = 0.70
TARGET_ADDED_MS = 3.0
DETAIL = HERE / "dkim_results.json"


def node(step: str, params: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    res = sh(HOST, f"python3 {NODE_SCRIPT} {step} '{json.dumps(params)}'", timeout=timeout)
    for line in res.err.splitlines():
        print(line, flush=True)
    if res.rc != 0:
        raise RuntimeError(f"{HOST}: dkim_node {step} exited {res.rc}: {res.out[-800:]}")
    return dict(json.loads(res.out.strip().splitlines()[-1]))


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
    with lab():
        copy_script()
        try:
            info = node("setup", {}, timeout=600)
            print(f"  {HOST}: signing for {info['domain']} with selector {info['selector']}")
            role_milter = [
                ln.replace(" = ", "=", 1)
                for ln in must(HOST, "postconf -n").splitlines()
                if ln.startswith("milter_")
            ]
            has_rspamd = sh(HOST, "test -d /etc/rspamd && command -v rspamd").rc == 0
            rows = [r for r in ROWS if r != "rspamd-unix" or has_rspamd]
            if len(rows) < len(ROWS):
                print(f"  {HOST} has no rspamd: its row is left out", flush=True)
            for rnd in range(ROUNDS):
                for name in rows:
                    print(f"  round {rnd + 1}/{ROUNDS}: {name}", flush=True)
                    params = {"row": name, "latency": LATENCY, "messages": MESSAGES,
                              "sessions": SESSIONS, "role_milter_settings": role_milter,
                              "strace": STRACE if rnd == 0 else 0}  # fmt: skip
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
