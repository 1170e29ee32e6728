"""A mail log line's time stamp as Unix time.

Two forms are written: classic syslog's ``Nov 23 10:00:01`` (rsyslog's default file
format, Postfix's own ``maillog_file`` with ``Nov 3``/``Nov 03``), and ISO 8601 /
RFC 3339 ``2026-11-23T10:00:01.123456+00:00``.  An ISO stamp carries its offset;
without one, and for the classic form, the time is local, as syslog and postlogd
write it.

The classic form has no year.  The one rule: a stamp is this year's, unless that puts
it more than :data:`FUTURE_SLACK` seconds after the reader's "now" (a December line read
in January): then it is last year's.  The slack covers clocks a little ahead.

``mailops report`` labels its days by pflogsumm's own rule instead
(:func:`pflogsumm_year`): its figures are checked line for line against pflogsumm's.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time

MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS: dict[bytes, int] = {name.encode(): i + 1 for i, name in enumerate(MONTH_NAMES)}
FUTURE_SLACK = 2 * 86400

# Either form, as it stands at the start of a line (a regular expression's text, so a
# caller can build it into a larger pattern with its own group around it).
STAMP = (
    rb"[A-Z][a-z]{2} [ 0-3]?\d \d\d:\d\d:\d\d(?:\.\d+)?"
    rb"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"
)
STAMP_RE = re.compile(STAMP)
# The same as a named group ``ts``: the start of a caller's line pattern.
TS = rb"(?P<ts>" + STAMP + rb")"


def stamp_time(ts: bytes, now: float) -> float | None:
    """Seconds since the epoch for a time stamp; ``None`` when it cannot be read."""
    try:
        if ts[:1].isdigit():
            text = ts.decode("ascii")
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            return dt.datetime.fromisoformat(text).timestamp()
        mon, day_text, clock = ts.split()
        month = MONTHS[mon]
        day = int(day_text)
        hms, _, frac = clock.decode("ascii").partition(".")
        hour, minute, second = (int(x) for x in hms.split(":"))
        fraction = float("0." + frac) if frac else 0.0
        year = time.localtime(now).tm_year
        for y in (year, year - 1):
            if not 1 <= day <= calendar.monthrange(y, month)[1]:
                continue  # Feb 29 is last year's when this one has none
            when = time.mktime((y, month, day, hour, minute, second, 0, 0, -1)) + fraction
            if when <= now + FUTURE_SLACK:
                return when
        return None
    except (KeyError, ValueError, OverflowError, UnicodeDecodeError):
        return None


def line_time(line: bytes, now: float) -> float | None:
    """The time stamp at the start of a log line as Unix time; ``None`` without one."""
    m = STAMP_RE.match(line)
    return stamp_time(m.group(0), now) if m is not None else None


def pflogsumm_year(month: int, today: dt.date) -> int:
    """pflogsumm's rule for a classic (yearless) stamp: a month after this one is last
    year's.  For ``mailops report`` only, which must agree with pflogsumm."""
    return today.year - 1 if month > today.month else today.year
