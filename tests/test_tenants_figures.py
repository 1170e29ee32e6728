"""mailops tenants status: the figures per tenant and provider, from generated logs (whose
generator records every delivery line it wrote) and a SQLite store with known rows.

The expected figures are counted here from the generator's record and the rows this
test put in the store, with the definitions of docs/tenants.md (Figures), not with the
code under test."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sqlite3
import stat
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from mailops.store.db import Store
from mailops.tenants import figures
from mailops.tenants.model import load_tenants
from tests.support import postfix_loggen

SENDERS = (
    "news@alpha.test",
    "Billing@Mail.Alpha.test",  # a subdomain of alpha's domain, written in capitals
    "info@beta.test",
    "noreply@app.example",  # no tenant's
    "",
    "billing",
)
TENANTS: dict[str, dict[str, Any]] = {
    "tenants": {
        "alpha": {"domains": ["alpha.test"], "logins": ["alpha"], "pool": "alpha"},
        "beta": {"domains": ["beta.test"], "logins": ["beta"], "pool": "beta"},
        "gamma": {"domains": ["gamma.test"], "logins": ["gamma"], "pool": "gamma"},
    },
    "transport_classes": {
        "gmail": ["gmail.test", "googlemail.test"],
        "microsoft": ["outlook.test", "hotmail.test"],
    },
}
# written out again here, so that the expectation does not use the code under test
OWNER = {"alpha.test": "alpha", "beta.test": "beta", "gamma.test": "gamma"}
CLASS = {"gmail.test": "gmail", "outlook.test": "microsoft"}
SEEDS = (0, 1, 2, 3, 5, 7)


def owner(sender: str) -> str | None:
    domain = sender.rpartition("@")[2].lower()
    for d, tenant in OWNER.items():
        if domain == d or domain.endswith("." + d):
            return tenant
    return None


def day_of(t: float, iso: bool) -> dt.date:
    # classic stamps are local time, the generator's ISO ones UTC
    return dt.datetime.fromtimestamp(t, dt.UTC).date() if iso else dt.date.fromtimestamp(t)


def expected_from_log(
    deliveries: Iterable[postfix_loggen.Delivery], day: dt.date, iso: bool
) -> dict[tuple[str, str], Counter[str]]:
    """(tenant, provider) -> figures, from the generator's record of its lines."""
    sent: dict[tuple[str, str], set[tuple[int, str]]] = {}
    deferred: dict[tuple[str, str], set[tuple[int, str]]] = {}
    out: dict[tuple[str, str], Counter[str]] = {}
    for d in deliveries:
        tenant = owner(d.sender)
        if tenant is None or day_of(d.t, iso) != day:
            continue
        local, _, domain = d.addr.rpartition("@")
        provider = CLASS.get(domain.lower(), domain.lower())
        key = (tenant, provider)
        rcpt = (d.message, f"{local}@{domain.lower()}")
        c = out.setdefault(key, Counter())
        sent.setdefault(key, set()).add(rcpt)
        if d.status == "sent":
            c["delivered"] += 1
        elif d.status == "deferred":
            deferred.setdefault(key, set()).add(rcpt)
        elif d.dsn.startswith("5."):
            c["bounced_hard"] += 1
        else:
            c["bounced_soft"] += 1
    for key, c in out.items():
        c["sent"] = len(sent[key])
        c["deferred"] = len(deferred.get(key, ()))
    return out


def noon(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(12)).timestamp())


class StoreRows:
    """Rows this test writes into the store, with what each should add."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        with Store.open(self.url):
            pass  # the schema
        self.db = sqlite3.connect(path)
        self.n = 0
        self.expected: dict[tuple[str, str], Counter[str]] = {}

    def _add(self, table: str, tenant: str, at: int, address: str, **more: Any) -> None:
        self.n += 1
        cols = {"tenant": tenant, "dedup_key": f"k{self.n}", "received_at": at, "address": address}
        cols.update(more)
        self.db.execute(
            f"INSERT INTO {table} ({', '.join(cols)})"  # noqa: S608 - the test's own names
            f" VALUES ({', '.join('?' for _ in cols)})",
            list(cols.values()),
        )

    def expect(self, tenant: str, address: str, name: str) -> None:
        domain = address.rpartition("@")[2].lower()
        key = (tenant, CLASS.get(domain, domain))
        self.expected.setdefault(key, Counter())[name] += 1

    def fill(
        self, day: dt.date, log_bounces: dict[str, list[str]], log_tenants: Iterable[str]
    ) -> None:
        """Complaints, unsubscribes and bounces: of the day and not, of tenants and not,
        and bounces the log already counted (which must not count twice)."""
        at = noon(day)
        other_day = at - 86400
        for tenant in ("alpha", "beta"):
            for i, addr in enumerate((f"c{tenant}@gmail.test", "x@Outlook.test", "y@yahoo.test")):
                self._add("complaints", tenant, at + i, addr, feedback_type="abuse")
                self.expect(tenant, addr, "complained")
            self._add("complaints", tenant, at, "z@gmail.test", feedback_type="not-spam")
            self._add("complaints", tenant, other_day, "old@gmail.test", feedback_type="abuse")
            for i, addr in enumerate((f"u{tenant}@gmail.test", "v@gmx.test")):
                self._add("unsubscribes", tenant, at + i, addr)
                self.expect(tenant, addr, "unsubscribed")
            self._add("unsubscribes", tenant, other_day, "old@gmail.test")
            # asynchronous bounces: mail the log says was delivered
            self._add("bounces", tenant, at, f"gone-{tenant}@gmail.test", hard=1)
            self.expect(tenant, f"gone-{tenant}@gmail.test", "bounced_hard")
            self._add("bounces", tenant, at + 5, "full@outlook.test", hard=0)
            self.expect(tenant, "full@outlook.test", "bounced_soft")
            self._add("bounces", tenant, other_day, "older@gmail.test", hard=1)
        # the global scope, and a tenant the settings do not name: not any tenant's
        self._add("complaints", "", at, "g@gmail.test", feedback_type="abuse")
        self._add("unsubscribes", "nobody", at, "n@gmail.test")
        self._add("bounces", "", at, "b@gmail.test", hard=1)
        # the log's own bounces come back through the store: counted once.  The first
        # address bounced twice in the store: the second row counts.
        for tenant in log_tenants:
            addrs = log_bounces.get(tenant, [])
            for addr in addrs:
                self._add("bounces", tenant, at, addr, hard=1)
            if addrs:
                self._add("bounces", tenant, at + 9, addrs[0], hard=0)
                self.expect(tenant, addrs[0], "bounced_soft")
        self.db.commit()
        self.db.close()


def tally(rows: list[figures.Figures]) -> dict[tuple[str, str], Counter[str]]:
    out: dict[tuple[str, str], Counter[str]] = {}
    for r in rows:
        for p, c in r.providers.items():
            d = c.as_dict()
            out[r.tenant, p] = Counter({k: d[k] for k in figures.COUNTS if d[k] and k != "bounced"})
    return out


def merged(*parts: dict[tuple[str, str], Counter[str]]) -> dict[tuple[str, str], Counter[str]]:
    out: dict[tuple[str, str], Counter[str]] = {}
    for part in parts:
        for k, c in part.items():
            out.setdefault(k, Counter()).update(c)
    return {k: +c for k, c in out.items() if +c}


def generated(tmp_path: Path, seed: int, **kw: Any) -> tuple[Path, postfix_loggen.Stats, bool]:
    log = tmp_path / f"mail-{seed}.log"
    stats = postfix_loggen.generate(seed, log, lines=6000, senders=SENDERS, **kw)
    return log, stats, postfix_loggen.shape_of(seed).iso if "iso" not in kw else kw["iso"]


def days_of(stats: postfix_loggen.Stats, iso: bool) -> list[dt.date]:
    return sorted({day_of(d.t, iso) for d in stats.deliveries})


@pytest.mark.parametrize("seed", SEEDS)
def test_log_and_store_figures_match_what_was_generated(tmp_path: Path, seed: int) -> None:
    log, stats, iso = generated(tmp_path, seed)
    tenants = load_tenants(TENANTS)
    classes = figures.class_map(TENANTS)
    assert any(owner(d.sender) for d in stats.deliveries)
    for day in days_of(stats, iso):
        want_log = expected_from_log(stats.deliveries, day, iso)
        bounced: dict[str, list[str]] = {}
        for d in stats.deliveries:
            tenant = owner(d.sender)
            if tenant and d.status == "bounced" and day_of(d.t, iso) == day:
                local, _, domain = d.addr.rpartition("@")
                bounced.setdefault(tenant, []).append(f"{local}@{domain.lower()}")
        store_rows = StoreRows(tmp_path / f"store-{seed}-{day}.db")
        store_rows.fill(day, bounced, ("alpha", "beta"))
        with Store.open(store_rows.url) as store:
            store.set_tenant_paused("beta", True, reason="test", by="pytest")
            rows = figures.compute(tenants, classes, [[log]], day, store)
        assert [r.tenant for r in rows] == ["alpha", "beta", "gamma"]
        assert [r.state for r in rows] == ["active", "paused", "active"]
        assert tally(rows) == merged(want_log, store_rows.expected), (seed, day)
        # the sums and rates of each tenant are those of its providers
        for r in rows:
            rd = r.as_dict()
            for k in figures.COUNTS:
                assert rd[k] == sum(p[k] for p in rd["providers"].values())
            assert rd["bounced"] == rd["bounced_hard"] + rd["bounced_soft"]
            sent, delivered = rd["sent"], rd["delivered"]
            assert rd["bounce_rate"] == (round(rd["bounced"] / sent, 6) if sent else 0)
            assert rd["complaint_rate"] == (
                round(rd["complained"] / delivered, 6) if delivered else 0
            )


def test_several_hosts_in_one_file_keep_their_queue_ids_apart(tmp_path: Path) -> None:
    """Shapes where a host takes a queue id another host holds: by host, every figure of
    the generator's record comes out (keyed by queue id alone, they would not)."""
    seen_reuse = 0
    for seed in (2, 6, 10):
        log, stats, iso = generated(tmp_path, seed, hosts=("mail1", "mail2", "mx1"))
        seen_reuse += stats.reused_other
        tenants = load_tenants(TENANTS)
        for day in days_of(stats, iso):
            rows = figures.compute(tenants, figures.class_map(TENANTS), [[log]], day, None)
            assert tally(rows) == merged(expected_from_log(stats.deliveries, day, iso))
    assert seen_reuse > 20


def test_cluster_groups_are_hosts_of_their_own(tmp_path: Path) -> None:
    """Two nodes' logs that use the same queue ids for different tenants' mail."""
    a, stats_a, _ = generated(tmp_path, 4, hosts=("mail1",), iso=True)
    b = tmp_path / "mail2.log"
    # the same host name and queue ids, alpha's mail beta's and beta's alpha's: each file
    # is a host of its own all the same
    swap = {"alpha.test": "beta.test", "beta.test": "alpha.test"}
    b.write_text(
        re.sub(
            r"alpha\.test|beta\.test", lambda m: swap[m.group().lower()], a.read_text(), flags=re.I
        )
    )
    day = days_of(stats_a, True)[0]
    tenants = load_tenants(TENANTS)
    classes = figures.class_map(TENANTS)
    one = {r.tenant: r.total() for r in figures.compute(tenants, classes, [[a]], day, None)}
    both = {r.tenant: r.total() for r in figures.compute(tenants, classes, [[a], [b]], day, None)}
    for name in ("sent", "delivered", "deferred", "bounced"):
        assert getattr(both["alpha"], name) == getattr(one["alpha"], name) + getattr(
            one["beta"], name
        )
    assert one["alpha"].sent and one["beta"].sent


def test_a_sender_line_of_the_day_before_still_names_the_tenant(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(
        "Dec  6 23:59:59 mail1 postfix/submission/smtpd[1]: 4ABC: client=app1[198.51.100.30]\n"
        "Dec  6 23:59:59 mail1 postfix/qmgr[2]: 4ABC: from=<news@alpha.test>, size=100,"
        " nrcpt=2 (queue active)\n"
        "Dec  7 00:00:01 mail1 postfix/pool_alpha_1_gmail/smtp[3]: 4ABC: to=<a@gmail.test>,"
        " relay=mx.gmail.test[198.51.100.80]:25, delay=2, delays=0/0/1/1, dsn=2.0.0,"
        " status=sent (250 ok)\n"
        "Dec  7 00:00:01 mail1 postfix/pool_alpha_1/smtp[3]: 4ABC: to=<b@other.test>,"
        " relay=mx.other.test[198.51.100.81]:25, delay=2, delays=0/0/1/1, dsn=5.1.1,"
        " status=bounced (host said: 550 5.1.1 no such user (in reply to RCPT TO command))\n"
        "Dec  7 00:00:02 mail1 postfix/qmgr[2]: 4ABC: removed\n"
        "Dec  7 00:00:03 mail1 postfix/pool_alpha_1_gmail/smtp[3]: 4ABC: to=<c@gmail.test>,"
        " relay=mx.gmail.test[198.51.100.80]:25, delay=2, delays=0/0/1/1, dsn=2.0.0,"
        " status=sent (250 ok)\n"
    )
    rows = figures.compute(
        load_tenants(TENANTS), figures.class_map(TENANTS), [[log]], dt.date(2026, 12, 7), None
    )
    alpha = rows[0].as_dict()
    # the last line's queue id was removed: a message of nobody known
    assert (alpha["sent"], alpha["delivered"], alpha["bounced_hard"]) == (2, 1, 1)
    assert alpha["providers"]["gmail"]["delivered"] == 1
    assert alpha["providers"]["other.test"]["bounced"] == 1
    assert alpha["bounce_rate"] == 0.5


def test_day_parsing() -> None:
    today = dt.date(2026, 12, 7)
    assert figures.parse_day("Dec 07", today) == today
    assert figures.parse_day("Dec  6", today) == dt.date(2026, 12, 6)
    assert figures.parse_day("Dec 31", today) == dt.date(2025, 12, 31)
    assert figures.parse_day("yesterday", today) == dt.date(2026, 12, 6)
    assert figures.parse_day("2026-11-03", today) == dt.date(2026, 11, 3)
    assert figures.parse_day("all", today) is None
    for bad in ("Foo 07", "Feb 30", "tomorrow"):
        with pytest.raises(ValueError):
            figures.parse_day(bad, today)


def test_provider_classes() -> None:
    classes = figures.class_map(TENANTS)
    assert figures.provider_of("Gmail.test", classes) == "gmail"
    assert figures.provider_of("eu.outlook.test", classes) == "microsoft"
    assert figures.provider_of("Yahoo.test", classes) == "yahoo.test"


# ---------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    sub = p.add_subparsers()
    figures.register(sub)
    return p


def _settings(tmp_path: Path, store_url: str) -> Path:
    lines = [f'[store]\nurl = "{store_url}"\n']
    for name, t in TENANTS["tenants"].items():
        lines.append(f"[tenants.{name}]\ndomains = {json.dumps(t['domains'])}\n")
        lines.append(f'logins = {json.dumps(t["logins"])}\npool = "{t["pool"]}"\n')
    lines.append("[transport_classes]\n")
    for name, domains in TENANTS["transport_classes"].items():
        lines.append(f"{name} = {json.dumps(domains)}\n")
    path = tmp_path / "mailops.toml"
    path.write_text("".join(lines))
    return path


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_status_json_has_the_issues_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, stats, iso = generated(tmp_path, 3)
    day = days_of(stats, iso)[0]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url) as store:
        store.set_tenant_paused("alpha", True, reason="test")
    conf = _settings(tmp_path, url)
    rc = _run(["--config", str(conf), "status", "--json", "--log", str(log), "--day", str(day)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["tenant"] for o in out] == ["alpha", "beta", "gamma"]
    keys = {"tenant", "state", "sent", "delivered", "bounced", "complained", "unsubscribed"}
    keys |= {"bounce_rate", "complaint_rate", "deferred", "bounced_hard", "bounced_soft"}
    assert keys | {"providers", "day", "ses"} == set(out[0])
    assert out[0]["state"] == "paused" and out[1]["state"] == "active"
    want = merged(expected_from_log(stats.deliveries, day, iso))
    assert out[0]["sent"] == sum(c["sent"] for (t, _), c in want.items() if t == "alpha")
    assert out[2]["sent"] == 0 and out[2]["providers"] == {}

    rc = _run(["--config", str(conf), "status", "--log", str(log), "--day", str(day)])
    text = capsys.readouterr().out
    assert rc == 0 and "alpha" in text and "paused" in text and "  gmail" in text


def test_status_fetches_with_a_command_and_says_when_a_node_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, stats, _ = generated(tmp_path, 8, hosts=("mail1",), iso=True)
    day = days_of(stats, True)[0]
    fetch = tmp_path / "fetch"
    # writes the same log as two nodes' (their queue ids the same: two hosts' messages),
    # then fails for a third
    fetch.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "{day}" ] || exit 9\n'
        f'cp {log} "$2/mail1.log" && cp {log} "$2/mail2.log"\n'
        'echo "cannot fetch mail3" >&2\nexit 1\n'
    )
    fetch.chmod(fetch.stat().st_mode | stat.S_IXUSR)
    conf = _settings(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    out_file = tmp_path / "tenants.prom"
    argv = ["--config", str(conf), "status", "--day", str(day), "--logs-from", str(fetch)]
    rc = _run([*argv, "--format", "prometheus", "--output", str(out_file)])
    assert rc == 1
    assert "could not fetch every node" in capsys.readouterr().err
    prom = out_file.read_text()
    assert oct(out_file.stat().st_mode & 0o777) == "0o644"
    want = merged(expected_from_log(stats.deliveries, day, True))
    alpha_sent = sum(c["sent"] for (t, _), c in want.items() if t == "alpha")
    assert alpha_sent > 0
    assert f'mailops_tenant_sent_total{{tenant="alpha"}} {2 * alpha_sent}\n' in prom
    assert 'mailops_tenant_paused{tenant="alpha"} 0\n' in prom
    assert "mailops_tenant_figures_complete 0\n" in prom
    assert "# TYPE mailops_tenant_sent_total counter\n" in prom
    assert "# TYPE mailops_tenant_bounce_rate gauge\n" in prom
    gmail = sum(c["delivered"] for (t, p), c in want.items() if t == "beta" and p == "gmail")
    assert (
        f'mailops_tenant_provider_delivered_total{{tenant="beta",provider="gmail"}} {2 * gmail}\n'
        in prom
    )
    # every family once, HELP and TYPE before its samples
    names = [ln.split()[2] for ln in prom.splitlines() if ln.startswith("# TYPE")]
    assert len(names) == len(set(names))


def test_status_without_the_store_fails_temporarily(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, _, _ = generated(tmp_path, 1)
    conf = _settings(tmp_path, "sqlite:////nonexistent/dir/store.db")
    rc = _run(["--config", str(conf), "status", "--log", str(log), "--day", "all"])
    assert rc == 75
    assert "cannot read the store" in capsys.readouterr().err


# ---------------------------------------------------------------------- the daily report


def _report(argv: list[str]) -> int:
    from mailops import report

    p = argparse.ArgumentParser()
    p.add_argument("--config")
    report.register(p.add_subparsers())
    args = p.parse_args(argv)
    return int(args.func(args))


def test_the_daily_report_has_a_line_per_tenant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, stats, iso = generated(tmp_path, 5)
    day = days_of(stats, iso)[-1]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url) as store:
        store.set_tenant_paused("gamma", True)
    conf = _settings(tmp_path, url)
    want = merged(expected_from_log(stats.deliveries, day, iso))

    def total(tenant: str, name: str) -> int:
        return sum(c[name] for (t, _), c in want.items() if t == tenant)

    base = ["report", "--log", str(log), "--day", str(day)]
    assert _report(["--config", str(conf), *base, "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = {r["tenant"]: r for r in rep["tenants"]["rows"]}
    assert rep["tenants"]["store_error"] == ""
    assert rows["alpha"]["sent"] == total("alpha", "sent") > 0
    assert rows["beta"]["delivered"] == total("beta", "delivered") > 0
    assert rows["gamma"]["state"] == "paused"

    assert _report(["--config", str(conf), *base]) == 0
    text = capsys.readouterr().out
    lines = [ln.split() for ln in text.splitlines()]
    alpha = next(ln for ln in lines if ln[:2] == ["alpha", "active"])
    sent, delivered, deferred = (int(v) for v in alpha[2:5])
    assert (sent, delivered, deferred) == (
        total("alpha", "sent"),
        total("alpha", "delivered"),
        total("alpha", "deferred"),
    )
    assert "Tenants (per recipient; rates in %)" in text

    assert _report(["--config", str(conf), *base, "--format", "mail"]) == 0
    mail = capsys.readouterr().out
    assert "<h3>Tenants</h3>" in mail and "gamma" in mail

    # without tenants in the settings: no section; --tenants-config brings it back
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    assert _report(["--config", str(plain), *base, "--format", "json"]) == 0
    assert "tenants" not in json.loads(capsys.readouterr().out)
    argv = ["--config", str(plain), *base, "--tenants-config", str(conf), "--format", "json"]
    assert _report(argv) == 0
    assert json.loads(capsys.readouterr().out)["tenants"]["rows"][0]["tenant"] == "alpha"


def test_the_report_says_when_the_store_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, stats, iso = generated(tmp_path, 2)
    day = days_of(stats, iso)[0]
    conf = _settings(tmp_path, "sqlite:////nonexistent/dir/store.db")
    assert _report(["--config", str(conf), "report", "--log", str(log), "--day", str(day)]) == 0
    text = capsys.readouterr().out
    assert "note: the store could not be read" in text
    assert any(ln.split()[:2] == ["alpha", "unknown"] for ln in text.splitlines())


# ---------------------------------------------------------------------- /metrics


def test_the_collector_appends_the_tenants_figures_to_its_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`queues collect --prometheus-include FILE` puts what `tenants status --format
    prometheus --output FILE` wrote into the page nginx serves as /metrics."""
    from mailops import queues
    from mailops.queues import collect

    log, stats, iso = generated(tmp_path, 3)
    day = days_of(stats, iso)[0]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url) as store:
        store.set_tenant_paused("beta", True)
    conf = _settings(tmp_path, url)
    prom = tmp_path / "tenants.prom"
    argv = ["--config", str(conf), "status", "--log", str(log), "--day", str(day)]
    assert _run([*argv, "--format", "prometheus", "--output", str(prom)]) == 0

    def fake_collect(hosts: Any, opts: Any, parallel: int) -> dict[str, Any]:
        return {h.name: {"host": h.name, "queues": {"active": 1, "deferred": 2}} for h in hosts}

    monkeypatch.setattr(collect, "collect", fake_collect)
    metrics = tmp_path / "metrics.txt"
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    queues.register(p.add_subparsers())
    missing = tmp_path / "not-yet.prom"
    args = p.parse_args(
        ["--config", "/dev/null", "queues", "collect", "--hosts", "mail1",
         "--prometheus-output", str(metrics), "--output", str(tmp_path / "q.json"),
         "--prometheus-include", str(prom), "--prometheus-include", str(missing)]
    )  # fmt: skip
    assert args.func(args) == 0
    page = metrics.read_text()
    assert 'mailops_queue_messages{host="mail1",queue="deferred"} 2\n' in page
    assert 'mailops_tenant_paused{tenant="beta"} 1\n' in page
    alpha = sum(
        c["delivered"]
        for (t, _), c in merged(expected_from_log(stats.deliveries, day, iso)).items()
        if t == "alpha"
    )
    assert f'mailops_tenant_delivered_total{{tenant="alpha"}} {alpha}\n' in page
    names = [ln.split()[2] for ln in page.splitlines() if ln.startswith("# TYPE")]
    assert len(names) == len(set(names))

    prom.write_text("garbage\n")
    assert args.func(args) == 0
    assert "not Prometheus text" in capsys.readouterr().err
    assert "garbage" not in metrics.read_text()
