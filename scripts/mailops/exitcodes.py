"""Exit codes with meaning to the caller (sysexits.h, which Postfix's pipe(8) reads).

Postfix's pipe delivery agent treats EX_TEMPFAIL (75) as "try again later" and keeps the
message queued; most other non-zero codes bounce the message.  A pipe therefore exits
TEMPFAIL only when retrying can help (the store is down), and OK when the message was
stored or deliberately ignored, so mail is never lost and never loops.
"""

OK = 0
FAIL = 1  # a check failed (dns check, report found problems)
USAGE = 2  # bad command line or could not run the check at all
DATAERR = 65  # input data was malformed (never used by pipes: they store or ignore)
NOINPUT = 66
SOFTWARE = 70
CANTCREAT = 73
TEMPFAIL = 75
CONFIG = 78
