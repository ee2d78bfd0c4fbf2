"""Key consent end to end: the provider changes only keys that carry the consent tag.

The provider's IAM role refuses GetKeyPolicy and PutKeyPolicy on a key without the tag
(``aws:ResourceTag``); moto enforces no IAM, so the fault proxy plays that part here: it
answers AccessDenied to those two calls on any key whose tags, read from moto at the moment
of the call, lack the consent tag. ``tests/test_template_adoption.py`` proves that the
deployed role's policy makes the same decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto.kms.models import kms_backends

import app
from localaws.cfn import CfnResponse, CloudFormation, FakeLambdaContext
from localaws.proxy import FaultProxy
from localaws.seed import CONSENT_TAGS, DEFAULT_STATEMENT, SeededOrg
from localaws.server import MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy.aws import KeyInfo, KeyStore
from orgkeypolicy.errors import InvalidPropertyError
from orgkeypolicy.identifiers import parse_key_ref
from orgkeypolicy.keyrefs import check_consent
from orgkeypolicy.settings import (
    CONSENT_TAG_KEY,
    CONSENT_TAG_VALUE,
    KeyConsent,
    Settings,
    consent_from,
)

if TYPE_CHECKING:
    from mypy_boto3_kms.type_defs import TagTypeDef

Policy = dict[str, Any]
DEFAULT = KeyConsent()
COMMAND = re.compile(
    r"aws kms tag-resource --key-id (?P<id>\S+) "
    r"--tags TagKey=(?P<key>[^,]+),TagValue=(?P<value>\S+) --region (?P<region>[a-z0-9-]+)$"
)


@pytest.fixture(autouse=True)
def provider_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default consent rule, as the template deploys it; moto answers at once.
    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))
    assert app.settings.key_consent == DEFAULT


def consenting(key_arn: str, consent: KeyConsent) -> bool:
    region = key_arn.split(":")[3]
    key_id = key_arn.rsplit("/", 1)[-1]
    tags = kms_backends[MOTO_ACCOUNT_ID][region].list_resource_tags(key_id)["Tags"]
    return consent.given({tag["TagKey"]: tag["TagValue"] for tag in tags})


@pytest.fixture
def iam(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The provider role's KMS policy, played by the proxy: no key policy is read or written
    on a key without the default consent tag."""
    for operation in ("kms:GetKeyPolicy", "kms:PutKeyPolicy"):
        fault_proxy.add_rule(
            operation,
            error_code="AccessDeniedException",
            message=f"not authorized to perform: {operation} (no identity-based policy allows it)",
            when=lambda body: not consenting(str(body.get("KeyId", "")), DEFAULT),
        )
    yield fault_proxy


def run(cfn: CloudFormation, event: dict[str, Any]) -> CfnResponse:
    app.lambda_handler(event, FakeLambdaContext())
    response = cfn.response(event)
    assert response.physical_id
    assert len(response.reason or "") < 256
    return response


def new_key(aws: LocalAws, tags: Sequence[TagTypeDef] = ()) -> str:
    kms = aws.client("kms")
    arn = str(kms.create_key(Description="a key", Tags=list(tags))["KeyMetadata"]["Arn"])
    document = {"Version": "2012-10-17", "Statement": [dict(DEFAULT_STATEMENT)]}
    kms.put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(document))
    kms.create_alias(AliasName=f"alias/k-{arn[-12:]}", TargetKeyId=arn)
    return arn


def policy(aws: LocalAws, key_arn: str) -> Policy:
    text = aws.client("kms").get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    document: Policy = json.loads(text)
    return document


def sids(document: Policy, prefix: str) -> list[str]:
    return [
        str(s["Sid"]) for s in document["Statement"] if str(s.get("Sid", "")).startswith(prefix)
    ]


def props(demo_org: SeededOrg, *keys: str) -> dict[str, Any]:
    return {"KeyIds": list(keys), "OrganizationalUnitIds": [demo_org.ous["Dev"]]}


def untag(aws: LocalAws, key_arn: str) -> None:
    aws.client("kms").untag_resource(KeyId=key_arn, TagKeys=[CONSENT_TAG_KEY])


# --- Grants need consent ------------------------------------------------------------------------


def test_an_untagged_key_is_refused_before_any_policy_is_read(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    untagged = new_key(aws, [{"TagKey": "purpose", "TagValue": "x"}])
    alias = f"alias/k-{untagged[-12:]}"
    response = run(cfn, cfn.event("Create", props(demo_org, demo_org.keys["logs"], alias)))

    assert response.status == "FAILED"
    key_id = untagged.rsplit("/", 1)[-1]
    assert response.reason == (
        f"KeyIds: '{alias}' lacks the consent tag {CONSENT_TAG_KEY}={CONSENT_TAG_VALUE}; "
        f"tag it: aws kms tag-resource --key-id {key_id} "
        f"--tags TagKey={CONSENT_TAG_KEY},TagValue={CONSENT_TAG_VALUE} --region us-east-1"
    )
    # Refused by the function's own check: no key policy was even read, the tagged key's
    # included, and IAM never had to refuse anything.
    assert iam.count("kms:GetKeyPolicy") == iam.count("kms:PutKeyPolicy") == 0
    for key in demo_org.keys.values():
        assert policy(aws, key) == demo_org.original_policies[key]

    # CloudFormation's Delete after the failed Create: the untagged key is passed over.
    delete = cfn.event(
        "Delete",
        props(demo_org, demo_org.keys["logs"], alias),
        physical_id=response.physical_id,
    )
    assert run(cfn, delete).status == "SUCCESS"
    assert iam.count("kms:PutKeyPolicy") == 0


def test_the_command_in_the_reason_is_the_fix(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    untagged = new_key(aws)
    refused = run(cfn, cfn.event("Create", props(demo_org, untagged)))
    assert refused.status == "FAILED"
    match = COMMAND.search(refused.reason or "")
    assert match, refused.reason
    aws.client("kms", match["region"]).tag_resource(
        KeyId=match["id"], Tags=[{"TagKey": match["key"], "TagValue": match["value"]}]
    )

    created = run(cfn, cfn.event("Create", props(demo_org, untagged)))
    assert created.status == "SUCCESS", created.reason
    assert sids(policy(aws, untagged), created.data["StatementSid"])


def test_a_key_tagged_with_another_value_is_refused(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    key = new_key(aws, [{"TagKey": CONSENT_TAG_KEY, "TagValue": "disabled"}])
    response = run(cfn, cfn.event("Create", props(demo_org, key)))
    assert response.status == "FAILED"
    assert f"lacks the consent tag {CONSENT_TAG_KEY}={CONSENT_TAG_VALUE}" in str(response.reason)
    # A key ARN is named by its ID, which the command repeats.
    assert str(response.reason).startswith(f"KeyIds: '{key.rsplit('/', 1)[-1]}' lacks")
    assert iam.count("kms:GetKeyPolicy") == 0


def test_a_tagged_key_is_shared(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    key = new_key(aws, CONSENT_TAGS)
    response = run(cfn, cfn.event("Create", props(demo_org, key)))
    assert response.status == "SUCCESS", response.reason
    assert sids(policy(aws, key), response.data["StatementSid"])
    assert iam.count("kms:PutKeyPolicy", injected=True) == 0


def test_consent_off_shares_an_untagged_key(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KeyConsent: Off drops the IAM condition as well: no refusal stands in for it here.
    monkeypatch.setattr(app, "settings", replace(app.settings, key_consent=None))
    key = new_key(aws)
    response = run(cfn, cfn.event("Create", props(demo_org, key)))
    assert response.status == "SUCCESS", response.reason
    assert sids(policy(aws, key), response.data["StatementSid"])
    deleted = run(cfn, cfn.event("Delete", props(demo_org, key), physical_id=response.physical_id))
    assert deleted.status == "SUCCESS"
    assert not sids(policy(aws, key), response.data["StatementSid"])


def test_a_tag_of_the_deployers_choice(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = KeyConsent("team:kms-share", "yes")
    monkeypatch.setattr(app, "settings", replace(app.settings, key_consent=chosen))
    default_only = new_key(aws, CONSENT_TAGS)
    refused = run(cfn, cfn.event("Create", props(demo_org, default_only)))
    assert refused.status == "FAILED"
    assert "lacks the consent tag team:kms-share=yes" in str(refused.reason)
    assert "TagKey=team:kms-share,TagValue=yes" in str(refused.reason)

    chosen_key = new_key(aws, [{"TagKey": "team:kms-share", "TagValue": "yes"}])
    response = run(cfn, cfn.event("Create", props(demo_org, chosen_key)))
    assert response.status == "SUCCESS", response.reason


# --- Taking statements off ----------------------------------------------------------------------


def test_a_key_that_lost_its_tag_keeps_the_statements_until_tagged_again(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    key = new_key(aws, CONSENT_TAGS)
    before = policy(aws, key)
    properties = props(demo_org, key)
    created = run(cfn, cfn.event("Create", properties))
    assert created.status == "SUCCESS", created.reason
    prefix = created.data["StatementSid"]
    untag(aws, key)

    deleted = run(cfn, cfn.event("Delete", properties, physical_id=created.physical_id))
    assert deleted.status == "FAILED"
    reason = str(deleted.reason)
    assert reason.startswith("This resource's statements stay on a key that lost its consent tag")
    match = COMMAND.search(reason)
    assert match, reason
    assert (match["id"], match["key"], match["value"]) == (
        key.rsplit("/", 1)[-1],
        CONSENT_TAG_KEY,
        CONSENT_TAG_VALUE,
    )
    assert sids(policy(aws, key), prefix)

    # The fix the reason names, then CloudFormation's retry of the Delete.
    aws.client("kms").tag_resource(KeyId=key, Tags=CONSENT_TAGS)
    retried = run(cfn, cfn.event("Delete", properties, physical_id=created.physical_id))
    assert retried.status == "SUCCESS", retried.reason
    assert policy(aws, key) == before


def test_dropping_a_key_that_lost_its_tag_fails_and_names_the_fix(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    kept, lost = new_key(aws, CONSENT_TAGS), new_key(aws, CONSENT_TAGS)
    created = run(cfn, cfn.event("Create", props(demo_org, kept, lost)))
    assert created.status == "SUCCESS", created.reason
    untag(aws, lost)
    update = cfn.event(
        "Update",
        props(demo_org, kept),
        old_properties=props(demo_org, kept, lost),
        physical_id=created.physical_id,
    )
    response = run(cfn, update)
    assert response.status == "FAILED"
    match = COMMAND.search(str(response.reason))
    assert match, response.reason
    assert match["id"] == lost.rsplit("/", 1)[-1]
    assert sids(policy(aws, lost), created.data["StatementSid"])


def test_the_rollback_of_an_update_refused_for_consent_succeeds(
    aws: LocalAws, iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    tagged, untagged = demo_org.keys["logs"], new_key(aws)
    created = run(cfn, cfn.event("Create", props(demo_org, tagged)))
    assert created.status == "SUCCESS", created.reason
    prefix = created.data["StatementSid"]
    granted = policy(aws, tagged)

    update = cfn.event(
        "Update",
        props(demo_org, tagged, untagged),
        old_properties=props(demo_org, tagged),
        physical_id=created.physical_id,
    )
    assert "lacks the consent tag" in str(run(cfn, update).reason)
    # CloudFormation rolls back with the properties swapped: the untagged key, among the old
    # ones, cannot be read; this resource never wrote it, so it is passed over.
    rollback = cfn.event(
        "Update",
        props(demo_org, tagged),
        old_properties=props(demo_org, tagged, untagged),
        physical_id=created.physical_id,
    )
    rolled_back = run(cfn, rollback)
    assert rolled_back.status == "SUCCESS", rolled_back.reason
    assert policy(aws, tagged) == granted
    assert not sids(policy(aws, untagged), prefix)
    assert iam.count("kms:PutKeyPolicy", injected=True) == 0


# --- The check itself ---------------------------------------------------------------------------


def test_every_refusal_fits_the_console(aws: LocalAws) -> None:
    arn = new_key(aws)
    alias_arn = f"arn:aws:kms:us-east-1:{MOTO_ACCOUNT_ID}:alias/" + "a" * 200
    long_tag = KeyConsent("k" * 128, "v" * 256)
    store = KeyStore(boto3.Session(region_name="us-east-1"), pool=2)
    alias = "alias/" + "b" * 34
    for ref_text in (arn, alias_arn, alias, arn.rsplit("/", 1)[-1]):
        ref = parse_key_ref(ref_text)
        assert ref is not None
        key = replace(KeyInfo.at(arn), ref=ref)
        with pytest.raises(InvalidPropertyError) as info:
            check_consent(store, [key], DEFAULT, workers=2)
        assert info.value.prop == "KeyIds"
        # Never clipped: the reason ends with the whole command, which names the key.
        match = COMMAND.search(str(info.value))
        assert match, str(info.value)
        assert match["id"] == arn.rsplit("/", 1)[-1]
    # A tag of the longest kind still gives a reason the console shows.
    with pytest.raises(InvalidPropertyError) as info:
        check_consent(store, [KeyInfo.at(arn)], long_tag, workers=2)
    assert str(info.value).startswith(f"KeyIds: '{arn.rsplit('/', 1)[-1]}' lacks")


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, DEFAULT),
        ({"KEY_CONSENT": "Required"}, DEFAULT),
        ({"KEY_CONSENT": "Off"}, None),
        ({"KEY_CONSENT": "off"}, None),
        # A typo keeps consent on: a mistake must never share every key of the account.
        ({"KEY_CONSENT": "Of"}, DEFAULT),
        (
            {"KEY_CONSENT_TAG_KEY": "team:share", "KEY_CONSENT_TAG_VALUE": "yes"},
            KeyConsent("team:share", "yes"),
        ),
        ({"KEY_CONSENT_TAG_KEY": "", "KEY_CONSENT_TAG_VALUE": ""}, DEFAULT),
    ],
)
def test_consent_settings_from_the_environment(
    environment: dict[str, str], expected: KeyConsent | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KEY_CONSENT", "KEY_CONSENT_TAG_KEY", "KEY_CONSENT_TAG_VALUE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_environment().key_consent == expected
    assert (
        consent_from(
            environment.get("KEY_CONSENT"),
            environment.get("KEY_CONSENT_TAG_KEY"),
            environment.get("KEY_CONSENT_TAG_VALUE"),
        )
        == expected
    )


def test_allowed_organizations_roles_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "ALLOWED_ORGANIZATIONS_ROLES", "arn:aws:iam::*:role/A, arn:aws:iam::1:role/B,,"
    )
    assert Settings.from_environment().assumable_roles == (
        "arn:aws:iam::*:role/A",
        "arn:aws:iam::1:role/B",
    )
    monkeypatch.setenv("ALLOWED_ORGANIZATIONS_ROLES", "")
    assert Settings.from_environment().assumable_roles == ()


# --- The Organizations role ---------------------------------------------------------------------


def test_a_role_the_provider_may_not_assume_is_refused_before_any_call(
    iam: FaultProxy, cfn: CloudFormation, demo_org: SeededOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = "arn:aws:iam::*:role/OrgKeyPolicyOrganizationsReader"
    monkeypatch.setattr(app, "settings", replace(app.settings, assumable_roles=(allowed,)))
    other = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/SomeoneElsesRole"
    properties = {**props(demo_org, demo_org.keys["logs"]), "OrganizationsRoleArn": other}
    response = run(cfn, cfn.event("Create", properties))
    assert response.status == "FAILED"
    assert response.reason == (
        f"OrganizationsRoleArn: '{other}' is not a role this provider may assume; "
        "add it to the provider's AllowedOrganizationsRoles or leave the property out"
    )
    assert iam.count("sts:AssumeRole") == iam.count("organizations:*") == 0
    assert iam.count("kms:*") == 0
