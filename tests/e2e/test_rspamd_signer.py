"""Issue 26 in the lab: a bulk node that signs with Rspamd (roles/rspamd_signer).

The lab inventory gives mail2 ``mail_dkim_signer: rspamd`` (mail1 keeps OpenDKIM).  What
the checks look at is what a receiver gets: the message in inbox's Maildir, its
DKIM-Signature and inbox's verdict, before and after playbooks/dkim_rotate.yml moves a
domain to a new selector on that node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.labhosts import (
    INVENTORY,
    ROOT,
    headers,
    inventory,
    lab_tool,
    mail_domain,
    sh,
    smtp_reply,
    swaks,
    token,
    wait_for_maildir,
)
from tests.e2e.signers import signer

HOSTS = inventory()
DOMAIN = mail_domain()
SECRETS = ROOT / ".lab" / "secrets"
BULK = sorted(h for h, v in HOSTS.items() if v["group"] == "mail_bulk")
RSPAMD_NODES = [h for h in BULK if signer(h).name == "rspamd"]

pytestmark = pytest.mark.skipif(
    not RSPAMD_NODES, reason="no bulk node of the lab inventory signs with Rspamd"
)


def _node() -> str:
    return RSPAMD_NODES[0]


def _signature(msg: str) -> dict[str, str]:
    """The tags of the (first) DKIM-Signature header."""
    sig = [v for n, v in headers(msg) if n.lower() == "dkim-signature"]
    assert sig, "message is not signed"
    tags = {}
    for part in re.sub(r"\s+", "", sig[0]).split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            tags[key] = value
    return tags


def _dkim_verdict(msg: str, domain: str) -> str:
    """inbox's dkim= result for ``domain`` from its Authentication-Results."""
    for name, value in headers(msg):
        if name.lower() != "authentication-results":
            continue
        # "dkim=pass (2048-bit key; unprotected) header.d=...": the comment may hold a ";".
        found = re.search(rf"dkim=(\w+)(?:\s*\([^)]*\))?[^;(]*header\.d={re.escape(domain)}", value)
        if found:
            return found.group(1)
    return "missing"


def _tenant(domain: str) -> tuple[str, str]:
    """The login and password of the tenant that owns ``domain``."""
    data = yaml.safe_load((INVENTORY / "group_vars/all/tenants.yml").read_text())
    for t in data["mail_tenants"]:
        if domain in t["domains"]:
            login = str(t["logins"][0])
            return login, (SECRETS / f"sasl-tenant-{login}").read_text().strip()
    raise AssertionError(f"no tenant owns {domain}")


def _submit(node: str, domain: str, subject: str) -> list[str]:
    """One message from ``domain``'s tenant, submitted on the node's port 587 until it
    is queued; returns the 4xx replies on the way (a signer reloading or restarting
    answers 4xx, never takes the message unsigned).  Bounded: 30 s."""
    login, password = _tenant(domain)
    deferred: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        res = swaks(
            "app1",
            f"--server {HOSTS[node]['ip']}:587 -tls -a PLAIN -au {login} -ap '{password}' "
            f"--from news@{domain} --to alice@gmail.test --header 'Subject: {subject}'",
        )
        if "250 2.0.0 Ok: queued" in res.out:
            return deferred
        reply = smtp_reply(res)
        assert reply.startswith("<** 4"), res.out
        deferred.append(reply[:80])
        assert time.monotonic() < deadline, f"{node} still answers 4xx after 30 s: {deferred}"
        time.sleep(1)


def test_mail_from_the_rspamd_node_reaches_inbox_with_dkim_pass(evidence: list[str]) -> None:
    node = _node()
    milters = sh(node, "postconf -h smtpd_milters non_smtpd_milters").out
    assert "unix:rspamd/" in milters and "opendkim" not in milters, milters
    tag = token()
    res = swaks(
        "app1",
        f"--server {node}.{DOMAIN} --from bounces@{DOMAIN} --h-From 'News <news@{DOMAIN}>' "
        f"--to alice@gmail.test --header 'Subject: rspamd signed {tag}'",
    )
    assert "250 2.0.0 Ok: queued" in res.out, res.out
    msg = wait_for_maildir("alice@gmail.test", tag)
    sig = _signature(msg)
    # Rspamd canonicalises relaxed/relaxed (the role's OpenDKIM: relaxed/simple), and
    # oversigns From: the signature is Rspamd's, made with the role's key.
    assert sig.get("c") == "relaxed/relaxed", sig
    assert sig.get("d") == DOMAIN, sig
    assert sig.get("h", "").lower().split(":").count("from") >= 2, sig
    assert _dkim_verdict(msg, DOMAIN) == "pass", msg[:3000]
    evidence.append(f"{node} -> inbox: dkim=pass d={sig['d']} s={sig['s']} c={sig['c']}")


def _rotate(domain: str) -> subprocess.CompletedProcess[str]:
    """dkim_rotate.yml for ``domain`` on every signing host (the Rspamd node with the
    others, so that none is left behind the controller's rotation state)."""
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", str(ROOT / "inventories" / "lab"),
        str(ROOT / "playbooks" / "dkim_rotate.yml"),
        "-e", f"dkim_rotate_domain={domain}",
    ]  # fmt: skip
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    env.update(lab_tool().mitogen_env())
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, check=False)


# Serial: the rotation restarts OpenDKIM on mx1 and mail1 and reloads Rspamd on the node,
# and each answers 4xx for a moment meanwhile.  Slow (two minutes, most of it
# dkim_rotate.yml): `make test` runs it, `make lab` leaves it out, like test_rotation.
@pytest.mark.serial
@pytest.mark.slow
def test_rotation_moves_the_rspamd_node_to_the_new_selector(evidence: list[str]) -> None:
    """A tenant domain's rotation on the Rspamd node: the next message carries the new
    selector and verifies at inbox (a message caught by Rspamd's reload is deferred with
    4xx and submitted again, as a client would)."""
    node = _node()
    domain = "beta.test"
    state = SECRETS / "dkim" / domain / "state.yml"

    tag = token()
    _submit(node, domain, f"before rotation {tag}")
    before = _signature(wait_for_maildir("alice@gmail.test", f"before rotation {tag}"))["s"]

    start = time.monotonic()
    run = _rotate(domain)
    took = time.monotonic() - start
    assert run.returncode == 0, run.stdout[-3000:]
    active = (yaml.safe_load(state.read_text()) or {})["active"]
    assert active != before, f"state.yml still names {before} active"
    installed = sh(node, f"ls {signer(node).keys_dir}/{domain}/").out.split()
    assert f"{active}.private" in installed, installed

    tag = token()
    deferred = _submit(node, domain, f"after rotation {tag}")
    msg = wait_for_maildir("alice@gmail.test", f"after rotation {tag}")
    sig = _signature(msg)
    assert sig["s"] == active, f"signed with {sig['s']}, the rotation made {active} active"
    assert _dkim_verdict(msg, domain) == "pass", msg[:3000]
    evidence.append(
        f"{node} {domain}: s={before} -> s={active} (dkim_rotate.yml {took:.0f} s), dkim=pass; "
        f"{len(deferred)} submissions deferred with 4xx while Rspamd reloaded"
    )
