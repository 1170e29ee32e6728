"""The mailops_db role: PostgreSQL listens, lets the store's user into its database from
the listed client (the container's own address) with the password over TLS, and refuses
the same login without TLS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

QUERY = "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.fixture
def psql(host: Any) -> Any:
    password = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "mailops_db_password")
    secret = password.read_text().split()[0]

    address = host.check_output("hostname -I").split()[0]

    def run(sslmode: str) -> Any:
        target = f"host={address} dbname=mailops user=mailops sslmode={sslmode}"
        return host.run("PGPASSWORD=%s PGCONNECT_TIMEOUT=10 psql -Atc %s %s", secret, QUERY, target)

    return run


def test_postgresql_listens(host: Any) -> None:
    assert host.process.filter(user="postgres", comm="postgres"), "PostgreSQL is not running"
    assert host.socket("tcp://0.0.0.0:5432").is_listening


def test_settings_files(host: Any) -> None:
    conf = host.check_output("ls /etc/postgresql/*/main/conf.d/mailops.conf")
    f = host.file(conf)
    assert (f.user, f.group, f.mode) == ("postgres", "postgres", 0o644)
    assert "password_encryption = scram-sha-256" in f.content_string
    hba = host.file(conf.replace("conf.d/mailops.conf", "pg_hba.conf")).content_string
    entries = [line.split() for line in hba.splitlines()]
    assert any(
        e[:3] == ["hostssl", "mailops", "mailops"] and e[-1] == "scram-sha-256" for e in entries
    ), hba


def test_store_user_logs_in_over_tls(psql: Any) -> None:
    result = psql("require")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "mailops|mailops|t"


def test_login_without_tls_is_refused(psql: Any) -> None:
    result = psql("disable")
    assert result.rc != 0 and "no pg_hba.conf entry" in result.stderr, result.stderr
