"""``mailops ses inbound``: the command line and the long-poll loop of the inbound bridge.

The work is :mod:`mailops.ses.inbound` (also the Lambda handler's); this module runs it
from cron (``--once``) or as a daemon (the monitor's ``mailops-ses-inbound`` service),
writes the gauges for /metrics and mails the alarms (:mod:`mailops.ses.inbound_alarms`).

Exit codes: 0; 75 when SQS or the credentials fail (with ``--once``; the daemon logs,
waits and goes on); 2 for a bad ``--smtp-host``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mailops import exitcodes
from mailops.pipeio import log as _log
from mailops.queues.render import write_atomic
from mailops.ses import inbound as ib
from mailops.ses import inbound_alarms as al
from mailops.store.text import clean

TOOL = ib.TOOL


def _mailer(args: argparse.Namespace) -> Any:
    if not args.alert_to:
        return None
    from mailops.guard.core import send_mail

    def mail(subject: str, body: str) -> None:
        send_mail(args.sendmail, args.mail_from, args.alert_to, subject, body)

    return mail


def run(args: argparse.Namespace) -> int:
    try:
        target = ib.parse_target(args.smtp_host, timeout=args.timeout)
    except ValueError as exc:
        _log(TOOL, str(exc), error=True)
        return exitcodes.USAGE
    target = ib.Target(
        host=target.host,
        port=target.port,
        timeout=target.timeout,
        helo=args.helo or "",
        starttls=not args.no_starttls,
    )
    settings = ib.Settings(
        target=target, dlq_url=args.dlq_url or "", delete_object=args.delete_object
    )
    from botocore.exceptions import BotoCoreError, ClientError

    limits = al.Limits(oldest_seconds=args.oldest_alarm_seconds, errors=args.errors_alarm)
    state_path = Path(args.alarm_state) if args.alarm_state else None
    state = al.load_state(state_path) if state_path else {"firing": {}, "errors": []}
    mail = _mailer(args)
    wait = args.wait_seconds if args.wait_seconds is not None else (1 if args.once else 20)
    totals: Counter[str] = Counter()
    pause = 1.0
    sqs = s3 = None
    while True:
        done = ib.Pass()
        queue = dlq = None
        ok = False
        try:
            if sqs is None:
                sqs, s3 = ib.clients(args.queue_url, args.endpoint_url, args.region)
            done = ib.run_pass(
                sqs,
                s3,
                args.queue_url,
                settings,
                once=args.once,
                wait=wait,
                limit=args.max_messages,
                retry_delay=args.retry_delay,
            )
            queue = ib.depth(sqs, args.queue_url)
            dlq_url = settings.dlq_url or ib.dead_letter_url(sqs, args.queue_url)
            dlq = ib.depth(sqs, dlq_url) if dlq_url else None
            ok = True
        except (BotoCoreError, ClientError) as exc:
            _log(TOOL, f"SQS: {clean(str(exc), 300)}", error=True)
            done.errors += 1
        except Exception as exc:  # the daemon goes on: one line, never a traceback
            _log(TOOL, f"unexpected {type(exc).__name__}: {clean(str(exc), 300)}", error=True)
            done.errors += 1
        totals.update(done.outcomes)
        now = time.time()
        if done.received:
            _log(
                TOOL,
                f"{done.received} received: "
                + ", ".join(f"{k} {v}" for k, v in sorted(done.outcomes.items())),
            )
        in_window = al.note_errors(state, done, now, limits)
        gauges = al.Gauges(
            totals=dict(totals),
            queue=queue,
            dlq=dlq,
            oldest_age=done.oldest_age,
            errors_in_window=in_window,
            ok=ok,
            now=now,
            last_refusal=done.last_refusal,
        )
        alarms = al.firing(gauges, limits)
        if state_path is not None:
            try:
                alarms = al.update(state_path, state, gauges, limits, mail)
            except Exception as exc:  # sendmail, the state file: try again next pass
                _log(TOOL, f"alarms: {clean(str(exc), 300)}", error=True)
        if args.metrics_file:
            try:
                write_atomic(args.metrics_file, al.metrics(gauges, alarms))
            except OSError as exc:
                _log(TOOL, f"could not write metrics to {args.metrics_file}: {exc}", error=True)
        if args.once:
            return exitcodes.OK if ok else exitcodes.TEMPFAIL
        if ok:
            pause = 1.0
        else:  # SQS unreachable: wait before asking again, up to a minute
            time.sleep(pause)
            pause = min(60.0, pause * 2)


def cmd_inbound(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inbound",
        help="relay mail SES received (S3, announced on SQS) to the MX over SMTP",
        description=(ib.__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--queue-url", required=True, metavar="URL", help="the SQS queue")
    parser.add_argument(
        "--smtp-host", required=True, metavar="HOST[:PORT]", help="the MX to relay to (port 25)"
    )
    parser.add_argument("--endpoint-url", metavar="URL", help="AWS endpoint (default: AWS's)")
    parser.add_argument("--region", metavar="R", help="AWS region (default: boto3's chain)")
    parser.add_argument("--once", action="store_true", help="settle what is queued, then exit")
    parser.add_argument(
        "--dlq-url", metavar="URL", help="dead-letter queue (default: the redrive policy's)"
    )
    parser.add_argument(
        "--delete-object",
        action="store_true",
        help="delete the S3 object once relayed (default: the bucket's lifecycle does)",
    )
    parser.add_argument("--max-messages", type=int, default=1000, metavar="N")
    parser.add_argument(
        "--wait-seconds",
        type=int,
        choices=range(0, 21),
        metavar="S",
        help="long-poll wait per receive, 0-20 (default 1 with --once, else 20)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="SMTP timeout")
    parser.add_argument("--helo", metavar="NAME", help="EHLO name (default: this host's)")
    parser.add_argument("--no-starttls", action="store_true", help="never STARTTLS")
    parser.add_argument(
        "--retry-delay",
        type=int,
        default=60,
        metavar="S",
        help="delay of a re-queued rest of recipients (default 60, at most 900)",
    )
    parser.add_argument("--metrics-file", metavar="FILE", help="Prometheus text, every pass")
    parser.add_argument(
        "--alarm-state", metavar="FILE", help="alarm state (needed for alert mails)"
    )
    parser.add_argument(
        "--alert-to", action="append", default=[], metavar="ADDR", help="mail alarms here"
    )
    parser.add_argument("--sendmail", default="/usr/sbin/sendmail", metavar="PATH")
    parser.add_argument("--mail-from", default="", metavar="ADDR", help="alert mails' From")
    parser.add_argument("--oldest-alarm-seconds", type=float, default=300.0, metavar="S")
    parser.add_argument("--errors-alarm", type=int, default=5, metavar="N")
    parser.set_defaults(func=cmd_inbound)
