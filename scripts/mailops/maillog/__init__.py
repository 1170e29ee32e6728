"""Reading Postfix's mail logs: the one place for it.

* :mod:`mailops.maillog.stamps`: a line's time stamp (classic syslog or ISO 8601) as
  Unix time, with the one rule for the year a classic stamp does not carry;
* :mod:`mailops.maillog.files`: opening a log (plain or gzip, by its magic bytes) and
  finding its rotated siblings, to read whole files (``mailops report``, the tenants'
  figures, the guard);
* :mod:`mailops.maillog.follow`: reading a live log incrementally across runs, through
  rotation and truncation (saslblock, throttle, bounces from the log).
"""
