"""mailops dmarc: reading aggregate reports of many reporters' shapes, however wrapped,
storing them once, keeping what cannot be read, and the figures (docs/dmarc.md)."""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.dmarc import aggregate, figures
from mailops.dmarc.commands import read_reports
from mailops.dmarc.unpack import UnpackError, documents, parse_xml
from mailops.store.db import Store
from mailops.tlsrpt.parse import parse as parse_tls
from tests.pgcluster import backend_url
from tests.support import reports as R

DATA = Path(__file__).parent / "data" / "dmarc"
CORPUS = sorted(p for p in DATA.glob("*.xml"))
MALFORMED = sorted((DATA / "malformed").iterdir())
COUNT = re.compile(rb"<(?:\w+:)?count>\s*(\d+)\s*</(?:\w+:)?count>")
RECORD = re.compile(rb"<(?:\w+:)?record>")


def xml_sum(data: bytes) -> tuple[int, int]:
    """The records and the sum of <count> of a report, read with a regular expression,
    not with the parser under test."""
    return len(RECORD.findall(data)), sum(int(n) for n in COUNT.findall(data))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["--config", "/dev/null", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def parsed(rows_text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in rows_text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- the corpus


def test_the_corpus_has_the_reporters_and_variants() -> None:
    names = " ".join(p.name for p in CORPUS)
    for reporter in ("google.com", "outlook.com", "yahoo.com", "mail.ru", "fastmail", "comcast"):
        assert reporter in names
    texts = [p.read_bytes() for p in CORPUS]
    assert any(b"urn:ietf:params:xml:ns:dmarc-2.0" in t and b"<np>" in t for t in texts)
    assert any(t.startswith(b"\xef\xbb\xbf") and b"\r\n" in t for t in texts)
    assert any(b"<dmarc:feedback" in t for t in texts)
    assert any(t.count(b"<dkim>") > t.count(b"<record>") * 2 for t in texts)  # several dkim


@pytest.mark.parametrize("how", R.WRAPS)
def test_every_real_shape_parses_to_the_xmls_sum(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for i, src in enumerate(CORPUS):
        target = tmp_path / f"{i}.{how}"
        target.write_bytes(R.wrap(src.read_bytes(), how, src.name))
        files.append(target)
    rc, out, err = run(["dmarc", "parse", *map(str, files), "--json"], capsys)
    assert rc == 0, err
    rows = parsed(out)
    for src, target in zip(CORPUS, files, strict=True):
        mine = [r for r in rows if r["file"] == str(target)]
        records, total = xml_sum(src.read_bytes())
        assert len(mine) == records, src.name
        assert sum(r["count"] for r in mine) == total, src.name
        assert all(list(r) == list(R_FIELDS) for r in mine)


R_FIELDS = (
    "file",
    "org_name",
    "report_id",
    "policy_domain",
    "begin",
    "end",
    "source_ip",
    "count",
    "disposition",
    "dkim",
    "spf",
    "header_from",
)


def one(name: str) -> aggregate.DmarcReport:
    return aggregate.parse(next(p for p in CORPUS if p.name.startswith(name)).read_bytes())


def test_google_fields() -> None:
    rep = one("google.com")
    assert (rep.org_name, rep.report_id, rep.policy_domain) == (
        "google.com",
        "8149264935128530121",
        "company.test",
    )
    assert (rep.begin, rep.end) == (1796515200, 1796601599)
    assert rep.policy["np"] == "quarantine"
    r = rep.records[2]
    assert (r.source_ip, r.count, r.dkim, r.spf, r.reasons) == (
        "2001:db8:4:1::25",
        12,
        "pass",
        "fail",
        ("forwarded",),
    )
    assert r.passed and not rep.records[3].passed


def test_microsoft_several_dkim_and_identifiers() -> None:
    rep = one("enterprise.protection.outlook.com")
    assert rep.version == "1.0"
    r = rep.records[1]
    assert [a.domain for a in r.auth if a.method == "dkim"] == [
        "company.test",
        "mailer.example.net",
    ]
    assert (r.envelope_to, r.envelope_from, r.disposition) == (
        "hotmail.test",
        "company.test",
        "quarantine",
    )


def test_quirks_are_trimmed_and_lowered() -> None:
    rep = one("comcast.net")
    assert rep.org_name == "comcast.net"
    assert rep.report_id == "comcast.net:1796601600:company.test"
    assert rep.policy_domain == "company.test"
    r = rep.records[0]
    assert (r.source_ip, r.count, r.disposition, r.dkim, r.spf, r.header_from) == (
        "198.51.100.10",
        9,
        "none",
        "pass",
        "pass",
        "company.test",
    )


def test_dmarcbis_draft() -> None:
    rep = one("dmarcbis")
    assert rep.version == "2.0"
    assert rep.policy["testing"] == "n" and rep.policy["discovery_method"] == "treewalk"
    assert rep.policy["np"] == "reject"
    assert [r.disposition for r in rep.records] == ["pass", "quarantine"]
    assert rep.records[1].reasons == ("policy_test_mode",)


def test_prefixed_namespace_and_latin1() -> None:
    rep = one("freenet.de")
    assert rep.org_name == "Freenet Gesellschaft für Kommunikation"
    assert [(r.source_ip, r.count) for r in rep.records] == [("198.51.100.21", 6)]


def test_missing_optional_parts() -> None:
    rep = one("mx.smallisp")
    assert rep.records[1].auth == ()
    assert rep.records[0].auth[0].method == "spf"
    empty = one("empty-report")
    assert empty.records == () and empty.email == ""


# --------------------------------------------------------------------------- bad input


def test_malformed_files_each_get_an_error_and_the_next_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = CORPUS[0]
    files = [str(good)]
    for bad in MALFORMED:
        files += [str(bad), str(good)]
    rc, out, err = run(["dmarc", "parse", *files, "--json"], capsys)
    assert rc == exitcodes.DATAERR
    assert len(parsed(out)) == (len(MALFORMED) + 1) * xml_sum(good.read_bytes())[0]
    lines = err.splitlines()
    assert len(lines) == len(MALFORMED), err
    for bad, line in zip(MALFORMED, lines, strict=True):
        assert line.startswith(f"mailops dmarc parse: {bad}: "), line
    said = dict(zip((b.name for b in MALFORMED), lines, strict=True))
    assert "DTD" in said["billion-laughs.xml"] and "DTD" in said["external-entity.xml"]
    assert "report_id" in said["no-report-id.xml"]
    assert "out of range" in said["negative-count.xml"]
    assert "not an IP address" in said["bad-source-ip.xml"]
    assert "<feedback>" in said["wrong-root.xml"]
    assert "not well-formed" in said["truncated.xml"]
    assert "no XML or JSON report" in said["not-a-report.txt"]


def test_missing_file_is_66_and_the_rest_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(["dmarc", "parse", str(tmp_path / "nope.xml"), str(CORPUS[0])], capsys)
    assert rc == exitcodes.NOINPUT
    assert "nope.xml" in err and out


def test_entities_are_never_expanded() -> None:
    with pytest.raises(UnpackError, match="DTD"):
        parse_xml(b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>')
    with pytest.raises(UnpackError):
        parse_xml(b"<a>&undefined;</a>")


@pytest.mark.parametrize("how", ["gzip", "zip", "zip_gz", "eml_gzip"])
def test_compression_bombs_stop_at_the_cap(how: str) -> None:
    big = b"<feedback>" + b" " * (8 * 1024 * 1024) + b"</feedback>"
    packed = R.wrap(big, how)
    assert len(packed) < 200_000
    start = time.monotonic()
    with pytest.raises(UnpackError, match="decompressed"):
        documents(packed, limit=1024 * 1024)
    assert time.monotonic() - start < 5
    assert documents(packed, limit=16 * 1024 * 1024)  # under the cap it reads


def test_the_cap_comes_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text("[reports]\nmax_report_bytes = 2048\n")
    f = tmp_path / "g.xml.gz"
    largest = max(CORPUS, key=lambda p: p.stat().st_size)
    assert largest.stat().st_size > 2048
    f.write_bytes(gzip.compress(largest.read_bytes()))
    rc = cli.main(["--config", str(cfg), "dmarc", "parse", str(f)])
    assert rc == exitcodes.DATAERR
    assert "decompressed" in capsys.readouterr().err


def test_a_zip_with_too_many_members_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(60):
            zf.writestr(f"{i}.xml", "<feedback/>")
    with pytest.raises(UnpackError, match="members"):
        documents(buf.getvalue())


# --------------------------------------------------------------------------- differential


@pytest.mark.parametrize("seed", range(120))
def test_generated_reports_in_every_shape_and_wrap(seed: int) -> None:
    rng = random.Random(seed)
    meta, records = R.random_dmarc(rng, rng.randrange(0, 25))
    shape = R.SHAPES[seed % len(R.SHAPES)]
    how = R.WRAPS[(seed // len(R.SHAPES)) % len(R.WRAPS)]
    xml = R.dmarc_xml(meta, records, shape)
    found = read_reports(R.wrap(xml, how), "dmarc")
    assert found.errors == [], (shape, how)
    [(_, rep)] = found.reports
    assert (rep.org_name, rep.report_id, rep.policy_domain, rep.begin, rep.end) == (
        meta.org_name,
        meta.report_id,
        meta.domain,
        meta.begin,
        meta.end,
    )
    assert rep.messages == sum(r.count for r in records) == xml_sum(xml)[1]
    got = [(r.source_ip, r.count, r.disposition, r.dkim, r.spf, r.header_from) for r in rep.records]
    want = [
        (r.source_ip, r.count, R.shown_disposition(shape, r), r.dkim, r.spf, r.header_from)
        for r in records
    ]
    assert got == want
    assert [len(r.auth) for r in rep.records] == [
        len(r.dkim_results) + len(r.spf_results) for r in records
    ]


def test_a_mail_with_two_reports_gives_both() -> None:
    rng = random.Random(7)
    a = R.dmarc_xml(*R.random_dmarc(rng, 3), "google")
    b = R.dmarc_xml(*R.random_dmarc(rng, 4), "yahoo")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.xml", a)
        zf.writestr("b.xml.gz", gzip.compress(b))
    mail = R.report_mail(buf.getvalue(), "two.zip", "application/zip")
    found = read_reports(mail, "dmarc")
    assert found.errors == []
    assert [len(rep.records) for _, rep in found.reports] == [3, 4]


# --------------------------------------------------------------------------- the store


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_report_stored_twice_counts_once(backend: str, tmp_path: Path) -> None:
    rep = one("google.com")
    with Store.open(backend_url(backend, tmp_path), timeout=5) as s:
        assert s.record_dmarc(rep, now=1000) == (4, 0)
        assert s.record_dmarc(rep, now=2000) == (0, 4)
        rows = s.dmarc_records()
        assert len(rows) == 4
        assert sum(r["messages"] for r in rows) == rep.messages
        tls = parse_tls(next((DATA.parent / "tlsrpt").glob("microsoft*")).read_bytes())
        assert s.record_tlsrpt(tls, now=1000) == (2, 0)
        assert s.record_tlsrpt(tls, now=1000) == (0, 2)
        assert [p["failures"] for p in s.tlsrpt_policies()] == [{}, {"starttls-not-supported": 4}]
        mail = b"Subject: x\n\n\x00\xff binary"
        assert s.quarantine_report("dmarc", mail, raw_sha256="f" * 64, raw_size=9, error="e")
        assert not s.quarantine_report("dmarc", mail, raw_sha256="f" * 64, raw_size=9, error="e")
        [kept] = s.quarantined_reports(with_message=True)
        assert kept["message"] == mail and kept["subject"] == ""


def write_cfg(tmp_path: Path, url: str | None = None, extra: str = "") -> Path:
    cfg = tmp_path / "mailops.toml"
    url = url or f"sqlite:///{tmp_path}/db.sqlite"
    cfg.write_text(
        f'[store]\nurl = "{url}"\ntimeout = 1\n'
        '[reports]\nplanned_sources = ["198.51.100.10", "198.51.100.21", "198.51.100.22",'
        ' "198.51.100.120/29", "198.51.100.130/29"]\nin_report = true\n' + extra
    )
    return cfg


def pipe(cfg: Path, data: bytes, kind: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("MAILOPS_PIPE", "1")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return cli.main(
        ["--config", str(cfg), kind, "ingest", "--sender", "r@reporter.example",
         "--envelope-to", f"{kind}@company.test"]
    )  # fmt: skip


def test_the_pipe_stores_once_and_keeps_what_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    src = next(p for p in CORPUS if p.name.startswith("google.com")).read_bytes()
    mail = R.wrap(src, "eml_zip", "google.com!company.test!1!2.xml")
    assert pipe(cfg, mail, "dmarc", monkeypatch) == 0
    assert pipe(cfg, mail, "dmarc", monkeypatch) == 0  # the same report again
    bad = R.report_mail(b"\x1f\x8b broken", "r.xml.gz", "application/gzip")
    assert pipe(cfg, bad, "dmarc", monkeypatch) == 0
    assert pipe(cfg, bad, "dmarc", monkeypatch) == 0
    human = b"From: a@b.example\nSubject: hello\n\nplease stop sending reports\n"
    assert pipe(cfg, human, "dmarc", monkeypatch) == 0
    err = capsys.readouterr().err
    assert "4 new records" in err and "0 new records, 4 stored before" in err
    with Store.open(f"sqlite:///{tmp_path}/db.sqlite") as s:
        rows = s.dmarc_records()
        assert len(rows) == 4 and sum(r["messages"] for r in rows) == xml_sum(src)[1]
        kept = s.quarantined_reports(with_message=True)
    assert [q["message"] for q in kept] == [bad, human]
    assert "gzip" in kept[0]["error"] and "no XML or JSON report" in kept[1]["error"]
    assert kept[0]["sender"] == "r@reporter.example"
    rc = cli.main(["--config", str(cfg), "dmarc", "quarantine"])
    listing = capsys.readouterr().out
    assert rc == 0 and f"#{kept[0]['id']}" in listing
    rc = cli.main(["--config", str(cfg), "dmarc", "quarantine", "--show", str(kept[1]["id"])])
    assert rc == 0


def test_a_store_outage_is_tempfail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path, url=f"sqlite:///{tmp_path}/no/such/dir/db.sqlite")
    mail = R.wrap(CORPUS[0].read_bytes(), "eml_gzip")
    assert pipe(cfg, mail, "dmarc", monkeypatch) == exitcodes.TEMPFAIL
    bad = R.report_mail(b"junk", "r.xml", "text/xml")
    assert pipe(cfg, bad, "dmarc", monkeypatch) == exitcodes.TEMPFAIL  # kept queued, not lost
    assert "store unavailable" in capsys.readouterr().err


def test_figures_name_the_sources_outside_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    for src in CORPUS:
        assert pipe(cfg, R.wrap(src.read_bytes(), "eml_gzip", src.name), "dmarc", monkeypatch) == 0
    capsys.readouterr()
    rc = cli.main(["--config", str(cfg), "dmarc", "figures", "--format", "json"])
    fig = json.loads(capsys.readouterr().out)
    assert rc == 0
    by = {d["domain"]: d for d in fig["dmarc"]}
    company = by["company.test"]
    outside = {o["source_ip"]: o for o in company["outside"]}
    assert set(outside) == {"2001:db8:4:1::25", "203.0.113.77", "192.0.2.200", "192.0.2.45",
                            "2001:db8:ffff::9"}  # fmt: skip
    assert outside["203.0.113.77"] == {
        "source_ip": "203.0.113.77",
        "messages": 3,
        "passed": 0,
        "failed": 3,
        "reporters": ["google.com"],
    }
    assert {o["source_ip"] for o in by["beta.test"]["outside"]} == {"192.0.2.131"}
    assert {o["source_ip"] for o in by["alpha.test"]["outside"]} == {"100.64.12.9"}
    total = sum(xml_sum(p.read_bytes())[1] for p in CORPUS)
    assert sum(d["messages"] for d in fig["dmarc"]) == total
    assert sum(d["passed"] + d["failed"] for d in fig["dmarc"]) == total
    rc = cli.main(["--config", str(cfg), "dmarc", "figures", "--format", "prometheus"])
    prom = capsys.readouterr().out
    assert 'mailops_dmarc_outside_sources{domain="company.test",window="24h"} 5' in prom
    assert (
        'mailops_dmarc_outside_messages{domain="company.test",source="203.0.113.77",'
        'result="fail",window="24h"} 3' in prom
    )
    fail = 'mailops_dmarc_messages{domain="company.test",result="fail",window="24h"} '
    assert fail + str(company["failed"]) in prom.splitlines()


def test_planned_networks() -> None:
    planned = figures.planned_networks(["198.51.100.10", "2001:db8::/32"])
    assert figures.is_planned("198.51.100.10", planned)
    assert not figures.is_planned("198.51.100.11", planned)
    assert figures.is_planned("2001:db8:1::5", planned)
    assert not figures.is_planned("not-an-ip", planned)


@pytest.mark.parametrize("fmt", ["text", "html"])
def test_the_daily_report_names_the_outside_sources(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    for src in CORPUS:
        assert pipe(cfg, R.wrap(src.read_bytes(), "eml_zip", src.name), "dmarc", monkeypatch) == 0
    log = tmp_path / "mail.log"
    log.write_text("")
    capsys.readouterr()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    argv = ["--config", str(cfg), "report", "--log", str(log), "--day", today, "--format", fmt]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "203.0.113.77" in out and "192.0.2.131" in out
    assert "198.51.100.21" not in out  # a planned address is not named
    if fmt == "text":
        section = out.split("DMARC and TLS Reports Received", 1)[1]
        line = next(x for x in section.splitlines() if x.strip().startswith("company.test "))
        with Store.open(f"sqlite:///{tmp_path}/db.sqlite") as s:
            rows = [r for r in s.dmarc_records() if r["policy_domain"] == "company.test"]
        passed = sum(r["messages"] for r in rows if "pass" in (r["dkim"], r["spf"]))
        failed = sum(r["messages"] for r in rows) - passed
        assert line.split()[-2:] == [str(passed), str(failed)]
    # another day's report has none of today's reports
    argv[argv.index(today)] = "2020-01-01"
    assert cli.main(argv) == 0
    assert "203.0.113.77" not in capsys.readouterr().out


def test_stored_lists_what_the_pipes_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    src = next(p for p in CORPUS if p.name.startswith("yahoo")).read_bytes()
    assert pipe(cfg, R.wrap(src, "eml_gzip"), "dmarc", monkeypatch) == 0
    capsys.readouterr()
    assert cli.main(["--config", str(cfg), "dmarc", "stored", "--hours", "1"]) == 0
    rows = parsed(capsys.readouterr().out)
    assert [(r["kind"], r["org_name"], r["record"], r["messages"]) for r in rows] == [
        ("dmarc", "Yahoo", 0, 260),
        ("dmarc", "Yahoo", 1, 243),
        ("dmarc", "Yahoo", 2, 1),
    ]


def test_store_status_counts_the_report_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    assert pipe(cfg, R.wrap(CORPUS[0].read_bytes(), "eml_gzip"), "dmarc", monkeypatch) == 0
    assert pipe(cfg, b"Subject: hi\n\nnothing\n", "dmarc", monkeypatch) == 0
    capsys.readouterr()
    assert cli.main(["--config", str(cfg), "store", "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    records = xml_sum(CORPUS[0].read_bytes())[0]
    assert f"dmarc_records: {records}" in out
    assert "tlsrpt_policies: 0" in out and "report_quarantine: 1" in out
