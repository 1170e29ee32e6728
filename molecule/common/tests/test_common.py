"""The common role: the timezone, the extra CA in the trusted bundle, and a running cron
that starts another user's jobs (the role's probe job, run within the last 90 s)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CA = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ca.crt")


def test_timezone(host: Any) -> None:
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Etc/UTC"


def test_extra_ca_is_trusted(host: Any) -> None:
    installed = host.file("/usr/local/share/ca-certificates/molecule-ca.crt")
    assert (installed.user, installed.mode) == ("root", 0o644)
    assert installed.content_string.strip() == CA.read_text().strip()
    body = "".join(CA.read_text().strip().splitlines()[1:-1])
    bundle = "".join(host.file("/etc/ssl/certs/ca-certificates.crt").content_string.split())
    assert body in bundle, "the extra CA is not in the trusted bundle"


def test_cron_runs_and_starts_other_users_jobs(host: Any) -> None:
    assert host.process.filter(comm="cron"), "cron is not running"
    assert "session optional pam_loginuid.so" in " ".join(
        host.file("/etc/pam.d/cron").content_string.split()
    )
    ran = host.file("/var/lib/mailops-cron-probe/nobody/ran")
    assert ran.exists and ran.user == "nobody"
    age = int(host.check_output("echo $(( $(date +%%s) - $(stat -c %%Y %s) ))", ran.path))
    assert age < 90, f"nobody's cron job last ran {age} s ago"
