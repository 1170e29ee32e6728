"""One host's queue counts with 100,000 messages in the deferred queue: target under 2 s.

The queue is laid out as Postfix lays it out with the defaults (hash_queue_depth = 1,
hash_queue_names = deferred, defer): ``deferred/<first hex digit>/<queue id>`` with a
small but well-formed queue file (size, arrival time, sender, recipient records), and
one defer logfile per message in ``defer/`` as the bounce daemon writes them.  Their
mtimes are in the future, as the queue manager sets them (next retry).

We time ``mailops queues local --json`` (counts of every queue, the oldest deferred
message from 100,000 arrival-time records, top destinations from a 1,000-log sample)
against what the old shell script did, ``find DIR -type f | wc -l``, which only counts.
``ratio`` is peer/ours: above 1 when we are faster; the target is the 2 s figure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from benchlib import Result, measure

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 100_000
TARGET_SECONDS = 2.0
DOMAINS = ("gmail.test", "outlook.test", "yahoo.test", "icloud.test", "example.test")
REASONS = {
    "gmail.test": ("4.7.28", "host mx.gmail.test[198.51.100.40] said: 421-4.7.28 unusual rate"),
    "outlook.test": ("4.4.1", "connect to mx.outlook.test[198.51.100.41]:25: Connection timed out"),
    "yahoo.test": ("4.7.0", "host mx.yahoo.test[198.51.100.42] said: 421 4.7.0 [TSS04] deferred"),
    "icloud.test": ("4.2.1", "host mx.icloud.test[198.51.100.43] said: 450 4.2.1 rate limited"),
    "example.test": ("4.4.2", "lost connection with mx.example.test[198.51.100.44]"),
}


def rec(rtype: bytes, data: bytes) -> bytes:
    out = bytearray(rtype)
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


def queue_id(rng: random.Random, seen: set[str]) -> str:
    """Short queue ID: 5 hex digits of microseconds then the inode number in hex."""
    while True:
        qid = f"{rng.randrange(1_000_000):05X}{rng.randrange(0x10000, 0xFFFFFF):X}"
        if qid not in seen:
            seen.add(qid)
            return qid


def build(queue: Path, n: int) -> tuple[float, str]:
    """Write the synthetic queue; return the oldest arrival time and the top domain."""
    rng = random.Random(8)
    for q in ("incoming", "active", "hold", "maildrop", "corrupt", "bounce", "flush"):
        (queue / q).mkdir(parents=True)
    dirs: dict[str, dict[str, int]] = {"deferred": {}, "defer": {}}
    for q, by_hash in dirs.items():
        for h in "0123456789ABCDEF":
            (queue / q / h).mkdir(parents=True)
            by_hash[h] = os.open(queue / q / h, os.O_RDONLY | os.O_DIRECTORY)
    now = time.time()
    retry = (now + 1800, now + 1800)
    seen: set[str] = set()
    oldest = now
    weights = (50, 20, 15, 10, 5)
    for _ in range(n):
        qid = queue_id(rng, seen)
        arrival = now - rng.uniform(60, 5 * 86400)
        oldest = min(oldest, arrival)
        domain = rng.choices(DOMAINS, weights)[0]
        rcpt = f"user{rng.randrange(10**6)}@{domain}"
        body = b"".join(
            [
                rec(b"C", b"%15d %15d %15d %15d %15d" % (900, 211, 1, 0, 900)),
                rec(b"T", b"%d %d" % (int(arrival), rng.randrange(10**6))),
                rec(b"S", b"news@company.test"),
                rec(b"R", rcpt.encode()),
                rec(b"M", b""),
                rec(b"N", b"Subject: weekly news"),
                rec(b"X", b""),
                rec(b"E", b""),
            ]
        )
        status, reason = REASONS[domain]
        log = (
            f"\nrecipient={rcpt}\noffset=211\nstatus={status}\naction=delayed\nreason={reason}\n\n"
        )
        fd = os.open(
            qid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dirs["deferred"][qid[0]]
        )
        os.write(fd, body)
        os.utime(fd, retry)
        os.close(fd)
        fd = os.open(qid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dirs["defer"][qid[0]])
        os.write(fd, log.encode())
        os.close(fd)
    for by_hash in dirs.values():
        for dfd in by_hash.values():
            os.close(dfd)
    return oldest, DOMAINS[0]


def run(workdir: Path) -> list[Result]:
    queue = workdir / "spool"
    try:
        oldest, top_domain = build(queue, MESSAGES)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "MAILOPS_CONFIG": "/dev/null"}
        cmd = [sys.executable, "-m", "mailops", "queues", "local", "--json", "--method", "files"]
        cmd += ["--queue-directory", str(queue)]
        measure(cmd, env)  # warm the dentry/inode caches as on a busy node; time the next
        ours = measure(cmd, env)
        report = json.loads(ours.stdout)
        if report["queues"]["deferred"] != MESSAGES:
            raise RuntimeError(f"counted {report['queues']['deferred']} deferred, not {MESSAGES}")
        age = report["oldest_deferred_seconds"]
        if abs((time.time() - oldest) - age) > ours.seconds + 60:
            raise RuntimeError(f"oldest deferred {age} s does not match the queue")
        if report["destinations"]["top"][0]["domain"] != top_domain:
            raise RuntimeError("top deferred destination does not match the queue")
        peer = measure(["sh", "-c", f"find {queue / 'deferred'} -type f | wc -l"])
        if int(peer.stdout) != MESSAGES:
            raise RuntimeError("find counted a different number of files")
    finally:
        shutil.rmtree(queue, ignore_errors=True)
    return [
        Result(
            name="queues local, 100k deferred",
            unit="seconds",
            ours=round(ours.seconds, 3),
            peer=round(peer.seconds, 3),
            peer_name="find deferred -type f | wc -l",
            ratio=round(peer.seconds / ours.seconds, 3),
            target=TARGET_SECONDS,
            met=ours.seconds < TARGET_SECONDS,
            notes=(
                f"all queues counted, oldest of {MESSAGES} arrival records read, "
                f"destinations from {report['destinations']['sample_size']} of "
                f"{report['destinations']['total_logs']} defer logs; peak RSS "
                f"{ours.max_rss_kib // 1024} MiB; find only counts"
            ),
        )
    ]
