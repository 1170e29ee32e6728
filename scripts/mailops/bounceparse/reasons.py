"""From an RFC 3463 status and a diagnostic text to a reason and hard/soft.

The order of evaluation, most trustworthy first:

1. Success (2.x.x, or Action delivered/relayed/expanded): ``delivered``.
2. Status codes whose meaning is never bent by MTAs (5.7.26 authentication, 5.2.2
   mailbox full, ...).
3. Phrases of the diagnostic text (``user unknown``, ``spamhaus``, ``quota``, ``PTR``,
   ``rate limit``...), because many MTAs put a generic code (5.0.0, 5.7.1, 5.4.1) on a
   specific reason.
4. ``Action: failed`` with a 4.x.x status and no telling text: the MTA gave up
   retrying, ``expired``.
5. The status code's subject and detail (X.1.1 userunknown, X.4.1 networkerror, ...).
6. Weak phrases (``mailbox unavailable``, ``rejected``, ``denied``).
7. The subject of the code alone, else ``undefined``.

``hard`` is True only for a permanent (5.x.x, or a failure the MTA calls permanent)
address-level reason: the address does not exist, its domain does not, it moved, it
refuses all mail, the account is disabled, or the address is syntactically invalid.
Mailbox full, policy, reputation, network, temporary (4.x.x) and delays are soft.
"""

from __future__ import annotations

import functools
import re

from mailops.bounceparse.model import REASONS

SUCCESS_ACTIONS = frozenset(["delivered", "relayed", "expanded"])
HARD_REASONS = frozenset(["userunknown", "hostunknown", "hasmoved", "notaccept", "suspend"])

_ENHANCED = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_REPLY = re.compile(r"(?:^|[\s;:'\"(#\[=])([245])[0-5]\d(?=[\s:-]|$)")

# (subject.detail) codes checked before any text.
PRIORITY_STATUS: dict[str, str] = {
    "1.6": "hasmoved",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "3.4": "mesgtoobig",
    "4.7": "expired",
    "7.13": "suspend",
    "7.20": "authfailure",
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "rejected",
}

STATUS: dict[str, str] = {
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "syntaxerror",
    "1.4": "userunknown",
    "1.6": "hasmoved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.9": "systemerror",
    "1.10": "userunknown",  # RFC 7505 null MX, and Office 365's "recipient not found"
    "2.1": "suspend",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "2.4": "systemerror",
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "systemerror",
    "3.3": "contenterror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "systemerror",  # directory or routing server failure
    "4.4": "hostunknown",
    "4.5": "systemfull",
    "4.6": "systemerror",
    "4.7": "expired",
    "5.0": "systemerror",
    "5.1": "syntaxerror",
    "5.2": "syntaxerror",
    "5.3": "exceedlimit",
    "5.4": "syntaxerror",
    "5.5": "syntaxerror",
    "5.6": "securityerror",
    "7.0": "securityerror",
    "7.1": "policyviolation",
    "7.2": "policyviolation",
    "7.8": "securityerror",  # RFC 4954: bad credentials, weak mechanism, encryption
    "7.9": "securityerror",
    "7.10": "securityerror",
    "7.11": "securityerror",
    "7.13": "suspend",
    "7.15": "policyviolation",
    "7.16": "policyviolation",
    "7.17": "policyviolation",
    "7.18": "hasmoved",
    "7.28": "speeding",
}
SUBJECT_DEFAULT: dict[str, str] = {
    "3": "systemerror",
    "4": "networkerror",
    "6": "contenterror",
    "7": "securityerror",
}


_META = frozenset("\\()[]{}?*+|.^$")


def branches(pattern: str) -> list[str]:
    """The top-level alternatives of a regular expression ("a|b(c|d)" -> a, b(c|d))."""
    out: list[str] = []
    depth, start, i, in_class = 0, 0, 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def gate(branch: str) -> str:
    """A literal every match of the branch contains: its leading literal characters (a
    leading \\b skipped, a character made optional by the next one dropped), or "" when
    that is shorter than three characters."""
    text = branch[2:] if branch.startswith("\\b") else branch
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and not text[i + 1].isalnum():
            char, i = text[i + 1], i + 2  # an escaped punctuation character: itself
        elif char in _META:
            break
        else:
            i += 1
        if i < len(text) and text[i] in "?*{":
            break  # this character is optional
        literal.append(char)
    return "".join(literal) if len(literal) >= 3 else ""


class Phrases:
    """One row of a phrase table: a regular expression and the literals that gate it.

    Python's regex engine scans fast only for a pattern that starts with a literal; a
    long alternation is tried at every position of the text.  Each row is therefore
    searched only when one of its alternatives' leading literals occurs in the text (a
    plain substring test), unless some alternative has none, when it is always searched.
    The result is the same as searching the row's regex alone.

    The regex is compiled the first time a text passes the gates: most rows are never
    searched in a run that reads a few hundred messages, and compiling all of them cost
    about a third of the package's import time."""

    __slots__ = ("_regex", "gates", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._regex: re.Pattern[str] | None = None
        gates = [gate(b) for b in branches(pattern)]
        self.gates: tuple[str, ...] | None = None if "" in gates else tuple(gates)

    @property
    def regex(self) -> re.Pattern[str]:
        if self._regex is None:
            self._regex = re.compile(self.pattern)
        return self._regex

    def search(self, text: str) -> bool:
        if self.gates is not None:
            for literal in self.gates:  # (a loop: any() over a generator costs twice this)
                if literal in text:
                    break
            else:
                return False
        return (self._regex or self.regex).search(text) is not None


def _table(rows: list[tuple[str, str]]) -> list[tuple[str, Phrases]]:
    return [(reason, Phrases(pattern)) for reason, pattern in rows]


# Checked in order against the lower-cased diagnostic; the first match wins, so the
# specific phrases come before the general ones.  The phrasings are those the common MTAs
# and mailbox providers use for each reason (see docs/bounceparse.md).
STRONG = _table(
    [
        (
            "notcompliantrfc",
            r"not (?:rfc ?\d{3,4}|rfc|standards?)[- ]?compliant|non-?compliant|"
            r"rfc ?\d{3,4} (?:violation|non-?complian)|"
            r"multiple (?:addresses in (?:the )?from|from|date|subject|message-id|"
            r"sender|to)\b|duplicate header|malformed (?:header|message)|"
            r"header (?:is )?(?:missing|malformed)|missing (?:required )?(?:date|from|"
            r"message-id) header",
        ),
        (
            "spamdetected",
            r"classified as spam|detected as spam|identified as spam|considered (?:as )?spam|"
            r"flagged as spam|marked as spam|"
            r"spam (?:classification|content|score|filter|message)|looks like spam|"
            r"\bube\b|\buce\b|uribl|surbl|blacklisted (?:url|link)|"
            r"url (?:in (?:the )?message )?(?:is )?(?:black|block)listed",
        ),
        (
            "authfailure",
            r"\bspf\b|\bdkim\b|\bdmarc\b|unauthenticated (?:e-?)?mail|sender is unauthenticated",
        ),
        (
            "requireptr",
            r"\bptr\b|reverse dns|reverse lookup|reverse hostname|\brdns\b|fcrdns|"
            r"cannot find your (?:reverse )?hostname|no reverse",
        ),
        ("virusdetected", r"virus|malware|infected|trojan"),
        (
            "blocked",
            r"spamhaus|spamcop|sorbs|barracuda|\brbl\b|dnsbl|black ?list|block ?list|"
            r"blocked using|listed (?:at|in|on|by)(?<!not listed \w\w)|\bbanned\b|"
            r"client host rejected|my name (?:was |is )?rejected|"
            r"helo(?: name| command)? (?:was |is )?rejected|"
            r"ehlo(?: name| command)? (?:was |is )?rejected|"
            r"hello(?: name| command)? (?:was |is )?rejected|"
            r"invalid (?:helo|ehlo)|bad (?:helo|ehlo)",
        ),
        ("badreputation", r"reputation|sender ?score|user complaints|complaint rate"),
        ("policyviolation", r"grey ?list|gray ?list"),
        (
            "toomanyconn",
            r"too many (?:concurrent |simultaneous |open )?(?:connections|sessions)|"
            r"connection (?:limit|count|rate|frequency)",
        ),
        (
            "speeding",
            r"rate[ -]?limit|rate exceeded|too many (?:messages|mails|emails)|sending rate|"
            r"unusual rate|throttl|slow down|too fast|unexpected volume|\[tss?\d\d\]|"
            r"receiving mail at a rate|sending (?:quota|limit)|daily (?:sending )?(?:quota|limit)",
        ),
        ("spamdetected", r"spam|unsolicited|junk mail|bulk mail"),
        (
            "systemfull",
            r"insufficient system storage|system storage|disk full|out of disk|"
            r"file ?system (?:is )?full|no space left",
        ),
        (
            "mailboxfull",
            r"mailbox (?:is )?full|full mailbox|inbox is full|account is full|over ?quota|quota|"
            r"too much mail data|exceeded (?:the )?(?:mailbox|storage) (?:size|limit)|"
            r"mailbox size limit|mailbox has exceeded|exceeded storage|"
            r"storage (?:space|allocation)|mailbox (?:\w+ )?exceeded|"
            r"not enough (?:storage|space)|insufficient storage|mail ?folder is full|"
            r"messages in (?:the )?(?:recipient'?s )?mailbox exceeded|mailbox exceeds",
        ),
        (
            "rejected",
            r"sender address rejected|sender (?:was |is )?rejected|sender denied|sender domain|"
            r"sender verif|bad sender|invalid sender|sender not allowed|domain of sender|"
            r"from address rejected|envelope sender|"
            r"permission to post|not allowed to post|not authorized to post|"
            r"not permitted to post|"
            r"not a member of (?:this|the) (?:mailing )?list|members? only|non-?member",
        ),
        (
            "notaccept",
            r"null ?mx|not (?:accept|receive)(?:ing)? (?:any )?(?:e-?)?mail|"
            r"doesn'?t (?:accept|receive)(?:ing)? (?:any )?(?:e-?)?mail|"
            r"no mail service|\bno mx\b|couldn'?t find a mail exchanger|"
            r"no longer accepts? (?:any )?(?:e-?)?mail",
        ),
        (
            "networkerror",
            r"name server reply|servfail|temporary failure in name resolution|"
            r"not found, try again|network error",
        ),
        (
            "hostunknown",
            r"host unknown|unknown host|host not found(?!, try again)|"
            r"host or domain name not found|"
            r"domain (?:name )?not found|no such domain|domain (?:does not|doesn'?t) exist|"
            r"unrou?teable (?:mail )?domain|nxdomain|name or service not known|"
            r"unrou?teable address|domain must exist|account or domain may not exist|"
            r"point to non-?existent hosts?|"
            r"couldn'?t find any host|could not find any host|unknown domain|invalid domain|"
            r"domain (?:is )?(?:not reachable|unreachable)",
        ),
        ("hasmoved", r"has moved|user moved|moved to|no longer (?:at|with|works|employed)"),
        (
            "suspend",
            r"account (?:has been |is )?(?:disabled|suspended|deactivated|inactive|locked|frozen)|"
            r"mailbox (?:has been |is )?(?:disabled|suspended|deactivated|inactive|locked|frozen)|"
            r"user (?:has been |is )?(?:disabled|suspended|deactivated|inactive|locked|frozen)|"
            r"disabled (?:account|mailbox|user)|\bis disabled|"
            r"account expired|is no longer active|temporar(?:y|ily) locked|"
            r"recipient suspended|user suspended|account suspended|"
            r"has been (?:suspended|deactivated)|is currently (?:disabled|suspended|inactive)|"
            r"is (?:temporarily|permanently) (?:disabled|suspended)|"
            r"due to extended inactivity",
        ),
        # a refusal of the session for its many bad addresses, not of this one
        ("blocked", r"too many (?:invalid|bad|unknown|non-?existent) recipients"),
        (
            "mailererror",
            r"mailer error|command died|unknown mailer|procmail|exit status|pipe to \||"
            r"child status|child process of|transport returned \d",
        ),
        (
            "userunknown",
            r"user unknown|unknown user|no such (?:user|mailbox|recipient|address|account)|"
            r"user not found|user (?:does not|doesn'?t) exist|unknown recipient|invalid recipient|"
            r"recipient (?:unknown|invalid|not found)|recip(?:ient)?notfound|"
            r"recipient address rejected: access denied|mailbox (?:not found|does not exist|"
            r"unknown)|no mailbox|not a valid (?:mailbox|user|recipient|address)|"
            r"invalid (?:mailbox|address|user)|address not found|user not known|"
            r"address was not found|recipient was not found|"
            r"no mailbox here|not our customer|no such person|bad recipient|"
            r"unknown or illegal alias|no valid recipients|recipient does not exist|"
            r"address couldn'?t be found|does not exist|doesn'?t exist|"
            r"doesn'?t have an? [^ ]{1,40} account|undeliverable address|"
            r"unknown (?:local[- ]part|address|mailbox)|bad destination mailbox|addressee unknown|"
            r"address unknown|"
            r"no longer valid|invalid (?:final delivery )?userid|user not listed|"
            r"not listed in (?:the )?(?:public )?(?:domino )?(?:name|address|directory)",
        ),
        ("blocked", r"\bblocked\b|\bblock(?:ed)? by\b"),
        (
            "norelaying",
            r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited|refused)|"
            r"not permitted to relay|not allowed to relay|unable to relay|cannot relay|"
            r"not configured to relay|"
            r"we do not relay|no relaying|in my list of allowed rcpthosts|"
            r"relay(?:ing)? (?:is )?not (?:permitted|allowed)",
        ),
        (
            "securityerror",
            r"starttls|\btls\b|\bssl\b|encryption (?:is )?required|authentication (?:is )?required|"
            r"must authenticate|not authenticated|auth(?:entication)? failed|certificate|"
            r"unauthenticated senders?|smtp auth",
        ),
        (
            "mesgtoobig",
            r"message (?:is )?too (?:large|big)|message size exceeds|size exceeds|too big|"
            r"exceeds (?:the )?(?:maximum|max)(?: allowed)? (?:message )?size|"
            r"message size limit|mail size limit|size limit exceeded|message file too big|"
            r"exceeds (?:the )?(?:message )?size limit",
        ),
        ("exceedlimit", r"too many recipients|recipient limit|recipients? exceeded"),
        (
            "expired",
            r"expired|retry time(?:out)? exceeded|not (?:be )?delivered within|"
            r"not (?:be )?delivered for \d+|"
            r"cannot send message for|undeliverable for \d+ days|"
            r"retry timeout exceeded|aborted after|failed (?:after )?\d+ attempts|"
            r"retry time not reached|failing for a long time|"
            r"maximum (?:number of )?(?:delivery )?(?:attempts|retries)|"
            r"too many (?:delivery )?(?:attempts|retries)",
        ),
        (
            # The remote host could not be reached at all: the notice comes when the MTA
            # gives up (or warns that it is still trying), so the message expired.
            "expired",
            r"connect to [^ ]+: connection (?:timed out|refused)|"
            r"connection timed out (?:during user open|with)|deferred: connection|"
            r"accept our requests to connect|socket error|"
            r"no answer from host|could not find a gateway|"
            r"could not (?:establish an? (?:smtp )?connection|connect)|"
            r"unable to (?:establish an? (?:smtp )?connection|connect)|"
            r"failed to (?:establish an? (?:smtp )?connection|connect)|"
            r"able to establish an? (?:smtp )?connection|"
            r"host is not responding|server is not responding",
        ),
        (
            "networkerror",
            r"timed out|timeout|connection refused|network is unreachable|no route to host|"
            r"dns (?:error|failure|lookup (?:failure|error|timeout))|"
            r"host is unreachable|lost connection|connection (?:reset|closed|dropped)|"
            r"read error|write error|"
            r"requests to connect|broken pipe",
        ),
        (
            "systemerror",
            r"system error|internal (?:system |server )?error|local (?:error|problem)|"
            r"loops back to myself|mail loop|routing loop|loop detected|too many hops|"
            r"configuration error|misconfigur|error in processing|server error|"
            r"temporary local problem|unable to contact ldap|ldap (?:server )?error",
        ),
        (
            "contenterror",
            r"message content|content (?:rejected|not accepted|restriction|filter)|attachment|"
            r"\bmime\b",
        ),
        (
            "filtered",
            r"filtered|\bfilter\b|refused by recipient|rejected by (?:the )?recipient(?! domain)",
        ),
        ("policyviolation", r"policy|prohibited|not permitted|not allowed|protocol violation"),
        ("syntaxerror", r"syntax|command unrecognized|unrecognized command|not implemented"),
    ]
)
WEAK = _table(
    [
        (
            "userunknown",
            r"mailbox unavailable|recipient address rejected|recipient rejected|"
            r"address rejected|mailbox not available",
        ),
        ("blocked", r"blocked|refused|denied|not authorized|rejected"),
    ]
)


def _codes(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    return list(pattern.finditer(text[:2000]))[:20]


def _failure_code(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The first 4xx/5xx code of a text, else its first code: an SMTP transcript quotes
    the 2xx replies of the commands that worked before the one that failed."""
    found = _codes(pattern, text)
    return next((m for m in found if m.group(1) != "2"), found[0] if found else None)


def split_status(text: str) -> tuple[str, str, str] | None:
    match = _failure_code(_ENHANCED, text)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def _remote_status(diagnostic: str) -> tuple[str, str, str] | None:
    """The enhanced code the remote server gave: the last 4.x.x/5.x.x code of the text.
    A relay quotes the remote's reply after its own words ("5.1.0 - Unknown address
    error 550-'5.2.2 ... Mailbox full'", "4.4.7 Message expired ... <421 4.4.2 ...>")."""
    found = [m for m in _codes(_ENHANCED, diagnostic) if m.group(1) != "2"]
    if not found:
        return split_status(diagnostic)
    last = found[-1]
    return (last.group(1), last.group(2), last.group(3))


def choose_status(field: str, diagnostic: str) -> str:
    """The most specific status we can name: the remote server's own enhanced code from
    the diagnostic when it is of the same class as the Status field (the reporting MTA
    often puts a generic or guessed code there), else the Status field, else the reply
    code's class."""
    given = split_status(field)
    in_text = _remote_status(diagnostic)
    if in_text and (not given or in_text[0] == given[0]):
        return ".".join(in_text)
    if given:
        return ".".join(given)
    reply = _failure_code(_REPLY, diagnostic)
    return f"{reply.group(1)}.0.0" if reply else ""


def _match(table: list[tuple[str, Phrases]], text: str) -> str:
    for reason, phrases in table:
        if phrases.search(text):
            return reason
    return ""


@functools.lru_cache(maxsize=512)
def _strong(text: str) -> str:
    """The first STRONG reason of a lower-cased text (cached: a notice's text is often
    asked about twice, once to find its recipients and once to classify them)."""
    return _match(STRONG, text)


@functools.lru_cache(maxsize=512)
def _weak(text: str) -> str:
    return _match(WEAK, text)


# RFC 5321 reply codes that name a reason by themselves (used when nothing else does).
REPLY_REASONS: dict[str, str] = {
    "500": "syntaxerror",
    "501": "syntaxerror",
    "502": "syntaxerror",
    "503": "syntaxerror",
    "504": "syntaxerror",
    "552": "mailboxfull",
}
_REPLY_CODE = re.compile(r"(?:^|[\s;:'\"(#\[=])([45][0-5]\d)(?=[\s:-]|$)")


_GAVE_UP = re.compile(
    r"(?:too long|for too long) in (?:the )?queue|in the queue too long|"
    r"not going to try again"
)


def has_phrase(text: str) -> bool:
    """Does a text name a reason in words?"""
    lowered = text[:2000].lower()
    return bool(_strong(lowered) or _weak(lowered))


# The SMTP command the remote refused, as MTAs say it: Postfix "(in reply to MAIL FROM
# command)", Exim "SMTP error from remote mail server after MAIL FROM:<...>", Sendmail's
# transcript ">>> MAIL From:<...>" followed by "<<< 550 ...".
_SENDER_STAGE = re.compile(
    r"in reply to mail from command|after mail from\b|"
    r">>> mail from:[^<]{0,5}<[^>]{0,300}>\s*<<< [45]"
)
# What a refusal of the sender turns into "rejected": nothing specific said, or words
# about an address that then concern the sender's (it does not exist, is unknown).
_SENDER_VAGUE = frozenset(["", "userunknown", "hostunknown", "policyviolation", "blocked"])


def reason_for(status: str, diagnostic: str, action: str = "", context: str = "") -> str:
    """The reason of one recipient's failure.  ``context`` is more of what the notice
    says about it (the SMTP command it failed at may be there, not in the diagnostic)."""
    action = action.strip().lower()
    parts = status.split(".")
    klass = parts[0] if len(parts) == 3 else ""
    detail = f"{parts[1]}.{parts[2]}" if len(parts) == 3 else ""
    if action in SUCCESS_ACTIONS or klass == "2":
        return "delivered"
    text = diagnostic[:2000].lower()
    # A 4.x.x failure, or a delay, means the MTA is retrying or has given up retrying.
    # Or the notice says it gave up retrying (qmail: "I'm not going to try again").
    retrying = (
        action == "delayed" or (action == "failed" and klass == "4") or bool(_GAVE_UP.search(text))
    )
    phrase = _strong(text)
    if phrase == "hostunknown" and klass == "4":
        phrase = "networkerror"  # a temporary DNS answer, not a verdict on the domain
    specific = STATUS.get(detail, "") if detail and not detail.endswith(".0") else ""
    sender_stage = _SENDER_STAGE.search(text) or _SENDER_STAGE.search(context[:4000].lower())
    if sender_stage and phrase in _SENDER_VAGUE and klass == "5":
        # Refused at MAIL FROM with no reason but the address's: it is the sender's.
        phrase = "rejected"
    reply = _failure_code(_REPLY_CODE, text)
    reason = (
        PRIORITY_STATUS.get(detail)
        or phrase
        or specific
        or ("expired" if retrying else "")
        or _weak(text)
        or STATUS.get(detail)
        or (REPLY_REASONS.get(reply.group(1), "") if reply else "")
        or SUBJECT_DEFAULT.get(parts[1] if klass else "", "")
    )
    return reason if reason in REASONS else "undefined"


def is_hard(status: str, reason: str, action: str = "", permanent: bool | None = None) -> bool:
    action = action.strip().lower()
    klass = status[:1]
    if action == "delayed" or action in SUCCESS_ACTIONS or klass in ("2", "4"):
        return False
    if klass != "5" and not permanent:
        return False
    if reason in HARD_REASONS:
        return True
    return reason == "syntaxerror" and status.startswith("5.1.")


def classify(
    status: str,
    diagnostic: str,
    action: str = "",
    permanent: bool | None = None,
    context: str = "",
) -> tuple[str, str, bool]:
    """Return (status, reason, hard) for one recipient.

    ``status`` is the Status field (may be ""), ``diagnostic`` the remote text,
    ``action`` the RFC 3464 Action, ``permanent`` what a non-DSN notice says about the
    failure (True: "permanent error", False: "delayed", None: it does not say),
    ``context`` more of the notice's words about this recipient.
    """
    code = choose_status(status, diagnostic)
    if code.startswith("2") and action.strip().lower() in ("failed", "delayed"):
        code = ""  # a 2xx of the transcript (220, 250 Ok) is not the failure's status
    reason = reason_for(code, diagnostic, action, context)
    hard = is_hard(code, reason, action, permanent)
    if (
        not hard
        and code[:1] == "4"
        and action.strip().lower() == "failed"
        and reason == "userunknown"
        and _strong(diagnostic[:2000].lower()) == "userunknown"
    ):
        hard = True  # the MTA gave up, told at every attempt that the user is unknown
    return code, reason, hard
