"""The provider template as an organization adopts it: key consent in IAM, the Organizations
role, the reader role's trust across the organization, and the release settings.

IAM decisions are computed with the project's own evaluator (``orgkeypolicy.evaluation``) on
the policies as SAM translates the template, with the template's parameters and conditions
resolved the way CloudFormation would (``tests/cfnstack.py``). The StackSet template is in
``tests/test_stackset.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import boto3
import pytest

import app
from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.server import LocalAws
from orgkeypolicy import __version__
from orgkeypolicy.evaluation import Decision, Principal, compile_policy, evaluate
from orgkeypolicy.evaluation import evaluate_identity_policy as identity_decision
from orgkeypolicy.settings import Settings
from tests.cfnstack import ACCOUNT, REGION, Stack
from tests.test_template import (
    FUNCTION,
    FUNCTION_ROLE,
    READER_ROLE,
    READER_TEMPLATE,
    TEMPLATE,
    _load,
    _translate,
)

ORG_ID = "o-abcdefghij"
PROVIDER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/OrgKeyPolicy-Provider-{REGION}"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MANAGEMENT = "123456789012"
READER_ARN = f"arn:aws:iam::{MANAGEMENT}:role/OrgKeyPolicyOrganizationsReader"
ORGANIZATION = f"arn:aws:organizations::{MANAGEMENT}:ou/{ORG_ID}/ou-ab12-11111111"
TAG = "aws:ResourceTag/orgkeypolicy:share"
KMS_POLICY_ACTIONS = ("kms:GetKeyPolicy", "kms:PutKeyPolicy")
KMS_LOOKUP_ACTIONS = ("kms:DescribeKey", "kms:ListResourceTags")


@pytest.fixture(scope="module")
def deployed() -> dict[str, Any]:
    return _translate(_load(TEMPLATE))


@pytest.fixture(scope="module")
def reader() -> dict[str, Any]:
    return _load(READER_TEMPLATE)


def decide(policy: Mapping[str, Any], action: str, tags: Mapping[str, str] | None = None) -> str:
    answer = identity_decision(policy, Principal(PROVIDER_ROLE), action, KEY, dict(tags or {}))
    assert not answer.unsupported, answer
    return answer.decision.value


# --- 1. Key consent in IAM ------------------------------------------------------------------------


def test_by_default_only_a_tagged_key_policy_can_be_read_or_written(
    deployed: dict[str, Any],
) -> None:
    policy = Stack(deployed).role_policy(FUNCTION_ROLE)
    for action in KMS_POLICY_ACTIONS:
        assert decide(policy, action, {TAG: "enabled"}) == "Allow"
        assert decide(policy, action) == "ImplicitDeny"
        assert decide(policy, action, {TAG: "disabled"}) == "ImplicitDeny"
        assert decide(policy, action, {"aws:ResourceTag/other": "enabled"}) == "ImplicitDeny"
    # What the function needs to resolve an alias and explain a refusal needs no tag.
    for action in KMS_LOOKUP_ACTIONS:
        assert decide(policy, action) == "Allow"
    # Nothing else of KMS, tagged or not.
    for action in ("kms:ScheduleKeyDeletion", "kms:CreateGrant", "kms:Decrypt"):
        assert decide(policy, action, {TAG: "enabled"}) == "ImplicitDeny"


def test_the_consent_tag_is_the_deployers_choice(deployed: dict[str, Any]) -> None:
    stack = Stack(deployed, KeyTagKey="team:kms-share", KeyTagValue="yes")
    policy = stack.role_policy(FUNCTION_ROLE)
    assert decide(policy, "kms:PutKeyPolicy", {"aws:ResourceTag/team:kms-share": "yes"}) == "Allow"
    assert decide(policy, "kms:PutKeyPolicy", {TAG: "enabled"}) == "ImplicitDeny"


def test_consent_off_lets_the_role_change_any_key_of_the_account(
    deployed: dict[str, Any],
) -> None:
    policy = Stack(deployed, KeyConsent="Off").role_policy(FUNCTION_ROLE)
    for action in (*KMS_POLICY_ACTIONS, *KMS_LOOKUP_ACTIONS):
        assert decide(policy, action) == "Allow"
    # Still only this account's keys.
    other = KEY.replace(ACCOUNT, "222222222222")
    answer = identity_decision(policy, Principal(PROVIDER_ROLE), "kms:PutKeyPolicy", other, {})
    assert answer.decision is Decision.IMPLICIT_DENY


def test_the_function_reads_the_consent_settings_the_template_gives_it(
    deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for parameters, expected in [
        ({}, ("orgkeypolicy:share", "enabled")),
        ({"KeyTagKey": "team:kms-share", "KeyTagValue": "yes"}, ("team:kms-share", "yes")),
        ({"KeyConsent": "Off"}, None),
    ]:
        stack = Stack(deployed, **parameters)
        variables = stack.resolve(deployed["Resources"][FUNCTION]["Properties"]["Environment"])
        for name, value in variables["Variables"].items():
            monkeypatch.setenv(name, value)
        consent = Settings.from_environment().key_consent
        assert (consent and (consent.tag_key, consent.tag_value)) == expected


def test_key_policy_permissions_are_defined_once(deployed: dict[str, Any]) -> None:
    # One managed policy that every function writing keys attaches; no inline copy.
    resources = deployed["Resources"]
    holders = {
        name
        for name, resource in resources.items()
        if "kms:PutKeyPolicy" in json.dumps(resource.get("Properties", {}))
    }
    assert holders == {"KeyPolicyAccessPolicy"}
    assert resources["KeyPolicyAccessPolicy"]["Type"] == "AWS::IAM::ManagedPolicy"
    roles = [name for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"]
    for role in roles:
        attached = resources[role]["Properties"].get("ManagedPolicyArns", [])
        assert attached == [
            {"Ref": "KeyPolicyAccessPolicy"},
            {"Ref": "OrganizationAccessPolicy"},
        ], role


# --- The Organizations role -----------------------------------------------------------------------


def _can(policy: Mapping[str, Any], action: str, resource: str) -> bool:
    answer = identity_decision(policy, Principal(PROVIDER_ROLE), action, resource, {})
    assert not answer.unsupported, answer
    return answer.decision is Decision.ALLOW


def test_the_role_reads_the_organization_itself_only_without_a_reader_role(
    deployed: dict[str, Any],
) -> None:
    other = "arn:aws:iam::222222222222:role/Elsewhere"
    alone = Stack(deployed).role_policy(FUNCTION_ROLE)
    assert _can(alone, "organizations:ListAccountsForParent", ORGANIZATION)
    assert not _can(alone, "sts:AssumeRole", READER_ARN)

    reading = Stack(deployed, OrganizationsRoleArn=READER_ARN).role_policy(FUNCTION_ROLE)
    assert not _can(reading, "organizations:ListAccountsForParent", ORGANIZATION)
    assert _can(reading, "sts:AssumeRole", READER_ARN)
    assert not _can(reading, "sts:AssumeRole", other)

    allowed = Stack(
        deployed,
        OrganizationsRoleArn=READER_ARN,
        AllowedOrganizationsRoles="arn:aws:iam::*:role/TeamReader,arn:aws:iam::3*:role/X",
    ).role_policy(FUNCTION_ROLE)
    assert _can(allowed, "sts:AssumeRole", READER_ARN)
    assert _can(allowed, "sts:AssumeRole", "arn:aws:iam::222222222222:role/TeamReader")
    assert _can(allowed, "sts:AssumeRole", "arn:aws:iam::333333333333:role/X")
    assert not _can(allowed, "sts:AssumeRole", other)

    # Roles a resource may name, but no default reader: resources without the property read
    # the organization themselves.
    listed = Stack(
        deployed, AllowedOrganizationsRoles="arn:aws:iam::*:role/TeamReader"
    ).role_policy(FUNCTION_ROLE)
    assert _can(listed, "organizations:ListAccountsForParent", ORGANIZATION)
    assert not _can(listed, "sts:AssumeRole", READER_ARN)


def test_the_function_is_told_the_roles_its_iam_policy_allows(deployed: dict[str, Any]) -> None:
    stack = Stack(
        deployed, AllowedOrganizationsRoles="arn:aws:iam::*:role/TeamReader,arn:aws:iam::3*:role/X"
    )
    variables = stack.resolve(deployed["Resources"][FUNCTION]["Properties"]["Environment"])
    assert variables["Variables"]["ALLOWED_ORGANIZATIONS_ROLES"] == (
        "arn:aws:iam::*:role/TeamReader,arn:aws:iam::3*:role/X"
    )


# --- 2. One provider role name everywhere, trusted by the organization's reader ------------------


def test_the_provider_role_has_the_same_name_in_every_account(deployed: dict[str, Any]) -> None:
    name = deployed["Resources"][FUNCTION_ROLE]["Properties"]["RoleName"]
    assert name == {"Fn::Sub": "${RoleNamePrefix}-Provider-${AWS::Region}"}
    # IAM names are per account, not per region: the region keeps two regions' stacks apart.
    assert Stack(deployed).resolve(name) == f"OrgKeyPolicy-Provider-{REGION}"
    pattern = re.compile(deployed["Parameters"]["RoleNamePrefix"]["AllowedPattern"])
    longest = "x" * 40 + "-Provider-" + "ap-southeast-4"
    assert pattern.fullmatch("x" * 40) and len(longest) <= 64
    assert not pattern.fullmatch("x" * 41)


def _trust(stack: Stack) -> Any:
    role = stack.resolve(stack.template["Resources"][READER_ROLE]["Properties"])
    # A trust policy is the role's resource policy for its own ARN; the evaluator, made for key
    # policies, needs that Resource spelled out.
    document = role["AssumeRolePolicyDocument"]
    for statement in document["Statement"]:
        statement["Resource"] = READER_ARN
    return compile_policy(document)


def _assumes(trust: Any, role_arn: str, org_id: str | None) -> Decision:
    answer = evaluate(trust, Principal(role_arn, org_id=org_id), "sts:AssumeRole", READER_ARN)
    assert not answer.unsupported, answer
    return answer.decision


@pytest.mark.parametrize("region", ["us-east-1", "ap-southeast-4"])
def test_the_reader_trusts_every_provider_of_the_organization_by_name(
    reader: dict[str, Any], region: str
) -> None:
    trust = _trust(Stack(reader, OrganizationId=ORG_ID))
    for account in ("222222222222", "999999999999"):
        provider = f"arn:aws:iam::{account}:role/OrgKeyPolicy-Provider-{region}"
        assert _assumes(trust, provider, ORG_ID) is Decision.ALLOW
        # The same name outside the organization, and another role inside it: refused.
        assert _assumes(trust, provider, "o-zzzzzzzzzz") is Decision.IMPLICIT_DENY
        assert _assumes(trust, provider, None) is Decision.IMPLICIT_DENY
        other = f"arn:aws:iam::{account}:role/Admin"
        assert _assumes(trust, other, ORG_ID) is Decision.IMPLICIT_DENY
        user = f"arn:aws:iam::{account}:user/OrgKeyPolicy-Provider-{region}"
        assert _assumes(trust, user, ORG_ID) is Decision.IMPLICIT_DENY


def test_the_reader_can_still_trust_one_provider_role(reader: dict[str, Any]) -> None:
    trust = _trust(Stack(reader, FunctionRoleArn=PROVIDER_ROLE))
    assert _assumes(trust, PROVIDER_ROLE, ORG_ID) is Decision.ALLOW
    other = f"arn:aws:iam::222222222222:role/OrgKeyPolicy-Provider-{REGION}"
    assert _assumes(trust, other, ORG_ID) is Decision.IMPLICIT_DENY


def test_the_reader_template_needs_someone_to_trust(reader: dict[str, Any]) -> None:
    (assertion,) = reader["Rules"]["SomeoneIsTrusted"]["Assertions"]
    for parameters, holds in [
        ({}, False),
        ({"OrganizationId": ORG_ID}, True),
        ({"FunctionRoleArn": PROVIDER_ROLE}, True),
    ]:
        assert Stack(reader, **parameters).resolve(assertion["Assert"]) is holds


# --- 3. Releases: alias, version, alarms, concurrency, endpoint -----------------------------------


def test_the_service_token_is_a_published_alias(
    main_template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    props = main_template["Resources"][FUNCTION]["Properties"]
    assert props["AutoPublishAlias"] == "live"
    # Any change of the function, its layer reference included, publishes a new version;
    # the release in the description makes every release one.
    assert props["AutoPublishAliasAllProperties"] is True
    assert props["Description"] == f"Provider of Custom::OrgKeyPolicy {__version__}"
    resources = deployed["Resources"]
    (alias,) = [n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Alias"]
    assert resources[alias]["Properties"]["Name"] == "live"
    outputs = deployed["Outputs"]
    assert Stack(deployed).resolve(outputs["ServiceToken"]["Value"]) == Stack(deployed).resolve(
        {"Ref": alias}
    )
    function = Stack(deployed, ServiceTokenExport="Function")
    assert function.resolve(outputs["ServiceToken"]["Value"]) == function.resolve(
        outputs["FunctionArn"]["Value"]
    )


@pytest.fixture(scope="module")
def main_template() -> dict[str, Any]:
    return _load(TEMPLATE)


def test_the_export_has_one_name_in_every_account_of_a_stackset(deployed: dict[str, Any]) -> None:
    export = deployed["Outputs"]["ServiceToken"]["Export"]["Name"]
    assert Stack(deployed).resolve(export) == "org-key-policy-ServiceToken"
    # A StackSet's stacks are named StackSet-<name>-<id>: the name is given instead.
    named = Stack(deployed, ServiceTokenExportName="org-key-policy-ServiceToken")
    named.values["AWS::StackName"] = "StackSet-org-key-policy-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert named.resolve(export) == "org-key-policy-ServiceToken"


def test_no_invocation_is_retried_whatever_it_names(deployed: dict[str, Any]) -> None:
    # The alias (today's ServiceToken) and $LATEST (0.1.0's) are both free of Lambda retries.
    configs = {
        r["Properties"].get("Qualifier"): r["Properties"]
        for r in deployed["Resources"].values()
        if r["Type"] == "AWS::Lambda::EventInvokeConfig"
    }
    assert set(configs) == {"live", "$LATEST"}
    for config in configs.values():
        assert config["MaximumRetryAttempts"] == 0
        assert config["MaximumEventAgeInSeconds"] == 3600


def test_reserved_concurrency(deployed: dict[str, Any]) -> None:
    function = deployed["Resources"][FUNCTION]["Properties"]
    assert Stack(deployed).resolve(function)["ReservedConcurrentExecutions"] == 5
    # 0 would stop the function altogether: it means "reserve nothing".
    assert "ReservedConcurrentExecutions" not in Stack(deployed, ReservedConcurrency="0").resolve(
        function
    )


def _alarms(stack: Stack) -> dict[str, Any]:
    return {
        name: stack.resolve(r["Properties"])
        for name, r in stack.template["Resources"].items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }


def test_alarms_notify_the_topic_when_one_is_given(deployed: dict[str, Any]) -> None:
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:platform-alerts"
    quiet, told = _alarms(Stack(deployed)), _alarms(Stack(deployed, AlarmTopicArn=topic))
    assert set(quiet) == set(told) == {"FailuresAlarm", "ErrorsAlarm"}
    for name in quiet:
        assert "AlarmActions" not in quiet[name]
        assert told[name]["AlarmActions"] == [topic]
        assert told[name]["Threshold"] == 1
        assert told[name]["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_the_failures_alarm_watches_the_metric_the_handler_emits(
    aws: LocalAws,
    cfn: CloudFormation,
    deployed: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = cfn.event("Create", {"KeyID": ["alias/x"], "AccountIds": ["111111111111"]})
    app.lambda_handler(event, FakeLambdaContext())
    assert cfn.response(event).status == "FAILED"
    emitted = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{") and '"_aws"' in line
    ]
    (metrics,) = [m for m in emitted if "Failures" in m]
    (directive,) = metrics["_aws"]["CloudWatchMetrics"]
    alarm = _alarms(Stack(deployed))["FailuresAlarm"]
    environment = deployed["Resources"][FUNCTION]["Properties"]["Environment"]["Variables"]
    assert (
        alarm["Namespace"] == directive["Namespace"] == environment["POWERTOOLS_METRICS_NAMESPACE"]
    )
    assert alarm["MetricName"] == "Failures"
    assert [d["Name"] for d in alarm["Dimensions"]] == directive["Dimensions"][0]
    for dimension in alarm["Dimensions"]:
        assert metrics[dimension["Name"]] == dimension["Value"]
    assert environment["POWERTOOLS_SERVICE_NAME"] == metrics["service"]


def test_an_empty_endpoint_variable_leaves_the_real_endpoints(
    deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The template declares AWS_ENDPOINT_URL empty so that `sam local invoke` passes it on;
    # deployed, botocore must ignore it rather than point every client at "".
    environment = deployed["Resources"][FUNCTION]["Properties"]["Environment"]["Variables"]
    assert environment["AWS_ENDPOINT_URL"] == ""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    session = boto3.Session(region_name=REGION)
    for service in ("kms", "organizations", "sts", "dynamodb"):
        endpoint = session.client(service).meta.endpoint_url
        assert endpoint.startswith("https://") and "amazonaws.com" in endpoint, endpoint
