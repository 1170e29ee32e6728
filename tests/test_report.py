"""mailops report: pflogsumm's grand totals on crafted and generated logs, the outputs."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from mailops import cli, exitcodes
from mailops.config import ConfigError
from mailops.report import build, png, render, tally
from mailops.report.tally import Tally, gimme_domain, said_trim
from tests.support.bench import loggen, pflogsumm_text
from tests.support.report_lines import PIECES, tally_state, trap_log

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "report"
PFLOGSUMM = shutil.which("pflogsumm")
needs_pflogsumm = pytest.mark.skipif(
    PFLOGSUMM is None, reason="pflogsumm is not installed (Debian package pflogsumm)"
)

# The grand totals of tests/data/report/small.log, worked out by hand line by line (and
# what pflogsumm 1.1.5 prints for it).
SMALL_TOTALS = {
    "received": 3,  # two smtpd client= lines and one pickup
    "delivered": 3,  # bob, carol at last, ops (the alias copy); not the forward
    "forwarded": 1,
    "deferred": 1,  # one queue id...
    "deferrals": 2,  # ...deferred twice
    "bounced": 1,
    "rejected": 4,  # smtpd, postscreen, cleanup header, cleanup milter-reject
    "rejected_percent": 50,  # 4 / (3 delivered + 4 rejected + 1 discarded)
    "reject_warnings": 1,
    "held": 1,
    "discarded": 1,
    "discarded_percent": 12,
    "bytes_received": 1800,  # 1000 (counted once, not at the retry) + 500 + 300
    "bytes_delivered": 2700,  # 1000 + 1000 + 700
    "senders": 3,  # Alice@example.com, root@mx1.example.net, from=<>
    "sending_hosts_domains": 3,  # example.com, mx1.example.net, 203.0.113.5 (for <>)
    "recipients": 3,  # bob@gmail.com, carol@outlook.com, ops@gmail.com
    "recipient_hosts_domains": 2,  # gmail.com, outlook.com
}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["--config", os.devnull, "report", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def json_report(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    rc, out, err = run_cli([*argv, "--format", "json"], capsys)
    assert rc == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


# ---------------------------------------------------------------------- hand-checked


def test_small_log_grand_totals_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    rep = json_report(["--log", str(DATA / "small.log"), "--day", "all"], capsys)
    assert rep["totals"] == SMALL_TOTALS
    assert rep["schema"] == "mailops.report/1"
    assert rep["lines"] == 34


def test_small_log_tables(capsys: pytest.CaptureFixture[str]) -> None:
    rep = json_report(["--log", str(DATA / "small.log"), "--day", "all", "--year", "2024"], capsys)
    domains = {d["domain"]: d for d in rep["recipient_domains"]}
    assert domains["gmail.com"] == {
        "domain": "gmail.com",
        "delivered": 2,
        "bytes": 1700,
        "deferred": 0,
        "bounced": 0,
        "avg_delay": 1.0,  # (1.5 + 0.5) / 2
        "max_delay": 1.5,
    }
    assert domains["outlook.com"]["deferred"] == 2
    assert domains["outlook.com"]["max_delay"] == 3601.0
    assert domains["example.org"]["bounced"] == 1
    assert domains["example.org"]["delivered"] == 0
    hours = {h["hour"]: h for h in rep["hourly"]}
    assert hours[10] == {
        "hour": 10,
        "received": 1,
        "delivered": 1,
        "deferred": 2,
        "bounced": 0,
        "rejected": 0,
    }
    assert hours[11]["delivered"] == 2 and hours[11]["received"] == 1
    assert hours[12]["bounced"] == 1
    assert hours[13]["rejected"] == 7  # rejects, the warning, the hold and the discard
    assert rep["daily"] == [
        {
            "date": "2024-11-23",
            "received": 3,
            "delivered": 3,
            "deferred": 2,
            "bounced": 1,
            "rejected": 7,
        }
    ]
    assert rep["sasl"] == {
        "failures": 1,
        "server_faults": 1,
        "clients": [{"client": "203.0.113.16", "failures": 1}],
    }
    senders = {d["domain"]: d for d in rep["sender_domains"]}
    assert senders["example.com"] == {"domain": "example.com", "messages": 1, "bytes": 1000}
    assert senders["203.0.113.5"]["messages"] == 1
    reasons = {(r["action"], r["stage"], r["reason"]) for r in rep["reject_reasons"]}
    assert ("reject", "RCPT", "Relay access denied") in reasons
    assert ("reject", "RCPT", "blocked using zen.dnsbl.test") in reasons
    assert ("reject", "header", "Subject: buy now") in reasons
    assert rep["bounce_reasons"][0]["relay"] == "mx.example.org[198.51.100.3]:25"
    assert rep["deferral_reasons"] == [
        {
            "program": "smtp",
            "reason": "mx.outlook.com[198.51.100.2]:25: Connection timed out",
            "count": 2,
        }
    ]


def test_text_output_is_greppable(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["--log", str(DATA / "small.log"), "--day", "all"], capsys)
    assert rc == 0
    totals = {}
    for line in out.splitlines():
        m = re.match(r"^ +(\d+)  ([a-z /]+)$", line)
        if m and m.group(2) not in totals:
            totals[m.group(2)] = int(m.group(1))
    assert totals["received"] == 3
    assert totals["bytes delivered"] == 2700
    assert totals["recipient hosts/domains"] == 2
    assert "Grand Totals" in out and "Per-Hour Traffic" in out


def test_a_chunk_boundary_anywhere_changes_nothing() -> None:
    data = (DATA / "tricky.log").read_bytes()
    whole = Tally()
    whole.feed_bytes(data)
    whole.flush()
    for step in (1, 7, 64, 333):
        t = Tally()
        for i in range(0, len(data), step):
            t.feed_bytes(data[i : i + step])
        t.flush()
        assert (t.received, t.delivered, t.bytes_received, t.rejected, t.deferrals) == (
            whole.received,
            whole.delivered,
            whole.bytes_received,
            whole.rejected,
            whole.deferrals,
        )
        assert t.lines == whole.lines == data.count(b"\n")


def test_a_last_line_without_newline_counts() -> None:
    t = Tally()
    t.feed_bytes(
        b"Nov 23 10:00:02 mx1 postfix/smtpd[100]: 1A2B3C4D5E: client=a.example.com[192.0.2.1]"
    )
    assert t.received == 0  # still waiting for the rest of the line
    t.flush()
    assert t.received == 1 and t.lines == 1


def test_a_removed_message_keeps_only_its_size_in_the_archive() -> None:
    t = Tally()
    t.feed((DATA / "small.log").read_bytes().splitlines(keepends=True))
    t.flush()
    assert t.sizes == {} and t.clients == {}
    assert sorted(p & t.retired.BIG for p in t.retired.export()[0]) == [300, 500, 700, 1000]


def test_a_reused_queue_id_counts_as_pflogsumm_counts_it() -> None:
    """pflogsumm never forgets a queue id: the same id again (here on another host in the
    same file, after "removed") keeps the first size, its sender is not counted again, and
    its deferral does not make a second deferred message."""
    t = Tally()
    t.feed(
        b"Nov 23 10:00:0%d %s postfix/%s\n" % (n, host, text)
        for n, (host, text) in enumerate(
            [
                (b"mail1", b"smtpd[1]: 4AB: client=a.example[192.0.2.1]"),
                (b"mail1", b"qmgr[2]: 4AB: from=<a@a.example>, size=100, nrcpt=1 (queue active)"),
                (
                    b"mail1",
                    b"smtp[3]: 4AB: to=<x@b.test>, relay=none, delay=1, status=deferred (x)",
                ),
                (b"mail1", b"smtp[3]: 4AB: to=<x@b.test>, relay=m, delay=2, status=sent (ok)"),
                (b"mail1", b"qmgr[2]: 4AB: removed"),
                (b"mail2", b"smtpd[1]: 4AB: client=c.example[192.0.2.3]"),
                (b"mail2", b"qmgr[2]: 4AB: from=<c@c.example>, size=7, nrcpt=1 (queue active)"),
                (
                    b"mail2",
                    b"smtp[3]: 4AB: to=<y@b.test>, relay=none, delay=1, status=deferred (x)",
                ),
                (b"mail2", b"smtp[3]: 4AB: to=<y@b.test>, relay=m, delay=2, status=sent (ok)"),
            ]
        )
    )
    t.flush()
    assert (t.received, t.delivered, t.deferrals, t.deferred) == (2, 2, 2, 1)
    assert (t.bytes_received, t.bytes_delivered, len(t.senders)) == (100, 200, 1)


def test_per_queue_id_state_is_capped() -> None:
    t = Tally(state_cap=100)
    lines = [
        b"Nov 23 10:00:00 mx1 postfix/smtpd[1]: Q%08X: client=h.example[192.0.2.1]\n" % i
        for i in range(1000)
    ]
    t.feed(lines)
    assert t.received == 1000
    assert len(t.clients) <= 100
    assert "queue_ids" in t.truncated


def test_tables_are_capped() -> None:
    t = Tally(cap=10)
    lines = [
        b"Nov 23 10:00:00 mx1 postfix/smtp[1]: Q%08X: to=<u@d%d.example>, relay=x[192.0.2.1]:25, "
        b"delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (ok)\n" % (i, i)
        for i in range(500)
    ]
    t.feed(lines)
    assert len(t.rcpt_domains) <= 20
    assert len(t.recipient_domains) == 500  # the grand total stays exact
    assert "recipient_domains" in t.truncated


def test_gimme_domain_keeps_pflogsumm_quirks() -> None:
    assert gimme_domain(b"mail.gmail.com[192.0.2.1]") == b"gmail.com"
    assert gimme_domain(b"mx.example.co.uk[192.0.2.1]") == b"example.co.uk"
    assert gimme_domain(b"mail.gmail.test[192.0.2.1]") == b"mail.gmail.test"  # 4-letter TLD
    assert gimme_domain(b"unknown[192.0.2.1]") == b"192.0.2.1"
    assert gimme_domain(b"unknown[2001:db8::1]") == b"2001:db8::1"
    assert gimme_domain(b"garbage") is None


def test_said_trim_drops_prefixes_like_pflogsumm() -> None:
    long = b"host mx.example.org[198.51.100.3] said: 550 5.1.1 <x@example.org>: User unknown"
    assert said_trim(long, 66) == b"550 5.1.1 <x@example.org>: User unknown"
    assert said_trim(b"a" * 80, 66) == b"a" * 63 + b"..."


# ---------------------------------------------------------------------- inputs


def test_iso_and_classic_timestamps_agree(tmp_path: Path) -> None:
    classic = tmp_path / "classic.log"
    iso = tmp_path / "iso.log"
    loggen.write(classic, 3000, seed=5)
    loggen.write(iso, 3000, seed=5, fmt="iso")
    a, _ = build.tally_files([classic])
    b, _ = build.tally_files([iso])
    assert (a.received, a.delivered, a.bytes_delivered, len(a.recipients)) == (
        b.received,
        b.delivered,
        b.bytes_delivered,
        len(b.recipients),
    )
    assert a.received > 0
    assert sorted(a.buckets.values()) == sorted(b.buckets.values())


def test_iso_offsets_pflogsumm_skips_are_read() -> None:
    t = Tally()
    t.feed(
        [
            b"2024-11-23T10:00:00+0100 mx1 postfix/smtpd[1]: AAAA: client=a.example[192.0.2.1]\n",
            b"2024-11-23 10:00:00 mx1 postfix/smtpd[1]: BBBB: client=a.example[192.0.2.1]\n",
        ]
    )
    assert t.received == 2


def test_gzip_and_rotated_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (DATA / "small.log").read_bytes().splitlines(keepends=True)
    log = tmp_path / "mail.log"
    log.write_bytes(b"".join(lines[24:]))
    (tmp_path / "mail.log.1").write_bytes(b"".join(lines[11:24]))
    with gzip.open(tmp_path / "mail.log.2.gz", "wb") as fh:
        fh.write(b"".join(lines[:11]))
    (tmp_path / "mail.log.old").write_text("not a rotated name\n")
    assert build.rotated_set(log) == [
        tmp_path / "mail.log.2.gz",
        tmp_path / "mail.log.1",
        log,
    ]
    rep = json_report(["--log", str(log), "--rotated", "--day", "all"], capsys)
    assert rep["totals"] == SMALL_TOTALS
    assert [Path(s["path"]).name for s in rep["sources"]] == [
        "mail.log.2.gz",
        "mail.log.1",
        "mail.log",
    ]
    # a rotated file last written before the day asked for cannot hold its lines
    old = time.time() - 10 * 86400
    os.utime(tmp_path / "mail.log.2.gz", (old, old))
    assert build.rotated_set(log, since=dt.date.today()) == [tmp_path / "mail.log.1", log]


def test_gzip_with_two_members_and_a_truncated_one(tmp_path: Path) -> None:
    data = (DATA / "small.log").read_bytes()
    two = tmp_path / "two.gz"
    two.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    t, _ = build.tally_files([two])
    assert t.received == SMALL_TOTALS["received"] and t.lines == 34
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(data)[:-30])
    with pytest.raises(build.LogError, match="truncated"):
        build.tally_files([cut])


def test_day_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mail.log"
    text = (DATA / "small.log").read_text()
    log.write_text(text + text.replace("Nov 23", "Nov 24"))
    for day, expected in (("2024-11-23", 3), ("2024-11-24", 3), ("all", 6), ("2024-11-25", 0)):
        rep = json_report(["--log", str(log), "--day", day], capsys)
        assert rep["totals"]["received"] == expected, day
    # single-digit days are padded as syslog pads them, or with a zero as Postfix's own
    # maillog_file (postlogd) writes them
    for stamp in ("Dec  3", "Dec 03"):
        log.write_text(text.replace("Nov 23", stamp))
        got = json_report(["--log", str(log), "--day", "2024-12-03"], capsys)["totals"]
        assert got == SMALL_TOTALS, stamp


def test_solaris_ids_are_removed() -> None:
    t = Tally()
    t.feed(
        [
            b"Nov 23 10:00:00 mx1 postfix/smtpd[1]: [ID 197553 mail.info] AAAA: "
            b"client=a.example[192.0.2.1]\n"
        ]
    )
    assert t.received == 1


# ---------------------------------------------------------------------- command line


def test_missing_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["--log", str(tmp_path / "nope.log")], capsys)
    assert rc == exitcodes.NOINPUT
    assert "nope.log: no such file" in err and "Traceback" not in err


def test_bad_day_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["--log", str(DATA / "small.log"), "--day", "last-week"], capsys)
    assert rc == exitcodes.USAGE
    assert "--day" in err


def test_bad_gzip_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.log.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    rc, _, err = run_cli(["--log", str(bad), "--day", "all"], capsys)
    assert rc == exitcodes.NOINPUT
    assert "not a valid gzip file" in err


def test_settings_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "mailops.toml"
    conf.write_text(f'[report]\nlogs = ["{DATA / "small.log"}"]\nday = "all"\nformat = "json"\n')
    rc = cli.main(["--config", str(conf), "report"])
    out, _ = capsys.readouterr()
    assert rc == 0 and json.loads(out)["totals"] == SMALL_TOTALS
    conf.write_text("[report]\nformat = 'pdf'\n")
    assert cli.main(["--config", str(conf), "report"]) == exitcodes.CONFIG
    conf.write_text("[report]\nlog = 'x'\n")
    with pytest.raises(ConfigError, match="unknown key 'log'"):
        from mailops.report import settings

        settings(cli.build_parser().parse_args(["--config", str(conf), "report"]))


def _fake_sendmail(tmp_path: Path) -> Path:
    script = tmp_path / "sendmail"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args"\ncat > "{tmp_path}/mail"\n'
    )
    script.chmod(0o755)
    return script


def test_mail_html_with_inline_charts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sendmail = _fake_sendmail(tmp_path)
    conf = tmp_path / "mailops.toml"
    conf.write_text(f'[report]\nsendmail = "{sendmail}"\nmail_from = "mailops@mx1.example"\n')
    rc = cli.main(
        ["--config", str(conf), "report", "--log", str(DATA / "small.log"), "--day", "all",
         "--format", "html", "--mail-to", "ops@example.com"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "args").read_text().split() == ["-oi", "--", "ops@example.com"]
    msg = email.message_from_bytes((tmp_path / "mail").read_bytes())
    assert msg["To"] == "ops@example.com" and msg["From"] == "mailops@mx1.example"
    assert "3 delivered" in " ".join(msg["Subject"].split())
    assert msg.get_content_type() == "multipart/alternative"
    plain, related = msg.get_payload()  # type: ignore[misc]
    assert isinstance(plain, Message) and isinstance(related, Message)
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()  # type: ignore[misc]
    body = html_part.get_payload(decode=True).decode()
    assert len(images) == 2
    for image in images:
        assert image.get_content_type() == "image/png"
        cid = image["Content-ID"].strip("<>")
        assert f"cid:{cid}" in body
        # shown in the text where the HTML puts it, not offered as an attachment
        assert image.get_content_disposition() == "inline"
        check_png(image.get_payload(decode=True))
    assert "gmail.com" in body and "Grand totals" in body


def test_settings_recipients_mail_only_with_mail_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sendmail = _fake_sendmail(tmp_path)
    conf = tmp_path / "mailops.toml"
    conf.write_text(f'[report]\nsendmail = "{sendmail}"\nmail_to = ["ops@example.com"]\n')
    base = ["--config", str(conf), "report", "--log", str(DATA / "small.log"), "--day", "all"]
    assert cli.main([*base, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"] == SMALL_TOTALS
    assert not (tmp_path / "mail").exists()
    assert cli.main([*base, "--mail"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "args").read_text().split() == ["-oi", "--", "ops@example.com"]
    conf.write_text(f'[report]\nsendmail = "{sendmail}"\n')
    assert cli.main([*base, "--mail"]) == exitcodes.USAGE
    assert "no recipients" in capsys.readouterr().err


def test_mail_without_sendmail_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "mailops.toml"
    conf.write_text(f'[report]\nsendmail = "{tmp_path / "no-sendmail"}"\n')
    rc = cli.main(
        ["--config", str(conf), "report", "--log", str(DATA / "small.log"), "--day", "all",
         "--mail-to", "ops@example.com"]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == exitcodes.CONFIG
    assert "no-sendmail is not an executable file" in err


def test_sendmail_failure_is_temporary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "sendmail"
    script.write_text("#!/bin/sh\necho 'queue full' >&2\nexit 75\n")
    script.chmod(0o755)
    conf = tmp_path / "mailops.toml"
    conf.write_text(f'[report]\nsendmail = "{script}"\n')
    rc = cli.main(
        ["--config", str(conf), "report", "--log", str(DATA / "small.log"), "--day", "all",
         "--mail-to", "ops@example.com"]
    )  # fmt: skip
    assert rc == exitcodes.TEMPFAIL
    assert "queue full" in capsys.readouterr().err


def test_html_format_prints_a_standalone_page(capsys: pytest.CaptureFixture[str]) -> None:
    """--format html: one HTML page that shows everything by itself, charts included."""
    rc, out, _ = run_cli(
        ["--log", str(DATA / "small.log"), "--day", "all", "--format", "html"], capsys
    )
    assert rc == 0
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert "cid:" not in out and "Content-Type" not in out
    srcs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', out)
    assert len(srcs) == 2
    for src in srcs:
        check_png(base64.b64decode(src))
    assert "gmail.com" in out and "Grand totals" in out


def test_mail_format_prints_a_mime_message(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(
        ["--log", str(DATA / "small.log"), "--day", "all", "--format", "mail"], capsys
    )
    assert rc == 0
    msg = email.message_from_string(out)
    types = [part.get_content_type() for part in msg.walk()]
    assert types == [
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "image/png",
    ]
    images = [part for part in msg.walk() if part.get_content_maintype() == "image"]
    assert [part.get_content_disposition() for part in images] == ["inline", "inline"]


def test_a_day_with_no_line_in_the_log_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--day on a log without a line of that day: a warning, not zeros alone."""
    argv = ["--log", str(DATA / "small.log"), "--day", "2024-11-24"]
    rc, out, err = run_cli([*argv, "--format", "json"], capsys)
    assert rc == 0
    rep = json.loads(out)
    assert rep["totals"]["received"] == 0
    assert rep["warnings"] == [
        "no line of 2024-11-24 counted in 34 lines read: check --day and which log was read"
    ]
    assert "warning: no line of 2024-11-24" in err
    rc, out, _ = run_cli([*argv, "--format", "text"], capsys)
    assert "Warning: no line of 2024-11-24" in out.splitlines()[1]
    # a day with lines: no warning
    assert (
        json_report(["--log", str(DATA / "small.log"), "--day", "2024-11-23"], capsys)["warnings"]
        == []
    )


def test_every_option_has_help_and_no_rest_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """mailops report and mailops queues (and its actions): each option says what it is,
    and no description shows reST's double backticks."""

    def commands(
        parser: argparse.ArgumentParser, path: str
    ) -> list[tuple[str, argparse.ArgumentParser]]:
        found = [(path, parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += commands(sub, f"{path} {name}")
        return found

    top = cli.build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    checked = [
        found
        for name in ("report", "queues")
        for found in commands(subs.choices[name], f"mailops {name}")
    ]
    assert [path for path, _ in checked] == [
        "mailops report", "mailops queues", "mailops queues local", "mailops queues collect",
    ]  # fmt: skip
    for path, parser in checked:
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{path} {action.option_strings[0]}: no help"
        assert "``" not in parser.format_help(), path
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    assert "--format {text,json,html,mail}" in capsys.readouterr().out


# ---------------------------------------------------------------------- charts


def check_png(data: bytes) -> tuple[int, int]:
    """Walk the chunks, check every CRC and that the pixels decompress to the right size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    kinds = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        kinds.append(kind)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height = size
    assert len(zlib.decompress(idat)) == height * (width + 1)
    return width, height


def test_charts_are_valid_pngs_that_show_the_data() -> None:
    hourly = [dict.fromkeys(build.HOURLY, 0) | {"hour": h} for h in range(24)]
    hourly[10]["delivered"] = 100
    chart = png.hourly_chart(hourly, build.HOURLY)
    width, height = check_png(chart)
    assert width > 500 and height > 200
    # the delivered bar of hour 10 is drawn in the delivered colour, hour 9 has none
    canvas = _pixels(chart)
    column = 44 + 10 * 26 + 3 + 4  # left + 10 groups + half gap + second bar
    assert png.GREEN in {canvas[y][column] for y in range(30, 228)}
    assert png.GREEN not in {canvas[y][column - 26] for y in range(30, 228)}
    rows = [{"domain": "gmail.com", "delivered": 5, "deferred": 1, "bounced": 0}]
    check_png(png.domains_chart(rows))
    check_png(png.domains_chart([]))


def _pixels(data: bytes) -> list[bytes]:
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return [raw[y * (width + 1) + 1 : (y + 1) * (width + 1)] for y in range(height)]


def test_text_render_has_every_total() -> None:
    t = Tally()
    t.feed((DATA / "small.log").read_bytes().splitlines(keepends=True))
    t.flush()
    rep = build.report(t, [], None)
    text = render.as_text(rep)
    for key, label in render.TOTAL_LINES:
        assert re.search(rf"^ +{rep['totals'][key]}  {re.escape(label)}$", text, re.M), label


# ---------------------------------------------------------------------- generator


def test_loggen_is_deterministic_and_exact(tmp_path: Path) -> None:
    a = list(loggen.generate(2000, seed=11))
    b = list(loggen.generate(2000, seed=11))
    c = list(loggen.generate(2000, seed=12))
    assert a == b and a != c
    assert len(a) == 2000 and all(line.endswith("\n") for line in a)
    text = "".join(a)
    for needle in ("client=", "message-id=", "from=<", "status=sent", "status=deferred",
                   "status=bounced", "NOQUEUE: reject:", "reject_warning", "SASL",
                   ": removed", "forwarded as", "postscreen"):  # fmt: skip
        assert needle in text, needle
    out = tmp_path / "g.log.gz"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loggen.py"), "--lines", "500", "--out", str(out)],
        check=True,
    )
    assert gzip.decompress(out.read_bytes()).decode().count("\n") == 500


# ---------------------------------------------------------------------- on every CPython

SYSTEM_PYTHON = Path("/usr/bin/python3")
# Lines through each optional or repeated group of the line pattern (tally.py): the program
# paths, the optional fields of a delivery, "f" and "]" in a tail, "[" left open.
EDGE_LINES = (
    ("smtps/smtpd[300]", "A1000000A1: client=s.example.net[192.0.2.60]:465"),
    ("submission/smtpd[301]", "A2000000A1: client=sub.example.net[192.0.2.61]"),
    ("smtpd[302]", "connect from f.example.net[192.0.2.62]:5555"),
    ("smtpd[302]", "lost connection after DATA from [192.0.2.62"),
    ("qmgr[102]", "A1000000A1: from=<f@Example.NET>, size=610, nrcpt=2 (queue active)"),
    ("smtp[303]", "A1000000A1: to=<o@ex.test>, orig_to=<p@ex.test>, relay=mx[198.51.100.60]:25, "
     "conn_use=3, delay=0.4, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4Xyzf0)"),
    ("local[304]", "A1000000A1: to=<q@ex.test>, relay=local, delay=0.5, delays=0/0/0/0.5, "
     "dsn=2.0.0, status=sent (forwarded as 5F6A7B8C9D)"),
    ("smtpd[305]", "NOQUEUE: reject: RCPT from unknown[203.0.113.60]: 554 5.7.1 Service "
     "unavailable; client [203.0.113.60] blocked using bl.test; from=<a@b> to=<c@d> helo=<h>"),
    ("smtpd[305]", "NOQUEUE: reject_warning: RCPT from unknown[203.0.113.61]: <c@d>: Sender "
     "address rejected: f; from=<a@b> to=<c@d> proto=ESMTP helo=<[x]>"),
    ("qmgr[102]", "A1000000A1: removed"),
)  # fmt: skip


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3")
def test_the_system_python_counts_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The production hosts run the report under Debian's python3 (3.11.2 in Debian 12), whose
    ``re`` misreads possessive groups that 3.11.5+ read right: the report must not differ."""
    if os.path.realpath(SYSTEM_PYTHON) == os.path.realpath(sys.executable):
        pytest.skip(f"{SYSTEM_PYTHON} is the interpreter running these tests")
    log = tmp_path / "mail.log"
    with log.open("w") as fh:
        for name in ("small.log", "tricky.log"):
            fh.write((DATA / name).read_text())
        for n, (program, text) in enumerate(EDGE_LINES):
            fh.write(f"Nov 23 11:00:{n:02d} mx1 postfix/{program}: {text}\n")
        fh.writelines(loggen.generate(3000, seed=21))
    argv = ["--log", str(log), "--day", "all"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT / "scripts")
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), "-s", "-m", "mailops", "--config", os.devnull, "report", *argv,
         "--format", "json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0:
        old = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            check=False,
        )
        if old.returncode:
            pytest.skip(f"{SYSTEM_PYTHON} is older than the 3.11 mailops requires")
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)
    ours = json_report(argv, capsys)
    assert theirs["totals"] == ours["totals"]
    del theirs["generated_at"], ours["generated_at"]
    assert theirs == ours


def test_possessive_repeats_follow_a_single_character() -> None:
    """``(...)*+``, ``(...)++``, ``(...)?+`` are read wrong by Python 3.11.0-3.11.4 (tally.py)."""
    patterns = [v for v in vars(tally).values() if isinstance(v, re.Pattern)]
    patterns += [tally.line_pattern(), tally.line_pattern("postfix-out", tally.DaySpec(2024, 1, 2))]
    for pattern in patterns:
        found = re.search(rb"(?<!\\)\)(?:[?*+]|\{[\d,]*\})\+", pattern.pattern)
        assert found is None, pattern.pattern[max(0, found.start() - 50) : found.end()]


# ---------------------------------------------------------------------- the fast paths


def test_trap_lines_count_as_pflogsumm_counts_them() -> None:
    """What pflogsumm 1.1.5 prints for TRAP_LINES, worked out line by line."""
    t = Tally()
    t.feed(trap_log().encode().splitlines(keepends=True))
    t.flush()
    assert (t.received, t.delivered, t.forwarded) == (1, 5, 1)  # pickup D4; the to=< lines
    assert (t.rejected, t.reject_warnings, t.discarded) == (3, 1, 1)  # reject, milter-reject...
    assert (t.bytes_received, len(t.senders), t.sasl_failures) == (5, 1, 1)  # smtpd's only
    # a program name that holds a whole delivery is read as pflogsumm reads it
    assert b"x.example" in t.rcpt_domains


def reference(data: bytes, syslog_name: str = "postfix") -> Tally:
    """Every line through pflogsumm's own split and chain of tests (``Tally._line``),
    none through the buffer pattern."""
    t = Tally(syslog_name)
    head = re.compile(rb"(" + tally._CLASSIC_TS + b"|" + tally._ISO_TS + b")" + tally._AFTER_TS)
    name = re.escape(syslog_name.encode())
    split = re.compile(
        rb"(?:postfix|" + name + rb")(?:/(?:smtps|submission))?/([^\[:]*).*?: ([^:\s]+)"
    )
    script = re.compile(rb"(postfix(?:-script)?)(?:\[\d+\])?: ([^:\s]+)")
    for line in data.split(b"\n"):
        m = head.match(line)
        s = m and (split.match(line, m.end()) or script.match(line, m.end()))
        if m and s:
            t._line(line[m.end() :], s.group(1), s.group(2), m.group(1))
    t.lines = data.count(b"\n")
    return t


def test_fast_paths_count_as_pflogsumms_chain(tmp_path: Path) -> None:
    """The buffer pattern drops a line, or reads it without ``Tally._line``, only where
    pflogsumm's chain of tests would count it alike: a generated log with pieces of the
    patterns pflogsumm counts with put in its lines, its programs and its queue ids."""
    import random

    rnd = random.Random(7)
    lines = loggen.generate(6000, seed=13)
    out = [trap_log()]
    for line in lines:
        if rnd.random() < 0.5:
            at = line.find("]: ") + 3 if rnd.random() < 0.4 else rnd.randrange(len(line))
            if rnd.random() < 0.2:  # the program's name
                at = line.find("/", 20) + 2
            line = line[:at] + rnd.choice(PIECES) + line[at:]
        out.append(line)
    data = "".join(out).encode()
    for syslog_name in ("postfix", "postfix-out"):
        fast = Tally(syslog_name)
        fast.feed_bytes(data)
        fast.flush()
        assert tally_state(fast) == tally_state(reference(data, syslog_name))


def pflogsumm_totals(args: list[str]) -> dict[str, str]:
    """pflogsumm's Grand Totals as printed (numbers above 512k come in k or m)."""
    assert PFLOGSUMM is not None
    proc = subprocess.run(
        [PFLOGSUMM, *args], capture_output=True, text=True, check=True, timeout=600
    )
    return pflogsumm_text.grand_totals(proc.stdout)


def test_pflogsumm_grand_totals_are_read_with_their_units() -> None:
    """The reader of pflogsumm's output keeps k and m, the percentages and the deferrals,
    and refuses output without the section (so a comparison never passes on nothing)."""
    text = (
        "Postfix log summaries\n\nGrand Totals\n------------\nmessages\n\n"
        "    612k  received\n      7   deferred  (1029k deferrals)\n"
        "     12   rejected (3%)\n      0   discarded (0%)\n\n"
        "    844m  bytes received\n      2   recipient hosts/domains\n\n\n"
        "Per-Hour Traffic Summary\n    1   ignored\n"
    )
    assert pflogsumm_text.grand_totals(text) == {
        "received": "612k",
        "deferred": "7",
        "deferrals": "1029k",
        "rejected": "12",
        "rejected_percent": "3",
        "discarded": "0",
        "discarded_percent": "0",
        "bytes_received": "844m",
        "recipient_hosts_domains": "2",
    }
    assert pflogsumm_text.grand_totals("Grand Totals\n\n  3   held\n")["deferrals"] == "0"
    with pytest.raises(ValueError, match="no Grand Totals"):
        pflogsumm_text.grand_totals("pflogsumm: usage\n")
    assert [pflogsumm_text.in_units(v) for v in (524288, 524289, 536870913)] == [
        "524288",
        "512k",
        "512m",
    ]


def compare(ours: dict[str, int], theirs: dict[str, str]) -> None:
    names = {
        "received": "received",
        "delivered": "delivered",
        "forwarded": "forwarded",
        "deferred": "deferred",
        "deferrals": "deferrals",
        "bounced": "bounced",
        "rejected": "rejected",
        "rejected_percent": "rejected_percent",
        "reject_warnings": "reject_warnings",
        "held": "held",
        "discarded": "discarded",
        "discarded_percent": "discarded_percent",
        "bytes_received": "bytes_received",
        "bytes_delivered": "bytes_delivered",
        "senders": "senders",
        "sending_hosts_domains": "sending_hosts_domains",
        "recipients": "recipients",
        "recipient_hosts_domains": "recipient_hosts_domains",
    }
    assert set(names) == set(ours), "every grand total is compared"
    mine = {
        k: (str(v) if k.endswith("_percent") else pflogsumm_text.in_units(v))
        for k, v in ours.items()
    }
    assert {k: mine[k] for k in names} == {k: theirs[v] for k, v in names.items()}


@needs_pflogsumm
@pytest.mark.parametrize("name", ["small.log", "tricky.log"])
def test_crafted_logs_match_pflogsumm(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rep = json_report(["--log", str(DATA / name), "--day", "all"], capsys)
    compare(rep["totals"], pflogsumm_totals([str(DATA / name)]))


@needs_pflogsumm
@pytest.mark.parametrize(("fmt", "seed"), [("syslog", 3), ("iso", 4)])
def test_generated_log_matches_pflogsumm(
    fmt: str, seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = loggen.write(tmp_path / "mail.log", 50_000, seed=seed, fmt=fmt)
    rep = json_report(["--log", str(log), "--day", "all"], capsys)
    compare(rep["totals"], pflogsumm_totals([str(log)]))
    assert rep["totals"]["received"] > 4000 and rep["totals"]["deferrals"] > 100


@needs_pflogsumm
@pytest.mark.parametrize("day", ["today", "yesterday"])
def test_day_filter_matches_pflogsumm(
    day: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Local-time syslog stamps over yesterday and today; both tools keep one day.

    The stamps span as much of yesterday as of today (at most 12 hours each), so just
    after midnight, when today is minutes old, both days still get half the lines."""
    now = time.time()
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    span = max(min(now - midnight, 12 * 3600), 120)
    log = tmp_path / "mail.log"
    loggen.write_log(log, 30_000, midnight - span, midnight + span, seed=9)
    rep = json_report(["--log", str(log), "--day", day], capsys)
    assert rep["totals"]["received"] > 100
    compare(rep["totals"], pflogsumm_totals(["-d", day, str(log)]))


@needs_pflogsumm
@pytest.mark.slow
def test_a_million_lines_match_pflogsumm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = loggen.write(tmp_path / "mail.log", 1_000_000, seed=1)
    rep = json_report(["--log", str(log), "--day", "all"], capsys)
    assert rep["lines"] == 1_000_000
    compare(rep["totals"], pflogsumm_totals([str(log)]))
