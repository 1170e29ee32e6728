"""plugins/modules/ses_domain_settings.py: each setting read first, changed only when it
differs, nothing called in check mode.

The functions run against a small in-memory SES that keeps what was set and counts the
calls that change something (moto lacks the update and DKIM-enable calls; the whole
playbook against moto's server is tests/test_ses_playbook.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import botocore.exceptions
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "company.test"
TOPIC = "arn:aws:sns:us-east-1:123456789012:mailops-ses-events"
TYPES = ["bounce", "complaint", "delivery", "reject", "deliveryDelay"]


def _load() -> ModuleType:
    path = ROOT / "plugins/modules/ses_domain_settings.py"
    spec = importlib.util.spec_from_file_location("ses_domain_settings", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mod = _load()


class FakeSES:
    """The calls the module makes, over plain dicts; ``writes`` lists every change."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.dkim_enabled = False
        self.mail_from: dict[str, str] = {}
        self.sets: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []

    def get_identity_dkim_attributes(self, Identities: list[str]) -> Any:
        found = {"DkimEnabled": self.dkim_enabled}
        if self.tokens:
            found["DkimTokens"] = self.tokens
        return {"DkimAttributes": {DOMAIN: found}}

    def verify_domain_dkim(self, Domain: str) -> Any:
        self.writes.append("verify_domain_dkim")
        self.tokens = ["t1", "t2", "t3"]
        self.dkim_enabled = True
        return {"DkimTokens": self.tokens}

    def set_identity_dkim_enabled(self, Identity: str, DkimEnabled: bool) -> None:
        self.writes.append(f"dkim_enabled={DkimEnabled}")
        self.dkim_enabled = DkimEnabled

    def get_identity_mail_from_domain_attributes(self, Identities: list[str]) -> Any:
        return {"MailFromDomainAttributes": {DOMAIN: dict(self.mail_from)}}

    def set_identity_mail_from_domain(self, Identity: str, **kw: str) -> None:
        self.writes.append(f"mail_from={kw.get('MailFromDomain', '')}")
        self.mail_from = {
            "MailFromDomain": kw.get("MailFromDomain", ""),
            "BehaviorOnMXFailure": kw.get("BehaviorOnMXFailure", "UseDefaultValue"),
        }

    def describe_configuration_set(self, ConfigurationSetName: str, **kw: Any) -> Any:
        if ConfigurationSetName not in self.sets:
            error = {"Error": {"Code": "ConfigurationSetDoesNotExist", "Message": "no"}}
            raise botocore.exceptions.ClientError(error, "DescribeConfigurationSet")  # type: ignore[arg-type]
        found = self.sets[ConfigurationSetName]
        return {
            "ConfigurationSet": {"Name": ConfigurationSetName},
            "EventDestinations": found and [found],
        }

    def create_configuration_set(self, ConfigurationSet: dict[str, str]) -> None:
        self.writes.append("create_configuration_set")
        self.sets[ConfigurationSet["Name"]] = {}

    def create_configuration_set_event_destination(
        self, ConfigurationSetName: str, EventDestination: Any
    ) -> None:
        self.writes.append("create_event_destination")
        self.sets[ConfigurationSetName] = EventDestination

    def update_configuration_set_event_destination(
        self, ConfigurationSetName: str, EventDestination: Any
    ) -> None:
        self.writes.append("update_event_destination")
        self.sets[ConfigurationSetName] = EventDestination

    def delete_configuration_set(self, ConfigurationSetName: str) -> None:
        self.writes.append("delete_configuration_set")
        del self.sets[ConfigurationSetName]

    def get_identity_verification_attributes(self, Identities: list[str]) -> Any:
        return {"VerificationAttributes": {DOMAIN: {"VerificationToken": "tok"}}}


def apply(ses: FakeSES, check: bool = False, **kw: Any) -> bool:
    settings = {"mail_from": f"bounce.{DOMAIN}", "types": TYPES, "topic": TOPIC, **kw}
    changed, _ = mod.dkim(ses, DOMAIN, True, check)
    changed = mod.mail_from(ses, DOMAIN, settings["mail_from"], "UseDefaultValue", check) or changed
    return bool(
        mod.configuration_set(ses, "mailops", "sns", settings["topic"], settings["types"], check)
        or changed
    )


def test_first_run_makes_everything_second_changes_nothing() -> None:
    ses = FakeSES()
    assert apply(ses)
    assert ses.writes == [
        "verify_domain_dkim",
        f"mail_from=bounce.{DOMAIN}",
        "create_configuration_set",
        "create_event_destination",
    ]
    ses.writes.clear()
    assert not apply(ses)
    assert ses.writes == []


def test_check_mode_reports_and_changes_nothing() -> None:
    ses = FakeSES()
    assert apply(ses, check=True)
    assert ses.writes == [] and ses.sets == {}


@pytest.mark.parametrize(
    ("change", "write"),
    [
        ({"types": ["bounce", "complaint"]}, "update_event_destination"),
        ({"topic": TOPIC + "-other"}, "update_event_destination"),
        ({"mail_from": f"mail.{DOMAIN}"}, f"mail_from=mail.{DOMAIN}"),
    ],
)
def test_a_changed_setting_is_the_only_write(change: dict[str, Any], write: str) -> None:
    ses = FakeSES()
    apply(ses)
    ses.writes.clear()
    assert apply(ses, **change)
    assert ses.writes == [write]


def test_dkim_turned_off_elsewhere_is_turned_on_again() -> None:
    ses = FakeSES()
    apply(ses)
    ses.dkim_enabled = False
    ses.writes.clear()
    assert apply(ses)
    assert ses.writes == ["dkim_enabled=True"]


def test_bad_settings_are_refused_with_the_reason() -> None:
    with pytest.raises(mod.SettingsError, match="not a subdomain"):
        mod.mail_from(FakeSES(), DOMAIN, "bounce.other.test", "UseDefaultValue", False)
    with pytest.raises(mod.SettingsError, match="unknown event types"):
        mod.configuration_set(FakeSES(), "mailops", "sns", TOPIC, ["bounces"], False)


def test_records_name_what_dns_needs() -> None:
    ses = FakeSES()
    apply(ses)
    records = mod.records(ses, DOMAIN, ses.tokens, f"bounce.{DOMAIN}", "eu-west-1")
    assert {(r["name"], r["type"], r["value"]) for r in records} == {
        (f"_amazonses.{DOMAIN}", "TXT", "tok"),
        (f"t1._domainkey.{DOMAIN}", "CNAME", "t1.dkim.amazonses.com"),
        (f"t2._domainkey.{DOMAIN}", "CNAME", "t2.dkim.amazonses.com"),
        (f"t3._domainkey.{DOMAIN}", "CNAME", "t3.dkim.amazonses.com"),
        (f"bounce.{DOMAIN}", "MX", "10 feedback-smtp.eu-west-1.amazonses.com"),
        (f"bounce.{DOMAIN}", "TXT", "v=spf1 include:amazonses.com ~all"),
    }


def test_absent_removes_the_set_and_the_mail_from_domain() -> None:
    ses = FakeSES()
    apply(ses)
    ses.writes.clear()
    assert mod.remove(ses, DOMAIN, "mailops", False)
    assert ses.writes == ["delete_configuration_set", "mail_from="]
    ses.writes.clear()
    assert not mod.remove(ses, DOMAIN, "mailops", False)
    assert ses.writes == []
