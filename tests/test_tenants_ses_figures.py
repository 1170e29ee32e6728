"""SES's Delivery, Bounce and Complaint events in the tenants' figures and the daily
report (mailops.tenants.figures, mailops.report.tenants; docs/ses.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mailops.report import tenants as report_tenants
from mailops.store.db import Store
from mailops.tenants import figures
from mailops.tenants.model import load_tenants

TENANTS = {
    "tenants": {
        "alpha": {"domains": ["alpha.test"], "logins": ["alpha"], "pool": "alpha"},
        "beta": {"domains": ["beta.test"], "logins": ["beta"], "pool": "beta"},
    }
}
DAY = dt.date(2026, 12, 7)


def noon(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(12)).timestamp()


def store_with_events(tmp_path: Path) -> str:
    """alpha: 3 deliveries, 1 bounce, 1 complaint, 1 Send today; 1 delivery yesterday;
    beta: 1 delivery today."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    today, yesterday = noon(DAY), noon(DAY - dt.timedelta(days=1))
    with Store.open(url) as store:
        rows = [
            ("Delivery", "m1", ["a@x.test", "b@x.test"], "alpha", today),
            ("Delivery", "m2", ["c@x.test"], "alpha", today),
            ("Bounce", "m3", ["d@x.test"], "alpha", today),
            ("Complaint", "m4", ["e@x.test"], "alpha", today),
            ("Send", "m5", ["f@x.test"], "alpha", today),
            ("Delivery", "m6", ["g@x.test"], "alpha", yesterday),
            ("Delivery", "m7", ["h@x.test"], "beta", today),
        ]
        for kind, mid, addresses, tenant, when in rows:
            store.record_ses_event(kind, mid, addresses, tenant=tenant, now=when)
        # a second arrival of the same event counts once
        store.record_ses_event("Delivery", "m2", ["c@x.test"], tenant="alpha", now=today)
    return url


def computed(url: str) -> dict[str, figures.Figures]:
    with Store.open(url) as store:
        rows = figures.compute(load_tenants(TENANTS), {}, [], DAY, store)
    return {r.tenant: r for r in rows}


def test_the_days_ses_events_count_by_tenant_and_type(tmp_path: Path) -> None:
    rows = computed(store_with_events(tmp_path))
    assert rows["alpha"].ses == {"delivered": 3, "bounced": 1, "complained": 1}
    assert rows["beta"].ses == {"delivered": 1, "bounced": 0, "complained": 0}
    assert rows["alpha"].as_dict()["ses"] == {"delivered": 3, "bounced": 1, "complained": 1}


def test_prometheus_has_the_ses_events_per_tenant(tmp_path: Path) -> None:
    text = figures.prometheus(list(computed(store_with_events(tmp_path)).values()), 0.0)
    assert "# TYPE mailops_tenant_ses_events_total counter" in text
    assert 'mailops_tenant_ses_events_total{tenant="alpha",type="delivered"} 3' in text
    assert 'mailops_tenant_ses_events_total{tenant="alpha",type="complained"} 1' in text
    assert 'mailops_tenant_ses_events_total{tenant="beta",type="bounced"} 0' in text


def test_the_report_names_what_ses_reported(tmp_path: Path) -> None:
    rows = computed(store_with_events(tmp_path))
    part = {"store_error": "", "rows": [r.as_dict() for r in rows.values()]}
    lines = report_tenants.ses_lines(part)
    assert lines == [
        "alpha: through Amazon SES 3 delivered, 1 bounced, 1 complained "
        "(counted in the columns above too)",
        "beta: through Amazon SES 1 delivered, 0 bounced, 0 complained "
        "(counted in the columns above too)",
    ]
    assert all(line in report_tenants.text_lines(part) for line in lines)


def test_no_ses_events_no_report_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url):
        pass
    rows = computed(url)
    assert rows["alpha"].ses == {"delivered": 0, "bounced": 0, "complained": 0}
    part = {"store_error": "", "rows": [r.as_dict() for r in rows.values()]}
    assert report_tenants.ses_lines(part) == []
