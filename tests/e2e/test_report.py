"""Issue 7 in the lab: the figures of mailops report agree with pflogsumm on each host's
own log, after the other checks made real traffic of every kind.

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
from tests.test_report import PFLOGSUMM, compare, pflogsumm_totals


@pytest.mark.serial  # after the others, whose traffic it counts
@pytest.mark.skipif(PFLOGSUMM is None, reason="pflogsumm is not installed on the controller")
@pytest.mark.parametrize("host", ["mx1", "mail1"])
def test_report_agrees_with_pflogsumm_on_the_hosts_log(
    host: str, tmp_path: Path, evidence: list[str]
) -> None:
    # Both tools on one snapshot of the log, which keeps growing meanwhile.
    snap = "/tmp/mail.log.report-check"
    sh(host, f"cp /var/log/mail.log {snap}")
    res = sh(
        host,
        f"/opt/mailops/bin/mailops --config /dev/null report --log {snap} --day all --format json",
        120,
    )
    assert res.rc == 0, res.err
    ours = json.loads(res.out)["totals"]
    log = tmp_path / f"{host}.log"
    with log.open("wb") as fh:
        subprocess.run(
            ["podman", "exec", f"{PREFIX}-{host}", "cat", snap],
            stdout=fh,
            check=True,
            timeout=60,
        )
    theirs = pflogsumm_totals([str(log)])
    compare(ours, theirs)
    evidence.append(
        f"{host}: received {ours['received']}, delivered {ours['delivered']}, deferred "
        f"{ours['deferred']}, bounced {ours['bounced']}, rejected {ours['rejected']}: "
        "same as pflogsumm"
    )
