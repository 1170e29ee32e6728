"""Issue 22 in the lab: the MTA-STS policy is served, and `mailops dns check` is clean.

For every policy the plan serves (`mailops dns mta-sts`: the mail domain's, and any tenant
domain's whose MX is the company's), a sender's view: ``mta-sts.<domain>`` resolves at
ns1 to the monitor, whose nginx answers ``/.well-known/mta-sts.txt`` over HTTPS with a
certificate the lab CA verifies for that name (and that nothing else trusts), the body is
the planned policy, and the ``_mta-sts`` record's id is the one that policy text gives.
Then ``mailops dns check company.test`` as an operator runs it shows no warning at all.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.resolver

from mailops.dns.plan import policy_id
from tests.e2e.labhosts import ROOT, inventory, mail_domain

HOSTS = inventory()
DOMAIN = mail_domain()
MAILOPS = str(Path(sys.executable).parent / "mailops")
CA = ROOT / ".lab" / "secrets" / "pki" / "ca.crt"
LAB = ["--inventory", str(ROOT / "inventories" / "lab"), "--playbook-dir", str(ROOT / "playbooks")]


def served() -> list[dict[str, str]]:
    proc = subprocess.run(
        [MAILOPS, "dns", "mta-sts", *LAB], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    policies: list[dict[str, str]] = json.loads(proc.stdout)
    return policies


def ns1() -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [HOSTS["ns1"]["ip"]]
    r.lifetime = 10
    return r


class _To(http.client.HTTPSConnection):
    """HTTPS to one address, with the policy host's name in SNI, Host and the check of
    the certificate (the controller's resolver does not know the lab's names)."""

    def __init__(self, host: str, address: str, context: ssl.SSLContext) -> None:
        super().__init__(host, 443, timeout=15, context=context)
        self.address = address
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, 443), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def fetch(host: str, address: str, context: ssl.SSLContext) -> tuple[int, str, bytes, Any]:
    conn = _To(host, address, context)
    try:
        conn.request("GET", "/.well-known/mta-sts.txt")
        resp = conn.getresponse()
        assert isinstance(conn.sock, ssl.SSLSocket)
        cert = conn.sock.getpeercert()
        return resp.status, resp.getheader("Content-Type") or "", resp.read(), cert
    finally:
        conn.close()


def test_policy_is_served_with_a_certificate_the_lab_ca_verifies(evidence: list[str]) -> None:
    policies = served()
    assert [m["domain"] for m in policies][:1] == [DOMAIN], policies
    for m in policies:
        (address,) = [a.to_text() for a in ns1().resolve(m["host"], "A")]
        assert address == HOSTS["monitor"]["ip"], f"{m['host']} -> {address}"
        status, ctype, body, cert = fetch(
            m["host"], address, ssl.create_default_context(cafile=str(CA))
        )
        assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
        assert body.decode() == m["policy"], body
        names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
        assert m["host"] in names, names
        (txt,) = [
            b"".join(r.strings).decode() for r in ns1().resolve(f"_mta-sts.{m['domain']}", "TXT")
        ]
        assert txt == f"v=STSv1; id={policy_id(body.decode())}" == f"v=STSv1; id={m['id']}", txt
        # The lab CA is what makes it valid: a client without it refuses the server.
        bare = ssl.create_default_context()
        try:
            fetch(m["host"], address, bare)
        except ssl.SSLCertVerificationError as exc:
            refused = exc.verify_message
        else:
            raise AssertionError(f"{m['host']}: verified without the lab CA")
        evidence.append(f"{m['host']} ({address}): {txt}; without the lab CA: {refused}")


def test_dns_check_of_the_mail_domain_has_no_warning(evidence: list[str]) -> None:
    # postscreen makes an unknown client wait out its greeting (6 s): a longer timeout.
    cmd = [MAILOPS, "dns", "check", DOMAIN, "--json", "--smtp-timeout", "20", *LAB]
    cmd += ["--nameserver", HOSTS["ns1"]["ip"], "--cafile", str(CA)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout.strip(), proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    not_passed = [r for r in rows if r["status"] != "pass"]
    assert proc.returncode == 0 and not not_passed, json.dumps(not_passed, indent=1)
    policy = next(r for r in rows if r["check"] == "mta-sts-policy")
    evidence.append(f"{len(rows)} checks pass, 0 warn; {policy['subject']}: {policy['evidence']}")
