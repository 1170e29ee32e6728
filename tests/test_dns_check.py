"""mailops dns check against a real authoritative server (nsd) on 127.0.0.1.

The zones nsd serves are written from ``mailops dns plan --format zone`` for the fixture
inventory in tests/data/dns/inventory (so plan and check are tested together; planned
once per module, each test serving its own copy from a fresh nsd), then
broken one thing at a time: a PTR deleted, an address dropped from SPF, a DKIM key
replaced, a sending address listed in a DNSBL.  Each time exactly the matching check
must fail, with a message that names the record and the fix.  The MX host is an SMTP
server in this process on 127.0.0.10 (the fixture's MX address) with STARTTLS and a
certificate from a throwaway CA; the MTA-STS policies are served over HTTPS on the
fixture's monitor address (127.0.0.50, where the plan points mta-sts.<domain>), with a
certificate for the mta-sts names from the same CA, as `mailops dns mta-sts` prints them.

Needs /usr/sbin/nsd (Debian package nsd) and the openssl CLI.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailops import exitcodes
from mailops.dns import spf
from mailops.dns.resolve import Dns, parse_nameserver
from tests.support.dns import FIXTURE, SOA, make_key, run_mailops, run_mailops_captured
from tests.support.inventory_cache import use_cached_listings

NSD = Path("/usr/sbin/nsd")
DOMAIN = "dnscheck.test"
REVERSE = "0.0.127.in-addr.arpa"
MX_ADDRESS = "127.0.0.10"
POLICY_ADDRESS = "127.0.0.50"  # the fixture's monitor: mta-sts.<domain> A
POLICY_URL = f"https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt"
SENDING = ["127.0.0.10", "127.0.0.21", "127.0.0.22"]

NO_NSD = "needs /usr/sbin/nsd (Debian package nsd) to serve the test zones"


def no_settings_file(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty settings file (not the host's), and one ansible-inventory run per
    inventory (tests/support/inventory_cache.py)."""
    empty = directory / "mailops.toml"
    empty.write_text("")
    monkeypatch.setenv("MAILOPS_CONFIG", str(empty))
    use_cached_listings(monkeypatch)


@pytest.fixture(autouse=True)
def _no_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_settings_file(tmp_path, monkeypatch)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (nsd binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


# --- nsd --------------------------------------------------------------------------


class Nsd:
    """nsd serving the given zones from a temporary directory, foreground (-d)."""

    def __init__(self, root: Path, zones: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f"    ip-address: 127.0.0.1@{self.port}",
            f"    port: {self.port}",
            '    username: ""',
            '    chroot: ""',
            f'    zonesdir: "{root}"',
            '    database: ""',
            f'    pidfile: "{root}/nsd.pid"',
            f'    xfrdfile: "{root}/xfrd.state"',
            f'    zonelistfile: "{root}/zone.list"',
            f'    xfrdir: "{root}"',
            f'    logfile: "{root}/nsd.log"',
            "    server-count: 1",
            "    do-ip6: no",
            "    verbosity: 1",
            "remote-control:",
            "    control-enable: no",
        ]
        for name, text in zones.items():
            (root / f"{name}.zone").write_text(f"$ORIGIN {name}.\n" + SOA.format(z=name) + text)
            conf += ["zone:", f'    name: "{name}"', f'    zonefile: "{name}.zone"']
        self.conf = root / "nsd.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        subprocess.run(["nsd-checkconf", str(self.conf)], check=True)
        for name in zones:  # a zone nsd would refuse fails here, with nsd's reason
            proc = subprocess.run(
                ["nsd-checkzone", name, str(root / f"{name}.zone")],
                capture_output=True,
                text=True,
                check=False,
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
        self.proc = subprocess.Popen(
            [str(NSD), "-c", str(self.conf), "-d"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(next(iter(zones)))

    def _wait(self, zone: str) -> None:
        # A query sent before nsd has bound its port is lost and would be waited out
        # (0.5 s): first wait for its TCP port, refused at once until it is bound.
        d = Dns("127.0.0.1", self.port, timeout=0.5)
        deadline = time.monotonic() + 15
        bound = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (
                    (self.root / "nsd.log").read_text() if (self.root / "nsd.log").exists() else ""
                )
                raise RuntimeError(f"nsd exited {self.proc.returncode}: {log}")
            if not bound:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    bound = True
                except OSError:
                    time.sleep(0.01)
                continue
            d._cache.clear()
            if d.query(zone, "SOA").status == "ok":
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("nsd did not answer within 15 s")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nsd(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Nsd]]:
    if not NSD.exists():
        pytest.skip(NO_NSD)
    started: list[Nsd] = []

    def start(zones: dict[str, str]) -> Nsd:
        server = Nsd(tmp_path / f"nsd{len(started)}", zones)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


# --- an MX that answers SMTP with STARTTLS, and an MTA-STS policy server -------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    sts_cert: Path = Path()
    sts_key: Path = Path()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and the MX's certificate, on P-256 keys (made at once; RSA takes seconds)."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=mailops test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(d / "mx.key"),
        "-out",
        str(d / "mx.csr"),
        "-subj",
        f"/CN=mx1.{DOMAIN}",
    )
    (d / "ext").write_text(
        f"subjectAltName=DNS:mx1.{DOMAIN}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(d / "mx.csr"),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-out",
        str(d / "mx.crt"),
        "-days",
        "2",
        "-extfile",
        str(d / "ext"),
    )
    # The policy host's certificate: one for both names it serves (the mail domain's and
    # tenant1's, whose MX is the company's), made by the same CA.
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(d / "sts.key"), "-out", str(d / "sts.csr"),
            "-subj", f"/CN=mta-sts.{DOMAIN}")  # fmt: skip
    (d / "sts-ext").write_text(
        f"subjectAltName=DNS:mta-sts.{DOMAIN},DNS:mta-sts.{TENANT1}\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", str(d / "sts.csr"), "-CA", str(d / "ca.crt"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "sts.crt"),
            "-days", "2", "-extfile", str(d / "sts-ext"))  # fmt: skip
    return Pki(
        ca=d / "ca.crt",
        cert=d / "mx.crt",
        key=d / "mx.key",
        sts_cert=d / "sts.crt",
        sts_key=d / "sts.key",
    )


class SmtpHandler(socketserver.StreamRequestHandler):
    server: SmtpServer

    def handle(self) -> None:
        sock: Any = self.request
        sock.settimeout(5)
        sock.sendall(b"220 mx1.dnscheck.test ESMTP test\r\n")
        buf = b""
        while True:
            while b"\n" not in buf:
                chunk = sock.recv(1024)
                if not chunk:
                    return
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            verb = line.strip().upper().split(b" ")[0]
            if verb == b"EHLO":
                ext = b"250-STARTTLS\r\n" if self.server.starttls else b""
                sock.sendall(b"250-mx1.dnscheck.test\r\n" + ext + b"250 8BITMIME\r\n")
            elif verb == b"STARTTLS" and self.server.starttls:
                sock.sendall(b"220 go ahead\r\n")
                sock = self.server.tls.wrap_socket(sock, server_side=True)
            elif verb == b"QUIT":
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"502 not here\r\n")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, pki: Pki) -> None:
        super().__init__((MX_ADDRESS, 0), SmtpHandler)
        self.starttls = True
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(pki.cert, pki.key)


@pytest.fixture(scope="module")
def smtp(pki: Pki) -> Iterator[SmtpServer]:
    server = SmtpServer(pki)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def serve_policy(body: bytes) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/.well-known/mta-sts.txt":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class PolicyServer(http.server.ThreadingHTTPServer):
    """HTTPS on the monitor's address: each mta-sts.<domain> host's policy, by Host."""

    def __init__(self, pki: Pki, policies: dict[str, bytes]) -> None:
        self.policies = policies
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
                server.requests.append(f"{host}{self.path}")
                body = server.policies.get(host)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((POLICY_ADDRESS, 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.sts_cert, pki.sts_key)
        self.socket = tls.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def policy_server(pki: Pki, policies: dict[str, bytes]) -> Iterator[PolicyServer]:
    server = PolicyServer(pki, policies)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- the planned zones ------------------------------------------------------------


@dataclass
class Planned:
    playbooks: Path  # --playbook-dir: keys at ../secrets/dkim (the fixture's templates)
    zones: dict[str, str]  # every planned zone -> its records (a master-file fragment)
    policy: bytes
    policies: dict[str, bytes]  # mta-sts.<domain> -> its policy (`mailops dns mta-sts`)
    ids: dict[str, str]  # domain -> the policy's id

    @property
    def forward(self) -> str:
        return self.zones[DOMAIN]

    @property
    def reverse(self) -> str:
        return self.zones[REVERSE]

    def served(self, changed: dict[str, str] | None = None) -> dict[str, str]:
        """Every planned zone and a clean DNSBL, some of them replaced."""
        return {**self.zones, "dnsbl.test": DNSBL_OK, **(changed or {})}


DNSBL_OK = '2.0.0.127 IN A 127.0.0.2\n2.0.0.127 IN TXT "test entry"\n'
TENANT1 = "tenant1.test"  # pool one: 127.0.0.121 on mail1, .122 on mail2; MX planned
TENANT2 = "tenant2.test"  # pool two: 127.0.0.131 on mail1; no MX
POOL1 = ["127.0.0.121", "127.0.0.122"]


def plan_zones(playbooks: Path, *extra: str) -> Planned:
    """One `mailops dns plan` of the fixture, cut into its $ORIGIN blocks."""
    policy = playbooks.parent / "mta-sts.txt"
    code, out, err = run_mailops_captured(
        [
            "dns",
            "plan",
            "--inventory",
            str(FIXTURE),
            "--playbook-dir",
            str(playbooks),
            "--mta-sts-policy-out",
            str(policy),
            *extra,
        ]
    )
    assert code == 0, err
    zones: dict[str, str] = {}
    for block in out.split("\n$ORIGIN ")[1:]:
        origin, _, body = block.partition("\n")
        zones[origin.rstrip(".")] = body
    assert set(zones) == {DOMAIN, REVERSE, TENANT1, TENANT2}, zones
    code, out, err = run_mailops_captured(
        ["dns", "mta-sts", "--inventory", str(FIXTURE), "--playbook-dir", str(playbooks)]
    )
    assert code == 0, err
    served = json.loads(out)
    policies = {m["host"]: m["policy"].encode() for m in served}
    ids = {m["domain"]: m["id"] for m in served}
    return Planned(playbooks, zones, policy.read_bytes(), policies, ids)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout-like tree: playbooks/ and the fixture's secrets/dkim keys beside it."""
    root = tmp_path_factory.mktemp("repo")
    (root / "playbooks").mkdir()
    make_key(root / "secrets" / "dkim" / DOMAIN, "mail")
    make_key(root / "secrets" / "dkim" / TENANT1, "t1")
    make_key(root / "secrets" / "dkim" / TENANT2, "t2")
    return root


@pytest.fixture(scope="module")
def planned(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Planned:
    """The fixture's plan, once per module: the tests only read it (and serve copies)."""
    with pytest.MonkeyPatch.context() as mp:
        no_settings_file(tmp_path_factory.mktemp("settings"), mp)
        return plan_zones(repo / "playbooks")


@pytest.fixture(scope="module")
def policy_host(planned: Planned, pki: Pki) -> Iterator[int]:
    """The planned policies over HTTPS at the monitor's address; yields the port."""
    with policy_server(pki, planned.policies) as server:
        yield server.port


def check(
    capsys: pytest.CaptureFixture[str],
    ns: Nsd,
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    *extra: str,
    policy_url: str | None = None,
    https_port: int | None = None,
    domain: str = DOMAIN,
) -> tuple[int, list[dict[str, str]], str]:
    argv = [
        "dns",
        "check",
        domain,
        "--json",
        "--nameserver",
        ns.address,
        "--inventory",
        str(FIXTURE),
        "--playbook-dir",
        str(planned.playbooks),
        "--smtp-port",
        str(smtp.server_address[1]),
        "--cafile",
        str(pki.ca),
        "--timeout",
        "2",
        "--smtp-timeout",
        "3",
    ]
    if policy_url:
        argv += ["--mta-sts-url-base", policy_url]
    if https_port:
        argv += ["--https-port", str(https_port)]
    code, out, err = run_mailops(argv + list(extra), capsys)
    if code == exitcodes.USAGE:
        return code, [], err
    return code, json.loads(out)["rows"], err


def by_status(rows: list[dict[str, str]], status: str) -> list[tuple[str, str]]:
    return [(r["check"], r["subject"]) for r in rows if r["status"] == status]


def the_row(rows: list[dict[str, str]], check_name: str, subject: str) -> dict[str, str]:
    (found,) = [r for r in rows if r["check"] == check_name and r["subject"] == subject]
    return found


# --- the whole picture ------------------------------------------------------------


def test_planned_zones_pass_every_check(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    code, rows, err = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == 0, err
    assert by_status(rows, "fail") == [] and by_status(rows, "warn") == [], rows
    checks = {(r["check"], r["subject"]) for r in rows}
    smtp_subject = f"mx1.{DOMAIN} [{MX_ADDRESS}]:{smtp.server_address[1]}"
    expected = {
        ("mx", DOMAIN),
        ("mx-smtp", smtp_subject),
        ("mx-starttls", smtp_subject),
        ("spf", DOMAIN),
        ("spf-lookups", DOMAIN),
        ("dkim", f"mail._domainkey.{DOMAIN}"),
        ("dmarc", f"_dmarc.{DOMAIN}"),
        ("mta-sts", f"_mta-sts.{DOMAIN}"),
        ("mta-sts-policy", f"https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt"),
        ("tls-rpt", f"_smtp._tls.{DOMAIN}"),
    }
    expected |= {("fcrdns", a) for a in SENDING} | {("spf-coverage", a) for a in SENDING}
    expected |= {("dnsbl", f"{a} in dnsbl.test") for a in SENDING}
    assert checks == expected
    assert (
        "certificate valid for mx1.dnscheck.test"
        in the_row(rows, "mx-starttls", smtp_subject)["evidence"]
    )


def test_text_output(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    code, out, _ = run_mailops(
        [
            "dns",
            "check",
            DOMAIN,
            "--nameserver",
            ns.address,
            "--inventory",
            str(FIXTURE),
            "--playbook-dir",
            str(planned.playbooks),
            "--smtp-port",
            str(smtp.server_address[1]),
            "--https-port",
            str(policy_host),
            "--cafile",
            str(pki.ca),
            "--timeout",
            "2",
        ],
        capsys,
    )
    assert code == 0
    assert f"PASS  mta-sts-policy  https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt: " in out
    assert out.rstrip().endswith(" pass, 0 warn, 0 fail")


def test_policy_fetched_from_the_address_the_dns_gives(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
) -> None:
    """Without --mta-sts-url-base the check does what a sender does: mta-sts.<domain>'s
    address from the DNS checked, HTTPS with that name; a host that is not published,
    not answering, or with a certificate for another name fails the policy check only."""
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    with policy_server(pki, planned.policies) as server:
        code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=server.port)
        assert code == 0 and by_status(rows, "fail") == [], rows
        assert server.requests == [f"mta-sts.{DOMAIN}/.well-known/mta-sts.txt"]
        # the name not published: nothing to connect to
        unpublished = "\n".join(
            ln for ln in planned.forward.splitlines() if not ln.startswith("mta-sts ")
        )
        assert unpublished != planned.forward
        ns2 = nsd({DOMAIN: unpublished + "\n", REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
        code, rows, _ = check(capsys, ns2, planned, smtp, pki, https_port=server.port)
        assert code == exitcodes.FAIL
        assert by_status(rows, "fail") == [("mta-sts-policy", POLICY_URL)]
        assert (
            f"mta-sts.{DOMAIN} has no address"
            in the_row(rows, "mta-sts-policy", POLICY_URL)["evidence"]
        )
    # nobody answers there
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=free_port())
    assert by_status(rows, "fail") == [("mta-sts-policy", POLICY_URL)]
    # a certificate the CA did not issue for that name (the MX's, for mx1.<domain>)
    wrong = Pki(pki.ca, pki.cert, pki.key, sts_cert=pki.cert, sts_key=pki.key)
    with policy_server(wrong, planned.policies) as server:
        code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=server.port)
    assert by_status(rows, "fail") == [("mta-sts-policy", POLICY_URL)]
    evidence = the_row(rows, "mta-sts-policy", POLICY_URL)["evidence"]
    assert f"certificate not valid for mta-sts.{DOMAIN}" in evidence, evidence


def test_record_id_that_does_not_name_the_served_policy(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    """The policy is the planned one but the record kept an old id: senders that cached
    the old policy would never fetch this one."""
    pid = planned.ids[DOMAIN]
    stale = planned.forward.replace(f"id={pid}", "id=20240101000000")
    assert stale != planned.forward
    ns = nsd({DOMAIN: stale, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert sorted(by_status(rows, "fail")) == [
        ("mta-sts", f"_mta-sts.{DOMAIN}"),
        ("mta-sts-policy", POLICY_URL),
    ]
    evidence = the_row(rows, "mta-sts-policy", POLICY_URL)["evidence"]
    assert evidence == f"the served policy's id is {pid}, the record says 20240101000000"


# --- one thing broken at a time -----------------------------------------------------


def test_missing_ptr_fails_fcrdns_only(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    reverse = "".join(
        line for line in planned.reverse.splitlines(keepends=True) if not line.startswith("21 ")
    )
    assert reverse != planned.reverse
    ns = nsd({DOMAIN: planned.forward, REVERSE: reverse, "dnsbl.test": DNSBL_OK})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("fcrdns", "127.0.0.21")]
    r = the_row(rows, "fcrdns", "127.0.0.21")
    assert "no PTR record at 21.0.0.127.in-addr.arpa" in r["evidence"]
    assert "reverse DNS of 127.0.0.21" in r["fix"] and f"mail1.{DOMAIN}" in r["fix"]


def test_ptr_that_does_not_resolve_back(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    reverse = planned.reverse.replace(f"mail2.{DOMAIN}.", f"elsewhere.{DOMAIN}.")
    ns = nsd({DOMAIN: planned.forward, REVERSE: reverse, "dnsbl.test": DNSBL_OK})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("fcrdns", "127.0.0.22")]
    assert "does not resolve back" in the_row(rows, "fcrdns", "127.0.0.22")["evidence"]


def test_spf_missing_an_address_fails_coverage_only(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    forward = planned.forward.replace(" ip4:127.0.0.22", "")
    assert forward != planned.forward
    ns = nsd({DOMAIN: forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("spf-coverage", "127.0.0.22")]
    r = the_row(rows, "spf-coverage", "127.0.0.22")
    assert "gives fail for 127.0.0.22" in r["evidence"]
    assert r["fix"] == f"add ip4:127.0.0.22 to the SPF record of {DOMAIN}"


def test_spf_over_ten_lookups_live(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    forward = planned.forward.replace(" -all", f" include:_s1.{DOMAIN} -all", 1)
    forward += f'_s1 300 IN TXT "v=spf1 include:_s2.{DOMAIN} a mx a mx -all"\n'
    forward += '_s2 300 IN TXT "v=spf1 a mx a mx a mx ?all"\n'
    ns = nsd({DOMAIN: forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("spf-lookups", DOMAIN)]
    assert the_row(rows, "spf-lookups", DOMAIN)["evidence"].startswith("12 lookups")


def test_dkim_key_mismatch_fails_dkim_only(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
    tmp_path: Path,
) -> None:
    other = tmp_path / "other-keys"
    make_key(other / DOMAIN, "mail")
    published = plan_zones(planned.playbooks, "--dkim-keys", str(other))
    ns = nsd({DOMAIN: published.forward, REVERSE: published.reverse, "dnsbl.test": DNSBL_OK})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("dkim", f"mail._domainkey.{DOMAIN}")]
    r = the_row(rows, "dkim", f"mail._domainkey.{DOMAIN}")
    assert "differs from" in r["evidence"] and "mail.private" in r["evidence"]
    assert r["fix"].startswith(f"publish mail._domainkey.{DOMAIN} TXT")


def test_dnsbl_listing_fails_and_blocked_answer_warns(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    listed = DNSBL_OK + '22.0.0.127 IN A 127.0.0.2\n22.0.0.127 IN TXT "spam trap hits"\n'
    blocked = "* IN A 127.255.255.254\n"
    ns = nsd(
        {
            DOMAIN: planned.forward,
            REVERSE: planned.reverse,
            "dnsbl.test": listed,
            "blocked.test": blocked,
        }
    )
    code, rows, _ = check(
        capsys,
        ns,
        planned,
        smtp,
        pki,
        "--dnsbl",
        "dnsbl.test",
        "blocked.test",
        https_port=policy_host,
    )
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("dnsbl", "127.0.0.22 in dnsbl.test")]
    r = the_row(rows, "dnsbl", "127.0.0.22 in dnsbl.test")
    assert "listed in dnsbl.test (127.0.0.2): spam trap hits" in r["evidence"]
    assert "delisting" in r["fix"]
    warned = [r for r in rows if r["status"] == "warn"]
    assert [(r["check"], r["subject"]) for r in warned] == [("dnsbl", "blocked.test")]
    assert "query refused/blocked by the list operator" in warned[0]["evidence"]
    assert "DNSBL error" in warned[0]["evidence"]


def test_blocked_answer_for_one_address_is_not_a_listing(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    zone = DNSBL_OK + "21.0.0.127 IN A 127.255.255.254\n"
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse, "dnsbl.test": zone})
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == 0
    assert by_status(rows, "warn") == [("dnsbl", "127.0.0.21 in dnsbl.test")]
    assert "not a listing" in the_row(rows, "dnsbl", "127.0.0.21 in dnsbl.test")["evidence"]


def test_untrusted_certificate_fails_starttls_only(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    policy_host: int,
    tmp_path: Path,
) -> None:
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    empty_ca = tmp_path / "other-ca"
    empty_ca.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(empty_ca / "k"),
        "-out",
        str(empty_ca / "ca.crt"),
        "-days",
        "1",
        "-subj",
        "/CN=unrelated",
    )
    code, rows, _ = check(
        capsys, ns, planned, smtp, Pki(empty_ca / "ca.crt", Path(), Path()), https_port=policy_host
    )
    assert code == exitcodes.FAIL
    # The MX's certificate, and the policy host's, which comes from the same CA.
    policy, failed = sorted(by_status(rows, "fail"))
    assert failed[0] == "mx-starttls" and policy == ("mta-sts-policy", POLICY_URL)
    assert "certificate not valid for mx1.dnscheck.test" in the_row(rows, *failed)["evidence"]
    assert f"not valid for mta-sts.{DOMAIN}" in the_row(rows, *policy)["evidence"]


def test_policy_that_differs_from_the_plan(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
) -> None:
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse, "dnsbl.test": DNSBL_OK})
    stale = planned.policy.replace(b"mx: mx1.dnscheck.test", b"mx: old.dnscheck.test")
    server, url = serve_policy(stale)
    try:
        code, rows, _ = check(capsys, ns, planned, smtp, pki, policy_url=url)
    finally:
        server.shutdown()
        server.server_close()
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [
        ("mta-sts-policy", f"https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt")
    ]
    evidence = rows[[r["check"] for r in rows].index("mta-sts-policy")]["evidence"]
    assert "MX mx1.dnscheck.test not listed" in evidence and "differs from the planned" in evidence


def test_no_answer_from_dns_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_mailops(
        ["dns", "check", DOMAIN, "--nameserver", f"127.0.0.1:{free_port()}", "--timeout", "0.3"],
        capsys,
    )
    assert code == exitcodes.USAGE
    assert out == "" and "could not check" in err


def test_without_inventory_guesses_and_says_so(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    ns = nsd({DOMAIN: planned.forward, REVERSE: planned.reverse})
    code, out, _ = run_mailops(
        [
            "dns",
            "check",
            DOMAIN,
            "--json",
            "--nameserver",
            ns.address,
            "--smtp-port",
            str(smtp.server_address[1]),
            "--cafile",
            str(pki.ca),
            "--timeout",
            "2",
            "--https-port",
            str(policy_host),
            "--sending-ip",
            "127.0.0.21",
            "--dkim-keys",
            str(planned.playbooks.parent / "secrets" / "dkim"),
        ],
        capsys,
    )
    assert code == 0
    rows = json.loads(out)["rows"]
    assert ("fcrdns", "127.0.0.21") in by_status(rows, "pass")
    assert ("dkim", f"mail._domainkey.{DOMAIN}") in by_status(rows, "pass")
    assert ("dnsbl", DOMAIN) in by_status(rows, "warn")  # none configured
    assert ("mta-sts-policy", POLICY_URL) in by_status(rows, "pass")  # found through DNS


# --- tenant domains (issue 20) -------------------------------------------------------


def tenant_checks(domain: str, pool: list[str], smtp_subject: str | None) -> set[tuple[str, str]]:
    """Every row a tenant domain's check has: its pool's addresses for FCrDNS, SPF and
    DNSBL; MTA-STS and TLS-RPT only when its MX is the company's (the cluster receives
    its mail), else none (its inbound mail is its own)."""
    out = {
        ("mx", domain),
        ("spf-pool", domain),
        ("spf", domain),
        ("spf-lookups", domain),
        ("dmarc", f"_dmarc.{domain}"),
        ("dmarc-report", f"{domain}._report._dmarc.{DOMAIN}"),
    }
    out |= {("dkim", f"t{domain[6]}._domainkey.{domain}")}
    out |= {("fcrdns", a) for a in pool} | {("spf-coverage", a) for a in pool}
    out |= {("dnsbl", f"{a} in dnsbl.test") for a in pool}
    if smtp_subject:
        out |= {("mx-smtp", smtp_subject), ("mx-starttls", smtp_subject)}
        out |= {
            ("mta-sts", f"_mta-sts.{domain}"),
            ("mta-sts-policy", f"https://mta-sts.{domain}/.well-known/mta-sts.txt"),
            ("tls-rpt", f"_smtp._tls.{domain}"),
        }
    return out


def test_tenant_domains_pass(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    ns = nsd(planned.served())
    code, rows, err = check(capsys, ns, planned, smtp, pki, domain=TENANT1, https_port=policy_host)
    assert code == 0, err
    assert by_status(rows, "fail") == [] and by_status(rows, "warn") == [], rows
    smtp_subject = f"mx1.{DOMAIN} [{MX_ADDRESS}]:{smtp.server_address[1]}"
    assert {(r["check"], r["subject"]) for r in rows} == tenant_checks(TENANT1, POOL1, smtp_subject)
    assert the_row(rows, "spf-pool", TENANT1)["evidence"] == (
        "exactly pool one: 127.0.0.121, 127.0.0.122"
    )
    assert the_row(rows, "fcrdns", "127.0.0.122")["evidence"] == (
        f"PTR mail2-one1.{DOMAIN} -> 127.0.0.122"
    )
    # tenant2's domain has no MX (not planned): a warning that says what it costs
    code, rows, err = check(capsys, ns, planned, smtp, pki, domain=TENANT2)
    assert code == 0, err
    assert by_status(rows, "fail") == []
    assert by_status(rows, "warn") == [("mx", TENANT2)]
    assert "reject_unknown_sender_domain" in the_row(rows, "mx", TENANT2)["evidence"]
    assert {(r["check"], r["subject"]) for r in rows} == tenant_checks(
        TENANT2, ["127.0.0.131"], None
    )


@pytest.mark.parametrize(
    "term",
    ["ip4:127.0.0.99", "ip4:127.0.0.0/24", f"include:{DOMAIN}", "mx"],
)
def test_tenant_spf_one_term_too_many_fails_spf_pool_only(
    term: str,
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    """Each still passes for the pool's addresses; each lets other addresses send too."""
    zone = planned.zones[TENANT1].replace(" -all", f" {term} -all")
    assert zone != planned.zones[TENANT1]
    ns = nsd(planned.served({TENANT1: zone}))
    code, rows, _ = check(capsys, ns, planned, smtp, pki, domain=TENANT1, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("spf-pool", TENANT1)]
    r = the_row(rows, "spf-pool", TENANT1)
    assert f"authorises more than pool one: {term}" in r["evidence"]
    assert r["fix"] == (
        f'publish {TENANT1} TXT "v=spf1 ip4:127.0.0.121 ip4:127.0.0.122 -all" (mailops dns plan)'
    )


def test_tenant_spf_missing_a_pool_address(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    zone = planned.zones[TENANT1].replace(" ip4:127.0.0.122", "")
    assert zone != planned.zones[TENANT1]
    ns = nsd(planned.served({TENANT1: zone}))
    code, rows, _ = check(capsys, ns, planned, smtp, pki, domain=TENANT1, https_port=policy_host)
    assert code == exitcodes.FAIL
    assert sorted(by_status(rows, "fail")) == [
        ("spf-coverage", "127.0.0.122"),
        ("spf-pool", TENANT1),
    ]
    assert "does not list pool one's 127.0.0.122" in the_row(rows, "spf-pool", TENANT1)["evidence"]


def test_tenant_pool_address_without_ptr_and_listed(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    reverse = "".join(
        line for line in planned.reverse.splitlines(keepends=True) if not line.startswith("131 ")
    )
    assert reverse != planned.reverse
    listed = DNSBL_OK + '131.0.0.127 IN A 127.0.0.2\n131.0.0.127 IN TXT "snowshoe"\n'
    ns = nsd(planned.served({REVERSE: reverse, "dnsbl.test": listed}))
    code, rows, _ = check(capsys, ns, planned, smtp, pki, domain=TENANT2)
    assert code == exitcodes.FAIL
    assert sorted(by_status(rows, "fail")) == [
        ("dnsbl", "127.0.0.131 in dnsbl.test"),
        ("fcrdns", "127.0.0.131"),
    ]
    assert "mail1-two1.dnscheck.test" in the_row(rows, "fcrdns", "127.0.0.131")["fix"]
    # the company's own check does not look at the pools
    code, rows, _ = check(capsys, ns, planned, smtp, pki, https_port=policy_host)
    assert code == 0 and not any("127.0.0.131" in r["subject"] for r in rows)


def test_tenant_null_mx_fails(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
) -> None:
    ns = nsd(planned.served({TENANT2: planned.zones[TENANT2] + "@ IN MX 0 .\n"}))
    code, rows, _ = check(capsys, ns, planned, smtp, pki, domain=TENANT2)
    assert code == exitcodes.FAIL
    assert by_status(rows, "fail") == [("mx", TENANT2)]
    assert "null MX" in the_row(rows, "mx", TENANT2)["evidence"]


def test_check_every_planned_domain(
    capsys: pytest.CaptureFixture[str],
    nsd: Callable[[dict[str, str]], Nsd],
    planned: Planned,
    smtp: SmtpServer,
    pki: Pki,
    policy_host: int,
) -> None:
    """No DOMAIN: the mail domain, then each tenant domain, one result each."""
    broken = planned.zones[TENANT2].replace(" -all", " ip4:127.0.0.99 -all")
    ns = nsd(planned.served({TENANT2: broken}))
    argv = ["dns", "check", "--json", "--nameserver", ns.address, "--inventory", str(FIXTURE)]
    argv += ["--playbook-dir", str(planned.playbooks), "--smtp-port", str(smtp.server_address[1])]
    argv += ["--cafile", str(pki.ca), "--timeout", "2", "--https-port", str(policy_host)]
    code, out, err = run_mailops(argv, capsys)
    assert code == exitcodes.FAIL, err
    got = json.loads(out)
    assert [d["domain"] for d in got["domains"]] == [DOMAIN, TENANT1, TENANT2]
    fails = {
        d["domain"]: [(r["check"], r["subject"]) for r in d["rows"] if r["status"] == "fail"]
        for d in got["domains"]
    }
    assert fails == {DOMAIN: [], TENANT1: [], TENANT2: [("spf-pool", TENANT2)]}
    assert got["summary"]["fail"] == 1
    assert got["summary"]["pass"] == sum(d["summary"]["pass"] for d in got["domains"])
    # text: one block per domain
    code, out, _ = run_mailops([a for a in argv if a != "--json"], capsys)
    assert code == exitcodes.FAIL
    assert [line for line in out.splitlines() if line.startswith("== ")] == [
        f"== {DOMAIN}",
        f"== {TENANT1}",
        f"== {TENANT2}",
    ]


def test_domain_the_inventory_does_not_plan(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["dns", "check", "other.test", "--inventory", str(FIXTURE)]
    code, out, err = run_mailops(argv, capsys)
    assert code == exitcodes.USAGE and out == ""
    assert f"plans {DOMAIN}, {TENANT1}, {TENANT2}, not other.test" in err
    code, _, err = run_mailops(["dns", "check"], capsys)
    assert code == exitcodes.USAGE and "no DOMAIN and no inventory" in err


@pytest.mark.parametrize(
    ("record", "extra", "missing"),
    [
        ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 -all", [], []),
        ("v=spf1 ip4:192.0.2.2/32 +ip4:192.0.2.1 ~all", [], []),
        ("v=spf1 ip4:192.0.2.1 -all", [], ["192.0.2.2"]),
        ("v=spf1 ip4:192.0.2.0/30 -all", ["ip4:192.0.2.0/30"], ["192.0.2.1", "192.0.2.2"]),
        ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 a mx -all", ["a", "mx"], []),
        ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 +all", ["+all"], []),
        ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 -ip4:192.0.2.9 ?include:x.example -all", [], []),
        ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 redirect=x.example", ["redirect=x.example"], []),
        ("v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 ip6:2001:db8::1 -all", ["ip6:2001:db8::1"], []),
    ],
)
def test_pool_terms(record: str, extra: list[str], missing: list[str]) -> None:
    from mailops.dns.check import pool_terms

    assert pool_terms(spf.parse(record), ["192.0.2.1", "192.0.2.2"]) == (extra, missing)


# --- the SPF evaluator on its own ----------------------------------------------------


class FakeDns:
    def __init__(self, data: dict[tuple[str, str], list[str]]) -> None:
        self.data = data
        self.asked: list[tuple[str, str]] = []

    def _get(self, name: str, rtype: str) -> list[str]:
        self.asked.append((name, rtype))
        if (name, rtype) == ("down.example", "TXT"):
            raise spf.DnsFailure("down.example TXT: timed out")
        return self.data.get((name, rtype), [])

    def txt(self, name: str) -> list[str]:
        return self._get(name, "TXT")

    def addresses(self, name: str, version: int) -> list[str]:
        return self._get(name, "A" if version == 4 else "AAAA")

    def mx(self, name: str) -> list[str]:
        return self._get(name, "MX")

    def ptr(self, address: str) -> list[str]:
        return self._get(address, "PTR")


def evaluate(data: dict[tuple[str, str], list[str]], ip: str, domain: str = "example.com") -> str:
    ctx = spf.Context(
        ip=ipaddress.ip_address(ip),
        sender=f"bob@{domain}",
        helo=domain,
        domain=domain,
        dns=FakeDns(data),
    )
    return spf.check_host(ctx, domain)


@pytest.mark.parametrize(
    ("ip", "result"),
    [
        ("192.0.2.1", "pass"),  # ip4
        ("192.0.2.77", "pass"),  # a:/24 of the include's name
        ("198.51.100.9", "pass"),  # mx
        ("2001:db8::5", "pass"),  # ip6 inside the redirect target
        ("203.0.113.9", "softfail"),  # exists with %{i}: listed name -> ~
        ("203.0.113.10", "fail"),  # falls to the redirect's -all
    ],
)
def test_spf_evaluation(ip: str, result: str) -> None:
    data = {
        ("example.com", "TXT"): [
            "v=spf1 ip4:192.0.2.1 include:inc.example mx "
            "~exists:%{i}.bad.example redirect=red.example"
        ],
        ("inc.example", "TXT"): ["v=spf1 a:hosts.example/24 -all"],
        ("hosts.example", "A"): ["192.0.2.200"],
        ("example.com", "MX"): ["mx.example.com"],
        ("mx.example.com", "A"): ["198.51.100.9"],
        ("203.0.113.9.bad.example", "A"): ["127.0.0.2"],
        ("red.example", "TXT"): ["v=spf1 ip6:2001:db8::/64 -all"],
    }
    assert evaluate(data, ip) == result


def test_spf_errors() -> None:
    assert evaluate({("example.com", "TXT"): ["v=spf1 -all", "v=spf1 ~all"]}, "192.0.2.1") == (
        "permerror"
    )
    assert (
        evaluate({("example.com", "TXT"): ["v=spf1 include:down.example -all"]}, "192.0.2.1")
        == "temperror"
    )
    assert (
        evaluate({("example.com", "TXT"): ["v=spf1 include:none.example -all"]}, "192.0.2.1")
        == "permerror"
    )
    voids = "v=spf1 a:n1.example a:n2.example a:n3.example -all"
    assert evaluate({("example.com", "TXT"): [voids]}, "192.0.2.1") == "permerror"
    many = "v=spf1 " + " ".join(f"a:h{i}.example" for i in range(11)) + " -all"
    data = {("example.com", "TXT"): [many]}
    data |= {(f"h{i}.example", "A"): ["192.0.2.250"] for i in range(11)}
    assert evaluate(data, "192.0.2.1") == "permerror"


def test_spf_macros() -> None:
    ctx = spf.Context(
        ip=ipaddress.ip_address("192.0.2.3"),
        sender="strong-bad@email.example.com",
        helo="mx.example.org",
        domain="email.example.com",
        dns=FakeDns({}),
    )
    # examples from RFC 7208 section 7.4
    assert spf.expand("%{s}", ctx, "email.example.com") == "strong-bad@email.example.com"
    assert spf.expand("%{d4}", ctx, "email.example.com") == "email.example.com"
    assert spf.expand("%{d2}", ctx, "email.example.com") == "example.com"
    assert spf.expand("%{dr}", ctx, "email.example.com") == "com.example.email"
    assert spf.expand("%{l-}", ctx, "email.example.com") == "strong.bad"
    assert spf.expand("%{ir}.%{v}._spf.%{d2}", ctx, "email.example.com") == (
        "3.2.0.192.in-addr._spf.example.com"
    )
    ctx6 = spf.Context(
        ip=ipaddress.ip_address("2001:db8::cb01"),
        sender="a@b.example",
        helo="h",
        domain="b.example",
        dns=FakeDns({}),
    )
    assert spf.expand("%{ir}.%{v}._spf.%{d2}", ctx6, "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_nameserver_parsing() -> None:
    assert parse_nameserver("198.51.100.2") == ("198.51.100.2", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[2001:db8::1]:53") == ("2001:db8::1", 53)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("ns1.example.com", "127.0.0.1:0", "[::1"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_bad_nameserver_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_mailops(["dns", "check", DOMAIN, "--nameserver", "ns1.example"], capsys)
    assert code == exitcodes.USAGE and "--nameserver" in err
    assert os.environ["MAILOPS_CONFIG"]  # the empty settings file, not the host's
