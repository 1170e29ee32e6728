"""One settings file for every tool, and the one reader that checks it.

The file is /etc/mailops/mailops.toml (written by the mailops role; the queue collector on
the monitor has /etc/mailops/queue-monitor.toml).  Its path comes from ``--config``, else
``$MAILOPS_CONFIG``, else the default.  A missing default file is an empty configuration
(tools then run on their documented defaults); a missing file that was asked for
explicitly, a directory, or a file that does not parse is an error that names the file.

:data:`SCHEMA` lists every table, every key, its type, range or choices and its default.
Each tool gets its settings through :func:`table`, and ``mailops config check`` runs the
same checks over every table, so a setting the check accepts is one every tool accepts,
and a refused one is refused with the same message, e.g.
``[report] top: expected an integer >= 1, got "lots"``.  A tool checks only the tables it
reads (a typo under ``[dns]`` must not stop the bounce pipe); the check refuses unknown
tables as well.  Command-line flags override the file and are checked by the same rules.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/mailops/mailops.toml")


class ConfigError(Exception):
    """The settings file is missing or malformed; each argument is one problem (one line)
    that says which file, table or key, and what was expected."""

    @property
    def problems(self) -> tuple[str, ...]:
        lines = (str(a).replace("\r", "\\r").replace("\n", "\\n") for a in self.args)
        return tuple(lines) or ("bad settings",)

    def __str__(self) -> str:
        return "; ".join(self.problems)


def config_path(explicit: str | None = None) -> tuple[Path, bool]:
    """Return the path to read and whether the caller asked for it explicitly."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get("MAILOPS_CONFIG")
    if env:
        return Path(env), True
    return DEFAULT_PATH, False


def load(explicit: str | None = None) -> dict[str, Any]:
    """The parsed file, unchecked: tools pass it to :func:`table`."""
    path, required = config_path(explicit)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: settings file not found") from None
        return {}
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a settings file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return data


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Setting:
    """One key: its default (whose type is the key's type), and what else it must be.

    ``low``/``high`` bound numbers; ``choices`` lists the strings allowed; ``nonempty``
    refuses "" and []; ``one_line`` refuses line breaks; ``item`` tests each item of a
    list (default: a string); ``valid`` tests a scalar further.  ``expect`` says in words
    what is accepted when the derived wording would not be enough.
    """

    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    one_line: bool = False
    item: Callable[[Any], bool] | None = None
    valid: Callable[[Any], bool] | None = None
    expect: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    def expected(self) -> str:
        if self.expect:
            return self.expect
        kind = self.kind
        if kind is bool:
            return "true or false"
        if kind in (int, float):
            noun = "an integer" if kind is int else "a number"
            if self.low is not None and self.high is not None:
                return f"{noun} from {_num(self.low)} to {_num(self.high)}"
            if self.low is not None:
                return f"{noun} >= {_num(self.low)}"
            return noun
        if self.choices:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        if kind is list:
            return "a non-empty list of strings" if self.nonempty else "a list of strings"
        if self.one_line:
            return "one non-empty line of text"
        return "a non-empty string" if self.nonempty else "a string"

    def accepts(self, value: Any) -> bool:
        kind = self.kind
        if kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if kind is float:
            if not isinstance(value, int | float) or not math.isfinite(value):
                return False
        elif not isinstance(value, kind):
            return False
        if kind in (int, float):
            if self.low is not None and value < self.low:
                return False
            if self.high is not None and value > self.high:
                return False
        if kind is list:
            test = self.item or _is_str
            if not all(test(v) for v in value):
                return False
        if self.choices and value not in self.choices:
            return False
        if self.nonempty and not value:
            return False
        if self.one_line and (not value.strip() or any(c in value for c in "\r\n\0")):
            return False
        return self.valid is None or bool(self.valid(value))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def show(value: Any) -> str:
    """A value as the file wrote it (TOML and JSON agree for these), cut to one short line."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Tests of single values.  They call the tools' own parsers (imported only when a value
# is there to test), so the check and the tool cannot disagree about what parses.


def _local_part(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 64
        and not any(c in value for c in "@+ \t\r\n<>")
    )


def _network(value: Any) -> bool:
    from mailops.saslblock.blocks import parse_network

    if not isinstance(value, str):
        return False
    try:
        parse_network(value)
    except ValueError:
        return False
    return True


def _mynetworks_entry(value: Any) -> bool:
    # Postfix's own syntax: a lookup table (type:/path or /path) is skipped, with a
    # warning, by the SASL blocker; anything else must be a network.
    if isinstance(value, str) and (":/" in value or value.startswith("/")):
        return True
    return _network(value)


def _ip_address(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _ip_network(value: Any) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        return False
    return True


def _nameserver(value: str) -> bool:
    if not value:
        return True
    from mailops.dns.resolve import parse_nameserver

    try:
        parse_nameserver(value)
    except ValueError:
        return False
    return True


def _queue_host(value: Any) -> bool:
    from mailops.queues.collect import HostSpec, HostSpecError

    try:
        HostSpec.from_config(value)
    except HostSpecError:
        return False
    return True


def _report_day(value: str) -> bool:
    from mailops.report.build import parse_day

    try:
        parse_day(value)
    except ValueError:
        return False
    return True


def _address_or_empty(value: str) -> bool:
    if not value:
        return True
    from email.utils import parseaddr

    from mailops.store.text import normalize_address, valid_address

    return valid_address(normalize_address(parseaddr(value)[1]))


# The Postfix lookup table types the tools can index (the keys of
# mailops.saslblock.accessmap.DB_SUFFIX and mailops.suppression.mapfile.MAP_SUFFIX).
INDEXED_MAP_TYPES = ("hash", "btree", "lmdb", "cdb")
MESSAGE_BYTES = Setting(1024 * 1024, low=1024)

SCHEMA: dict[str, dict[str, Setting]] = {
    # Shared by every tool on the host.
    "mailops": {
        "ops_address": Setting("", valid=_address_or_empty, expect='an address or ""'),
    },
    # mailops.store: the database of bounces, complaints, unsubscribes, suppressions.
    "store": {
        "url": Setting("sqlite:////var/lib/mailops/mailops.db", nonempty=True),
        "tenant": Setting(""),
        "timeout": Setting(30.0, low=0),
    },
    # mailops.store (the policy) and mailops.suppression (the Postfix map).
    "suppression": {
        "soft_threshold": Setting(3, low=0),
        "soft_window_days": Setting(7.0, low=0),
        "expire_days": Setting(30.0, low=0),
        "map": Setting("/etc/postfix/suppressed", nonempty=True),
        "map_type": Setting("hash", choices=(*INDEXED_MAP_TYPES, "texthash")),
        "postmap": Setting("postmap", nonempty=True),
    },
    # mailops bounces ingest and mailops bounces parse.
    "bounces": {
        "max_message_bytes": Setting(10 * 1024 * 1024, low=1024),
        "unrecognized_dir": Setting(""),
        "verp_prefixes": Setting(
            ["bounces"],
            nonempty=True,
            item=_local_part,
            expect="a non-empty list of local parts (no '@' or '+')",
        ),
    },
    "unsubscribe": {
        "max_message_bytes": MESSAGE_BYTES,
        # One-click unsubscribe (mailops.unsub, docs/unsubscribe.md): the token keys
        # (one a line, the first signs), how long a token is honoured, the link's base
        # and the mailto domain, what marks transactional mail, the milter's socket.
        "key_file": Setting("/etc/mailops/unsubscribe.keys", nonempty=True),
        "max_age_days": Setting(180.0, low=1),
        "url_base": Setting(""),
        "mailto_domain": Setting(""),
        "transactional_header": Setting("X-Mailops-Transactional", one_line=True),
        "transactional_logins": Setting([]),
        "milter_socket": Setting("/var/spool/postfix/mailops-unsub/milter.sock", nonempty=True),
    },
    "autoreply": {
        "text": Setting(
            "This address does not receive mail, so your message has not been read.\n"
            "This is an automatic reply; it is sent at most once a week.\n"
        ),
        "text_file": Setting(""),
        "from": Setting("", valid=_address_or_empty, expect='an address or ""'),
        "subject_prefix": Setting("Auto: "),
        "period_days": Setting(7.0, low=0),
        "sendmail": Setting("/usr/sbin/sendmail", nonempty=True),
        "timeout": Setting(60.0, low=0),
        "max_message_bytes": MESSAGE_BYTES,
    },
    "saslblock": {
        "log": Setting("/var/log/mail.log", nonempty=True),
        "map": Setting("/etc/postfix/access_dynamic", nonempty=True),
        "state": Setting("/var/lib/mailops/saslblock.json", nonempty=True),
        "threshold": Setting(5, low=1),
        "window": Setting(600, low=0),
        "expire": Setting(86400, low=1),
        "allow": Setting(
            [],
            item=_network,
            expect='a list of networks or addresses ("192.0.2.0/24", "[2001:db8::]/32")',
        ),
        "mynetworks": Setting(
            [],
            item=_mynetworks_entry,
            expect="a list of networks or lookup tables (Postfix's mynetworks)",
        ),
        "postmap": Setting(True),
        "postmap_command": Setting("postmap", nonempty=True),
        "map_type": Setting("hash", choices=INDEXED_MAP_TYPES),
        "reject_text": Setting(
            "Too many failed authentication attempts from your address", one_line=True
        ),
    },
    "report": {
        "logs": Setting(["/var/log/mail.log"]),
        "rotated": Setting(False),
        "day": Setting(
            "yesterday", valid=_report_day, expect="today, yesterday, all or YYYY-MM-DD"
        ),
        "format": Setting("text", choices=("text", "json", "html", "mail")),
        "mail_to": Setting([]),
        "mail_from": Setting(""),
        "subject": Setting(""),
        "sendmail": Setting("/usr/sbin/sendmail", nonempty=True),
        "year": Setting(
            0,
            valid=lambda v: v == 0 or 1970 <= v <= 9999,
            expect="0 (this year) or a year from 1970 to 9999",
        ),
        "top": Setting(20, low=1),
        "syslog_name": Setting("postfix", nonempty=True),
        "cap": Setting(5000, low=1),
        "jobs": Setting(0, low=0, expect="an integer >= 0 (0: one per core)"),
    },
    "queues": {
        "queue_directory": Setting(""),
        "method": Setting("auto", choices=("auto", "files", "postqueue")),
        "top": Setting(10, low=0),
        "sample": Setting(1000, low=0),
        "postqueue": Setting("postqueue", nonempty=True),
        "postconf": Setting("postconf", nonempty=True),
        "hosts": Setting(
            [],
            item=_queue_host,
            expect='a list of hosts ("name", "name=address[:port]" or {name, address, port})',
        ),
        "inventory_json": Setting(""),
        "group": Setting(""),
        "user": Setting("mailops-queues", nonempty=True),
        "key": Setting("~/.ssh/id_ed25519", nonempty=True),
        "known_hosts": Setting("~/.ssh/known_hosts", nonempty=True),
        "port": Setting(22, low=1, high=65535),
        "timeout": Setting(10.0, low=0.001, expect="a number of seconds > 0"),
        "parallel": Setting(16, low=1),
        "command": Setting("mailops queues local --json", nonempty=True),
        "format": Setting("json", choices=("json", "prometheus")),
        "output": Setting(""),
        "prometheus_output": Setting(""),
    },
    # mailops tenants sync (bulk nodes): who is paused and the suppression snapshot,
    # for the policy service; the queue commands it holds and releases mail with.
    "tenants_sync": {
        "state": Setting("/var/lib/mailops/tenants.json", nonempty=True),
        "snapshot": Setting("/var/lib/mailops/tenants-suppression.db", nonempty=True),
        "every": Setting(
            0.0,
            low=0,
            high=60,
            valid=lambda v: v == 0 or v >= 1,
            expect="0 (once a run) or a number of seconds from 1 to 60",
        ),
        "hold": Setting(True),
        "postqueue": Setting("postqueue", nonempty=True),
        "postsuper": Setting("postsuper", nonempty=True),
    },
    # mailops tenants policy: where its warnings go (stderr is smtpd's socket).  A full
    # path: spawn(8) gives the service no PATH.
    "tenants_policy": {
        "postlog": Setting("/usr/sbin/postlog"),
        "syslog_name": Setting("postfix/mailops-tenants", one_line=True),
    },
    "dns": {
        "inventory": Setting(""),
        "playbook_dir": Setting(""),
        "dkim_keys": Setting(""),
        "ansible_inventory": Setting(""),
        "format": Setting("zone", choices=("zone", "json", "route53")),
        "nameserver": Setting("", valid=_nameserver, expect='"IP", "IP:PORT", "[IPv6]:PORT" or ""'),
        "sending_ips": Setting([], item=_ip_address, expect="a list of IP addresses"),
        "dnsbls": Setting([]),
        "mta_sts_url_base": Setting(""),
        "cafile": Setting(""),
        "timeout": Setting(5.0, low=0.001, high=300, expect="a number of seconds, > 0 and <= 300"),
        "smtp_timeout": Setting(
            5.0, low=0.001, high=300, expect="a number of seconds, > 0 and <= 300"
        ),
        "smtp_port": Setting(25, low=1, high=65535),
    },
    # mailops dmarc / tlsrpt: the pipes on dmarc@ and tlsrpt@, their figures in the daily
    # report and on /metrics (docs/dmarc.md).
    "reports": {
        "max_message_bytes": Setting(10 * 1024 * 1024, low=1024),
        # one input's documents together, once decompressed (compression bombs stop here)
        "max_report_bytes": Setting(64 * 1024 * 1024, low=1024),
        # the cluster's own sending addresses (mail_mx and mail_bulk hosts, pool
        # addresses): a DMARC source outside them is named in the figures
        "planned_sources": Setting(
            [], item=_ip_network, expect="a list of IP addresses or networks (CIDR)"
        ),
        "in_report": Setting(False),  # the daily report gets the DMARC/TLS section
        "top": Setting(20, low=1),  # outside sources listed per domain
    },
}


def _cap_at_least_top(values: Mapping[str, Any]) -> str | None:
    if values["cap"] < values["top"]:
        return f"cap: expected an integer >= top ({values['top']}), got {show(values['cap'])}"
    return None


# Checks that involve several keys of one table: each returns a problem or None.
TABLE_CHECKS: dict[str, tuple[Callable[[Mapping[str, Any]], str | None], ...]] = {
    "report": (_cap_at_least_top,),
}


_CLASS_NAME = re.compile(r"^[a-z][a-z0-9]{0,20}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


def transport_class_problems(raw: Any) -> list[str]:
    """``[transport_classes]``: provider class -> the recipient domains it covers (the
    bulk nodes' ``pool_<pool>_<n>_<class>`` transports); a domain in one class only."""
    if not isinstance(raw, Mapping):
        return [f"[transport_classes]: expected a table, got {show(raw)}"]
    found: list[str] = []
    owner: dict[str, str] = {}
    for name, domains in raw.items():
        if not _CLASS_NAME.match(name):
            found.append(
                f"[transport_classes] {name!r}: a class name is 1-21 lower-case letters and digits"
            )
            continue
        if not isinstance(domains, list) or not all(
            isinstance(d, str) and _DOMAIN.match(d.lower()) for d in domains
        ):
            found.append(
                f"[transport_classes] {name}: expected a list of domain names, got {show(domains)}"
            )
            continue
        for domain in domains:
            other = owner.setdefault(domain.lower(), name)
            if other != name:
                found.append(f"[transport_classes] {name}: {domain} is in class {other} already")
    return found


def _tenants_problems(raw: Any) -> list[str]:
    from mailops.tenants.model import load_tenants

    try:
        load_tenants({"tenants": raw})
    except ConfigError as exc:
        return list(exc.problems)
    return []


# Tables whose keys are names the inventory chooses (tenants, provider classes): each
# has its own check, run by ``config check`` and by the tools that read the table.
def _warmup_problems(raw: Any) -> list[str]:
    from mailops.warmup.schedule import problems as warmup_problems  # it imports this module

    return warmup_problems(raw)


DYNAMIC_TABLES: dict[str, Callable[[Any], list[str]]] = {
    "tenants": _tenants_problems,
    "transport_classes": transport_class_problems,
    "warmup": _warmup_problems,
}


def defaults(name: str) -> dict[str, Any]:
    """Table ``name`` as it is when the file says nothing (fresh lists every call)."""
    return {key: _copy(s.default) for key, s in SCHEMA[name].items()}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def table_problems(
    data: Mapping[str, Any],
    name: str,
    overrides: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Table ``name``: its defaults overlaid with the file's values, then with
    ``overrides`` (flags; None means not given), and every problem found, one line each.
    A flag is named ``--key-with-dashes`` unless ``flag_names`` says otherwise."""
    schema = SCHEMA[name]
    values = defaults(name)
    problems: list[str] = []
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        return values, [f"[{name}]: expected a table, got {show(raw)}"]
    for key, value in raw.items():
        setting = schema.get(key)
        if setting is None:
            problems.append(
                f"[{name}] unknown key {key!r}; expected one of: {', '.join(sorted(schema))}"
            )
        elif not setting.accepts(value):
            problems.append(f"[{name}] {key}: expected {setting.expected()}, got {show(value)}")
        else:
            values[key] = float(value) if setting.kind is float else _copy(value)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        setting = schema[key]
        if not setting.accepts(value):
            flag = (flag_names or {}).get(key) or _flag(key)
            problems.append(f"{flag}: expected {setting.expected()}, got {show(value)}")
        else:
            values[key] = float(value) if setting.kind is float else _copy(value)
    if not problems:
        for check in TABLE_CHECKS.get(name, ()):
            problem = check(values)
            if problem:
                problems.append(f"[{name}] {problem}")
    return values, problems


def table(
    data: Mapping[str, Any],
    name: str,
    overrides: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Table ``name``, checked; raises ConfigError listing every problem of the table."""
    values, problems = table_problems(data, name, overrides, flag_names)
    if problems:
        raise ConfigError(*problems)
    return values


def problems(data: Mapping[str, Any]) -> list[str]:
    """Every problem of a whole file: unknown tables, and each table's own."""
    found: list[str] = []
    for name in data:
        if name not in SCHEMA and name not in DYNAMIC_TABLES:
            found.append(
                f"[{name}]: unknown table; expected one of: "
                + ", ".join(f"[{t}]" for t in sorted([*SCHEMA, *DYNAMIC_TABLES]))
            )
    for name in SCHEMA:
        if name in data:
            found.extend(table_problems(data, name)[1])
    for name, check in DYNAMIC_TABLES.items():
        if name in data:
            found.extend(check(data[name]))
    return found


# --------------------------------------------------------------------------- mailops config


def _check(args: Any) -> int:
    """`mailops config check|show`: check every table, say what is wrong or print it."""
    data = load(args.config)
    found = problems(data)
    if found:
        raise ConfigError(*found)
    if args.action == "show":
        for name in sorted(data):
            print(f"[{name}]")
            for key, value in sorted(data[name].items()):
                shown = "********" if key in {"url", "password"} and "@" in str(value) else value
                print(f"{key} = {shown!r}")
    else:
        path, _ = config_path(args.config)
        print(f"{path}: ok ({len(data)} tables)")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check or show the settings file")
    parser.add_argument("action", choices=["check", "show"])
    parser.set_defaults(func=_check)
