"""Shared by the `mailops dns` tests: DKIM keys laid out as the opendkim role leaves
them, the fixture inventories in tests/data/dns, and running the command in-process."""

from __future__ import annotations

import base64
import contextlib
import io
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailops import cli
from mailops.dns import plan
from mailops.dns.records import unquote_txt
from mailops.dns.resolve import Answer, Dns

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data" / "dns"
FIXTURE = DATA / "inventory"  # loopback addresses, served by nsd in test_dns_check
WEIGHTED = DATA / "weighted"
PRODUCTION = DATA / "production"  # three tenants: the plan shown in docs/dns.md

SOA = "@ 300 IN SOA ns1.{z}. hostmaster.{z}. 1 3600 600 604800 60\n@ 300 IN NS ns1.{z}.\n"


def make_key(directory: Path, selector: str, kind: str = "rsa") -> Path:
    """A private key as the opendkim role makes it (<selector>.private), plus .pem/.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / f"{selector}.private"
    algo = (
        ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
        if kind == "rsa"
        else ["-algorithm", "ed25519"]
    )
    subprocess.run(
        ["openssl", "genpkey", *algo, "-out", str(private)], check=True, capture_output=True
    )
    pem = public_p(private)
    (directory / f"{selector}.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\n"
        + "\n".join(pem[i : i + 64] for i in range(0, len(pem), 64))
        + "\n-----END PUBLIC KEY-----\n"
    )
    if kind == "rsa":  # what roles/opendkim/tasks/keys.yml writes
        (directory / f"{selector}.txt").write_text(f"v=DKIM1; k=rsa; p={pem}")
    return private


def public_p(private: Path) -> str:
    """The p= value of a private key's public half."""
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return base64.b64encode(der).decode()


def run_mailops(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run_mailops_captured(argv: list[str]) -> tuple[int, str, str]:
    """As run_mailops, for fixtures wider than one test (capsys is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@dataclass
class ZoneDns(Dns):
    """Answers from a plan's records (what a name server loaded with them says)."""

    rrsets: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def query(self, name: str, rdtype: str) -> Answer:
        values = self.rrsets.get((name.lower().rstrip("."), rdtype))
        if values is None:
            return Answer(name, rdtype, "nxdomain")
        if rdtype == "TXT":
            values = tuple(unquote_txt(v) for v in values)
        return Answer(name, rdtype, "ok", values)


def zone_dns(p: plan.Plan) -> ZoneDns:
    return ZoneDns(rrsets={(r.name, r.type): r.values for r in p.records})
