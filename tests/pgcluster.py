"""A throwaway PostgreSQL cluster on 127.0.0.1 for the store tests.

Uses the Debian package's binaries (/usr/lib/postgresql/*/bin) when they are installed,
run as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as
root).  The data directory lives under /tmp and is removed when the cluster stops.
``shared()`` starts one cluster per test session (stopped at exit); ``Cluster.start()``
makes a private one, for tests that stop and restart the server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class Unavailable(Exception):
    """PostgreSQL cannot be started here; the message says why (a skip reason)."""


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise Unavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
            "Debian package postgresql)"
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, bindir: Path, datadir: Path, port: int, runas: list[str]) -> None:
        self.bindir = bindir
        self.datadir = datadir
        self.port = port
        self._runas = runas
        self.running = False

    @classmethod
    def start(cls) -> Cluster:
        bindir = _bindir()
        runas: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user") from None
            if shutil.which("runuser") is None:
                raise Unavailable("running as root and runuser(1) is missing")
            runas = ["runuser", "-u", "postgres", "--"]
        datadir = Path(tempfile.mkdtemp(prefix="mailops-pg-"))
        if owner is not None:
            os.chown(datadir, owner.pw_uid, owner.pw_gid)
        cluster = cls(bindir, datadir / "data", _free_port(), runas)
        try:
            cluster._run(
                "initdb",
                "-D",
                str(cluster.datadir),
                "-U",
                "mailops",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            cluster.resume()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            [*self._runas, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise Unavailable(f"{tool} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    def resume(self) -> None:
        """Start (or restart) the server on the same port and data."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.datadir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True

    def pause(self) -> None:
        """Stop the server, keep the data."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
            self.running = False

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # removing the directory is what matters now
            self.pause()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://mailops@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)


_SHARED: Cluster | None = None
_SHARED_ERROR: str | None = None


def shared() -> Cluster:
    """The session's cluster, started on first use; raises Unavailable when it cannot be."""
    global _SHARED, _SHARED_ERROR
    if _SHARED is not None:
        return _SHARED
    if _SHARED_ERROR is not None:
        raise Unavailable(_SHARED_ERROR)
    try:
        _SHARED = Cluster.start()
    except Unavailable as exc:
        _SHARED_ERROR = str(exc)
        raise
    atexit.register(_SHARED.stop)
    return _SHARED


def backend_url(kind: str, tmp_path: Path) -> str:
    """A fresh store URL of the given kind ("sqlite" or "postgresql"); skips when absent."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/mailops.db"
    import pytest

    try:
        return shared().new_database()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL store tests skipped: {exc}")
