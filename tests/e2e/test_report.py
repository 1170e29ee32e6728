"""Issue 7 in the lab: the figures of mailops report agree with pflogsumm on each host's
own log, after the other checks made real traffic of every kind: in one process, cut
into parts counted side by side, and as one cluster report over every host's log.

This checks the report's counting on real traffic, not the daily job: that one mails
yesterday's report at 00:15, which no check can wait for.  cron's ability to run that
host's root jobs, from the same cron file, is observed by test_saslblock.py (mx1) and
test_bounces.py (the bulk nodes' suppression sync).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.labhosts import PREFIX, sh
from tests.support.pflogsumm import PFLOGSUMM, differences, totals

MAILOPS = "/opt/mailops/bin/mailops --config /dev/null"
SNAP = "/tmp/mail.log.report-check"
# The lab's logs are a few hundred KiB: --part-size cuts them into parts anyway, so the
# parallel reader (a worker per part, lines set aside across each cut) is checked too.
MODES = {"one process": "--jobs 1", "in parts": "--jobs 4 --part-size 4096"}
HOSTS = ["mx1", "mail1", "mail2"]


def snapshot(host: str, tmp_path: Path) -> Path:
    """One copy of the host's log, there and here (the log keeps growing meanwhile)."""
    sh(host, f"cp /var/log/mail.log {SNAP}")
    local = tmp_path / f"{host}.log"
    with local.open("wb") as fh:
        subprocess.run(
            ["podman", "exec", f"{PREFIX}-{host}", "cat", SNAP], stdout=fh, check=True, timeout=60
        )
    return local


def ours_on(host: str, args: str) -> dict[str, int]:
    res = sh(host, f"{MAILOPS} report --log {SNAP} --day all --format json {args}", 120)
    assert res.rc == 0, res.err
    found: dict[str, int] = json.loads(res.out)["totals"]
    return found


@pytest.mark.serial  # after the others, whose traffic it counts
@pytest.mark.skipif(PFLOGSUMM is None, reason="pflogsumm is not installed on the controller")
@pytest.mark.parametrize("host", HOSTS)
def test_report_agrees_with_pflogsumm_on_the_hosts_log(
    host: str, tmp_path: Path, evidence: list[str]
) -> None:
    theirs = totals([str(snapshot(host, tmp_path))])
    for mode, args in MODES.items():
        ours = ours_on(host, args)
        assert not differences(ours, theirs), f"{host}, {mode}: {differences(ours, theirs)}"
    evidence.append(
        f"{host}: received {ours['received']}, delivered {ours['delivered']}, deferred "
        f"{ours['deferred']}, bounced {ours['bounced']}, rejected {ours['rejected']}: "
        f"same as pflogsumm, {' and '.join(MODES)}"
    )


@pytest.mark.serial
@pytest.mark.skipif(PFLOGSUMM is None, reason="pflogsumm is not installed on the controller")
def test_cluster_report_agrees_with_pflogsumm_over_every_hosts_log(
    tmp_path: Path, evidence: list[str]
) -> None:
    """One report over mx1's, mail1's and mail2's logs.  pflogsumm knows no hosts, so it
    reads the logs one after the other with each host's queue ids made its own (the same
    id on two hosts is two messages); ours reads the copies as they are, with --cluster."""
    logs = [snapshot(h, tmp_path) for h in HOSTS]
    renamed = tmp_path / "cluster-for-pflogsumm.log"
    with renamed.open("w", encoding="utf-8", errors="surrogateescape") as out:
        for n, log in enumerate(logs):
            for line in log.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
                out.write(_own_queue_ids(line, n) + "\n")
    theirs = totals([str(renamed)])
    venv_mailops = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mailops"
    for mode, args in MODES.items():
        proc = subprocess.run(
            [str(venv_mailops), "--config", "/dev/null", "report", "--cluster",
             *[a for log in logs for a in ("--log", str(log))], "--day", "all",
             "--format", "json", *args.split()],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        ours = json.loads(proc.stdout)["totals"]
        assert not differences(ours, theirs), f"cluster, {mode}: {differences(ours, theirs)}"
    evidence.append(
        f"cluster of {', '.join(HOSTS)}: received {ours['received']}, delivered "
        f"{ours['delivered']}: same as pflogsumm over the same logs, {' and '.join(MODES)}"
    )


def _own_queue_ids(line: str, host: int) -> str:
    """The line with its queue id (the word after "postfix/...[pid]: " that ends in ':')
    given the host's number as a last digit (a digit is in the alphabet of short and of
    long queue ids alike), so no two hosts share one."""
    head, sep, rest = line.partition("]: ")
    if not sep or "postfix" not in head:
        return line
    qid, colon, tail = rest.partition(": ")
    if colon and qid.isalnum() and len(qid) >= 10 and any(c.isdigit() for c in qid):
        return f"{head}{sep}{qid}{host}{colon}{tail}"
    return line
