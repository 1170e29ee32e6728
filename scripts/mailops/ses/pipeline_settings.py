"""The transactional pipeline's settings file (/etc/mailops/pipeline.toml).

Its own file, not a table of mailops.toml: the Lambda function reads the same file from
its zip, where no mailops.toml exists.  Example (docs/ses_pipeline.md explains each key)::

    templates = "/etc/mailops/pipeline/templates"
    from = "Company <noreply@company.test>"
    transport = "ses"                  # the default transport
    ledger = "store"                   # or "dynamodb:TABLE"
    lease_seconds = 300

    [transports.ses]
    kind = "ses"
    region = "us-east-1"

    [transports.alpha]
    kind = "smtp"
    host = "mail.company.test"
    port = 587
    tls = "starttls"
    login = "alpha"
    password_file = "/etc/mailops/pipeline/alpha.password"

    [[routes]]                         # first match wins; no match: the default
    tenant = "alpha"                   # and/or template = "welcome"
    transport = "alpha"
    from = "Alpha <hello@alpha.test>"

A relative ``templates`` or ``password_file`` is read from the settings file's folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/mailops/pipeline.toml")
KINDS = ("ses", "smtp")
TLS_MODES = ("starttls", "tls", "none")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SettingsError(ValueError):
    """The settings file is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class Transport:
    name: str
    kind: str  # ses | smtp
    region: str = ""
    endpoint_url: str = ""
    configuration_set: str = ""
    host: str = ""
    port: int = 587
    tls: str = "starttls"
    ca_file: str = ""
    login: str = ""
    password_file: str = ""
    password_env: str = ""
    timeout: float = 30.0


@dataclass(frozen=True)
class Route:
    transport: str
    tenant: str = ""
    template: str = ""
    sender: str = ""

    def matches(self, tenant: str, template: str) -> bool:
        return (not self.tenant or self.tenant == tenant) and (
            not self.template or self.template == template
        )


@dataclass(frozen=True)
class Settings:
    templates: Path
    sender: str
    transport: str
    ledger: str = "store"
    lease_seconds: int = 300
    transports: dict[str, Transport] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()

    def route(self, tenant: str, template: str) -> tuple[Transport, str]:
        """The transport and From for an event: the first route that matches, else the
        defaults."""
        for route in self.routes:
            if route.matches(tenant, template):
                return self.transports[route.transport], route.sender or self.sender
        return self.transports[self.transport], self.sender


def _str(raw: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise SettingsError(f"{where}{key}: expected a string, got {value!r}")
    return value


def _sender(value: str, where: str) -> str:
    address = parseaddr(value)[1]
    if value and ("@" not in address or "\n" in value or "\r" in value):
        raise SettingsError(f"{where}from: not an address: {value!r}")
    return value


def _transport(name: str, raw: Any, base: Path) -> Transport:
    where = f"transports.{name}."
    if not isinstance(raw, dict):
        raise SettingsError(f"transports.{name}: expected a table")
    known = set(Transport.__dataclass_fields__) - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"{where}{unknown[0]}: unknown key")
    kind = _str(raw, "kind", where)
    if kind not in KINDS:
        raise SettingsError(f"{where}kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    tls = _str(raw, "tls", where, "starttls")
    if tls not in TLS_MODES:
        raise SettingsError(f"{where}tls: expected one of {', '.join(TLS_MODES)}, got {tls!r}")
    port = raw.get("port", 587)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise SettingsError(f"{where}port: expected a port number, got {port!r}")
    timeout = raw.get("timeout", 30)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise SettingsError(f"{where}timeout: expected seconds > 0, got {timeout!r}")
    host = _str(raw, "host", where)
    if kind == "smtp" and not host:
        raise SettingsError(f"{where}host: an smtp transport needs a host")
    login = _str(raw, "login", where)
    password_file = _str(raw, "password_file", where)
    password_env = _str(raw, "password_env", where)
    if login and not (password_file or password_env):
        raise SettingsError(f"{where}login: needs password_file or password_env")
    if password_file and not Path(password_file).is_absolute():
        password_file = str(base / password_file)
    return Transport(
        name=name,
        kind=kind,
        region=_str(raw, "region", where),
        endpoint_url=_str(raw, "endpoint_url", where),
        configuration_set=_str(raw, "configuration_set", where),
        host=host,
        port=port,
        tls=tls,
        ca_file=_str(raw, "ca_file", where),
        login=login,
        password_file=password_file,
        password_env=password_env,
        timeout=float(timeout),
    )


def parse(raw: dict[str, Any], base: Path) -> Settings:
    """Settings from the parsed TOML; ``base`` resolves relative paths."""
    known = {"templates", "from", "transport", "ledger", "lease_seconds", "transports", "routes"}
    known.add("alarms")  # read by mailops.ses.alarm
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown key")
    templates = _str(raw, "templates", "")
    if not templates:
        raise SettingsError("templates: the template folder is required")
    tables = raw.get("transports", {})
    if not isinstance(tables, dict) or not tables:
        raise SettingsError("transports: at least one transport is required")
    transports = {}
    for name, table in tables.items():
        if not _NAME.match(name):
            raise SettingsError(f"transports.{name}: a name of letters, digits, - and _")
        transports[name] = _transport(name, table, base)
    default = _str(raw, "transport", "", next(iter(transports)))
    if default not in transports:
        raise SettingsError(f"transport: no transport named {default!r}")
    ledger = _str(raw, "ledger", "", "store")
    if ledger != "store" and not re.match(r"^dynamodb:[A-Za-z0-9_.-]{3,255}$", ledger):
        raise SettingsError(f"ledger: expected 'store' or 'dynamodb:TABLE', got {ledger!r}")
    lease = raw.get("lease_seconds", 300)
    if not isinstance(lease, int) or isinstance(lease, bool) or lease < 1:
        raise SettingsError(f"lease_seconds: expected seconds >= 1, got {lease!r}")
    routes_raw = raw.get("routes", [])
    if not isinstance(routes_raw, list):
        raise SettingsError("routes: expected an array of tables")
    routes = []
    for i, item in enumerate(routes_raw):
        where = f"routes[{i}]."
        if not isinstance(item, dict):
            raise SettingsError(f"routes[{i}]: expected a table")
        extra = sorted(set(item) - {"tenant", "template", "transport", "from"})
        if extra:
            raise SettingsError(f"{where}{extra[0]}: unknown key")
        name = _str(item, "transport", where)
        if name not in transports:
            raise SettingsError(f"{where}transport: no transport named {name!r}")
        routes.append(
            Route(
                transport=name,
                tenant=_str(item, "tenant", where),
                template=_str(item, "template", where),
                sender=_sender(_str(item, "from", where), where),
            )
        )
    sender = _sender(_str(raw, "from", ""), "")
    if not sender:
        raise SettingsError("from: the default From address is required")
    folder = Path(templates)
    return Settings(
        templates=folder if folder.is_absolute() else base / folder,
        sender=sender,
        transport=default,
        ledger=ledger,
        lease_seconds=lease,
        transports=transports,
        routes=tuple(routes),
    )


def load(path: str | Path | None = None) -> Settings:
    """Read and check the file (default /etc/mailops/pipeline.toml)."""
    file = Path(path) if path else DEFAULT_PATH
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{file}: {exc}") from None
    try:
        return parse(raw, file.resolve().parent)
    except SettingsError as exc:
        raise SettingsError(f"{file}: {exc}") from None
