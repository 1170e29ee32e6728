"""Run the real pflogsumm and compare its Grand Totals with ``mailops report``'s."""

from __future__ import annotations

import shutil
import subprocess

from tests.support.bench import pflogsumm_text

PFLOGSUMM = shutil.which("pflogsumm")


TOTALS = (
    "received", "delivered", "forwarded", "deferred", "deferrals", "bounced", "rejected",
    "rejected_percent", "reject_warnings", "held", "discarded", "discarded_percent",
    "bytes_received", "bytes_delivered", "senders", "sending_hosts_domains", "recipients",
    "recipient_hosts_domains",
)  # fmt: skip


def totals(args: list[str]) -> dict[str, str]:
    """pflogsumm's Grand Totals as printed (numbers above 512k come in k or m)."""
    assert PFLOGSUMM is not None
    proc = subprocess.run(
        [PFLOGSUMM, *args], capture_output=True, text=True, check=True, timeout=600
    )
    found: dict[str, str] = pflogsumm_text.grand_totals(proc.stdout)
    return found


def as_printed(ours: dict[str, int]) -> dict[str, str]:
    """Our grand totals written as pflogsumm prints them."""
    assert set(TOTALS) == set(ours), "every grand total is compared"
    return {
        k: (str(v) if k.endswith("_percent") else str(pflogsumm_text.in_units(v)))
        for k, v in ours.items()
    }


def differences(ours: dict[str, int], theirs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The totals that differ: name -> (ours, pflogsumm's)."""
    mine = as_printed(ours)
    return {k: (mine[k], theirs[k]) for k in TOTALS if mine[k] != theirs[k]}
