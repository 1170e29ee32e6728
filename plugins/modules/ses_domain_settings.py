#!/usr/bin/python
"""Easy DKIM, the custom MAIL FROM domain and a configuration set with an SNS event
destination for an SES domain identity: what community.aws.ses_identity leaves out.

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
module: ses_domain_settings
short_description: Easy DKIM, MAIL FROM and a configuration set for an SES domain
description:
  - For a domain identity that already exists (M(community.aws.ses_identity) makes it
    and its notification topics), turns on Easy DKIM (C(VerifyDomainDkim)), sets the
    custom MAIL FROM domain (C(SetIdentityMailFromDomain)), and makes a configuration
    set with one SNS event destination for the event types named.
  - Each setting is read first and changed only when it differs, so a second run
    reports no change.
  - Returns the DNS records SES needs for the domain (verification TXT, the three DKIM
    CNAMEs, the MAIL FROM MX and SPF), for C(mailops dns plan) or a zone.
  - O(state=absent) deletes the configuration set (its destinations go with it) and
    clears the MAIL FROM domain; delete the identity itself with
    M(community.aws.ses_identity).
options:
  identity:
    description: The domain identity, e.g. C(company.com).
    type: str
    required: true
  easy_dkim:
    description: Whether SES signs with its own DKIM keys (Easy DKIM).
    type: bool
    default: true
  mail_from_domain:
    description:
      - The custom MAIL FROM domain, a subdomain of O(identity) (C(bounce.company.com));
        empty for SES's own (C(amazonses.com)).
    type: str
    default: ""
  behavior_on_mx_failure:
    description: What SES does when the MAIL FROM domain's MX is missing.
    type: str
    choices: [UseDefaultValue, RejectMessage]
    default: UseDefaultValue
  configuration_set:
    description: Name of the configuration set to make; empty for none.
    type: str
    default: ""
  event_destination:
    description: Name of the configuration set's SNS event destination.
    type: str
    default: sns
  topic_arn:
    description: The SNS topic the events go to (required with O(configuration_set)).
    type: str
  event_types:
    description: The event types sent to the topic (SES's names, lower camel case).
    type: list
    elements: str
    default: [bounce, complaint, delivery, reject, deliveryDelay]
  state:
    description: present or absent.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

EXAMPLES = r"""
- name: Easy DKIM, MAIL FROM and the event configuration set
  ses_domain_settings:
    identity: company.com
    mail_from_domain: bounce.company.com
    configuration_set: mailops
    topic_arn: "{{ topic.sns_arn }}"
"""

RETURN = r"""
dkim_tokens:
  description: The three Easy DKIM tokens.
  returned: when O(state=present)
  type: list
  elements: str
dns_records:
  description: The records SES needs, each with C(name), C(type) and C(value).
  returned: when O(state=present)
  type: list
  elements: dict
"""

EVENT_TYPES = {
    "send",
    "reject",
    "bounce",
    "complaint",
    "delivery",
    "open",
    "click",
    "renderingFailure",
    "deliveryDelay",
    "subscription",
}


class SettingsError(Exception):
    """A setting that cannot be applied as asked; the message says which."""


def _missing(exc: Exception, *codes: str) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", "")) in codes


def dkim(client: Any, identity: str, wanted: bool, check: bool) -> tuple[bool, list[str]]:
    attrs = client.get_identity_dkim_attributes(Identities=[identity])["DkimAttributes"]
    current = attrs.get(identity, {})
    tokens = list(current.get("DkimTokens") or [])
    if wanted and not tokens:
        # VerifyDomainDkim makes the tokens and turns signing on.
        if not check:
            tokens = list(client.verify_domain_dkim(Domain=identity)["DkimTokens"])
        return True, tokens
    changed = False
    if bool(current.get("DkimEnabled")) != wanted and (tokens or not wanted):
        changed = True
        if not check:
            client.set_identity_dkim_enabled(Identity=identity, DkimEnabled=wanted)
    return changed, tokens


def mail_from(client: Any, identity: str, domain: str, behavior: str, check: bool) -> bool:
    if domain and not domain.endswith("." + identity):
        raise SettingsError(f"mail_from_domain {domain} is not a subdomain of {identity}")
    attrs = client.get_identity_mail_from_domain_attributes(Identities=[identity])
    current = attrs["MailFromDomainAttributes"].get(identity, {})
    have = current.get("MailFromDomain") or ""
    same = have == domain and (not domain or current.get("BehaviorOnMXFailure") == behavior)
    if same:
        return False
    if not check:
        if domain:
            client.set_identity_mail_from_domain(
                Identity=identity, MailFromDomain=domain, BehaviorOnMXFailure=behavior
            )
        else:
            client.set_identity_mail_from_domain(Identity=identity)
    return True


def _destination(name: str, topic: str, types: list[str]) -> dict[str, Any]:
    return {
        "Name": name,
        "Enabled": True,
        "MatchingEventTypes": sorted(types),
        "SNSDestination": {"TopicARN": topic},
    }


def configuration_set(
    client: Any, name: str, destination: str, topic: str, types: list[str], check: bool
) -> bool:
    unknown = sorted(set(types) - EVENT_TYPES)
    if unknown:
        raise SettingsError(f"unknown event types {unknown}; SES knows {sorted(EVENT_TYPES)}")
    changed = False
    try:
        found = client.describe_configuration_set(
            ConfigurationSetName=name, ConfigurationSetAttributeNames=["eventDestinations"]
        )
    except botocore.exceptions.ClientError as exc:
        if not _missing(exc, "ConfigurationSetDoesNotExist"):
            raise
        changed = True
        if check:
            return True
        client.create_configuration_set(ConfigurationSet={"Name": name})
        found = {"EventDestinations": []}
    wanted = _destination(destination, topic, types)
    current = next(
        (d for d in found.get("EventDestinations") or [] if d and d.get("Name") == destination),
        None,
    )
    if current is None:
        if not check:
            client.create_configuration_set_event_destination(
                ConfigurationSetName=name, EventDestination=wanted
            )
        return True
    same = (
        bool(current.get("Enabled")) == wanted["Enabled"]
        and sorted(current.get("MatchingEventTypes") or []) == wanted["MatchingEventTypes"]
        and (current.get("SNSDestination") or {}).get("TopicARN") == topic
    )
    if not same:
        changed = True
        if not check:
            client.update_configuration_set_event_destination(
                ConfigurationSetName=name, EventDestination=wanted
            )
    return changed


def remove(client: Any, identity: str, name: str, check: bool) -> bool:
    changed = False
    if name:
        try:
            client.describe_configuration_set(ConfigurationSetName=name)
        except botocore.exceptions.ClientError as exc:
            if not _missing(exc, "ConfigurationSetDoesNotExist"):
                raise
        else:
            changed = True
            if not check:
                client.delete_configuration_set(ConfigurationSetName=name)
    verified = client.get_identity_verification_attributes(Identities=[identity])
    if identity in verified.get("VerificationAttributes", {}):
        changed = mail_from(client, identity, "", "UseDefaultValue", check) or changed
    return changed


def records(
    client: Any, identity: str, tokens: list[str], mail_from_domain: str, region: str
) -> list[dict[str, str]]:
    """The DNS records SES wants for the domain."""
    out: list[dict[str, str]] = []
    verified = client.get_identity_verification_attributes(Identities=[identity])
    token = verified.get("VerificationAttributes", {}).get(identity, {}).get("VerificationToken")
    if token:
        out.append({"name": f"_amazonses.{identity}", "type": "TXT", "value": token})
    for t in tokens:
        out.append(
            {
                "name": f"{t}._domainkey.{identity}",
                "type": "CNAME",
                "value": f"{t}.dkim.amazonses.com",
            }
        )
    if mail_from_domain:
        out.append(
            {
                "name": mail_from_domain,
                "type": "MX",
                "value": f"10 feedback-smtp.{region}.amazonses.com",
            }
        )
        out.append(
            {"name": mail_from_domain, "type": "TXT", "value": "v=spf1 include:amazonses.com ~all"}
        )
    return out


def main() -> None:
    module = AnsibleAWSModule(
        argument_spec={
            "identity": {"type": "str", "required": True},
            "easy_dkim": {"type": "bool", "default": True},
            "mail_from_domain": {"type": "str", "default": ""},
            "behavior_on_mx_failure": {
                "type": "str",
                "default": "UseDefaultValue",
                "choices": ["UseDefaultValue", "RejectMessage"],
            },
            "configuration_set": {"type": "str", "default": ""},
            "event_destination": {"type": "str", "default": "sns"},
            "topic_arn": {"type": "str"},
            "event_types": {
                "type": "list",
                "elements": "str",
                "default": ["bounce", "complaint", "delivery", "reject", "deliveryDelay"],
            },
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    identity = p["identity"].strip().lower().rstrip(".")
    mail_from_domain = (p["mail_from_domain"] or "").strip().lower().rstrip(".")
    client = module.client("ses")
    check = module.check_mode
    try:
        if p["state"] == "absent":
            module.exit_json(changed=remove(client, identity, p["configuration_set"], check))
        if p["configuration_set"] and not p["topic_arn"]:
            raise SettingsError("configuration_set needs topic_arn")
        changed, tokens = dkim(client, identity, p["easy_dkim"], check)
        changed = (
            mail_from(client, identity, mail_from_domain, p["behavior_on_mx_failure"], check)
            or changed
        )
        if p["configuration_set"]:
            changed = (
                configuration_set(
                    client,
                    p["configuration_set"],
                    p["event_destination"],
                    p["topic_arn"],
                    p["event_types"],
                    check,
                )
                or changed
            )
        region = client.meta.region_name
        module.exit_json(
            changed=changed,
            dkim_tokens=tokens,
            dns_records=records(client, identity, tokens, mail_from_domain, region),
        )
    except SettingsError as exc:
        module.fail_json(msg=str(exc))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        module.fail_json_aws(exc, msg=f"SES refused a setting of {identity}")


if __name__ == "__main__":
    main()
