"""The settings file: one checked reader, the same answer from config check and the tools.

The table of bad settings is the heart of it: for each one, ``mailops config check``
refuses the file and the tool that reads that table refuses it too, with the identical
line, so the role's validate step never installs a file that breaks the next cron run.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2.nativetypes import NativeEnvironment
from plugins.filter.postfix import postfix_maincf
from plugins.filter.tenants import mail_pool_transports
from plugins.filter.toml import to_toml

from mailops import cli, config, exitcodes
from mailops.tenants.model import load_tenants
from mailops.warmup import schedule

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mailops: configuration error: "


def check(conf: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main(["--config", str(conf), "config", "check"])
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------- reading


def test_missing_default_file_is_empty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MAILOPS_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert config.load() == {}
    assert config.table(config.load(), "saslblock") == config.defaults("saslblock")


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"absent\.toml: settings file not found"):
        config.load(str(tmp_path / "absent.toml"))


def test_env_variable_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[saslblock]\nthreshold = 7\n")
    monkeypatch.setenv("MAILOPS_CONFIG", str(path))
    assert config.table(config.load(), "saslblock")["threshold"] == 7


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[bounces\n", r"bad\.toml: not valid TOML: .*line 1"),
        (b"[report]\ntop = \xff\n", r"bad\.toml: not valid TOML"),
    ],
)
def test_malformed_toml_names_file(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(config.ConfigError, match=says):
        config.load(str(path))


def test_defaults_are_fresh_copies() -> None:
    first = config.defaults("saslblock")
    first["allow"].append("192.0.2.1")
    assert config.defaults("saslblock")["allow"] == []


def test_flags_are_checked_by_the_same_rules() -> None:
    data = {"report": {"top": 5}}
    assert config.table(data, "report", {"top": None})["top"] == 5
    assert config.table(data, "report", {"top": 7})["top"] == 7
    with pytest.raises(config.ConfigError) as exc:
        config.table(data, "report", {"top": 0})
    assert exc.value.problems == ("--top: expected an integer >= 1, got 0",)
    with pytest.raises(config.ConfigError) as exc:
        config.table({}, "bounces", {"verp_prefixes": ["a@b"]}, {"verp_prefixes": "--verp"})
    assert str(exc.value).startswith("--verp: expected a non-empty list of local parts")


def test_every_problem_is_one_line() -> None:
    problems = config.problems({"report": {"top": "a\nb", "x\ny": 1}, "z\nz": {}})
    assert len(problems) == 3
    assert all("\n" not in p for p in config.ConfigError(*problems).problems)


def test_schema_agrees_with_the_tools_own_constants() -> None:
    """The schema copies a few literals from modules config must not import at start-up."""
    from mailops.bounceparse import DEFAULT_VERP_PREFIXES
    from mailops.queues.collect import DEFAULT_COMMAND
    from mailops.saslblock.accessmap import DB_SUFFIX
    from mailops.store.db import DEFAULT_URL
    from mailops.suppression.mapfile import MAP_SUFFIX

    schema = config.SCHEMA
    assert schema["saslblock"]["map_type"].choices == tuple(DB_SUFFIX)
    assert schema["suppression"]["map_type"].choices == tuple(MAP_SUFFIX)
    assert schema["store"]["url"].default == DEFAULT_URL
    assert schema["queues"]["command"].default == DEFAULT_COMMAND
    assert tuple(schema["bounces"]["verp_prefixes"].default) == DEFAULT_VERP_PREFIXES


# --------------------------------------------------------------------------- one line, no traceback


def _run_cli(*argv: str, pipe: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAILOPS_PIPE", "MAILOPS_CONFIG")}
    env["PYTHONPATH"] = str(ROOT / "scripts")
    if pipe:
        env["MAILOPS_PIPE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "mailops", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("what", ["directory", "missing", "syntax"])
def test_an_unusable_config_is_one_line_without_traceback(tmp_path: Path, what: str) -> None:
    target = {
        "directory": tmp_path,
        "missing": tmp_path / "absent.toml",
        "syntax": tmp_path / "broken.toml",
    }[what]
    (tmp_path / "broken.toml").write_text("[report\n")
    for argv in (["config", "check"], ["report", "--log", str(tmp_path / "none.log")]):
        proc = _run_cli("--config", str(target), *argv)
        assert proc.returncode == exitcodes.CONFIG, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(PREFIX + str(target) + ": "), lines
    if what == "directory":
        assert lines[0].endswith("is a directory, not a settings file")


def test_under_a_pipe_an_unusable_config_still_defers(tmp_path: Path) -> None:
    proc = _run_cli("--config", str(tmp_path), "config", "check", pipe=True)
    assert proc.returncode == exitcodes.TEMPFAIL
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


# ------------------------------------------------------------------- the table of bad settings

# Each row: the file's bad part, the command line of the tool that reads that table (None:
# no tool reads it, config check alone must refuse it), and the one line expected.  The
# command lines point every path into the test's directory, so that code which wrongly
# accepted a setting would still touch nothing outside it.  {tmp} is that directory.
SASL = ["saslblock", "--log", "{tmp}/none.log", "--map", "{tmp}/map", "--state", "{tmp}/s.json",
        "--no-postmap"]  # fmt: skip
REPORT = ["report", "--log", "{tmp}/none.log", "--day", "all"]
INGEST = ["bounces", "ingest", "--envelope-to", "bounces@example.com"]
AUTOREPLY = ["autoreply", "--sender", "a@example.com", "--recipient", "donotreply@example.com"]
AUTOREPLY_SAFE = '\nsendmail = "{tmp}/no-sendmail"\n'
EXPECT_REPORT_KEYS = (
    "cap, day, format, jobs, logs, mail_from, mail_to, rotated, sendmail, subject, "
    "syslog_name, top, year"
)

BAD: list[tuple[str, list[str] | None, str]] = [
    ('[report]\ntop = "lots"', REPORT, '[report] top: expected an integer >= 1, got "lots"'),
    (
        '[report]\nformat = "pdf"',
        REPORT,
        '[report] format: expected one of "text", "json", "html", "mail", got "pdf"',
    ),
    (
        "[report]\ntop = 30\ncap = 10",
        REPORT,
        "[report] cap: expected an integer >= top (30), got 10",
    ),
    (
        '[report]\nday = "someday"',
        REPORT,
        '[report] day: expected today, yesterday, all or YYYY-MM-DD, got "someday"',
    ),
    (
        "[report]\njobs = -1",
        REPORT,
        "[report] jobs: expected an integer >= 0 (0: one per core), got -1",
    ),
    (
        "[report]\nyear = 24",
        REPORT,
        "[report] year: expected 0 (this year) or a year from 1970 to 9999, got 24",
    ),
    (
        "[report]\ntopp = 5",
        REPORT,
        f"[report] unknown key 'topp'; expected one of: {EXPECT_REPORT_KEYS}",
    ),
    ("[report]\nrotated = 1", REPORT, "[report] rotated: expected true or false, got 1"),
    (
        '[saslblock]\nthreshold = "five"',
        SASL,
        '[saslblock] threshold: expected an integer >= 1, got "five"',
    ),
    ("[saslblock]\nexpire = 0", SASL, "[saslblock] expire: expected an integer >= 1, got 0"),
    (
        '[saslblock]\nmap_type = "dbm"',
        SASL,
        '[saslblock] map_type: expected one of "hash", "btree", "lmdb", "cdb", got "dbm"',
    ),
    (
        '[saslblock]\nreject_text = "go\\naway"',
        SASL,
        '[saslblock] reject_text: expected one non-empty line of text, got "go\\naway"',
    ),
    (
        '[saslblock]\nallow = ["192.0.2.0/24", "office"]',
        SASL,
        '[saslblock] allow: expected a list of networks or addresses ("192.0.2.0/24", '
        '"[2001:db8::]/32"), got ["192.0.2.0/24", "office"]',
    ),
    (
        '[queues]\nmethod = "guess"',
        ["queues", "local", "--method", "files", "--queue-directory", "{tmp}"],
        '[queues] method: expected one of "auto", "files", "postqueue", got "guess"',
    ),
    (
        "[queues]\nport = 70000",
        ["queues", "collect"],
        "[queues] port: expected an integer from 1 to 65535, got 70000",
    ),
    (
        "[queues]\nparallel = 0",
        ["queues", "collect"],
        "[queues] parallel: expected an integer >= 1, got 0",
    ),
    (
        "[queues]\nhosts = [3]",
        ["queues", "collect"],
        '[queues] hosts: expected a list of hosts ("name", "name=address[:port]" or '
        "{name, address, port}), got [3]",
    ),
    (
        '[dns]\nformat = "bind"',
        ["dns", "plan"],
        '[dns] format: expected one of "zone", "json", "route53", got "bind"',
    ),
    (
        '[dns]\nsending_ips = ["mail1"]',
        ["dns", "plan"],
        '[dns] sending_ips: expected a list of IP addresses, got ["mail1"]',
    ),
    (
        "[dns]\ntimeout = 0",
        ["dns", "plan"],
        "[dns] timeout: expected a number of seconds, > 0 and <= 300, got 0",
    ),
    (
        "[bounces]\nverp_prefixes = []",
        ["bounces", "parse", "{tmp}/none.eml"],
        "[bounces] verp_prefixes: expected a non-empty list of local parts (no '@' or '+'), got []",
    ),
    (
        "[bounces]\nmax_message_bytes = 10",
        INGEST,
        "[bounces] max_message_bytes: expected an integer >= 1024, got 10",
    ),
    (
        "[bounces]\nmax_bytes = 5",
        INGEST,
        "[bounces] unknown key 'max_bytes'; expected one of: max_message_bytes, "
        "unrecognized_dir, verp_prefixes",
    ),
    (
        '[suppression]\nmap_type = "dbm"',
        INGEST,
        '[suppression] map_type: expected one of "hash", "btree", "lmdb", "cdb", "texthash", '
        'got "dbm"',
    ),
    (
        "[suppression]\nsoft_threshold = -1",
        ["suppression", "list"],
        "[suppression] soft_threshold: expected an integer >= 0, got -1",
    ),
    (
        '[unsubscribe]\nmax_message_bytes = "big"',
        ["unsubscribe", "--sender", "a@example.com"],
        '[unsubscribe] max_message_bytes: expected an integer >= 1024, got "big"',
    ),
    (
        "[autoreply]\nperiod_days = -1" + AUTOREPLY_SAFE,
        AUTOREPLY,
        "[autoreply] period_days: expected a number >= 0, got -1",
    ),
    (
        '[autoreply]\nfrom = "not an address"' + AUTOREPLY_SAFE,
        AUTOREPLY,
        '[autoreply] from: expected an address or "", got "not an address"',
    ),
    ('[store]\nurl = ""', ["store", "status"], '[store] url: expected a non-empty string, got ""'),
    (
        '[store]\ntimeout = "slow"',
        ["store", "status"],
        '[store] timeout: expected a number >= 0, got "slow"',
    ),
    ("store = 3", ["store", "status"], "[store]: expected a table, got 3"),
    ("[mailops]\nops_address = 3", None, '[mailops] ops_address: expected an address or "", got 3'),
    (
        "[reprot]\ntop = 5",
        None,
        "[reprot]: unknown table; expected one of: [autoreply], [bounces], [dns], [mailops], "
        "[queues], [report], [reports], [saslblock], [store], [suppression], [tenants], "
        "[tenants_policy], [tenants_sync], [transport_classes], [unsubscribe], [warmup]",
    ),
    (
        "[tenants_sync]\nevery = 0.5",
        ["tenants", "sync"],
        "[tenants_sync] every: expected 0 (once a run) or a number of seconds from 1 to 60, "
        "got 0.5",
    ),
    (
        '[tenants.alpha]\ndomains = ["alpha.test"]\ncomplaints = "none"',
        ["tenants", "sync"],
        "[tenants.alpha] complaints: expected one of global, tenant, got 'none'",
    ),
    (
        '[tenants.alpha]\ndomains = ["alpha.test"]\n[tenants.beta]\ndomains = ["alpha.test"]',
        ["tenants", "sync"],
        "[tenants.beta] domains: alpha.test is tenant alpha's already",
    ),
    (
        '[transport_classes]\ngmail = "gmail.com"',
        ["tenants", "sync"],
        '[transport_classes] gmail: expected a list of domain names, got "gmail.com"',
    ),
    (
        '[transport_classes]\ngmail = ["gmail.com"]\nother = ["Gmail.com"]',
        ["tenants", "sync"],
        "[transport_classes] other: Gmail.com is in class gmail already",
    ),
    (
        '[tenants_policy]\nsyslog_name = ""',
        None,
        '[tenants_policy] syslog_name: expected one non-empty line of text, got ""',
    ),
]


def _write(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "mailops.toml"
    text = body.replace("{tmp}", str(tmp_path))
    if "[store]" not in body and "store =" not in body:
        text += f'\n[store]\nurl = "sqlite:///{tmp_path}/store.db"\n'
    conf.write_text(text)
    return conf


@pytest.mark.parametrize(("body", "tool", "message"), BAD, ids=[row[2][:40] for row in BAD])
def test_a_bad_setting_is_refused_by_the_check_and_by_the_tool_alike(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    tool: list[str] | None,
    message: str,
) -> None:
    monkeypatch.delenv("MAILOPS_PIPE", raising=False)
    conf = _write(tmp_path, body)
    rc, err = check(conf, capsys)
    assert (rc, err) == (exitcodes.CONFIG, PREFIX + message + "\n")
    if tool is None:
        return
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in tool]
    rc = cli.main(["--config", str(conf), *argv])
    err = capsys.readouterr().err
    # The pipes log through their own prefix ("message kept queued") and exit 75; the
    # others through the command's; the problem itself is the same line either way.
    assert rc in (exitcodes.CONFIG, exitcodes.TEMPFAIL), err
    assert any(line.endswith(message) for line in err.splitlines()), err


def test_every_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write(tmp_path, '[report]\ntop = "lots"\n\n[saslblock]\nthreshold = 0\n')
    rc, err = check(conf, capsys)
    assert rc == exitcodes.CONFIG
    assert err.splitlines() == [  # in the schema's order of tables
        PREFIX + "[saslblock] threshold: expected an integer >= 1, got 0",
        PREFIX + '[report] top: expected an integer >= 1, got "lots"',
    ]


def test_a_tool_checks_only_the_tables_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo under [dns] must not stop the bounce pipe: config check alone refuses it."""
    conf = _write(tmp_path, '[dns]\nformat = "bind"\n')
    assert check(conf, capsys)[0] == exitcodes.CONFIG
    data = config.load(str(conf))
    assert config.table(data, "bounces")["max_message_bytes"] == 10 * 1024 * 1024


def test_a_good_file_passes_and_says_how_many_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write(
        tmp_path,
        '[report]\ntop = 5\nday = "2026-11-30"\n\n[saslblock]\nthreshold = 3\n'
        'mynetworks = ["127.0.0.0/8", "[::1]/128", "hash:/etc/postfix/network_table"]\n\n'
        '[queues]\nhosts = ["mail1=198.51.100.11", {name = "mx1", port = 2222}]\n\n'
        "[suppression]\nexpire_days = 0\n",
    )
    rc = cli.main(["--config", str(conf), "config", "check"])
    assert rc == 0
    assert capsys.readouterr().out == f"{conf}: ok (5 tables)\n"  # and [store]


# --------------------------------------------------------------------------- what the roles write


def _render_all(value: Any, render: Callable[[str], Any]) -> Any:
    if isinstance(value, str):
        return render(value) if "{{" in value else value
    if isinstance(value, list):
        return [_render_all(v, render) for v in value]
    if isinstance(value, dict):
        return {k: _render_all(v, render) for k, v in value.items()}
    return value


def _role_context(host: dict[str, Any] | None = None) -> dict[str, Any]:
    """The variables the two templates use, from the roles' own defaults and vars and the
    lab inventory, resolved the way Ansible would (each one rendered until it is plain).
    ``host``: variables of one host (its groups' and its own) laid over them."""
    context: dict[str, Any] = {"playbook_dir": str(ROOT / "playbooks"), "ansible_managed": "x"}
    for path in (
        "inventories/lab/group_vars/all/main.yml",
        "roles/postfix/defaults/main.yml",
        "roles/mailops/defaults/main.yml",
        "roles/mailops/vars/main.yml",
        "roles/queue_monitor/defaults/main.yml",
    ):
        context.update(yaml.safe_load((ROOT / path).read_text()) or {})
    context["queue_monitor__nodes"] = [
        {"name": "mx1", "address": "198.51.100.10"},
        {"name": "mail1", "address": "198.51.100.11"},
    ]
    context.update(host or {})
    env = NativeEnvironment()
    env.filters["to_toml"] = to_toml
    env.filters["zip"] = lambda a, b: list(zip(a, b, strict=False))
    env.filters["to_json"] = json.dumps
    env.filters["from_yaml"] = yaml.safe_load
    env.filters["items2dict"] = lambda items, key_name, value_name: {
        i[key_name]: i[value_name] for i in items
    }
    env.filters["mail_pool_transports"] = mail_pool_transports
    env.filters["combine"] = lambda first, *more: {
        k: v for d in (first, *more) for k, v in d.items()
    }
    wanted = [k for k in context if k.startswith(("mailops__", "postfix__", "mail_domain"))]
    for _ in range(6):  # variables refer to variables: a few rounds make them plain
        for key in wanted:
            try:
                context[key] = _render_all(
                    context[key], lambda s: env.from_string(s).render(context)
                )
            except Exception:  # noqa: S112 - a variable the templates do not use (register)
                continue
    context["mailops__combined_config"] = context["mailops__base_config"]
    context["_env"] = env
    return context


@pytest.mark.parametrize(
    ("template", "tables"),
    [
        ("roles/mailops/templates/mailops.toml.j2", 6),
        ("roles/queue_monitor/templates/queue-monitor.toml.j2", 1),
    ],
)
def test_what_the_roles_write_passes_the_check_and_every_tool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: str, tables: int
) -> None:
    context = _role_context()
    env: NativeEnvironment = context.pop("_env")
    text = str(env.from_string((ROOT / template).read_text()).render(context))
    data = tomllib.loads(text)
    assert len(data) == tables and "{{" not in text, text
    assert config.problems(data) == []
    for name in data:  # what each tool gets: the role's values over the defaults
        values = config.table(data, name)
        for key, value in data[name].items():
            assert values[key] == value
    conf = tmp_path / "mailops.toml"
    conf.write_text(text)
    assert cli.main(["--config", str(conf), "config", "check"]) == 0
    assert capsys.readouterr().out == f"{conf}: ok ({tables} tables)\n"


def test_the_roles_own_keys_are_in_the_schema() -> None:
    """Spelled out too, so a renamed key in the role or the schema fails by name."""
    written = {
        "mailops": {"ops_address"},
        "store": {"url"},
        "autoreply": {"text", "from"},
        "saslblock": {
            "log",
            "map",
            "state",
            "threshold",
            "window",
            "expire",
            "allow",
            "mynetworks",
        },
        "report": {"logs", "mail_to"},
        "queues": {
            "hosts",
            "user",
            "key",
            "known_hosts",
            "timeout",
            "output",
            "prometheus_output",
        },
    }
    for name, keys in written.items():
        assert keys <= set(config.SCHEMA[name]), name


def _lab_host(name: str, groups: list[str]) -> dict[str, Any]:
    """A lab host's variables: group_vars/all/tenants.yml, its groups' files, hosts.yml."""
    out: dict[str, Any] = {"inventory_hostname": name}
    out.update(yaml.safe_load((ROOT / "inventories/lab/group_vars/all/tenants.yml").read_text()))
    for group in groups:
        for path in sorted((ROOT / "inventories/lab/group_vars" / group).glob("*.yml")):
            out.update(yaml.safe_load(path.read_text()) or {})
    hosts = yaml.safe_load((ROOT / "inventories/lab/hosts.yml").read_text())
    for group in groups:
        out.update(hosts["all"]["children"][group]["hosts"][name] or {})
    out.pop("postfix__bulk_app_networks", None)  # reads groups/hostvars: not needed here
    out.pop("opendkim__internal_hosts", None)
    return out


def _render_toml(context: dict[str, Any]) -> dict[str, Any]:
    env: NativeEnvironment = context.pop("_env")
    merged = dict(context["mailops__base_config"])
    merged.update(context["mailops__tenants_config"])
    merged.update(context["mailops__unsubscribe_config"])
    merged.update(context["mailops__warmup_config"])
    context["mailops__combined_config"] = merged
    text = str(env.from_string((ROOT / "roles/mailops/templates/mailops.toml.j2").read_text())
               .render(context))  # fmt: skip
    assert "{{" not in text, text
    return tomllib.loads(text)


def test_the_role_writes_each_hosts_tenants_with_its_own_transports(tmp_path: Path) -> None:
    """mail1 gets its pool transports and the provider classes; the MX only the tenants."""
    bulk = _role_context(_lab_host("mail1", ["mail_bulk"]))
    data = _render_toml(bulk)
    assert config.problems(data) == []
    tenants = load_tenants(data)
    assert [(t.name, t.pool, t.transports) for t in tenants] == [
        ("alpha", "alpha", ("pool_alpha_1",)),
        ("beta", "beta", ("pool_beta_1",)),
        ("gamma", "beta", ("pool_beta_1",)),  # the guard's tenant shares beta's pool
    ]
    assert tenants.for_login("beta") == tenants.get("beta")
    assert data["transport_classes"]["gmail"] == ["gmail.com", "googlemail.com", "gmail.test"]
    assert data["tenants_sync"] == {
        "state": "/var/lib/mailops/tenants.json",
        "snapshot": "/var/lib/mailops/tenants-suppression.db",
    }
    jobs = {j["name"]: j for j in bulk["mailops__combined_cron_jobs"]}
    assert jobs["tenants-sync"]["state"] == "present"
    assert jobs["tenants-sync"]["job"] == "/opt/mailops/bin/mailops tenants sync --every 20"
    # Warm-up: this node's pool transports and their addresses; nothing warms up here.
    assert data["warmup"]["transports"] == {
        "pool_alpha_1": "198.51.100.121",
        "pool_beta_1": "198.51.100.131",
    }
    assert data["warmup"]["addresses"] == {}
    assert data["warmup"]["counts"] == "/var/lib/mailops/warmup-counts.json"
    # The settings file as the policy service reads it.
    conf = tmp_path / "mailops.toml"
    conf.write_text(to_toml(data))
    assert cli.main(["--config", str(conf), "config", "check"]) == 0

    # Other hosts take the bulk nodes' provider classes (the monitor's figures per
    # provider), from the first bulk node's variables.
    bulk_hosts = {name: _lab_host(name, ["mail_bulk"]) for name in ("mail1", "mail2")}
    mx_vars = _lab_host("mx1", ["mail_mx"])
    mx_vars.update(groups={"mail_bulk": list(bulk_hosts)}, hostvars=bulk_hosts)
    mx = _role_context(mx_vars)
    data = _render_toml(mx)
    assert config.problems(data) == []
    assert [t.transports for t in load_tenants(data)] == [(), (), ()]
    assert "tenants_sync" not in data
    assert data["transport_classes"]["gmail"] == ["gmail.com", "googlemail.com", "gmail.test"]
    assert "warmup" not in data  # only the bulk nodes count and cap
    # The DMARC figures' planned sources: every bulk node's own and pool addresses.
    assert set(data["reports"]["planned_sources"]) >= {
        "198.51.100.21", "198.51.100.121", "198.51.100.131",
        "198.51.100.22", "198.51.100.122", "198.51.100.132",
    }  # fmt: skip


# The tenants' policy service with its own timeout and a 4xx when it fails (checked
# with Postfix 3.7.11's smtpd: a missing service answers the 451).
POLICY = (
    "check_policy_service { unix:private/mailops-tenants, timeout=10s,"
    " { default_action = 451 4.3.5 tenant policy service unavailable } }"
)


def test_the_bulk_nodes_restrictions_put_tenant_mail_before_the_map() -> None:
    """The order the role's comment promises, after the postfix filter merged the layers."""
    bulk = _role_context(_lab_host("mail1", ["mail_bulk"]))
    profile = yaml.safe_load((ROOT / "roles/postfix/defaults/main.yml").read_text())
    base = [e for e in profile["postfix__bulk_base_maincf"] if e["name"].endswith("_restrictions")]
    merged = {
        e["name"]: e["value"]
        for e in postfix_maincf(base + bulk["mailops__postfix__dependent_maincf"])
    }
    assert merged["smtpd_recipient_restrictions"] == [
        "reject_unauth_pipelining",
        POLICY,
        "permit_sasl_authenticated",
        "check_recipient_access hash:/etc/postfix/suppressed",
        "permit_mynetworks",
        "reject",
    ]
    assert merged["smtpd_end_of_data_restrictions"] == [POLICY]
    # One daemon per node (tasks/tenant_policy.yml) on that socket: no spawn service,
    # so no policy process per smtpd.
    services = {s["service"] for s in bulk["mailops__postfix__dependent_mastercf"]}
    assert "mailops-tenants" not in services
    assert bulk["mailops__tenants_policy_socket"] == "/var/spool/postfix/private/mailops-tenants"
    assert bulk["mailops__tenants_policy_command"] == (
        "/opt/mailops/bin/mailops tenants policy --listen"
        " /var/spool/postfix/private/mailops-tenants --socket-owner postfix --user mailops"
    )


def test_the_bulk_nodes_warm_up_the_addresses_the_inventory_names(tmp_path: Path) -> None:
    """mail_warmup: every address of a listed pool, and listed addresses, with their own
    keys over the pool's over the curve's."""
    host = _lab_host("mail1", ["mail_bulk"])
    host["mail_warmup"] = {
        "curve": {"start": 100},
        "pools": {"alpha": {"factor": 2}},
        "addresses": {"198.51.100.121": {"start": 20}, "198.51.100.131": {}},
    }
    data = _render_toml(_role_context(host))
    assert config.problems(data) == []
    assert data["warmup"]["curve"] == {"start": 100}
    assert data["warmup"]["addresses"] == {
        "198.51.100.121": {"factor": 2, "start": 20},
        "198.51.100.131": {},
    }
    warm = schedule.read(data)
    assert warm.curve_for("198.51.100.121") == schedule.Curve(start=20, factor=2.0)
    assert warm.curve_for("198.51.100.131") == schedule.Curve(start=100)
    assert warm.transports["pool_beta_1"] == "198.51.100.131"
