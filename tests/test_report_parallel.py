"""mailops report on several cores: parts of one file counted apart add up to one tally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailops import forkwork
from mailops.report import build, parallel
from mailops.report.tally import Tally
from tests.support.bench import loggen
from tests.support.report_lines import PIECES, tally_state, trap_log

DATA = Path(__file__).resolve().parent / "data" / "report"


def state(t: Tally) -> dict[str, Any]:
    """``tally_state``, with sums of delays to 6 places: added up in another order (per
    part), the last bits of a float sum differ."""
    s = tally_state(t)
    s["tables"] = [
        [(k, [round(x, 6) if isinstance(x, float) else x for x in v] if isinstance(v, list) else v)
         for k, v in table]
        for table in s["tables"]
    ]  # fmt: skip
    return s


def both(path: Path, jobs: int, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state and the report of one process and of ``jobs`` processes."""
    out = []
    for n in (1, jobs):
        t, sources = build.tally_files([path], jobs=n, **kwargs)
        rep = build.report(t, sources, kwargs.get("day"))
        rep.pop("generated_at", None)
        out.append((state(t), rep))
    (state1, rep1), (state_n, rep_n) = out
    assert state_n == state1
    assert rep_n == rep1
    return state1, rep1


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut files of a few hundred kilobytes, as the real size cuts files of hundreds of MB."""
    monkeypatch.setattr(parallel, "MIN_PART", 1 << 14)


@pytest.mark.parametrize("jobs", [2, 3, 5])
@pytest.mark.parametrize("fmt", ["classic", "iso"])
def test_parts_add_up_to_one_tally(tmp_path: Path, small_parts: None, jobs: int, fmt: str) -> None:
    log = loggen.write(tmp_path / "mail.log", 40_000, seed=jobs, fmt=fmt)
    state, _ = both(log, jobs)
    # the parts really were counted apart, and the log has what spans a cut
    assert state["totals"]["deferred"] > 0 and state["totals"]["bytes_delivered"] > 0


def test_a_day_of_a_longer_log_in_parts(tmp_path: Path, small_parts: None) -> None:
    import datetime as dt

    start = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC).timestamp()
    log = tmp_path / "mail.log"
    loggen.write_log(log, 30_000, start, start + 86_400, seed=9)
    state, _ = both(log, 3, day=dt.date(2026, 11, 23))
    assert state["totals"]["received"] > 0


def test_odd_lines_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines with pieces of pflogsumm's patterns in odd places (the general path, queue
    ids that are words), cut into many parts of a few kilobytes."""
    import random

    monkeypatch.setattr(parallel, "MIN_PART", 1 << 12)
    rnd = random.Random(3)
    out = [trap_log()]
    for line in loggen.generate(4000, seed=17):
        if rnd.random() < 0.3:
            at = rnd.randrange(len(line))
            line = line[:at] + rnd.choice(PIECES) + line[at:]
        out.append(line)
    log = tmp_path / "odd.log"
    log.write_text("".join(out) + (DATA / "tricky.log").read_text())
    for name in ("postfix", "postfix-out"):
        both(log, 9, syslog_name=name)


def test_a_cut_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-checked logs cut into 2 to 12 parts of a few hundred bytes."""
    monkeypatch.setattr(parallel, "MIN_PART", 200)
    log = tmp_path / "both.log"
    log.write_bytes((DATA / "small.log").read_bytes() + (DATA / "tricky.log").read_bytes())
    for jobs in range(2, 13):
        both(log, jobs)


# a short queue id that comes back without a "removed" line between (lost log lines)
REFUSED = b"dsn=4.4.1, status=deferred (connect to example.net[192.0.2.9]:25: Connection refused)"
FIRST = (
    b"""\
Nov 23 10:00:01 mx1 postfix/smtpd[1]: 4F2A1: client=a.example.com[192.0.2.1]
Nov 23 10:00:02 mx1 postfix/qmgr[2]: 4F2A1: from=<x@example.com>, size=100, nrcpt=1 (queue active)
Nov 23 10:00:03 mx1 postfix/smtp[3]: 4F2A1: to=<y@example.net>, relay=none, delay=2, %s
"""
    % REFUSED
)
SECOND = (
    b"""\
Nov 23 11:00:01 mx1 postfix/smtpd[1]: 4F2A1: client=b.example.org[192.0.2.2]
Nov 23 11:00:02 mx1 postfix/qmgr[2]: 4F2A1: from=<z@example.org>, size=200, nrcpt=1 (queue active)
Nov 23 11:00:03 mx1 postfix/smtp[3]: 4F2A1: to=<y@example.net>, relay=none, delay=1, %s
Nov 23 11:00:04 mx1 postfix/smtp[3]: 4F2A1: to=<y@example.net>, relay=mx.example.net[192.0.2.9]\
:25, delay=9, delays=0/0/1/8, dsn=2.0.0, status=sent (250 ok)
Nov 23 11:00:05 mx1 postfix/qmgr[2]: 4F2A1: removed
"""
    % REFUSED
)


def test_a_queue_id_taken_for_new_that_was_not_is_counted_again(tmp_path: Path) -> None:
    whole = Tally()
    whole.feed_bytes(FIRST + SECOND)
    whole.flush()
    first, second = Tally(), Tally()
    first.feed_bytes(FIRST)
    first.flush()
    second.begin_part()
    second.feed_bytes(SECOND)
    # the later part took 4F2A1 for a new message: its size and deferral would be wrong
    assert not first.absorb(second.export())
    again = Tally()
    again.feed_bytes(FIRST)
    again.flush()
    again.feed_bytes(SECOND)
    again.flush()
    assert state(again) == state(whole)
    assert whole.bytes_received == 100 and whole.deferred == 1  # as pflogsumm counts it
    # through the file: a cut between the two is found and that part counted again
    log = tmp_path / "reused.log"
    log.write_bytes(FIRST + SECOND)
    for size in (50, 100, 300):
        parallel.MIN_PART, saved = size, parallel.MIN_PART
        try:
            got, _ = both(log, 4)
        finally:
            parallel.MIN_PART = saved
        assert got == state(whole)


def test_a_refused_part_leaves_the_tally_as_it_was() -> None:
    """A part that must be counted again adds nothing, not even the lines it kept waiting
    (issue 19: those were counted twice, once here and once in the second count)."""
    q2 = (
        b"Nov 23 10:30:01 mx1 postfix/smtpd[1]: 5B3C2: client=c.example.com[192.0.2.3]\n"
        b"Nov 23 10:30:02 mx1 postfix/qmgr[2]: 5B3C2: from=<c@example.com>, size=50, nrcpt=1 "
        b"(queue active)\n"
    )
    q2_sent = (
        b"Nov 23 10:59:00 mx1 postfix/smtp[3]: 5B3C2: to=<d@example.net>, relay=mx.example.net"
        b"[192.0.2.9]:25, delay=9, delays=0/0/1/8, dsn=2.0.0, status=sent (250 ok)\n"
    )
    first = Tally()
    first.feed_bytes(FIRST + q2)
    first.flush()
    second = Tally()
    second.begin_part()
    # 5B3C2's delivery waits for its size; 4F2A1 comes back as new while the first part
    # still holds its size: a conflict
    second.feed_bytes(q2_sent + SECOND)
    second.flush()
    assert second.waiting.count(b"\n") == 1 and second.delivered == 1
    before = state(first)
    assert not first.absorb(second.export())
    assert state(first) == before
    # counted again here, the figures are those of one tally
    first.feed_bytes(q2_sent + SECOND)
    first.flush()
    whole = Tally()
    whole.feed_bytes(FIRST + q2 + q2_sent + SECOND)
    whole.flush()
    assert state(first) == state(whole)
    assert (whole.delivered, whole.bytes_delivered) == (2, 150)  # 4F2A1 keeps its first size


def test_a_queue_id_sized_in_an_earlier_part_waits(tmp_path: Path) -> None:
    """The second part reads which queue ids had a size line before it: 4F2A1 comes back
    there as a new message, and rather than take it for new (and have the part counted
    again) its lines wait for the first part's state."""
    log = tmp_path / "reused.log"
    log.write_bytes(FIRST + b"Nov 23 10:00:04 mx1 postfix/qmgr[2]: 4F2A1: removed\n" + SECOND)
    with log.open("rb") as fh:
        sized = parallel.sized_before(fh.fileno(), len(FIRST))
    assert list(sized) == [hash(b"4F2A1")]
    whole = Tally()
    whole.feed_bytes(log.read_bytes())
    whole.flush()
    first, second = Tally(), Tally()
    first.feed_bytes(log.read_bytes()[: len(FIRST) + 52])
    first.flush()
    second.begin_part(parallel._blocker(Tally(), sized))
    second.feed_bytes(SECOND)
    second.flush()
    assert not second.assumed and second.waiting.count(b"\n") == 4  # all but the deferral
    assert first.absorb(second.export())
    assert state(first) == state(whole)
    assert (whole.bytes_received, whole.bytes_delivered) == (100, 100)  # the first size


def test_a_queue_id_that_waited_is_not_taken_for_new() -> None:
    """A part that kept a line of a queue id waiting, then sees it received, does not take
    it for a new message (the waiting line may give it its size first): its lines wait."""
    first = Tally()
    first.feed_bytes(FIRST)
    first.flush()
    second = Tally()
    second.begin_part()
    tail = FIRST.replace(b"10:00:03", b"10:00:09").replace(b"status=deferred", b"status=sent")
    second.feed_bytes(tail.splitlines(keepends=True)[-1] + SECOND)
    second.flush()
    assert not second.assumed and second.delivered == 0
    assert first.absorb(second.export())
    whole = Tally()
    whole.feed_bytes(FIRST + tail.splitlines(keepends=True)[-1] + SECOND)
    whole.flush()
    assert state(first) == state(whole)


def test_a_message_across_the_cut_waits_for_its_size(tmp_path: Path) -> None:
    first, second = Tally(), Tally()
    first.feed_bytes(SECOND[: SECOND.index(b"Nov 23 11:00:03")])
    second.begin_part()
    second.feed_bytes(SECOND[SECOND.index(b"Nov 23 11:00:03") :])
    second.flush()
    # the deferral counts here (it needs no earlier line); sent and removed wait
    assert second.delivered == 0 and second.deferrals == 1 and second.waiting.count(b"\n") == 2
    assert first.absorb(second.export())
    assert (first.delivered, first.bytes_delivered, first.deferred) == (1, 200, 1)
    assert first.sizes == {} and first.lines == 5


def test_a_failed_worker_is_counted_here(
    tmp_path: Path, small_parts: None, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    log = loggen.write(tmp_path / "mail.log", 20_000, seed=4)
    want, _ = build.tally_files([log], jobs=1)

    def broken(self: Tally, blocked: object = None) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(Tally, "begin_part", broken)
    got, _ = build.tally_files([log], jobs=3)
    assert state(got) == state(want)
    assert "a worker failed (MemoryError('no room')); counting alone" in capfd.readouterr().err


def test_small_gzip_and_unseekable_inputs_are_read_alone(tmp_path: Path) -> None:
    log = loggen.write(tmp_path / "mail.log", 2000, seed=2)
    t = Tally()
    with log.open("rb") as fh:
        assert not parallel.feed_file_parallel(t, fh, 4)  # below 2 x MIN_PART
    gz = loggen.write(tmp_path / "mail.log.gz", 2000, seed=2)
    fh = build.open_log(gz)
    try:
        assert not parallel.feed_file_parallel(t, fh, 4)
    finally:
        fh.close()
    assert t.lines == 0


def test_cuts_fall_after_a_newline(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    data = b"".join(b"line %d %s\n" % (n, b"x" * (n % 37)) for n in range(500))
    log.write_bytes(data)
    with log.open("rb") as fh:
        for parts in (2, 3, 7, 50):
            offsets = parallel.cuts(fh, len(data), parts)
            assert offsets[0] == 0 and offsets[-1] == len(data)
            assert offsets == sorted(set(offsets))
            assert all(data[at - 1 : at] == b"\n" for at in offsets[1:-1])
    one = tmp_path / "one.log"
    one.write_bytes(b"x" * 1000 + b"\n")
    with one.open("rb") as fh:
        assert parallel.cuts(fh, 1001, 4) == [0, 1001]


def test_default_jobs_is_the_cores_at_most_four() -> None:
    assert 1 <= parallel.default_jobs() <= parallel.MAX_JOBS


def test_no_fork_or_no_temporary_file_counts_here(
    tmp_path: Path, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = loggen.write(tmp_path / "mail.log", 20_000, seed=6)
    want, _ = build.tally_files([log], jobs=1)

    def refuse(*_: Any, **__: Any) -> Any:
        raise OSError(11, "Resource temporarily unavailable")

    for name, module in (("fork", forkwork.os), ("TemporaryFile", forkwork.tempfile)):
        with monkeypatch.context() as m:
            m.setattr(module, name, refuse)
            got, _ = build.tally_files([log], jobs=3)
        assert state(got) == state(want)


def test_a_bad_jobs_setting_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailops import cli, exitcodes

    conf = tmp_path / "mailops.toml"
    for bad, says in (
        ("-1", "[report] jobs: expected an integer >= 0 (0: one per core), got -1"),
        ("'two'", '[report] jobs: expected an integer >= 0 (0: one per core), got "two"'),
    ):
        conf.write_text(f"[report]\njobs = {bad}\n")
        assert cli.main(["--config", str(conf), "report"]) == exitcodes.CONFIG
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(conf), "report", "--jobs", "0"])
    assert exc.value.code == 2
    assert "--jobs: must be at least 1" in capsys.readouterr().err
