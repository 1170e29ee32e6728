"""mailops tlsrpt: TLS-RPT reports (RFC 8460) of several reporters' shapes, however
wrapped; the pipe on tlsrpt@; failures by type in the figures (docs/dmarc.md)."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.dmarc.commands import read_reports
from mailops.store.db import Store
from mailops.tlsrpt.parse import parse
from tests.support import reports as R

DATA = Path(__file__).parent / "data" / "tlsrpt"
CORPUS = sorted(DATA.glob("*.json"))
MALFORMED = sorted((DATA / "malformed").iterdir())
FIELDS = [
    "file",
    "organization_name",
    "report_id",
    "policy_domain",
    "policy_type",
    "total_successful_session_count",
    "total_failure_session_count",
]


def summaries(data: bytes) -> list[tuple[str, int, int]]:
    """(policy-domain, successful, failed) of each policy, straight from the JSON."""
    doc = json.loads(data.decode("utf-8-sig"))
    return [
        (
            p["policy"]["policy-domain"],
            p["summary"]["total-successful-session-count"],
            p["summary"]["total-failure-session-count"],
        )
        for p in doc["policies"]
    ]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["--config", "/dev/null", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("how", R.TLS_WRAPS)
def test_every_shape_parses_to_the_jsons_counts(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(CORPUS) >= 3
    files = []
    for i, src in enumerate(CORPUS):
        f = tmp_path / f"{i}.{how}"
        f.write_bytes(R.wrap(src.read_bytes(), how, src.name))
        files.append(f)
    rc, out, err = run(["tlsrpt", "parse", *map(str, files), "--json"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    for src, f in zip(CORPUS, files, strict=True):
        mine = [r for r in rows if r["file"] == str(f)]
        assert [list(r) for r in mine] == [FIELDS] * len(mine)
        got = [
            (
                r["policy_domain"],
                r["total_successful_session_count"],
                r["total_failure_session_count"],
            )
            for r in mine
        ]
        assert got == summaries(src.read_bytes()), src.name


def test_failure_details_are_summed_by_type() -> None:
    ms = parse(next(p for p in CORPUS if p.name.startswith("microsoft")).read_bytes())
    assert ms.organization_name == "Microsoft Corporation"
    assert [(p.policy_type, p.policy_domain, p.failures) for p in ms.policies] == [
        ("sts", "company.test", {}),
        ("no-policy-found", "alpha.test", {"starttls-not-supported": 4}),
    ]
    google = parse(next(p for p in CORPUS if p.name.startswith("google")).read_bytes())
    assert google.policies[0].failures == {"certificate-expired": 2, "validation-failure": 1}
    assert (google.begin, google.end) == (1796515200, 1796601599)
    small = parse(next(p for p in CORPUS if p.name.startswith("smallisp")).read_bytes())
    assert small.policies[0].mx_hosts == ("mx1.company.test",)  # a string, not a list
    assert small.policies[0].policy_type == "tlsa"


def test_malformed_each_get_an_error_and_the_next_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = CORPUS[0]
    files = [str(good)]
    for bad in MALFORMED:
        files += [str(bad), str(good)]
    rc, out, err = run(["tlsrpt", "parse", *files, "--json"], capsys)
    assert rc == exitcodes.DATAERR
    assert len(out.splitlines()) == (len(MALFORMED) + 1) * len(summaries(good.read_bytes()))
    lines = err.splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [str(b) for b in MALFORMED]
    said = dict(zip((b.name for b in MALFORMED), lines, strict=True))
    assert "total-successful-session-count" in said["negative-count.json"]
    assert "date-range" in said["no-date-range.json"]
    assert "not valid JSON" in said["truncated.json"]
    assert "not a JSON object" in said["not-an-object.json"]


@pytest.mark.parametrize("seed", range(60))
def test_generated_reports(seed: int) -> None:
    rng = random.Random(seed)
    kinds = [
        "starttls-not-supported",
        "certificate-expired",
        "validation-failure",
        "sts-webpki-invalid",
    ]
    policies = []
    for _ in range(rng.randrange(0, 5)):
        failures = {k: rng.randrange(1, 1000) for k in rng.sample(kinds, rng.randrange(0, 3))}
        policies.append(
            (
                rng.choice(["sts", "tlsa", "no-policy-found"]),
                rng.choice(["company.test", "alpha.test"]),
                rng.randrange(0, 10**6),
                sum(failures.values()),
                failures,
            )
        )
    data = R.tlsrpt_json("Org", f"id-{seed}", policies, pretty=bool(seed % 2))
    how = R.TLS_WRAPS[seed % len(R.TLS_WRAPS)]
    found = read_reports(R.wrap(data, how, "r.json"), "tlsrpt")
    assert found.errors == []
    [(_, rep)] = found.reports
    assert [
        (p.policy_type, p.policy_domain, p.successful, p.failed, p.failures) for p in rep.policies
    ] == policies


def write_cfg(tmp_path: Path, url: str | None = None) -> Path:
    cfg = tmp_path / "mailops.toml"
    cfg.write_text(f'[store]\nurl = "{url or f"sqlite:///{tmp_path}/db.sqlite"}"\ntimeout = 1\n')
    return cfg


def pipe(cfg: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("MAILOPS_PIPE", "1")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return cli.main(["--config", str(cfg), "tlsrpt", "ingest", "--sender", "tls@reporter.example"])


def test_the_pipe_stores_policies_once_and_the_figures_count_failures_by_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    for src in CORPUS:
        mail = R.wrap(src.read_bytes(), "eml_gzip", src.name)
        assert pipe(cfg, mail, monkeypatch) == 0
        assert pipe(cfg, mail, monkeypatch) == 0
    assert pipe(cfg, R.report_mail(b"{oops", "r.json", "application/json"), monkeypatch) == 0
    with Store.open(f"sqlite:///{tmp_path}/db.sqlite") as s:
        rows: list[dict[str, Any]] = s.tlsrpt_policies()
        kept = s.quarantined_reports()
    assert len(rows) == sum(len(summaries(p.read_bytes())) for p in CORPUS)
    assert [q["kind"] for q in kept] == ["tlsrpt"] and "not valid JSON" in kept[0]["error"]
    capsys.readouterr()
    assert cli.main(["--config", str(cfg), "dmarc", "figures", "--format", "json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    by = {t["domain"]: t for t in fig["tlsrpt"]}
    assert by["company.test"]["failures"] == {
        "certificate-expired": 2,
        "validation-failure": 1,
        "tlsa-invalid": 2,
    }
    assert by["alpha.test"]["failures"] == {"starttls-not-supported": 4}
    assert by["company.test"]["successful"] == 5126 + 311 + 40
    assert cli.main(["--config", str(cfg), "dmarc", "figures", "--format", "prometheus"]) == 0
    prom = capsys.readouterr().out.splitlines()
    assert (
        'mailops_tlsrpt_failures{domain="company.test",type="certificate-expired",window="24h"} 2'
        in prom
    )
    assert 'mailops_reports_quarantined{window="24h"} 1' in prom


def test_a_store_outage_is_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_cfg(tmp_path, f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    assert pipe(cfg, R.wrap(CORPUS[0].read_bytes(), "eml_gzip"), monkeypatch) == exitcodes.TEMPFAIL
