"""mailops report next to the real pflogsumm on many generated shapes of log.

Each seed draws a shape (tests/support/postfix_loggen.py): several hosts in one file,
short and long queue ids, queue ids reused by the same host and by another host while
the first still holds them, deliveries deferred again and again for hours, local,
virtual, pipe and lmtp deliveries, rejects at every stage.  Every grand total must be
what pflogsumm 1.1.5 prints for the same file, read by one process and by several,
the file cut into parts that fall inside messages still being deferred.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from mailops import cli
from mailops.report import parallel
from mailops.report.tally import Tally
from tests.support import pflogsumm, postfix_loggen

pytestmark = pytest.mark.skipif(
    pflogsumm.PFLOGSUMM is None, reason="pflogsumm is not installed (Debian package pflogsumm)"
)
SEEDS = range(24)
JOBS = 4
PART = 1 << 16  # --part-size: a log of ten thousand lines is cut as one of millions is


def ours(log: Path, jobs: int, capsys: pytest.CaptureFixture[str], day: str = "all") -> Any:
    rc = cli.main(
        ["--config", os.devnull, "report", "--log", str(log), "--day", day, "--format", "json",
         "--jobs", str(jobs), "--part-size", str(PART)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads(out)
    rep.pop("generated_at")
    return rep


_DEFERRAL = re.compile(rb" (\S+) postfix/[^:]*: (\w+): to=<.*status=deferred")


def cuts_inside_deferred_messages(log: Path, jobs: int) -> list[int]:
    """The offsets the parallel reader cuts ``log`` at, each checked to fall between two
    deferrals of one message (the same host and queue id)."""
    size = log.stat().st_size
    with log.open("rb") as fh:
        offsets = parallel.cuts(fh, size, min(jobs, size // PART))[1:-1]
        fh.seek(0)
        first: dict[bytes, int] = {}
        last: dict[bytes, int] = {}
        at = 0
        for line in fh:
            m = _DEFERRAL.search(line)
            if m:
                key = m.group(1) + b" " + m.group(2)
                first.setdefault(key, at)
                last[key] = at
            at += len(line)
    for cut in offsets:
        spanning = [k for k in first if first[k] < cut <= last[k]]
        assert spanning, f"no deferred message spans the cut at {cut}"
    return offsets


@pytest.fixture
def absorbed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What ``Tally.absorb`` answered for each part: False where it was counted again."""
    answers: list[bool] = []
    absorb = Tally.absorb

    def spy(self: Tally, part: dict[str, Any]) -> bool:
        answers.append(absorb(self, part))
        return answers[-1]

    monkeypatch.setattr(Tally, "absorb", spy)
    return answers


@pytest.mark.parametrize("seed", SEEDS)
def test_every_grand_total_is_pflogsumms(
    seed: int,
    tmp_path: Path,
    absorbed: list[bool],
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "mail.log"
    stats = postfix_loggen.generate(seed, log)
    # the shape holds what it is meant to test
    assert stats.deferrals > 100 and stats.most_deferrals >= 3
    assert stats.longest_defer > 3600 and stats.queued_at_end > 0
    shape = postfix_loggen.shape_of(seed)
    if len(shape.hosts) > 1 and seed % 4 != 1:
        assert stats.reused_other > 0
    assert len(cuts_inside_deferred_messages(log, JOBS)) == JOBS - 1
    theirs = pflogsumm.totals([str(log)])
    one = ours(log, 1, capsys)
    many = ours(log, JOBS, capsys)
    assert one["totals"]["bytes_delivered"] <= 524288, "bytes beyond pflogsumm's exact figures"
    assert one["totals"]["received"] > 500
    assert {
        "one process": pflogsumm.differences(one["totals"], theirs),
        f"{JOBS} processes": pflogsumm.differences(many["totals"], theirs),
    } == {"one process": {}, f"{JOBS} processes": {}}
    assert many == one
    # every part was added, none counted again: a queue id that had a size before its
    # part (reused) waited rather than being taken for new
    assert absorbed == [True] * (JOBS - 1)


@pytest.mark.parametrize("seed", [101, 102, 103, 104])
def test_one_day_of_a_longer_log_is_pflogsumms(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--day yesterday`` next to ``pflogsumm -d yesterday``: messages deferred across
    midnight, both days in the file."""
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    log = tmp_path / "mail.log"
    postfix_loggen.generate(seed, log, start=midnight - 27 * 3600, iso=False)
    theirs = pflogsumm.totals(["-d", "yesterday", str(log)])
    one = ours(log, 1, capsys, "yesterday")
    many = ours(log, JOBS, capsys, "yesterday")
    assert one["totals"]["received"] > 100
    assert {
        "one process": pflogsumm.differences(one["totals"], theirs),
        f"{JOBS} processes": pflogsumm.differences(many["totals"], theirs),
    } == {"one process": {}, f"{JOBS} processes": {}}


@pytest.mark.parametrize("seed", [201, 202, 203])
def test_a_cluster_report_keeps_each_hosts_queue_ids_apart(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--cluster`` over two hosts' logs that use the same queue ids: the figures of
    pflogsumm over the two logs with their queue ids kept distinct (two messages), where
    one stream of both counts a shared queue id once, as pflogsumm does."""
    mail1, own2, mail2 = tmp_path / "mail1.log", tmp_path / "own2.log", tmp_path / "mail2.log"
    postfix_loggen.generate(seed, mail1, hosts=("mail1",))
    postfix_loggen.generate(seed + 50, own2, hosts=("mail2",))
    ids1 = postfix_loggen.queue_ids(mail1.read_text())
    assert set(ids1).isdisjoint(postfix_loggen.queue_ids(own2.read_text()))
    mail2.write_text(postfix_loggen.take_queue_ids(own2.read_text(), ids1))
    shared = set(ids1) & set(postfix_loggen.queue_ids(mail2.read_text()))
    assert len(shared) > 1000
    apart = pflogsumm.totals([str(mail1), str(own2)])
    for jobs in (1, JOBS):
        rc = cli.main(
            ["--config", os.devnull, "report", "--cluster", "--log", str(mail1), "--log",
             str(mail2), "--day", "all", "--format", "json", "--jobs", str(jobs), "--part-size",
             str(PART)]
        )  # fmt: skip
        out, err = capsys.readouterr()
        assert rc == 0, err
        cluster = json.loads(out)
        assert pflogsumm.differences(cluster["totals"], apart) == {}, jobs
    # the same from a directory of the hosts' logs (mail2's own, unshared log moved away)
    logs = tmp_path / "logs"
    logs.mkdir()
    for log in (mail1, mail2):
        log.rename(logs / log.name)
    (logs / "mail1.log.1").write_text("")  # a rotation: read with mail1.log, not as a host
    rc = cli.main(
        ["--config", os.devnull, "report", "--logs-from", str(logs), "--rotated", "--day",
         "all", "--format", "json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    from_dir = json.loads(out)
    assert from_dir["totals"] == cluster["totals"]
    assert [s["path"] for s in from_dir["sources"]] == [
        str(logs / n) for n in ("mail1.log.1", "mail1.log", "mail2.log")
    ]
    # one stream of both: shared queue ids are one message, as pflogsumm counts them
    one = ours(logs / "mail1.log", 1, capsys)
    rc = cli.main(
        ["--config", os.devnull, "report", "--log", str(logs / "mail1.log"), "--log",
         str(logs / "mail2.log"), "--day", "all", "--format", "json"]
    )  # fmt: skip
    stream = json.loads(capsys.readouterr().out)["totals"]
    assert one["totals"]["received"] < stream["received"]
    assert stream["deferred"] < cluster["totals"]["deferred"]
    together = pflogsumm.totals([str(logs / "mail1.log"), str(logs / "mail2.log")])
    assert pflogsumm.differences(stream, together) == {}
