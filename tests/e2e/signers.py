"""Which DKIM signer each bulk node runs, and how to stop and start it.

A bulk node signs with OpenDKIM unless the lab inventory's host_vars give it
``mail_dkim_signer: rspamd`` (roles/rspamd_signer, docs/rspamd.md).  Checks that stop
"the signer" or look at its keys ask here instead of naming OpenDKIM.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from tests.e2e.labhosts import INVENTORY, sh


@dataclass(frozen=True)
class Signer:
    name: str  # "opendkim" or "rspamd"
    service: str  # the init script / unit
    keys_dir: str  # one directory per domain, <selector>.private in it
    user: str  # owner of the keys and of the milter socket


SIGNERS = {
    "opendkim": Signer("opendkim", "opendkim", "/etc/opendkim/keys", "opendkim"),
    "rspamd": Signer("rspamd", "rspamd", "/etc/rspamd/dkim", "_rspamd"),
}


def signer(host: str) -> Signer:
    """The host's signer from inventories/lab/host_vars/<host>/*.yml (OpenDKIM otherwise)."""
    name = "opendkim"
    folder = INVENTORY / "host_vars" / host
    for path in sorted(folder.glob("*.yml")) if folder.is_dir() else []:
        data = yaml.safe_load(path.read_text()) or {}
        name = str(data.get("mail_dkim_signer", name))
    return SIGNERS[name]


def stop_signer(host: str) -> Signer:
    """Stop the host's signer for good (no process left to answer Postfix)."""
    s = signer(host)
    if s.name == "rspamd":
        # The init script stops the main process; its workers go with it.
        sh(host, "service rspamd stop; sleep 1; pkill -x rspamd; true")
    else:
        sh(host, "service opendkim stop; pkill -x opendkim; true")
    return s


def start_signer(host: str) -> None:
    sh(host, f"service {signer(host).service} start")
