"""A receiver that throttles: the per-destination transport keeps to its connection limit
and every message gets through once the receiver recovers.

In the lab: a sink (Python, on inbox's address in place of inbox's Postfix) that for its
first THROTTLE_SECONDS answers a share of connections with ``421`` at the greeting and a
share of recipients with ``451 4.7.28``, as the big providers do to a sender they slow
down, and accepts everything afterwards.  app1 hands MESSAGES messages for gmail.test to
mail1, whose ``gmail`` transport allows 10 connections (inventories/lab; read from mail1's
``gmail_destination_concurrency_limit`` at run time).  A loop on
mail1 counts its established connections to inbox's port 25 once a second; the sink
counts its own concurrent sessions too.  Once the sink recovers, Postfix's own retries
(mail1's backoff times, no flush) must bring every message over: the sink records the
queue id of mail1's Received: header of each message it accepts.

Results: the highest connection count seen against the transport's limit (target: not
above it), and messages delivered against messages accepted (target: all of them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchlib import Result
from lablib import lab, log_lines, must, sh, sink_on_inbox, wait_for

MESSAGES = 2_000
THROTTLE_SECONDS = 60
SHARE = 0.3
TRANSPORT = "gmail"  # gmail.test's transport on the bulk nodes (inventories/lab)
RUN_TIMEOUT = 1200
STATE = "/tmp/bench-throttle-sink.json"
SAMPLES = "/tmp/bench-throttle-samples"
SAMPLER = "/tmp/bench-throttle-sampler.sh"

SINK = r"""
import asyncio, json, os, random, re, sys, time
host, out = sys.argv[1], sys.argv[4]
throttle, share, limit = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[5])
start = time.monotonic()
st = {"open": 0, "max_open": 0, "greeting_421": 0, "rcpt_451": 0, "accepted": 0, "ids": []}
ids = set()
ID = re.compile(rb"\bid ([0-9A-Za-z]+)")
def throttling():
    return time.monotonic() - start < throttle
async def session(r, w):
    st["open"] += 1
    st["max_open"] = max(st["max_open"], st["open"])
    try:
        if throttling() and random.random() < share / 2:
            st["greeting_421"] += 1
            w.write(b"421 4.7.0 sink busy, try again later\r\n")
            await w.drain()
            return
        w.write(b"220 sink.test ESMTP\r\n")
        rcpts = 0
        while True:
            line = await asyncio.wait_for(r.readline(), 60)
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                w.write(b"250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb in (b"HELO", b"NOOP"):
                w.write(b"250 ok\r\n")
            elif verb in (b"MAIL", b"RSET"):
                rcpts = 0
                w.write(b"250 ok\r\n")
            elif verb == b"RCPT":
                if throttling() and random.random() < share:
                    st["rcpt_451"] += 1
                    w.write(b"451 4.7.28 rate limited, try again later\r\n")
                else:
                    rcpts += 1
                    w.write(b"250 ok\r\n")
            elif verb == b"DATA":
                if not rcpts:
                    w.write(b"554 5.5.1 no valid recipients\r\n")
                    await w.drain()
                    continue
                w.write(b"354 go ahead\r\n")
                await w.drain()
                head, in_head = [], True
                while True:
                    data = await asyncio.wait_for(r.readline(), 60)
                    if not data:
                        return
                    if data == b".\r\n":
                        break
                    if in_head:
                        if data in (b"\r\n", b"\n"):
                            in_head = False
                        else:
                            head.append(data)
                blob = b"".join(head)
                at = blob.find(b"Received:")
                m = ID.search(blob, at) if at >= 0 else None
                if m:
                    ids.add(m.group(1).decode())
                st["accepted"] += 1
                w.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                w.write(b"221 bye\r\n")
                await w.drain()
                return
            else:
                w.write(b"502 5.5.2 not implemented\r\n")
            await w.drain()
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        st["open"] -= 1
        w.close()
async def main():
    server = await asyncio.start_server(session, host, 25, backlog=256)
    async with server:
        while time.monotonic() - start < limit:
            st["ids"] = sorted(ids)
            st["throttling"] = throttling()
            tmp = out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(st, fh)
            os.replace(tmp, out)
            await asyncio.sleep(1)
asyncio.run(main())
"""


def run(workdir: Path) -> list[Result]:
    del workdir
    with lab() as hosts:
        domain = hosts["mx1"]["fqdn"].split(".", 1)[1]
        inbox, mail1 = hosts["inbox"]["ip"], hosts["mail1"]["ip"]
        backoff = must("mail1", "postconf -h minimal_backoff_time maximal_backoff_time")
        limit = int(must("mail1", f"postconf -h {TRANSPORT}_destination_concurrency_limit"))
        must("inbox", f"rm -f {STATE}; cat > /tmp/bench-sink.py <<'EOF'\n{SINK}EOF")
        start = log_lines("mail1")
        # once a second, mail1's established connections to inbox's port 25
        sampler = (
            f"i=0; while [ $i -lt {RUN_TIMEOUT} ]; do i=$((i+1)); ss -Htn state established "
            f"'( dport = :25 )' dst {inbox} | wc -l; sleep 1; done > {SAMPLES}\n"
        )
        must("mail1", f"rm -f {SAMPLES}; cat > {SAMPLER} <<'EOF'\n{sampler}EOF")
        sh("mail1", f"setsid sh {SAMPLER} </dev/null >/dev/null 2>&1 &")
        try:
            sink = (
                f"python3 /tmp/bench-sink.py {inbox} {THROTTLE_SECONDS} {SHARE} {STATE} "
                f"{RUN_TIMEOUT}"
            )
            with sink_on_inbox(sink):
                began = time.monotonic()
                must(
                    "app1",
                    f"timeout 600 smtp-source -s 10 -l 2048 -m {MESSAGES} -f bench@{domain} "
                    f"-t throttled@gmail.test -M {hosts['app1']['fqdn']} {mail1}:25",
                    timeout=630,
                )
                accepted_ids = set(
                    must(
                        "mail1",
                        f"tail -n +{start + 1} /var/log/mail.log | grep -F 'client=' "
                        f"| grep -F '[{hosts['app1']['ip']}]' "
                        "| sed -E 's/.*\\]: ([0-9A-Za-z]+): client=.*/\\1/'",
                    ).split()
                )

                def sink_state() -> dict[str, object]:
                    raw = sh("inbox", f"cat {STATE} 2>/dev/null").out
                    return json.loads(raw) if raw else {}

                def all_in() -> bool:
                    got = sink_state().get("ids", [])
                    assert isinstance(got, list)
                    return accepted_ids <= set(got)

                took = wait_for(
                    "every accepted message at the sink",
                    all_in,
                    RUN_TIMEOUT - (time.monotonic() - began),
                    every=5,
                )
                state = sink_state()
        finally:
            sh("mail1", f"pkill -f 'sh {SAMPLER}'")
        samples = [int(x) for x in sh("mail1", f"cat {SAMPLES}").out.split()]
        sh("mail1", f"rm -f {SAMPLES} {SAMPLER}")
        sh("inbox", f"rm -f {STATE} /tmp/bench-sink.py")
    peak = max(samples, default=0)
    ids = state.get("ids", [])
    got = set(ids) if isinstance(ids, list) else set()
    delivered = len(accepted_ids & got)
    throttled = f"{state.get('greeting_421')} greetings 421, {state.get('rcpt_451')} RCPT 451"
    print(
        f"  peak {peak} connections (sink saw {state.get('max_open')}); {throttled}; "
        f"{delivered}/{len(accepted_ids)} delivered, {took:.0f} s after the last was accepted",
        flush=True,
    )
    return [
        Result(
            name="throttled receiver: peak connections",
            unit="connections",
            ours=peak,
            peer=limit,
            peer_name=f"the {TRANSPORT} transport's limit on mail1",
            ratio=round(peak / limit, 3),
            target="<= 1.0",
            met=0 < peak <= limit,
            notes=(
                f"sampled on mail1 once a second over {len(samples)} s; {throttled} "
                f"in the first {THROTTLE_SECONDS} s; sink's own peak {state.get('max_open')}"
            ),
        ),
        Result(
            name="throttled receiver: delivered once it recovers",
            unit="messages",
            ours=delivered,
            peer=len(accepted_ids),
            peer_name="messages mail1 accepted",
            ratio=round(delivered / max(len(accepted_ids), 1), 4),
            target=1.0,
            met=len(accepted_ids) == MESSAGES and delivered == len(accepted_ids),
            notes=(
                f"all in {took:.0f} s after the last was accepted, by Postfix's own "
                f"retries (mail1's backoff: {' to '.join(backoff.split())})"
            ),
        ),
    ]
