"""``mailops ses``: Amazon SES as a second path of the cluster.

Usage::

    mailops ses smtp-password --region REGION      secret key on stdin, password on stdout
    mailops ses events --queue-url URL [--once]    SES notifications from SQS into the store
    mailops ses pipeline --queue-url URL [--once]  application events sent as templated mail
    mailops ses alarm-mail --queue-url URL         CloudWatch alarms as readable mails
    mailops ses inbound --queue-url URL --smtp-host HOST[:PORT] [--once]
                                                   mail SES received (S3) relayed to the MX

See docs/ses.md.  Each subcommand lives in its own module; boto3 is imported only when
events run, so deriving a password needs nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
from typing import Any

# subcommand -> module (each has register(subparsers))
SUBCOMMANDS: dict[str, str] = {
    "smtp-password": "mailops.ses.smtp_password",
    "events": "mailops.ses.events",
    "pipeline": "mailops.ses.pipeline",
    "alarm-mail": "mailops.ses.alarm",
    "inbound": "mailops.ses.inbound_cli",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ses",
        help="Amazon SES: SMTP password, bounce/complaint events from SQS",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="ses_command", metavar="ACTION")
    sub.required = True
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).register(sub)
