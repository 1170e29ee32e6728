"""Is a deferral a receiver telling us to slow down?  A table of detectors over replies.

The input is the text Postfix logs inside ``status=deferred (...)``: the remote server's
reply as the SMTP client saw it (``host mx.example[192.0.2.1] said: 421 4.7.28 ... (in
reply to RCPT TO command)``, or ``host ... refused to talk to me: 421 ...`` at the
greeting).  Postfix keeps a multi-line reply's continuation prefixes (``421-4.7.28``)
when it joins the lines, so the first code is the reply's code.

Each rule names the provider whose reply it recognises, a reply code range, an optional
enhanced status code range and an optional pattern over the reply text.  The rules are
tried in order; the first that matches decides.  A few rules say "not a throttle" before
the throttle rules can see a reply that would otherwise look like one (an authentication
failure that Gmail words as "rate limited", greylisting, a per-message recipient cap).
A reply no rule matches is not a throttle.  Only temporary replies (4xx) are looked at:
a 5xx is a bounce, whatever its words.

Where each rule comes from (the providers' postmaster pages) is in docs/throttle.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "said: 421-4.7.28 ..." or "refused to talk to me: 421 4.7.0 ..."; the enhanced status
# code is optional (Yahoo's and Outlook.com's older replies have none).
_REPLY = re.compile(
    r"(?:said|refused to talk to me):\s+(?P<code>[245]\d\d)"
    r"(?:[ -]+(?P<esc>[245]\.\d{1,3}\.\d{1,3}))?"
)
_IN_REPLY = re.compile(r"\s*\(in reply to [^()]*\)\s*\Z")


@dataclass(frozen=True)
class Reply:
    """A remote server's reply, as logged."""

    code: int
    esc: tuple[int, int, int] | None  # the enhanced status code (RFC 3463), if any
    text: str  # the whole reply, continuation prefixes and all, without "(in reply to"


@dataclass(frozen=True)
class Rule:
    name: str  # a short id, used in the log line and in docs/throttle.md
    provider: str  # gmail, microsoft, yahoo, generic
    throttle: bool
    codes: tuple[int, int]  # reply code range, inclusive
    esc: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # range, inclusive
    text: re.Pattern[str] | None = None  # searched in the reply (case-insensitive)


@dataclass(frozen=True)
class Verdict:
    throttle: bool
    provider: str
    rule: str
    reply: Reply


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _esc(a: str, b: str | None = None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    lo = tuple(int(x) for x in a.split("."))
    hi = tuple(int(x) for x in (b or a).split("."))
    return lo, hi  # type: ignore[return-value]


TEMPORARY = (400, 499)
RULES: tuple[Rule, ...] = (
    # ---- not throttles, though their words may look like one
    # Gmail's authentication failures (SPF, DKIM, PTR, DMARC): fix the mail, not the pace.
    Rule("gmail-auth", "gmail", False, TEMPORARY, _esc("4.7.23", "4.7.27")),
    Rule("gmail-auth", "gmail", False, TEMPORARY, _esc("4.7.29", "4.7.32")),
    Rule("gmail-auth", "gmail", False, TEMPORARY, _esc("4.7.40")),
    # One recipient gets too much mail (Gmail's 4.2.1): the others are fine.
    Rule("mailbox-rate", "gmail", False, TEMPORARY, _esc("4.2.1"), _rx(r"receiving mail")),
    Rule("greylisting", "generic", False, TEMPORARY, None, _rx(r"gr[ae]y-?list")),
    Rule("recipient-cap", "generic", False, TEMPORARY, None, _rx(r"too many recipients")),
    # ---- throttles
    # Gmail: "unusual rate of unsolicited mail ... temporarily rate limited".
    Rule("gmail-4.7.28", "gmail", True, TEMPORARY, _esc("4.7.28")),
    Rule(
        "gmail-4.7.0-rate",
        "gmail",
        True,
        TEMPORARY,
        _esc("4.7.0"),
        _rx(r"unusual rate|rate[- ]?limit"),
    ),
    # Microsoft (Exchange Online, Outlook.com): 4.7.500-4.7.699 are its throttles ("server
    # busy", "temporarily rate limited due to IP reputation"); RP-001..003 are
    # Outlook.com's per-hour and per-day limits; "throttled" in its other replies.
    Rule("microsoft-4.7.5xx-6xx", "microsoft", True, TEMPORARY, _esc("4.7.500", "4.7.699")),
    Rule("microsoft-rp", "microsoft", True, TEMPORARY, None, _rx(r"\bRP-00[123]\b")),
    Rule(
        "microsoft-throttled",
        "microsoft",
        True,
        TEMPORARY,
        None,
        _rx(
            r"throttl.*(outlook|hotmail|microsoft|protection\.outlook)|"
            r"(outlook|hotmail|microsoft|protection\.outlook).*throttl"
        ),
    ),
    # Yahoo (and AOL): [TSS04] "temporarily deferred due to unexpected volume or user
    # complaints", [TSS09] "permanently deferred" (still a 4xx: back off and look).
    Rule("yahoo-tss", "yahoo", True, TEMPORARY, None, _rx(r"\[TSS\d\d\]")),
    Rule("yahoo-deferred", "yahoo", True, (421, 451), None, _rx(r"temporarily deferred")),
    # Anyone else: a 421 that says why, or rate words in any 4xx.
    Rule(
        "generic-421",
        "generic",
        True,
        (421, 421),
        None,
        _rx(r"too many|try (again )?later|rate[- ]?limit|slow down|throttl"),
    ),
    Rule("generic-rate", "generic", True, TEMPORARY, None, _rx(r"rate[- ]?limit|throttl")),
)


def parse_reply(diagnostic: str) -> Reply | None:
    """The remote reply in a deferral's text; None when the remote server said nothing
    (a connection refused or timed out, a DNS failure, a local problem)."""
    m = _REPLY.search(diagnostic)
    if m is None:
        return None
    esc = None
    if m["esc"]:
        a, b, c = (int(x) for x in m["esc"].split("."))
        esc = (a, b, c)
    text = _IN_REPLY.sub("", diagnostic[m.start("code") :])
    return Reply(code=int(m["code"]), esc=esc, text=text)


def _matches(rule: Rule, reply: Reply) -> bool:
    if not rule.codes[0] <= reply.code <= rule.codes[1]:
        return False
    if rule.esc is not None and (reply.esc is None or not rule.esc[0] <= reply.esc <= rule.esc[1]):
        return False
    return rule.text is None or rule.text.search(reply.text) is not None


def classify(diagnostic: str) -> Verdict | None:
    """The verdict of the first rule that matches the deferral's reply; None when the
    remote server gave no reply or no rule knows it (neither is a throttle)."""
    reply = parse_reply(diagnostic)
    if reply is None or not TEMPORARY[0] <= reply.code <= TEMPORARY[1]:
        return None
    for rule in RULES:
        if _matches(rule, reply):
            return Verdict(rule.throttle, rule.provider, rule.name, reply)
    return None
