"""Bad property sets through the real handler: every one must fail Create with a reason that
names the property, leave every key policy byte-for-byte as it was, and let the Delete that
CloudFormation sends after a failed Create succeed without touching a key.

Each case changes one thing in a property set that is otherwise valid and aimed at the demo
organization's real keys and OUs (``test_the_base_properties_are_valid`` proves it): a case
that slipped through validation would write, and the byte comparison would see it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest

import app
from localaws.cfn import CfnResponse, CloudFormation, FakeLambdaContext
from localaws.registry import create_registry_table
from localaws.seed import SeededOrg, seed_demo_org
from localaws.server import LocalAws, aws_environment, stale_aws_variables
from orgkeypolicy.statements import sid_prefix

LOGICAL_ID = "HostileKeyPolicy"
MANAGEMENT = "123456789012"
UNKNOWN_KEY = "0b7d4d06-8a87-4a6c-b0d4-52a9e0e1f1a2"
PRINTABLE_ASCII = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
ARABIC_INDIC = "".join(chr(0x0660 + int(digit)) for digit in MANAGEMENT)
DROP = object()
"""A change that removes the property."""


@pytest.fixture(scope="module")
def org(local_aws: LocalAws, cfn_server: CloudFormation) -> Iterator[SeededOrg]:
    """The demo organization, seeded once for the module.

    The cases are expected to change nothing, and each compares the keys before and after
    itself, so sharing the organization keeps the module fast without hiding a write.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in stale_aws_variables():
            patch.delenv(name, raising=False)
        for name, value in aws_environment(local_aws.url).items():
            patch.setenv(name, value)
        patch.setenv("SSL_CERT_FILE", cfn_server.ca_file)
        patch.setattr(boto3, "DEFAULT_SESSION", None)
        local_aws.reset()
        create_registry_table(local_aws.url)
        yield seed_demo_org(local_aws.url)


@pytest.fixture(autouse=True)
def fast_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto is consistent at once; the read-back wait exists for KMS's eventual consistency.
    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))


@pytest.fixture
def pristine(org: SeededOrg, kms: Any) -> SeededOrg:
    """The shared organization with its keys' seeded policy text, whatever ran before.

    The seeded text is indented, and the handler writes compact JSON: any write by a case,
    even of the same content, changes the bytes.
    """
    restore_seeded_policies(kms, org)
    return org


def base(org: SeededOrg, **changes: Any) -> dict[str, Any]:
    """Valid properties for the demo organization, with ``changes`` applied."""
    props: dict[str, Any] = {
        "KeyIds": [org.keys["logs"], "alias/data-lake"],
        "OrganizationalUnitIds": [org.ous["Workloads"]],
        "AccountIds": [org.accounts["sbx-a"]],
        "AllowGrants": "true",
    }
    for name, value in changes.items():
        if value is DROP:
            props.pop(name, None)
        else:
            props[name] = value
    return props


@pytest.fixture(scope="module")
def kms(org: SeededOrg, local_aws: LocalAws) -> Any:
    # One client for the module: making a boto3 client costs more than the calls it makes.
    return local_aws.client("kms", org.region)


def key_policies(kms: Any, org: SeededOrg) -> dict[str, str]:
    """Every demo key's policy exactly as KMS returns it."""
    return {
        arn: str(kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
        for arn in org.keys.values()
    }


def restore_seeded_policies(kms: Any, org: SeededOrg) -> None:
    for arn, document in org.original_policies.items():
        kms.put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(document, indent=4))


def invoke(cfn: CloudFormation, event: dict[str, Any]) -> CfnResponse:
    app.lambda_handler(event, FakeLambdaContext(timeout_seconds=300))
    response = cfn.response(event)
    assert response.count == 1, "CloudFormation must be answered exactly once"
    assert response.size <= 4096
    return response


def build_event(
    cfn: CloudFormation, request_type: str, props: object, physical_id: str | None = None
) -> dict[str, Any]:
    if isinstance(props, Mapping):
        return cfn.event(request_type, props, logical_id=LOGICAL_ID, physical_id=physical_id)
    # ResourceProperties that are not a map cannot come out of cfn.event; put them in after.
    event = cfn.event(request_type, {}, logical_id=LOGICAL_ID, physical_id=physical_id)
    event["ResourceProperties"] = props
    return event


@dataclass(frozen=True)
class Hostile:
    names: str
    """What the reason must mention: the offending property (or the unknown name)."""
    build: Callable[[SeededOrg], object]


def case(case_id: str, names: str, build: Callable[[SeededOrg], object]) -> Any:
    return pytest.param(Hostile(names, build), id=case_id)


def _fake_keys(count: int) -> list[str]:
    return [f"{n:08x}-0000-4000-8000-000000000000" for n in range(count)]


def _fake_ous(count: int) -> list[str]:
    return [f"ou-zz00-{n:08x}" for n in range(count)]


def _fake_accounts(count: int) -> list[str]:
    return [f"{n:012d}" for n in range(count)]


CASES = [
    # --- wrong types -----------------------------------------------------------------------
    case("key-ids-string", "KeyIds", lambda o: base(o, KeyIds="alias/demo-logs")),
    case("key-ids-number", "KeyIds", lambda o: base(o, KeyIds=42)),
    case("key-ids-number-string", "KeyIds", lambda o: base(o, KeyIds="42")),
    case("key-ids-map", "KeyIds", lambda o: base(o, KeyIds={"Ref": "LogsKey"})),
    case("key-ids-nested-list", "KeyIds", lambda o: base(o, KeyIds=[[o.keys["logs"]]])),
    case("key-ids-null-item", "KeyIds", lambda o: base(o, KeyIds=[o.keys["logs"], None])),
    case("ous-string", "OrganizationalUnitIds", lambda o: base(o, OrganizationalUnitIds="ou-x")),
    case("accounts-number", "AccountIds", lambda o: base(o, AccountIds=[123456789012])),
    case("exclude-string", "ExcludeAccountIds", lambda o: base(o, ExcludeAccountIds=MANAGEMENT)),
    case("actions-string", "Actions", lambda o: base(o, Actions="kms:Decrypt")),
    case("role-names-string", "RoleNames", lambda o: base(o, RoleNames="Admin")),
    case("nested-yes", "IncludeNestedOUs", lambda o: base(o, IncludeNestedOUs="yes")),
    case("grants-one", "AllowGrants", lambda o: base(o, AllowGrants="1")),
    case("dry-run-no", "DryRun", lambda o: base(o, DryRun="no")),
    case("dry-run-list", "DryRun", lambda o: base(o, DryRun=["true"])),
    case("properties-list", "ResourceProperties", lambda o: [base(o)]),
    # --- malformed and look-alike identifiers ------------------------------------------------
    case(
        "ou-uppercase",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=[o.ous["Workloads"].upper()]),
    ),
    case(
        "ou-trailing-space",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=[o.ous["Workloads"] + " "]),
    ),
    case(
        "ou-rtl-override",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=[o.ous["Workloads"] + "\u202e"]),
    ),
    case(
        "ou-not-in-org",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=[o.ous["Workloads"], "ou-zz00-zzzzzzzz"]),
    ),
    case(
        "root-of-other-org",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=["r-zz00"]),
    ),
    case(
        "org-id-as-ou",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=[o.org_id]),
    ),
    case("account-arabic-indic", "AccountIds", lambda o: base(o, AccountIds=[ARABIC_INDIC])),
    case("account-11-digits", "AccountIds", lambda o: base(o, AccountIds=["12345678901"])),
    case("account-13-digits", "AccountIds", lambda o: base(o, AccountIds=["1234567890123"])),
    case(
        "account-newline",
        "AccountIds",
        lambda o: base(o, AccountIds=[o.accounts["sbx-a"] + "\n"]),
    ),
    case("account-nul", "AccountIds", lambda o: base(o, AccountIds=["1234567890\x0012"])),
    case("account-not-in-org", "AccountIds", lambda o: base(o, AccountIds=["999999999999"])),
    case("exclude-malformed", "ExcludeAccountIds", lambda o: base(o, ExcludeAccountIds=["abc"])),
    case(
        "key-arn-other-account",
        "KeyIds",
        lambda o: base(o, KeyIds=[o.keys["logs"].replace(MANAGEMENT, "999999999999")]),
    ),
    case(
        "key-arn-other-partition",
        "KeyIds",
        lambda o: base(
            o,
            KeyIds=[
                o.keys["logs"].replace("arn:aws:", "arn:aws-cn:").replace("us-east-1", "cn-north-1")
            ],
        ),
    ),
    case(
        "key-arn-other-region",
        "KeyIds",
        lambda o: base(o, KeyIds=[o.keys["logs"].replace("us-east-1", "eu-west-1")]),
    ),
    case("alias-aws-s3", "KeyIds", lambda o: base(o, KeyIds=[o.keys["logs"], "alias/aws/s3"])),
    case(
        "alias-arn-aws-ebs",
        "KeyIds",
        lambda o: base(o, KeyIds=[f"arn:aws:kms:us-east-1:{MANAGEMENT}:alias/aws/ebs"]),
    ),
    case("unknown-key-uuid", "KeyIds", lambda o: base(o, KeyIds=[o.keys["logs"], UNKNOWN_KEY])),
    case("unknown-alias", "KeyIds", lambda o: base(o, KeyIds=["alias/does-not-exist"])),
    case("alias-wrong-case", "KeyIds", lambda o: base(o, KeyIds=["alias/Demo-Logs"])),
    case("key-trailing-space", "KeyIds", lambda o: base(o, KeyIds=[o.keys["logs"] + " "])),
    case("key-leading-newline", "KeyIds", lambda o: base(o, KeyIds=["\nalias/demo-logs"])),
    # --- sizes ---------------------------------------------------------------------------------
    case("keys-51", "KeyIds", lambda o: base(o, KeyIds=[o.keys["logs"], *_fake_keys(50)])),
    case(
        "ous-101",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=[o.ous["Workloads"], *_fake_ous(100)]),
    ),
    case(
        "accounts-1001",
        "AccountIds",
        lambda o: base(o, AccountIds=[o.accounts["sbx-a"], *_fake_accounts(1000)]),
    ),
    case("accounts-100k", "AccountIds", lambda o: base(o, AccountIds=_fake_accounts(100_000))),
    case("key-10kb", "KeyIds", lambda o: base(o, KeyIds=["alias/" + "k" * 10_000])),
    # --- injection and Unicode in strings ------------------------------------------------------
    case("key-sql", "KeyIds", lambda o: base(o, KeyIds=["alias/x'; DROP TABLE keys;--"])),
    case("role-cfn-substitution", "RoleNames", lambda o: base(o, RoleNames=["${AWS::AccountId}"])),
    case(
        "role-arn-substitution",
        "OrganizationsRoleArn",
        lambda o: base(o, OrganizationsRoleArn="arn:aws:iam::${AWS::AccountId}:role/Reader"),
    ),
    case("mode-sql", "PrincipalMode", lambda o: base(o, PrincipalMode="Accounts'; DROP --")),
    case(
        "condition-value-nul",
        "Conditions",
        lambda o: base(o, Conditions={"StringEquals": {"kms:ViaService": "s3\x00"}}),
    ),
    case(
        "condition-value-rtl",
        "Conditions",
        lambda o: base(o, Conditions={"StringEquals": {"kms:ViaService": "\u202es3"}}),
    ),
    case("action-10kb", "Actions", lambda o: base(o, Actions=["kms:" + "D" * 10_000])),
    # --- unknown properties ----------------------------------------------------------------------
    case(
        "key-id-singular",
        "KeyID",
        lambda o: {**base(o, KeyIds=DROP), "KeyID": [o.keys["logs"]]},
    ),
    case("keyids-lowercase", "keyids", lambda o: {**base(o), "keyids": [o.keys["logs"]]}),
    case("region", "Region", lambda o: {**base(o), "Region": "us-east-1"}),
    case("unknown-rtl", "Properties", lambda o: {**base(o), "Key\u202eIds": ["x"]}),
    # --- refused actions -------------------------------------------------------------------------
    case("action-kms-star", "Actions", lambda o: base(o, Actions=["kms:Decrypt", "kms:*"])),
    case("action-put-policy", "Actions", lambda o: base(o, Actions=["kms:PutKeyPolicy"])),
    case("action-delete", "Actions", lambda o: base(o, Actions=["kms:ScheduleKeyDeletion"])),
    case("action-create-grant", "Actions", lambda o: base(o, Actions=["kms:CreateGrant"])),
    case("action-s3", "Actions", lambda o: base(o, Actions=["s3:GetObject"])),
    case("action-star", "Actions", lambda o: base(o, Actions=["*"])),
    case("actions-empty", "Actions", lambda o: base(o, Actions=[])),
    # --- conditions -----------------------------------------------------------------------------
    case("conditions-string", "Conditions", lambda o: base(o, Conditions="StringEquals")),
    case(
        "conditions-unknown-operator",
        "Conditions",
        lambda o: base(o, Conditions={"StringEqualz": {"kms:ViaService": "s3"}}),
    ),
    case(
        "conditions-org-id",
        "Conditions",
        lambda o: base(o, Conditions={"StringEquals": {"aws:PrincipalOrgID": "o-other12345"}}),
    ),
    case(
        "conditions-principal-arn-case",
        "Conditions",
        lambda o: base(o, Conditions={"ArnLike": {"AWS:principalarn": "arn:aws:iam::*:role/*"}}),
    ),
    case(
        "conditions-org-paths-any-value",
        "Conditions",
        lambda o: base(
            o, Conditions={"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": ["o-*/*"]}}
        ),
    ),
    case("conditions-empty-block", "Conditions", lambda o: base(o, Conditions={"Null": {}})),
    case(
        "conditions-bad-key",
        "Conditions",
        lambda o: base(o, Conditions={"StringEquals": {"ViaService": "s3"}}),
    ),
    case(
        "conditions-look-alike-key",
        "Conditions",
        lambda o: base(o, Conditions={"StringEquals": {"aws:Pr\u0131ncipalOrgID": "o-x"}}),
    ),
    case(
        "conditions-rtl-key-bad-values",
        "Conditions",
        lambda o: base(o, Conditions={"StringEquals": {"kms:Via\u202eService": []}}),
    ),
    # --- roles and modes ------------------------------------------------------------------------
    case("role-star", "RoleNames", lambda o: base(o, RoleNames=["*"])),
    case("role-prefix-star", "RoleNames", lambda o: base(o, RoleNames=["Admin", "Dev*"])),
    case("role-path-star", "RoleNames", lambda o: base(o, RoleNames=["team/*"])),
    case(
        "role-path-too-long",
        "RoleNames",
        lambda o: base(o, RoleNames=["p/" * 300 + "Admin"]),
    ),
    case("mode-lowercase", "PrincipalMode", lambda o: base(o, PrincipalMode="accounts")),
    case(
        "role-arn-user",
        "OrganizationsRoleArn",
        lambda o: base(o, OrganizationsRoleArn=f"arn:aws:iam::{MANAGEMENT}:user/reader"),
    ),
    case("role-arn-name-only", "OrganizationsRoleArn", lambda o: base(o, OrganizationsRoleArn="R")),
    case(
        "role-arn-empty-list",
        "OrganizationsRoleArn",
        lambda o: base(o, OrganizationsRoleArn=[]),
    ),
    # --- missing and empty -------------------------------------------------------------------
    case("key-ids-empty", "KeyIds", lambda o: base(o, KeyIds=[])),
    case("key-ids-missing", "KeyIds", lambda o: base(o, KeyIds=DROP)),
    case(
        "no-ous-no-accounts",
        "OrganizationalUnitIds",
        lambda o: base(o, OrganizationalUnitIds=DROP, AccountIds=DROP),
    ),
    case(
        "empty-ous-and-accounts",
        "AccountIds",
        lambda o: base(o, OrganizationalUnitIds=[], AccountIds=[]),
    ),
]


@pytest.mark.parametrize("hostile", CASES)
def test_hostile_properties_fail_create_and_touch_no_key(
    hostile: Hostile, pristine: SeededOrg, kms: Any, cfn: CloudFormation
) -> None:
    org = pristine
    props = hostile.build(org)
    before = key_policies(kms, org)

    created = invoke(cfn, build_event(cfn, "Create", props))
    assert created.status == "FAILED", created.data
    reason = created.reason or ""
    assert hostile.names in reason, reason
    assert 0 < len(reason) < 256
    assert set(reason) <= PRINTABLE_ASCII, reason
    # The following Delete must be able to act on it: this resource's own ID, not a random one.
    assert created.physical_id == sid_prefix(cfn.stack_id, LOGICAL_ID)
    assert key_policies(kms, org) == before

    deleted = invoke(cfn, build_event(cfn, "Delete", props, physical_id=created.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason
    assert deleted.physical_id == created.physical_id
    assert key_policies(kms, org) == before


def test_the_cases_are_many_and_distinct() -> None:
    ids = [param.id for param in CASES]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)


def test_the_base_properties_are_valid(pristine: SeededOrg, kms: Any, cfn: CloudFormation) -> None:
    """Without the one bad change, the same properties write: the cases test what they say."""
    org = pristine
    before = key_policies(kms, org)
    created = invoke(cfn, build_event(cfn, "Create", base(org)))
    assert created.status == "SUCCESS", created.reason
    written = key_policies(kms, org)
    assert all(written[arn] != before[arn] for arn in before)
    deleted = invoke(cfn, build_event(cfn, "Delete", base(org), created.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason
    after = {arn: json.loads(text) for arn, text in key_policies(kms, org).items()}
    assert after == org.original_policies
