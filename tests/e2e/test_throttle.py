"""Adaptive throttling in the lab: inbox plays a Gmail that rate limits the bulk nodes.

inbox's ``lab-throttle on`` (roles/lab_receiver) answers every gmail.test recipient the
bulk nodes offer with ``421 4.7.28 ...`` and hangs up.  app1 hands M messages for
gmail.test to mail1; cron's ``mailops throttle run`` on mail1 reads the deferrals and
steps mail1's ``gmail`` transport down (postconf), says so in the mail log, and the
queue collector carries the step to the monitor's /metrics.  Then the switch goes off:
Postfix's own retries (the lab's short backoff times) deliver every message, none
bounces, and a later cron run steps the transport back up to the inventory's values.
The check never runs the throttle itself; it waits for what cron's runs changed.
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from tests.e2e.labhosts import INVENTORY, inventory, mail_domain, sh, token, wait_for_value

pytestmark = [pytest.mark.serial, pytest.mark.slow]

MESSAGES = 30
RECIPIENT = "alice@gmail.test"
TRANSPORT = "gmail"
CONC = f"{TRANSPORT}_destination_concurrency_limit"
DELAY = f"{TRANSPORT}_destination_rate_delay"


def inventory_values() -> tuple[int, str]:
    data = yaml.safe_load((INVENTORY / "group_vars/mail_bulk/postfix.yml").read_text())
    t = next(t for t in data["postfix__bulk_transports"] if t["name"] == TRANSPORT)
    return int(t["concurrency"]), str(t["rate_delay"])


def postconf() -> tuple[int, str]:
    out = sh("mail1", f"postconf -h {CONC} {DELAY}").out.split()
    return int(out[0]), out[1]


def log_from(line: int) -> str:
    return sh("mail1", f"tail -n +{line + 1} /var/log/mail.log", timeout=30).out


def metric(name: str, labels: str) -> float | None:
    res = sh(
        "monitor",
        "python3 -c 'import sys, urllib.request; "
        'sys.stdout.write(urllib.request.urlopen("http://127.0.0.1/metrics", timeout=10)'
        ".read().decode())'",
    )
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", res.out, re.MULTILINE)
    return float(m[1]) if m else None


def delivered(tok: str) -> int:
    res = sh("inbox", f"grep -l -r -F '{tok}' /srv/inbox/{RECIPIENT}/new/ 2>/dev/null | wc -l")
    return int(res.out.strip() or 0)


def test_a_throttling_gmail_backs_mail1_off_and_every_message_arrives(
    evidence: list[str],
) -> None:
    base_conc, base_delay = inventory_values()
    assert postconf()[0] == base_conc, "mail1's gmail transport is not at its inventory values"
    mail1 = inventory()["mail1"]["ip"]
    labels = f'host="mail1",transport="{TRANSPORT}",provider="gmail"'
    signals_before = metric("mailops_throttle_signals_total", labels) or 0.0
    start = int(sh("mail1", "wc -l < /var/log/mail.log").out.strip())
    tok = f"throttle-{token()}"
    began = time.monotonic()
    try:
        assert sh("inbox", "lab-throttle on").out.strip() == "on"
        send = (
            f"for i in $(seq {MESSAGES}); do swaks -4 --server {mail1} --from"
            f" bounces@{mail_domain()} --to {RECIPIENT} --header 'Subject: {tok} '$i"
            f" --body '{tok}' --silent 2 || echo failed $i; done"
        )
        res = sh("app1", send, timeout=120)
        assert "failed" not in res.out, res.out + res.err
        # cron's run on mail1 steps the transport down
        conc, delay = wait_for_value(
            "cron's throttle run to lower mail1's gmail concurrency", postconf,
            lambda v: v[0] < base_conc, timeout=150,
        )  # fmt: skip
        evidence.append(f"stepped down after {time.monotonic() - began:.0f} s: {conc}/{delay}")
        lines = log_from(start)
        assert re.search(r" 421 4\.7\.28 .*status=deferred|status=deferred .* 421 4\.7\.28", lines)
        pattern = re.compile(
            rf"mailops/throttle\[\d+\]: transport {TRANSPORT}: step 0 -> 1 of \d+,"
            rf" concurrency {base_conc} -> {conc}, rate_delay \S+ -> \S+: (\d+) throttle"
            r" replies \(gmail-4\.7\.28: 421 4\.7\.28"
        )
        # the run logs each change once the reload is done, a few seconds after postconf
        change = wait_for_value(
            "the throttle's log line of the change", lambda: pattern.search(log_from(start)),
            lambda m: m is not None, timeout=30,
        )  # fmt: skip
        assert change is not None
        evidence.append(change[0][change[0].index("transport") :][:160])
    finally:
        sh("inbox", "lab-throttle off")
    # the back-off and the signals on the monitor's /metrics (the collector: every minute)
    step = wait_for_value(
        "/metrics to show mail1's gmail step",
        lambda: metric("mailops_throttle_step", f'host="mail1",transport="{TRANSPORT}"'),
        lambda v: v is not None and v >= 1,
        timeout=90,
    )
    signals = metric("mailops_throttle_signals_total", labels) or 0.0
    assert signals >= signals_before + 3
    evidence.append(f"/metrics: step {step:g}, signals {signals_before:g} -> {signals:g}")
    # Postfix's own retries bring every message once the provider recovered
    wait_for_value(
        f"all {MESSAGES} messages at {RECIPIENT}", lambda: delivered(tok),
        lambda n: n >= MESSAGES, timeout=120,
    )  # fmt: skip
    evidence.append(f"{MESSAGES} delivered after {time.monotonic() - began:.0f} s")
    # a later cron run steps back up to the inventory's values (its log line comes
    # after the reload; waiting for it, not for postconf, also leaves a converge's
    # rewrite of main.cf out of the picture)
    up = re.compile(rf"transport {TRANSPORT}: step 1 -> 0 of \d+, concurrency \d+ -> {base_conc},")
    wait_for_value(
        "cron's throttle run to step mail1's gmail back up",
        lambda: up.search(log_from(start)), lambda m: m is not None, timeout=180,
    )  # fmt: skip
    lines = log_from(start)
    assert postconf()[0] == base_conc
    assert postconf()[1] in (base_delay, base_delay.rstrip("s"), base_delay + "s")
    assert delivered(tok) == MESSAGES
    bounced = [ln for ln in lines.splitlines() if "status=bounced" in ln and RECIPIENT in ln]
    assert bounced == [], bounced[:3]
    evidence.append(f"stepped back up after {time.monotonic() - began:.0f} s; 0 bounces")
