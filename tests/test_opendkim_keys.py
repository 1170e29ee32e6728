"""The opendkim role never replaces a signing key silently.

A fresh clone (or a new controller) has no key directory, while DNS still publishes the
selectors with the old keys: a key made there would fail every signature.  These checks
run the role's key tasks (roles/opendkim/tasks/keys.yml) on the controller alone, with a
temporary key directory, and look at what the play does and what it leaves on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"

PLAYBOOK = """---
- name: The opendkim role's key tasks, on the controller only
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Make or check the keys
      ansible.builtin.include_role:
        name: opendkim
        tasks_from: keys
"""


def run_keys(tmp_path: Path, **overrides: Any) -> subprocess.CompletedProcess[str]:
    """ansible-playbook over the key tasks, with the key directory under tmp_path."""
    play = tmp_path / "keys.yml"
    play.write_text(PLAYBOOK)
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\nretry_files_enabled = false\nnocows = true\n")
    variables: dict[str, Any] = {
        "mail_domain": DOMAIN,
        "opendkim__keys_dir": str(tmp_path / "dkim"),
        "opendkim__keys": [{"domain": DOMAIN, "selector": "mail"}],
        **overrides,
    }
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(cfg),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_HOME=str(tmp_path / "home"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c",
         "local", str(play), "-e", f"@{extra}"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def key(tmp_path: Path, selector: str) -> Path:
    return tmp_path / "dkim" / DOMAIN / f"{selector}.private"


@pytest.mark.slow
def test_a_missing_key_stops_the_play_and_says_how_to_restore(tmp_path: Path) -> None:
    # The rotation state survived (say, restored alone) but one key did not: only that
    # selector is named, and the other selector's key is left as it was.
    keydir = tmp_path / "dkim" / DOMAIN
    keydir.mkdir(parents=True)
    (keydir / "state.yml").write_text("selectors: [s1, s2]\nactive: s2\nretiring: {}\n")
    made = run_keys(tmp_path, opendkim__key_generate="missing")
    assert made.returncode == 0, made.stdout + made.stderr
    before = key(tmp_path, "s1").read_bytes()
    key(tmp_path, "s2").unlink()

    # A selector the caller publishes now does not cover a different lost one.
    res = run_keys(tmp_path, opendkim__keys_to_make=[{"domain": DOMAIN, "selector": "s3"}])

    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out
    assert f"The DKIM key for selector s2 of domain {DOMAIN} is not in" in out, out
    assert "selector s1 " not in out, out
    assert "playbooks/restore.yml" in out and "docs/restore.md" in out, out
    assert not key(tmp_path, "s2").exists(), "a key was made for a published selector"
    assert key(tmp_path, "s1").read_bytes() == before


@pytest.mark.slow
def test_the_default_refuses_even_the_first_key(tmp_path: Path) -> None:
    """With no inventory setting at all, nothing is generated."""
    res = run_keys(tmp_path)
    assert res.returncode != 0, res.stdout
    assert "selector mail of domain" in " ".join(res.stdout.split()), res.stdout
    assert not key(tmp_path, "mail").exists()


@pytest.mark.slow
def test_present_keys_are_kept_and_a_new_selector_may_be_made(tmp_path: Path) -> None:
    made = run_keys(tmp_path, opendkim__key_generate="missing")
    assert made.returncode == 0, made.stdout + made.stderr
    first = key(tmp_path, "mail").read_bytes()
    assert (tmp_path / "dkim" / DOMAIN / "mail.txt").read_text().startswith("v=DKIM1; k=rsa; p=")

    # dkim_rotate.yml: the new selector's key is made, the one in DNS is kept byte for
    # byte, under the default "never".
    keys = [{"domain": DOMAIN, "selector": "mail"}, {"domain": DOMAIN, "selector": "s2"}]
    res = run_keys(
        tmp_path, opendkim__keys=keys, opendkim__keys_to_make=[keys[1]], opendkim__key_bits=3072
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert key(tmp_path, "s2").exists()
    # (a changed opendkim__key_bits does not replace a key either)
    assert key(tmp_path, "mail").read_bytes() == first
