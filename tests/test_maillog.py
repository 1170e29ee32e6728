"""mailops.maillog: time stamps and their year, gzip reading, rotated sets."""

from __future__ import annotations

import datetime as dt
import gzip
import time
from pathlib import Path

import pytest

from mailops.maillog import files
from mailops.maillog.stamps import line_time, pflogsumm_year, stamp_time
from mailops.suppression import log_time
from mailops.tenants.figures import _log_time

# 2 January 2026, noon, local time
NOW = time.mktime((2026, 1, 2, 12, 0, 0, 0, 0, -1))
# 10 March 2029 (2028 was a leap year, 2029 is not)
MARCH_2029 = time.mktime((2029, 3, 10, 12, 0, 0, 0, 0, -1))


def local(*when: int) -> float:
    return time.mktime((*when, 0, 0, -1))  # type: ignore[arg-type]


def test_the_one_year_rule_for_classic_stamps() -> None:
    assert stamp_time(b"Jan  2 11:00:00", NOW) == NOW - 3600
    # up to two days ahead is a clock a little fast: this year
    assert stamp_time(b"Jan  4 11:00:00", NOW) == local(2026, 1, 4, 11, 0, 0)
    # further ahead is last year's (a December line read in January)
    assert stamp_time(b"Jan  5 11:00:00", NOW) == local(2025, 1, 5, 11, 0, 0)
    assert stamp_time(b"Dec 31 23:00:00", NOW) == local(2025, 12, 31, 23, 0, 0)
    # 29 February read in a year without one is last year's
    assert stamp_time(b"Feb 29 10:00:00", MARCH_2029) == local(2028, 2, 29, 10, 0, 0)
    assert stamp_time(b"Feb 29 10:00:00", NOW) is None  # neither 2026 nor 2025 has one


def test_every_reader_of_stamps_follows_the_same_rule() -> None:
    line = "Jan  5 11:00:00 mx1 postfix/smtp[1]: ABC: to=<a@example.com>, status=sent"
    want = local(2025, 1, 5, 11, 0, 0)
    assert line_time(line.encode(), NOW) == want
    assert log_time(line, NOW) == int(want)
    assert _log_time(b"Jan  5 11:00:00", NOW) == want
    iso = b"2026-01-02T11:00:00.5+00:00"
    assert stamp_time(iso, NOW) == 1767351600.5
    assert stamp_time(b"2026-01-02T11:00:00.5Z", NOW) == 1767351600.5
    assert stamp_time(b"Foo  2 11:00:00", NOW) is None
    assert line_time(b"garbage", NOW) is None


def test_pflogsumm_year_is_kept_for_the_report() -> None:
    assert pflogsumm_year(12, dt.date(2026, 1, 2)) == 2025
    assert pflogsumm_year(1, dt.date(2026, 1, 2)) == 2026


def test_gzip_stream_skips_and_reads_exactly(tmp_path: Path) -> None:
    body = b"".join(b"line %06d\n" % i for i in range(50_000))
    gz = tmp_path / "mail.log.1.gz"
    # two members, as logrotate's delaycompress and a second gzip can leave
    gz.write_bytes(gzip.compress(body[:200_000]) + gzip.compress(body[200_000:]))
    with open(gz, "rb") as raw:
        stream = files.GzipStream(raw, gz, own_raw=False)
        stream.skip(123_457)
        assert stream.read_exactly(11) == body[123_457:123_468]
        rest = b""
        while block := stream.read(4096):
            rest += block
        assert rest == body[123_468:]
        stream.close()
        assert not raw.closed
    assert b"".join(files.blocks(gz)) == body


def test_damaged_gzip_is_a_log_error(tmp_path: Path) -> None:
    gz = tmp_path / "mail.log.gz"
    gz.write_bytes(gzip.compress(b"x\n" * 100_000)[:-20])
    with pytest.raises(files.DamagedGzip, match="truncated"):
        b"".join(files.blocks(gz))
    assert issubclass(files.DamagedGzip, files.LogError)
