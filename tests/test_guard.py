"""mailops guard: rates over the window from generated log lines and a SQLite store,
one alert and a pause per crossing, nothing below the minimum volume, per-address
rates, and the Prometheus rules for the same thresholds.

The expected rates are worked out here from the lines and rows the test writes."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailops import cli
from mailops.guard.limits import Limits
from mailops.guard.rules import rules_yaml
from mailops.store.db import Store

NOW = dt.datetime(2026, 12, 7, 18, 0, 0).timestamp()
OPS = "ops@company.test"
CONTACT = "postmaster@alpha.test"


def settings(tmp: Path, url: str, alpha_limits: str = "") -> Path:
    path = tmp / "mailops.toml"
    path.write_text(
        f'[mailops]\nops_address = "{OPS}"\n\n'
        f'[store]\nurl = "{url}"\n\n'
        '[tenants.alpha]\ndomains = ["alpha.test"]\nlogins = ["alpha"]\npool = "alpha"\n'
        f'contact = "{CONTACT}"\n'
        + (f"[tenants.alpha.limits]\n{alpha_limits}\n" if alpha_limits else "")
        + '\n[tenants.beta]\ndomains = ["beta.test"]\nlogins = ["beta"]\npool = "beta"\n\n'
        '[transport_classes]\ngmail = ["gmail.test"]\nmicrosoft = ["outlook.test"]\n'
    )
    return path


class Log:
    """Generated Postfix lines of bulk nodes, one message per recipient."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def message(
        self,
        host: str,
        sender: str,
        rcpt: str,
        transport: str,
        at: float,
        status: str = "sent",
    ) -> None:
        self.n += 1
        qid = f"4Q{self.n:08X}"
        ts = dt.datetime.fromtimestamp(at).strftime("%b %e %H:%M:%S")
        dsn = {"sent": "2.0.0", "deferred": "4.7.0", "bounced": "5.1.1"}[status]
        said = {"sent": "250 ok", "deferred": "421 try later", "bounced": "550 no such user"}
        self.lines += [
            f"{ts} {host} postfix/submission/smtpd[10]: {qid}: client=app1[198.51.100.30]",
            f"{ts} {host} postfix/qmgr[11]: {qid}: from=<{sender}>, size=900, nrcpt=1"
            " (queue active)",
            f"{ts} {host} postfix/{transport}/smtp[12]: {qid}: to=<{rcpt}>,"
            f" relay=mx.example[198.51.100.80]:25, delay=1, delays=0/0/0/1, dsn={dsn},"
            f" status={status} ({said[status]})",
        ]
        if status != "deferred":
            self.lines.append(f"{ts} {host} postfix/qmgr[11]: {qid}: removed")

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(self.lines) + "\n")
        return path


def add_complaint(url: str, tenant: str, address: str, at: float) -> None:
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    with db:
        n = db.execute("SELECT count(*) FROM complaints").fetchone()[0]
        db.execute(
            "INSERT INTO complaints (tenant, dedup_key, received_at, address, feedback_type)"
            " VALUES (?, ?, ?, ?, 'abuse')",
            (tenant, f"c{n}", int(at), address),
        )
    db.close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url):
        pass
    mails = tmp_path / "mails"
    mails.mkdir()
    fake = tmp_path / "sendmail"
    fake.write_text(f'#!/bin/sh\nf={mails}/$(date +%s%N)\necho "$@" >"$f.args"\ncat >"$f.eml"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return {"tmp": tmp_path, "url": url, "mails": mails, "sendmail": fake}


def run_guard(env: dict[str, Any], log: Path, cfg: Path, *more: str) -> int:
    return cli.main(
        [
            "--config",
            str(cfg),
            "guard",
            "--log",
            str(log),
            "--sendmail",
            str(env["sendmail"]),
            "--now",
            str(NOW),
            "--prometheus-output",
            str(env["tmp"] / "guard.prom"),
            *more,
        ]
    )


def mails(env: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for eml in sorted(env["mails"].glob("*.eml")):
        out.append((eml.with_suffix(".args").read_text().strip(), eml.read_text()))
    return out


def paused(url: str) -> dict[str, Any]:
    with Store.open(url) as s:
        return {n: (st.paused, st.changed_by, st.reason) for n, st in s.tenant_states().items()}


def traffic(log: Log, delivered: dict[str, int], start: int = 0) -> None:
    """``delivered[tenant]`` messages to gmail.test within the window, from mail1."""
    for tenant, count in delivered.items():
        for i in range(start, start + count):
            log.message(
                "mail1", f"news@{tenant}.test", f"u{i}@gmail.test", f"pool_{tenant}_1_gmail",
                NOW - 3600 + i % 1800,
            )  # fmt: skip


def test_crossing_pauses_and_mails_once_then_again_after_a_drop(env: dict[str, Any]) -> None:
    log = Log()
    traffic(log, {"alpha": 200, "beta": 200})
    path = log.write(env["tmp"] / "mail.log")
    cfg = settings(env["tmp"], env["url"])
    for i in range(2):  # 2 / 200 = 1% >= 0.5%
        add_complaint(env["url"], "alpha", f"u{i}@gmail.test", NOW - 600)
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    sent = mails(env)
    assert len(sent) == 1
    args, text = sent[0]
    assert args.split()[-2:] == [OPS, CONTACT]
    assert "Subject: [mailops guard] alpha: PAUSED: complaint rate 1.00%" in text
    assert "2 complaints / 200 delivered" in text
    assert "gmail.test: 2" in text  # the top complaining domain
    assert "mailops tenants resume alpha" in text
    assert "Content-Type: text/plain" in text and '{"' not in text
    st = paused(env["url"])
    assert st["alpha"][:2] == (True, "guard") and "complaint rate" in st["alpha"][2]
    assert "beta" not in st
    prom = (env["tmp"] / "guard.prom").read_text()
    assert 'mailops_guard_complaint_rate{tenant="alpha"} 0.01\n' in prom
    assert 'mailops_guard_complaint_rate{tenant="beta"} 0.0\n' in prom
    assert 'mailops_guard_level{tenant="alpha",metric="complaint"} 2\n' in prom

    # a second run: nothing new to say
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    assert len(mails(env)) == 1

    # the operator resumes; the rate is still over: no pause again until it drops
    with Store.open(env["url"]) as s:
        s.set_tenant_paused("alpha", False, by="ops")
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    assert len(mails(env)) == 1 and paused(env["url"])["alpha"][0] is False

    # more good mail: 2 / 3000 is under 80% of the warning level, recorded silently
    traffic(log, {"alpha": 2800}, start=200)
    log.write(path)
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    assert len(mails(env)) == 1
    with Store.open(env["url"]) as s:
        assert s.guard_levels()[("alpha", "complaint")] == 0
    # and a new crossing (warning level: 3 / 3000 >= 0.1%) mails again, without a pause
    add_complaint(env["url"], "alpha", "u300@gmail.test", NOW - 60)
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    sent = mails(env)
    assert len(sent) == 2
    assert "alpha: warning: complaint rate 0.10%" in sent[1][1]
    assert paused(env["url"])["alpha"][0] is False

    # forget: the same rate is a new crossing again
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    assert len(mails(env)) == 2
    assert cli.main(["--config", str(cfg), "guard", "forget", "alpha"]) == 0
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    assert len(mails(env)) == 3


def test_a_rate_that_wobbles_at_a_level_mails_once(env: dict[str, Any]) -> None:
    """Deliveries take the rate just under the warning level, a complaint just over,
    run after run: one mail, until the rate has fallen well under the level."""
    log = Log()
    traffic(log, {"alpha": 1000})
    path = log.write(env["tmp"] / "mail.log")
    cfg = settings(env["tmp"], env["url"])
    add_complaint(env["url"], "alpha", "u0@gmail.test", NOW - 600)  # 1 / 1000: warning
    assert run_guard(env, path, cfg) == 0
    assert len(mails(env)) == 1
    delivered, complaints = 1000, 1
    for _ in range(3):
        traffic(log, {"alpha": 100}, start=delivered)  # just under 0.1%: not a fall yet
        delivered += 100
        log.write(path)
        assert run_guard(env, path, cfg) == 0
        add_complaint(env["url"], "alpha", f"w{delivered}@gmail.test", NOW - 60)
        complaints += 1
        traffic(log, {"alpha": 1000 * complaints - delivered}, start=delivered)  # back at 0.1%
        delivered = 1000 * complaints
        log.write(path)
        assert run_guard(env, path, cfg) == 0
    assert len(mails(env)) == 1
    with Store.open(env["url"]) as s:
        assert s.guard_levels()[("alpha", "complaint")] == 1
    # 4 / 5100 is under 80% of 0.1%: the fall is recorded; the next rise mails again
    traffic(log, {"alpha": 1100}, start=delivered)
    log.write(path)
    assert run_guard(env, path, cfg) == 0
    with Store.open(env["url"]) as s:
        assert s.guard_levels()[("alpha", "complaint")] == 0
    for i in range(2):
        add_complaint(env["url"], "alpha", f"z{i}@gmail.test", NOW - 60)
    assert run_guard(env, path, cfg) == 0
    assert len(mails(env)) == 2


def test_below_the_minimum_volume_nothing_happens(env: dict[str, Any]) -> None:
    log = Log()
    traffic(log, {"alpha": 100})
    path = log.write(env["tmp"] / "mail.log")
    for i in range(10):  # 10% complaints, but only 100 delivered (default minimum 1000)
        add_complaint(env["url"], "alpha", f"u{i}@gmail.test", NOW - 600)
    cfg = settings(env["tmp"], env["url"])
    assert run_guard(env, path, cfg) == 0
    assert mails(env) == [] and paused(env["url"]) == {}
    with Store.open(env["url"]) as s:
        assert s.guard_levels() == {}
    # the rate is still exported
    prom = (env["tmp"] / "guard.prom").read_text()
    assert 'mailops_guard_complaint_rate{tenant="alpha"} 0.1\n' in prom
    # the tenant's own lower minimum makes it judged
    cfg = settings(env["tmp"], env["url"], "min_delivered = 100")
    assert run_guard(env, path, cfg) == 0
    assert len(mails(env)) == 1 and paused(env["url"])["alpha"][0] is True


def test_lines_before_the_window_do_not_count(env: dict[str, Any]) -> None:
    log = Log()
    for i in range(5000):  # 30 hours ago: outside the 24 h window
        log.message(
            "mail1", "news@alpha.test", f"old{i}@gmail.test", "pool_alpha_1", NOW - 30 * 3600
        )
    traffic(log, {"alpha": 200})
    path = log.write(env["tmp"] / "mail.log")
    add_complaint(env["url"], "alpha", "u1@gmail.test", NOW - 600)
    add_complaint(env["url"], "alpha", "old1@gmail.test", NOW - 29 * 3600)  # outside too
    cfg = settings(env["tmp"], env["url"])
    assert run_guard(env, path, cfg, "--min-delivered", "100", "--dry-run") == 0
    prom = (env["tmp"] / "guard.prom").read_text()
    assert 'mailops_guard_delivered{tenant="alpha"} 200\n' in prom
    assert 'mailops_guard_complaints{tenant="alpha"} 1\n' in prom
    assert mails(env) == [] and paused(env["url"]) == {}  # a dry run acts on nothing
    # a longer window takes them in
    assert run_guard(env, path, cfg, "--window", "36", "--dry-run") == 0
    prom = (env["tmp"] / "guard.prom").read_text()
    assert 'mailops_guard_delivered{tenant="alpha"} 5200\n' in prom


def test_per_address_rates(env: dict[str, Any]) -> None:
    log = Log()
    # mail1's alpha address: 100 delivered, 1 complaint, 20 hard bounces of 120 sent
    for i in range(100):
        log.message("mail1", "news@alpha.test", f"a{i}@gmail.test", "pool_alpha_1_gmail", NOW - 60)
    for i in range(20):
        log.message("mail1", "news@alpha.test", f"x{i}@outlook.test", "pool_alpha_1", NOW - 60,
                    "bounced")  # fmt: skip
    # mail2's: 900 delivered, nothing wrong; and one deferral to outlook
    for i in range(900):
        log.message("mail2", "news@alpha.test", f"b{i}@gmail.test", "pool_alpha_1_gmail", NOW - 60)
    log.message("mail2", "news@alpha.test", "d@outlook.test", "pool_alpha_1", NOW - 60, "deferred")
    path = log.write(env["tmp"] / "mail.log")
    add_complaint(env["url"], "alpha", "a5@gmail.test", NOW - 30)
    cfg = settings(env["tmp"], env["url"])
    assert run_guard(env, path, cfg, "--min-delivered", "100", "--min-sent", "100") == 0
    prom = (env["tmp"] / "guard.prom").read_text()
    one = '{tenant="alpha",address="mail1/pool_alpha_1"}'
    two = '{tenant="alpha",address="mail2/pool_alpha_1"}'
    assert f"mailops_guard_address_complaint_rate{one} 0.01\n" in prom
    assert f"mailops_guard_address_complaint_rate{two} 0.0\n" in prom
    assert f"mailops_guard_address_bounce_rate{one} 0.166667\n" in prom  # 20 / 120
    assert f"mailops_guard_address_sent{two} 901\n" in prom
    # the tenant: 1 / 1000 = the warning level; 20 / 1021 hard bounces: under 5%
    assert 'mailops_guard_complaint_rate{tenant="alpha"} 0.001\n' in prom
    assert 'mailops_guard_bounce_rate{tenant="alpha"} 0.019589\n' in prom
    assert 'mailops_guard_deferral_rate{tenant="alpha",provider="microsoft"} 0.047619\n' in prom
    # mail1's address is over both pause levels: one mail naming everything, a pause
    sent = mails(env)
    assert len(sent) == 1
    text = sent[0][1]
    for what in (
        "complaint rate: 0.10% (1 complaints / 1000 delivered)",
        "complaint rate of mail1/pool_alpha_1: 1.00% (1 complaints / 100 delivered)",
        "hard-bounce rate of mail1/pool_alpha_1: 16.67% (20 hard bounces / 120 sent)",
        "outlook.test: 20",
    ):
        assert what in text, what
    assert paused(env["url"])["alpha"][:2] == (True, "guard")


def test_per_address_deferral_rates_by_provider(env: dict[str, Any]) -> None:
    log = Log()
    # mail1's alpha address: gmail 3 sent, 1 of them deferred; outlook 2, none deferred;
    # two domains of no transport class (other): 4 sent, 3 deferred
    for i in range(3):
        log.message("mail1", "news@alpha.test", f"g{i}@gmail.test", "pool_alpha_1_gmail",
                    NOW - 60, "deferred" if i == 0 else "sent")  # fmt: skip
    for i in range(2):
        log.message("mail1", "news@alpha.test", f"o{i}@outlook.test", "pool_alpha_1", NOW - 60)
    for i in range(4):
        log.message("mail1", "news@alpha.test", f"x{i}@example{i % 2}.org", "pool_alpha_1",
                    NOW - 60, "deferred" if i < 3 else "sent")  # fmt: skip
    # mail2's beta address: gmail, all delivered; and mail with no pool transport
    log.message("mail2", "news@beta.test", "g@gmail.test", "pool_beta_1_gmail", NOW - 60)
    log.message("mail2", "news@beta.test", "h@gmail.test", "smtp", NOW - 60, "deferred")
    path = log.write(env["tmp"] / "mail.log")
    cfg = settings(env["tmp"], env["url"])
    assert run_guard(env, path, cfg) == 0
    prom = (env["tmp"] / "guard.prom").read_text()
    got = dict(re.findall(r"^mailops_guard_address_deferral_rate\{(.*)\} (\S+)$", prom, re.M))
    one = 'tenant="alpha",address="mail1/pool_alpha_1"'
    assert got == {
        f'{one},provider="gmail"': "0.333333",  # 1 of 3 recipients
        f'{one},provider="microsoft"': "0.0",
        f'{one},provider="other"': "0.75",
        'tenant="beta",address="mail2/pool_beta_1",provider="gmail"': "0.0",
    }, got


def test_a_mail_that_fails_is_tried_again(env: dict[str, Any]) -> None:
    log = Log()
    traffic(log, {"alpha": 200})
    path = log.write(env["tmp"] / "mail.log")
    add_complaint(env["url"], "alpha", "u1@gmail.test", NOW - 600)
    cfg = settings(env["tmp"], env["url"])
    broken = env["tmp"] / "broken-sendmail"
    broken.write_text("#!/bin/sh\necho 'postdrop: no' >&2\nexit 75\n")
    broken.chmod(0o755)
    assert cli.main(["--config", str(cfg), "guard", "--log", str(path), "--sendmail",
                     str(broken), "--now", str(NOW), "--min-delivered", "100"]) == 75  # fmt: skip
    with Store.open(env["url"]) as s:
        assert s.guard_levels() == {}
    assert run_guard(env, path, cfg, "--min-delivered", "100") == 0
    assert len(mails(env)) == 1


def test_limits_are_checked(env: dict[str, Any]) -> None:
    log = Log().write(env["tmp"] / "mail.log")
    cfg = settings(env["tmp"], env["url"], "complaint_warn = 0.01\ncomplaint_pause = 0.002")
    assert run_guard(env, log, cfg) == 78


RULE = re.compile(
    r"\A(?P<series>mailops_guard_(?:address_)?(?P<metric>complaint|bounce)_rate)"
    r'\{tenant="(?P<tenant>\w+)"\} (?P<cond>.+?) and (?:on\(tenant\) )?'
    r'(?P<volume>mailops_guard_(?:address_)?\w+)\{tenant="(?P=tenant)"\} >= (?P<min>\d+)\Z'
)


def test_rules_name_the_thresholds(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = settings(env["tmp"], env["url"], "complaint_pause = 0.003\nmin_sent = 500")
    assert cli.main(["--config", str(cfg), "guard", "rules", "--for", "10m"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    rules = doc["groups"][0]["rules"]
    limits = {"alpha": Limits(complaint_pause=0.003, min_sent=500), "beta": Limits()}
    # every family a rule reads is one the guard writes
    log = Log()
    traffic(log, {"alpha": 10})
    assert run_guard(env, log.write(env["tmp"] / "mail.log"), cfg) == 0
    families = set(re.findall(r"^# TYPE (\w+) ", (env["tmp"] / "guard.prom").read_text(), re.M))
    seen = set()
    for r in rules:
        if r["alert"] == "MailopsGuardNotRunning":
            assert "mailops_guard_timestamp_seconds" in r["expr"]
            continue
        m = RULE.match(r["expr"])
        assert m is not None, r["expr"]
        assert {m["series"], m["volume"]} <= families
        tenant, metric, level = m["tenant"], m["metric"], r["labels"]["level"]
        lim = limits[tenant]
        warn, pause = lim.levels(metric)
        assert r["labels"] == {
            "severity": "critical" if level == "pause" else "warning",
            "tenant": tenant,
            "metric": metric,
            "level": level,
        }
        want = f">= {warn} < {pause}" if level == "warning" else f">= {pause}"
        assert m["cond"] == want, (r["alert"], m["cond"], want)
        assert m["volume"].endswith("delivered" if metric == "complaint" else "_sent")
        assert int(m["min"]) == lim.minimum(metric)
        assert r["for"] == "10m"
        scope = "address" if "_address_" in m["series"] else "tenant"
        seen.add((tenant, scope, metric, level))
    assert len(seen) == 2 * 2 * 2 * 2 == len(rules) - 1
    # and it is what rules_yaml writes
    assert yaml.safe_load(rules_yaml(limits, "10m")) == doc
