"""Shared by the report's test modules: lines that test pflogsumm's order of tests, the
pieces of its patterns, and a tally's whole state for comparing two tallies."""

from __future__ import annotations

from typing import Any

from mailops.report.tally import Tally

# Lines the buffer pattern drops, or reads without pflogsumm's chain of tests, where a
# slip would miscount: text a counting pattern needs inside a line it would drop, program
# names that hold such text, warnings, a queue id found after a ": " further on, and the
# shapes read straight away (pickup, cleanup actions, forwards, SASL failures).
TRAP_LINES = (
    "smtpd[5]: connect from h.example[192.0.2.5]: x: client=oops",
    "smtpd[5]: disconnect from h.example[192.0.2.5] x [5]: y: reject: z",
    "smtpd[5]: Anonymous TLS connection established from h.example[192.0.2.5]: TLSv1.3 with x",
    "smtp[1]: connect to x: to=<a@b.example>, relay=r, delay=1, status=sent (ok)",
    "smtp[1]: connect to mx.example[192.0.2.9]:25: Connection timed out",
    "bounce[2]: A1: sender non-delivery notification: to=<c@d.example>, relay=x, delay=2, "
    "status=sent (y)",
    "bounce[2]: A1: sender non-delivery notification: B2",
    "smtpd[3]: warning: unknown[192.0.2.7]: SASL LOGIN authentication failed: x",
    "postscreen[3]: warning: unknown[192.0.2.7]: SASL LOGIN authentication failed: x",
    "smtp[3]: warning: TLS library problem: x",
    "cleanup[4]: warning: header Subject: x from y; from=<a> to=<b>",
    "cleanup[4]: C3: milter-reject: END-OF-MESSAGE from y[192.0.2.8]: 5.7.1 no; from=<a> to=<b>",
    "cleanup[4]: F6: message-id=<to=<x>, relay=y, delay=1, status=sent (z)>",
    "smtp[1]: : reject: x",
    "smtpd[1]: : discard: x",
    "pickup[6]: D4: uid=0 from=<root>",
    "pickup[6]: D5: uid=0 from=<root>, size=12",
    "qmgr[6]: D4: from=<root@mx1.example>, size=5, nrcpt=1 (queue active)",
    "local[7]: D4: to=<root@mx1.example>, relay=local, delay=0.1, status=sent (forwarded as E5)",
    # a program name holding a delivery ("postfix/s<...>ubmission/smtpd")
    "sto=<v@x.example>, relay=r, delay=3, status=sent (ok)ubmission/smtpd[8]: "
    "connect from h[1.2.3.4]",
    "qmgr[6]: E6: from=<>, status=expired, returned to sender",
    "master[6]: warning: process x: from=<a>, size=1",
    "smtp[1]: warningx: to=<i@j.example>, relay=r, delay=1, status=sent (ok)",
)


def trap_log() -> str:
    return "".join(
        f"Nov 23 10:00:{n:02d} mx1 postfix/{text}\n" for n, text in enumerate(TRAP_LINES)
    )


def tally_state(t: Tally) -> dict[str, Any]:
    """Every count of a tally, and every table."""
    tables = (t.buckets, t.rcpt_domains, t.sender_domains, t.bounce_reasons, t.defer_reasons,
              t.reject_reasons, t.sasl_clients)  # fmt: skip
    distinct = (t.senders, t.sending_domains, t.recipients, t.recipient_domains)
    return {
        "totals": {k: v for k, v in vars(t).items() if isinstance(v, int)}
        | {"deferred": t.deferred},
        "distinct": [len(d) for d in distinct],
        "tables": [sorted(table.items()) for table in tables],
    }


# pieces of the patterns pflogsumm counts with, put into lines of a generated log
PIECES = (
    ": client=x[1.2.3.4]", "[7]: q: client=oops", ": reject: RCPT from x[1.2.3.4]: 550 n",
    "from=<e@x>, size=77", "to=<v@x>, relay=r, delay=3, status=sent (ok)", "forwarded as 9",
    "]: ", ": ", "=", "<", ">", ",", "[", "]", "\t", " ", ": header ", ": uid=0", "warning: ",
    "hold: ", "discard: ", "reject_warning: ", "SASL LOGIN authentication failed", "fatal: ",
    "message-id=<a b>", "status=deferred (x)", "postfix/smtpd[9]: Q1: client=a[1.1.1.1]",
)  # fmt: skip
