"""DKIM key rotation in the lab while mail flows: every message verifies throughout.

Runs dkim_rotate.yml twice: the first run publishes a new selector and switches
signing to it once it resolves (the old record stays for a short grace period); the
second, after the grace period, retires the old record and key.  A sender keeps
handing messages to mail1 and to mx1 the whole time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.labhosts import (
    ROOT,
    headers,
    mail_domain,
    sh,
    smtp_reply,
    swaks,
    token,
    wait_for_maildir,
)

DOMAIN = mail_domain()
GRACE = 20


def _rotate(*extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", str(ROOT / "inventories" / "lab"),
        str(ROOT / "playbooks" / "dkim_rotate.yml"),
        "-e", f"dkim_rotate_grace={GRACE}", *extra,
    ]  # fmt: skip
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def _why(run: subprocess.CompletedProcess[str]) -> str:
    """What went wrong in a playbook run: its fatal results first, then its tail."""
    lines = run.stdout.splitlines()
    fatal = []
    for i, ln in enumerate(lines):
        if ln.startswith(("fatal:", "failed:")):
            fatal.extend(lines[i : i + 8])
    return "\n".join(fatal)[:3000] + "\n...\n" + run.stdout[-2000:]


def _selector(msg: str) -> str:
    sig = [v for n, v in headers(msg) if n == "DKIM-Signature"]
    assert sig, "message is not signed"
    return next(p.strip()[2:] for p in sig[0].split(";") if p.strip().startswith("s="))


def _dkim(msg: str) -> str:
    for n, v in headers(msg):
        if n.lower() == "authentication-results" and "dkim=" in v:
            return v.split("dkim=", 1)[1].split()[0]
    return "missing"


@pytest.mark.serial
@pytest.mark.slow
def test_rotation_while_mail_flows(evidence: list[str]) -> None:
    tags: list[tuple[str, str]] = []
    refused: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        # Bounded: at most 120 messages, one every 2 s, until the rotation is done.
        for i in range(120):
            if stop.is_set():
                return
            tag = token()
            if i % 2:
                res = swaks(
                    "app1",
                    f"--server mail1.{DOMAIN} --from bounces@{DOMAIN} --to alice@gmail.test "
                    f"--h-From news@{DOMAIN} --header 'Subject: rotation {tag}'",
                )
                # While opendkim restarts mail1 answers 4xx (never unsigned mail); a
                # real client retries later, this one just counts what was accepted.
                if "250 2.0.0 Ok: queued" in res.out:
                    tags.append(("alice@gmail.test", tag))
                else:
                    refused.append(smtp_reply(res)[:80])
            else:
                sh(
                    "app1",
                    f"printf 'From: ops@{DOMAIN}\\nSubject: rotation {tag}\\n\\nx\\n'"
                    f" | sendmail -f ops@{DOMAIN} bob@gmail.test",
                )
                tags.append(("bob@gmail.test", tag))
            time.sleep(2)

    before = ROOT / ".lab/secrets/dkim" / DOMAIN / "state.yml"
    old_active = _active(before)
    thread = threading.Thread(target=sender)
    thread.start()
    try:
        first = _rotate()
        assert first.returncode == 0, _why(first)
        new_active = _active(before)
        assert new_active != old_active
        time.sleep(GRACE + 2)
        second = _rotate("-e", "dkim_rotate_new=false")
        assert second.returncode == 0, _why(second)
        time.sleep(6)  # a few messages after the old key is gone
    finally:
        stop.set()
        thread.join(timeout=60)
    assert len(tags) >= 10, f"only {len(tags)} messages were sent during the rotation"
    # Messages app1 queued while mx1 answered 4xx (opendkim restarting) wait for their
    # retry; flush instead of waiting out Postfix's backoff.
    sh("app1", "postqueue -f")
    results = {}
    for rcpt, tag in tags:
        msg = wait_for_maildir(rcpt, tag, timeout=90)
        results[tag] = (_selector(msg), _dkim(msg))
    failed = {t: r for t, r in results.items() if r[1] != "pass"}
    assert not failed, f"messages that did not verify: {failed}"
    used = {sel for sel, _ in results.values()}
    assert new_active in used, f"no message was signed with the new selector {new_active}"
    # The old record is gone from DNS and the old key from the hosts.
    gone = sh("mx1", f"dig +short TXT {old_active}._domainkey.{DOMAIN}").out.strip()
    assert gone == "", f"{old_active} still published: {gone[:60]}"
    keys = sh("mail1", f"ls /etc/opendkim/keys/{DOMAIN}/").out.split()
    assert f"{old_active}.private" not in keys, keys
    evidence.append(
        f"{len(results)} messages during rotation {old_active} -> {new_active}, all dkim=pass; "
        f"selectors used: {sorted(used)}; old record and key removed; "
        f"{len(refused)} submissions deferred with 4xx during restarts"
    )
    assert all(r.startswith("<** 4") for r in refused), refused


def _active(state: Path) -> str:
    if state.exists():
        for line in state.read_text().splitlines():
            if line.startswith("active:"):
                return line.split(":", 1)[1].strip()
    keys = sorted(p.stem for p in state.parent.glob("*.private"))
    assert len(keys) == 1, keys
    return keys[0]
