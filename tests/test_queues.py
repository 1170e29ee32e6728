"""mailops queues: counting a synthetic Postfix queue, defer logs, postqueue -j, output."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.config import ConfigError
from mailops.queues import local, render
from mailops.queues.collect import HostSpec, HostSpecError, hosts_from_inventory

DATA = Path(__file__).resolve().parent / "data" / "queues"
HEX = "0123456789ABCDEF"


# --- a synthetic queue, laid out as Postfix lays it out ------------------------------


def rec(rtype: str, data: bytes) -> bytes:
    """One queue file record as rec_put(3) writes it: type, 7-bit length groups, data."""
    out = bytearray(rtype.encode())
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + data


def queue_file(arrival: float, rcpt: str = "user@gmail.test", pad: int = 0) -> bytes:
    sec = int(arrival)
    usec = int((arrival - sec) * 1e6)
    size = b"%15d %15d %15d %15d %15d" % (1200, 180, 1, 0, 1200)
    return b"".join(
        [
            rec("C", size),
            # a long record first, as a filter or large attribute would put there
            *([rec("A", b"x" * pad)] if pad else []),
            rec("T", b"%d %d" % (sec, usec)),
            rec("S", b"news@company.test"),
            rec("R", rcpt.encode()),
            rec("M", b""),
            rec("N", b"Subject: hello"),
            rec("X", b""),
            rec("E", b""),
        ]
    )


def qid(i: int) -> str:
    """A short Postfix queue ID: 5 hex digits of microseconds, then the inode in hex."""
    return f"{(i * 7919) % 1000000:05X}{i + 4096:X}"


def hashed(queue: Path, name: str, depth: int) -> Path:
    d = queue
    for k in range(depth):
        d = d / name[k]
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def make_queue(
    root: Path,
    *,
    counts: dict[str, int],
    arrivals: Iterable[float] = (),
    depth: int = 1,
    defer_logs: dict[str, str] | None = None,
) -> Path:
    """A queue tree with ``counts`` files per queue; deferred and defer hashed ``depth`` deep."""
    for q in ("incoming", "active", "deferred", "hold", "maildrop", "defer", "bounce", "flush"):
        (root / q).mkdir(parents=True, exist_ok=True)
    arrivals = list(arrivals)
    future = time.time() + 3600  # qmgr sets a deferred file's mtime to its next retry
    serial = 0
    for q, n in counts.items():
        for i in range(n):
            serial += 1
            name = qid(serial)
            if q == "deferred":
                path = hashed(root / q, name, depth)
                when = arrivals[i] if i < len(arrivals) else time.time() - 60
                path.write_bytes(queue_file(when, pad=200 if i % 2 else 0))
                os.utime(path, (future, future))
            else:
                (root / q).mkdir(exist_ok=True)
                (root / q / name).write_bytes(queue_file(time.time()))
    for name, text in (defer_logs or {}).items():
        hashed(root / "defer", name, depth).write_text(text)
    return root


# --- queue file records ---------------------------------------------------------------


def test_arrival_time_is_read_from_the_T_record() -> None:
    assert local.parse_arrival(queue_file(1704067200.25)) == pytest.approx(1704067200.25)
    # a record longer than 127 bytes before T needs a two-byte length
    assert local.parse_arrival(queue_file(1704067200, pad=300)) == 1704067200


def test_arrival_time_absent_or_truncated() -> None:
    assert local.parse_arrival(b"") is None
    assert local.parse_arrival(rec("C", b"1 2 3")) is None
    assert local.parse_arrival(queue_file(1704067200)[:20]) is None
    assert local.parse_arrival(rec("T", b"not a time")) is None


# --- counting ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
def test_counts_every_queue_and_descends_hashed_directories(tmp_path: Path, depth: int) -> None:
    counts = {"incoming": 2, "active": 3, "deferred": 37, "hold": 1, "maildrop": 4}
    now = time.time()
    oldest = now - 5 * 86400
    arrivals = [now - 3600 * (i % 24) for i in range(37)]
    arrivals[17] = oldest
    make_queue(tmp_path, counts=counts, arrivals=arrivals, depth=depth)
    # a file of another queue's hash directory is not counted twice; subdirs are not files
    assert len(list((tmp_path / "deferred").iterdir())) > 1

    rep = local.scan_files(str(tmp_path))

    assert rep["queues"] == {**counts, "corrupt": None}
    assert rep["method"] == "files"
    # from the T record, although every deferred file's mtime is an hour in the future
    assert rep["oldest_deferred_seconds"] == pytest.approx(5 * 86400, abs=5)
    assert rep["oldest_deferred_arrival"] == local.iso(oldest)


def test_counts_corrupt_when_present_and_reports_empty_queue(tmp_path: Path) -> None:
    make_queue(tmp_path, counts={})
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "ABCDEF123").write_bytes(b"junk")
    rep = local.scan_files(str(tmp_path))
    assert rep["queues"]["corrupt"] == 1
    assert rep["queues"]["deferred"] == 0
    assert rep["oldest_deferred_seconds"] is None
    assert rep["destinations"]["top"] == []


def test_a_file_without_arrival_time_is_counted_and_reported(tmp_path: Path) -> None:
    make_queue(tmp_path, counts={"deferred": 2})
    hashed(tmp_path / "deferred", "F0000AAAA", 1).write_bytes(b"")
    rep = local.scan_files(str(tmp_path))
    assert rep["queues"]["deferred"] == 3
    assert any("without a readable arrival time" in w for w in rep["warnings"])


def test_missing_queue_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(local.QueueError, match="no such queue directory"):
        local.scan_files(str(tmp_path / "nope"))


def test_missing_queue_subdirectory_counts_zero_with_a_warning(tmp_path: Path) -> None:
    make_queue(tmp_path, counts={"active": 1})
    (tmp_path / "hold").rmdir()
    rep = local.scan_files(str(tmp_path))
    assert rep["queues"]["hold"] == 0
    assert rep["queues"]["active"] == 1
    assert any(w.endswith("hold: missing") for w in rep["warnings"])


def test_walk_does_not_follow_symlinks(tmp_path: Path) -> None:
    make_queue(tmp_path, counts={"deferred": 1})
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(5):
        (outside / f"f{i}").write_text("x")
    (tmp_path / "deferred" / "Z").symlink_to(outside)
    (tmp_path / "deferred" / "LINK").symlink_to(outside / "f0")
    assert local.scan_files(str(tmp_path))["queues"]["deferred"] == 1


# --- defer logs ---------------------------------------------------------------------------


def test_defer_log_records_new_style() -> None:
    recs = list(local.parse_defer_log((DATA / "defer_log_gmail.txt").read_text().splitlines()))
    assert [(r.recipient, r.status) for r in recs] == [
        ("alice@gmail.test", "4.7.28"),
        ("bob@outlook.test", "4.4.1"),
    ]
    assert recs[1].reason == "connect to mx.outlook.test[198.51.100.41]:25: Connection timed out"


def test_defer_log_records_old_style_and_mixed() -> None:
    text = (DATA / "defer_log_oldstyle.txt").read_text()
    recs = list(local.parse_defer_log(text.splitlines()))
    assert [(r.recipient, r.status) for r in recs] == [
        ("carol@yahoo.test", "4.3.2"),
        ("dave@legacy.test", None),
    ]
    assert recs[1].reason is not None and recs[1].reason.startswith("lost connection")


def test_top_destinations_with_freshest_error(tmp_path: Path) -> None:
    gmail = (DATA / "defer_log_gmail.txt").read_text()
    logs = {qid(1000 + i): gmail for i in range(5)}
    logs[qid(2000)] = "\nrecipient=zed@outlook.test\nstatus=4.7.0\nreason=throttled\n\n"
    logs[qid(2001)] = (DATA / "defer_log_oldstyle.txt").read_text()
    make_queue(tmp_path, counts={"deferred": 7}, defer_logs=logs)
    # the outlook log written last carries the freshest outlook error
    fresh = hashed(tmp_path / "defer", qid(2000), 1)
    os.utime(fresh, (time.time() + 60, time.time() + 60))

    rep = local.scan_files(str(tmp_path), top=2)
    dests = rep["destinations"]
    assert dests["sampled"] is False
    assert dests["total_logs"] == 7
    assert [d["domain"] for d in dests["top"]] == ["outlook.test", "gmail.test"]
    outlook, gmail_d = dests["top"]
    assert (outlook["messages"], outlook["recipients"]) == (6, 6)
    assert (outlook["last_status"], outlook["last_reason"]) == ("4.7.0", "throttled")
    assert gmail_d["messages"] == 5
    assert gmail_d["last_status"] == "4.7.28"


def test_destinations_sampled_when_logs_exceed_the_bound(tmp_path: Path) -> None:
    logs = {qid(5000 + i): f"\nrecipient=u{i}@d{i % 3}.test\nstatus=4.0.0\n\n" for i in range(40)}
    make_queue(tmp_path, counts={"deferred": 40}, defer_logs=logs)
    rep = local.scan_files(str(tmp_path), sample=10)
    dests = rep["destinations"]
    assert dests["sampled"] is True
    assert dests["sample_size"] == 10
    assert dests["total_logs"] == 40
    assert sum(d["messages"] for d in dests["top"]) == 10
    assert rep["queues"]["deferred"] == 40  # counts are never sampled


def test_reservoir_sample_is_uniform_enough(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"{i:02d}").write_text("")
    import random

    hits = [0] * 50
    rng = random.Random(7)
    for _ in range(400):
        sample, total = local._sample_paths(str(tmp_path), 5, rng)
        assert total == 50 and len(set(sample)) == 5
        for p in sample:
            hits[int(Path(p).name)] += 1
    # every file is chosen sometimes; expected 40 each, none starved or dominant
    assert min(hits) > 10 and max(hits) < 80


# --- postqueue -j -------------------------------------------------------------------------


def test_postqueue_stream_is_folded_into_the_same_report() -> None:
    with (DATA / "postqueue_j.jsonl").open("rb") as fh:
        rep = local.scan_postqueue_lines(fh, top=5)
    assert rep["queues"] == {
        "incoming": 1,
        "active": 1,
        "deferred": 3,
        "hold": 1,
        "maildrop": 1,
        "corrupt": None,
    }
    assert rep["oldest_deferred_arrival"] == "2024-01-01T00:00:00Z"
    top = rep["destinations"]["top"]
    assert [(d["domain"], d["messages"], d["recipients"]) for d in top] == [
        ("gmail.test", 2, 3),
        ("outlook.test", 1, 1),
    ]
    # the newest gmail message's reason, with the DSN status picked out of the text
    assert top[0]["last_status"] == "4.2.1"
    assert top[0]["last_reason"] is not None and "too quickly" in top[0]["last_reason"]


def test_postqueue_garbage_lines_are_counted_not_fatal() -> None:
    rep = local.scan_postqueue_lines([b"{", b'{"queue_name": "active"}', b"", b"[]"])
    assert rep["queues"]["active"] == 1
    assert rep["warnings"] == ["2 unparsable line(s) from postqueue -j"]


def fake_postqueue(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "postqueue"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_postqueue_method_runs_the_command(tmp_path: Path) -> None:
    exe = fake_postqueue(tmp_path, f'[ "$1" = -j ] || exit 64\ncat {DATA / "postqueue_j.jsonl"}')
    rep = local.scan("postqueue", postqueue=str(exe))
    assert rep["method"] == "postqueue"
    assert rep["queues"]["deferred"] == 3


def test_postqueue_failure_is_an_error(tmp_path: Path) -> None:
    exe = fake_postqueue(
        tmp_path,
        "echo 'postqueue: fatal: Queue report unavailable - mail system is down' >&2\nexit 69",
    )
    with pytest.raises(local.QueueError, match=r"exited 69: .*mail system is down"):
        local.scan("postqueue", postqueue=str(exe))


def test_auto_counts_files_when_the_queue_is_readable(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "spool", counts={"deferred": 4})
    postconf = fake_postqueue(tmp_path, f"echo {q}")  # stands in for postconf -h
    rep = local.scan("auto", postconf=str(postconf), postqueue="/nonexistent/postqueue")
    assert rep["method"] == "files"
    assert rep["queue_directory"] == str(q)
    assert rep["queues"]["deferred"] == 4


# --- CLI ------------------------------------------------------------------------------------


def test_cli_local_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_queue(tmp_path, counts={"active": 2, "deferred": 9})
    rc = cli.main(["queues", "local", "--json", "--queue-directory", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert rc == exitcodes.OK
    assert out["queues"]["active"] == 2 and out["queues"]["deferred"] == 9


def test_cli_local_text_and_missing_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_queue(tmp_path, counts={"hold": 3})
    assert cli.main(["queues", "local", "--queue-directory", str(tmp_path)]) == 0
    assert re.search(r"hold\s+3", capsys.readouterr().out)
    rc = cli.main(["queues", "local", "--queue-directory", str(tmp_path / "x")])
    assert rc == exitcodes.NOINPUT
    assert "no such queue directory" in capsys.readouterr().err


def test_cli_reads_the_queues_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = make_queue(tmp_path / "q", counts={"deferred": 3})
    conf = tmp_path / "mailops.toml"
    conf.write_text(f'[queues]\nqueue_directory = "{q}"\ntop = 1\nmethod = "files"\n')
    assert cli.main(["--config", str(conf), "queues", "local", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["queues"]["deferred"] == 3


@pytest.mark.parametrize(
    "body",
    ["[queues]\nbogus = 1\n", '[queues]\ntop = "ten"\n', '[queues]\nmethod = "guess"\n'],
)
def test_bad_settings_are_config_errors(tmp_path: Path, body: str) -> None:
    conf = tmp_path / "mailops.toml"
    conf.write_text(body)
    assert cli.main(["--config", str(conf), "queues", "local"]) == exitcodes.CONFIG
    with pytest.raises(ConfigError):
        from mailops.queues import settings

        settings(cli.build_parser().parse_args(["--config", str(conf), "queues", "local"]))


# --- output ---------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|NaN|[-+]Inf)"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? ({_VALUE})$")


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the text format: HELP and TYPE before samples, families contiguous,
    no duplicate series, a final newline."""
    assert text.endswith("\n")
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    helped: set[str] = set()
    typed: set[str] = set()
    current: str | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in helped
            helped.add(name)
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and name not in typed
            assert kind in {"gauge", "counter", "untyped", "summary", "histogram"}
            typed.add(name)
            families[name] = []
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m.group(1)
        assert name == current and name in typed, f"{name} outside its family"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"duplicate series {key}"
        seen.add(key)
        families[name].append((labels, float(m.group(3))))
    return families


def sample_reports() -> dict[str, local.HostReport]:
    ok = local.HostReport(
        host="mail1",
        queues={
            "incoming": 0,
            "active": 34,
            "deferred": 1548,
            "hold": 2,
            "maildrop": 0,
            "corrupt": None,
        },
        oldest_deferred_seconds=7200.5,
        duration_seconds=0.2,
        destinations=local.Destinations(
            sampled=True,
            sample_size=1000,
            total_logs=1548,
            top=[
                local.Destination(
                    domain='we"ird\\dom\nain',
                    messages=900,
                    recipients=950,
                    last_status="4.7.28",
                    last_reason="x",
                )
            ],
        ),
    )
    bad = local.HostReport(host="mail2", error="TimeoutError: timed out", duration_seconds=10.0)
    return {"mail1": ok, "mail2": bad}


def test_legacy_shape_has_string_counts_and_errors_beside_it() -> None:
    out = render.collection(sample_reports(), "2024-01-01T00:00:00Z")
    assert out["mailqueues"] == {
        "mail1": {"activemailqueue": "34", "deferredmailqueue": "1548"},
        "mail2": {"error": "TimeoutError: timed out"},
    }
    assert out["hosts"]["mail1"]["queues"]["hold"] == 2
    assert out["generated_at"] == "2024-01-01T00:00:00Z"
    json.dumps(out)


def test_prometheus_exposition_is_valid_and_complete() -> None:
    fams = parse_exposition(render.prometheus(sample_reports(), 1704067200.0))
    assert sorted(fams["mailops_queue_collect_up"], key=lambda s: s[0]["host"]) == [
        ({"host": "mail1"}, 1.0),
        ({"host": "mail2"}, 0.0),
    ]
    msgs = {s[0]["queue"]: s[1] for s in fams["mailops_queue_messages"]}
    assert msgs == {"incoming": 0, "active": 34, "deferred": 1548, "hold": 2, "maildrop": 0}
    assert fams["mailops_queue_oldest_deferred_seconds"] == [({"host": "mail1"}, 7200.5)]
    ((labels, value),) = fams["mailops_queue_deferred_destination_messages"]
    assert labels["domain"] == 'we\\"ird\\\\dom\\nain' and labels["sampled"] == "true"
    assert value == 900


def test_parser_rejects_broken_exposition() -> None:
    with pytest.raises(AssertionError):
        parse_exposition('x{host="a"} 1\n')  # no HELP/TYPE
    with pytest.raises(AssertionError):
        parse_exposition('# HELP x h\n# TYPE x gauge\nx{host="a} 1\n')


def test_write_atomic_replaces_with_mode_0644(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    target.write_text("old")
    target.chmod(0o600)
    old_umask = os.umask(0o077)
    try:
        render.write_atomic(str(target), '{"new": 1}\n')
    finally:
        os.umask(old_umask)
    assert target.read_text() == '{"new": 1}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


# --- host lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("mail1", HostSpec("mail1", "mail1", 22)),
        ("mail1:2222", HostSpec("mail1", "mail1", 2222)),
        ("mail1=198.51.100.11", HostSpec("mail1", "198.51.100.11", 22)),
        ("mail1=198.51.100.11:2200", HostSpec("mail1", "198.51.100.11", 2200)),
        ("mail1=[2001:db8::1]:2200", HostSpec("mail1", "2001:db8::1", 2200)),
        ("mail1=2001:db8::1", HostSpec("mail1", "2001:db8::1", 22)),
    ],
)
def test_host_spec_parse(text: str, want: HostSpec) -> None:
    assert HostSpec.parse(text) == want


@pytest.mark.parametrize("text", ["", "mail1:x", "mail1:70000", "m=[::1", "=addr"])
def test_host_spec_rejects(text: str) -> None:
    with pytest.raises(HostSpecError):
        HostSpec.parse(text)


def test_hosts_from_ansible_inventory() -> None:
    inv = {
        "_meta": {
            "hostvars": {
                "mx1": {"ansible_host": "198.51.100.10"},
                "mail1": {"ansible_host": "198.51.100.11", "ansible_port": 2222},
                "mail2": {},
                "monitor": {},
            }
        },
        "all": {"children": ["ungrouped", "mail_mx", "mail_bulk"]},
        "mail_mx": {"hosts": ["mx1"]},
        "mail_bulk": {"hosts": ["mail1", "mail2"]},
        "mail_nodes": {"children": ["mail_mx", "mail_bulk"]},
        "ungrouped": {"hosts": ["monitor"]},
    }
    assert hosts_from_inventory(inv, "mail_nodes") == [
        HostSpec("mx1", "198.51.100.10"),
        HostSpec("mail1", "198.51.100.11", 2222),
        HostSpec("mail2", "mail2"),
    ]
    assert {h.name for h in hosts_from_inventory(inv, None)} == {"mx1", "mail1", "mail2", "monitor"}
    with pytest.raises(HostSpecError):
        hosts_from_inventory(inv, "nope")


def test_auto_falls_back_to_postqueue_when_the_queue_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unprivileged collector user: queue dirs are postfix-owned 0700, postqueue works."""
    q = make_queue(tmp_path / "spool", counts={"deferred": 4})
    postconf = fake_postqueue(tmp_path, f"echo {q}")
    (tmp_path / "pq").mkdir()
    exe = fake_postqueue(tmp_path / "pq", f"cat {DATA / 'postqueue_j.jsonl'}")
    real = os.access
    # as if not root: the deferred directory is postfix's, mode 0700
    monkeypatch.setattr(
        local.os, "access", lambda p, m, **k: not str(p).endswith("deferred") and real(p, m)
    )
    rep = local.scan("auto", postconf=str(postconf), postqueue=str(exe))
    assert rep["method"] == "postqueue"
    assert rep["queues"]["deferred"] == 3


def test_permission_denied_names_the_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_queue(tmp_path, counts={"deferred": 1})
    real = os.scandir

    def scandir(path: str) -> Any:
        if str(path).endswith("deferred"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(local.os, "scandir", scandir)
    with pytest.raises(local.QueueError, match="run as root or postfix, or use --method postqueue"):
        local.scan("files", queue_dir=str(tmp_path))
