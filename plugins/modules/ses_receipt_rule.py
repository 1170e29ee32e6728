#!/usr/bin/python
"""An SES receipt rule that stores received mail in S3 and announces it on SNS: what
community.aws.ses_rule_set (rule sets only) leaves out.

Ansible module; the documentation strings below are what ``ansible-doc`` shows.
"""

from __future__ import annotations

import contextlib
from typing import Any

with contextlib.suppress(ImportError):  # AnsibleAWSModule reports a missing botocore
    import botocore.exceptions

try:
    from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
except ImportError:  # pragma: no cover - the logic is importable without Ansible
    AnsibleAWSModule = None

DOCUMENTATION = r"""
---
module: ses_receipt_rule
short_description: An SES receipt rule with one S3 action
description:
  - Makes or updates the receipt rule O(name) in the rule set O(rule_set), which must
    exist (M(community.aws.ses_rule_set) makes it and makes it active). The rule
    accepts mail for O(recipients), refuses a sender that does not use TLS when
    O(tls_policy=Require), has SES scan for spam and viruses when O(scan_enabled), and
    stores each message in O(s3_bucket) under O(s3_prefix), announcing it on
    O(s3_topic_arn) (C(notificationType) Received, action type S3).
  - The rule is read first and updated only when it differs, so a second run reports
    no change. Delete the rule with its rule set (M(community.aws.ses_rule_set),
    state absent).
options:
  rule_set:
    description: The receipt rule set the rule belongs to.
    type: str
    required: true
  name:
    description: The rule's name.
    type: str
    required: true
  recipients:
    description: Addresses and domains the rule applies to (C(company.com),
      C(inbound.company.com), C(postmaster@company.com)).
    type: list
    elements: str
    required: true
  enabled:
    description: Whether the rule is on.
    type: bool
    default: true
  tls_policy:
    description: Require refuses mail that did not come over TLS.
    type: str
    choices: [Require, Optional]
    default: Require
  scan_enabled:
    description: Spam and virus scanning (the verdicts in the notification).
    type: bool
    default: true
  s3_bucket:
    description: The bucket the messages are stored in.
    type: str
    required: true
  s3_prefix:
    description: The key prefix of the stored messages (C(inbound/)).
    type: str
    default: ""
  s3_topic_arn:
    description: The SNS topic told of each stored message; empty for none.
    type: str
    default: ""
  s3_kms_key_arn:
    description: A KMS key SES encrypts the stored messages with; empty for the
      bucket's own encryption.
    type: str
    default: ""
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

RETURN = r"""
rule:
  description: The rule as it is now (SES's names).
  type: dict
  returned: always
"""


def desired(params: dict[str, Any]) -> dict[str, Any]:
    """The rule as SES's CreateReceiptRule takes it."""
    s3: dict[str, Any] = {"BucketName": params["s3_bucket"]}
    if params["s3_prefix"]:
        s3["ObjectKeyPrefix"] = params["s3_prefix"]
    if params["s3_topic_arn"]:
        s3["TopicArn"] = params["s3_topic_arn"]
    if params["s3_kms_key_arn"]:
        s3["KmsKeyArn"] = params["s3_kms_key_arn"]
    return {
        "Name": params["name"],
        "Enabled": bool(params["enabled"]),
        "TlsPolicy": params["tls_policy"],
        "Recipients": list(params["recipients"]),
        "Actions": [{"S3Action": s3}],
        "ScanEnabled": bool(params["scan_enabled"]),
    }


def normal(value: Any) -> Any:
    """A rule in one shape whatever answered: booleans as booleans (an emulator may send
    "true"), recipients compared as a set of lower-case names, nothing empty."""
    if isinstance(value, dict):
        out = {k: normal(v) for k, v in value.items() if v not in (None, "", [], {})}
        if "Recipients" in out:
            out["Recipients"] = sorted({r.lower() for r in out["Recipients"]})
        return out
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def current(client: Any, rule_set: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.describe_receipt_rule(RuleSetName=rule_set, RuleName=name)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "RuleDoesNotExist":
            return None
        raise
    return found["Rule"]


def ensure(client: Any, rule_set: str, rule: dict[str, Any], check: bool) -> bool:
    """Make RULE in RULE_SET, or update it where it differs; whether anything changed."""
    now = current(client, rule_set, rule["Name"])
    if now is None:
        if not check:
            client.create_receipt_rule(RuleSetName=rule_set, Rule=rule)
        return True
    if normal(now) == normal(rule):
        return False
    if not check:
        client.update_receipt_rule(RuleSetName=rule_set, Rule=rule)
    return True


def main() -> None:
    module: Any = AnsibleAWSModule(
        argument_spec={
            "rule_set": {"type": "str", "required": True},
            "name": {"type": "str", "required": True},
            "recipients": {"type": "list", "elements": "str", "required": True},
            "enabled": {"type": "bool", "default": True},
            "tls_policy": {"type": "str", "choices": ["Require", "Optional"], "default": "Require"},
            "scan_enabled": {"type": "bool", "default": True},
            "s3_bucket": {"type": "str", "required": True},
            "s3_prefix": {"type": "str", "default": ""},
            "s3_topic_arn": {"type": "str", "default": ""},
            "s3_kms_key_arn": {"type": "str", "default": "", "no_log": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not p["recipients"]:
        module.fail_json(msg="ses_receipt_rule: recipients must not be empty")
    rule = desired(p)
    client = module.client("ses")
    try:
        changed = ensure(client, p["rule_set"], rule, module.check_mode)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        module.fail_json_aws(exc, msg=f"SES refused the receipt rule {p['name']}")
    module.exit_json(changed=changed, rule=rule)


if __name__ == "__main__":
    main()
