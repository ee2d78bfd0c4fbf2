"""The provider templates as an organization adopts them: key consent in IAM, the reader role's
trust across the organization, the release settings, and the StackSet template deployed to two
accounts and two regions of the local AWS.

IAM decisions are computed with the project's own evaluator (``orgkeypolicy.evaluation``) on
the policies as SAM translates the template, with the template's parameters and conditions
resolved the way CloudFormation would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest

import app
from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.server import MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy import __version__
from orgkeypolicy.evaluation import Decision, Principal, compile_policy, evaluate
from orgkeypolicy.evaluation import evaluate_identity_policy as identity_decision
from orgkeypolicy.settings import Settings
from scripts.stackset import CODE_PARAMETER, REGIONAL_BUCKET, archive, package
from tests.test_template import (
    FUNCTION,
    FUNCTION_ROLE,
    READER_ROLE,
    READER_TEMPLATE,
    REPO,
    TEMPLATE,
    _cfn_lint,
    _load,
    _output,
    _translate,
)

ACCOUNT = "111111111111"
REGION = "eu-west-1"
ORG_ID = "o-abcdefghij"
PROVIDER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/OrgKeyPolicy-Provider-{REGION}"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
READER_ARN = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/OrgKeyPolicyOrganizationsReader"
ORGANIZATION = f"arn:aws:organizations::{MOTO_ACCOUNT_ID}:ou/{ORG_ID}/ou-ab12-11111111"
TAG = "aws:ResourceTag/orgkeypolicy:share"
KMS_POLICY_ACTIONS = ("kms:GetKeyPolicy", "kms:PutKeyPolicy")
KMS_LOOKUP_ACTIONS = ("kms:DescribeKey", "kms:ListResourceTags")


# --- CloudFormation's side: parameters, conditions and intrinsics resolved ----------------------


class Stack:
    """A template's parameters and conditions, resolved as CloudFormation would for one stack."""

    def __init__(self, template: Mapping[str, Any], **parameters: str | list[str]) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        assert not unknown, f"not parameters of the template: {unknown}"
        self.values: dict[str, Any] = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": "org-key-policy",
        }
        for name, spec in declared.items():
            value = parameters.get(name, spec.get("Default"))
            assert value is not None, f"{name} has no default"
            if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
                value = value.split(",")
            self.values[name] = value
        self.conditions: dict[str, bool] = {}
        for name in template.get("Conditions", {}):
            self.condition(name)

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self.conditions[name]

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((fn, arg),) = node.items()
            if fn == "Ref":
                if arg == "AWS::NoValue":
                    return _NO_VALUE
                # A resource stands for itself: only parameters matter to these checks.
                return self.values.get(arg, f"<{arg}>")
            if fn == "Fn::GetAtt":
                return f"<{'.'.join(arg) if isinstance(arg, list) else arg}>"
            if fn == "Fn::If":
                name, if_true, if_false = arg
                return self.resolve(if_true if self.condition(name) else if_false)
            if fn == "Fn::Sub":
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.values[m[1]]), arg)
            if fn == "Fn::Join":
                separator, items = arg
                return separator.join(self.resolve(items))
            if fn == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if fn == "Fn::Not":
                return not self.resolve(arg[0])
            if fn == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if fn == "Condition":
                return self.condition(arg)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}

    def policy(self, document: Any) -> dict[str, Any]:
        resolved = self.resolve(document)
        parsed: dict[str, Any] = json.loads(resolved) if isinstance(resolved, str) else resolved
        return parsed

    def role_policy(self, role: str) -> dict[str, Any]:
        """Every permission of ``role`` (inline and attached policies) as one document."""
        resources = self.template["Resources"]
        props = self.resolve(resources[role]["Properties"])
        documents = [self.policy(p["PolicyDocument"]) for p in props.get("Policies", [])]
        for arn in resources[role]["Properties"].get("ManagedPolicyArns", []):
            attached = resources[arn["Ref"]]["Properties"]["PolicyDocument"]
            documents.append(self.policy(attached))
        statements = [s for document in documents for s in _listed(document["Statement"])]
        return {"Version": "2012-10-17", "Statement": statements}


_NO_VALUE = object()


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


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
        assert attached == [{"Ref": "KeyPolicyAccessPolicy"}], role


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


# --- The StackSet template --------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `sam build` leaves for the packaging step: one directory per function and layer."""
    build = tmp_path_factory.mktemp("build")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
    shutil.copytree(REPO / "handler", build / FUNCTION, ignore=ignore)
    layer = build / "DependenciesLayer" / "python"
    layer.mkdir(parents=True)
    (layer / "dependency.py").write_text("VALUE = 1\n")
    return build


@pytest.fixture(scope="module")
def stackset(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return package(TEMPLATE, built, tmp_path_factory.mktemp("stackset"))


def test_the_stackset_template_is_plain_cloudformation(stackset: Any, tmp_path: Path) -> None:
    text = stackset.template.read_text()
    template = json.loads(text)
    # Service-managed StackSets run no macro: nothing of SAM may be left.
    assert "Transform" not in template
    assert not [r for r in template["Resources"].values() if "Serverless" in r["Type"]]
    assert len(text.encode()) <= 51_200, "too large for CreateStackSet's TemplateBody"
    # No region, account or partition of the machine that translated it.
    for literal in ("us-east-1", "123456789012", "arn:aws:"):
        assert literal not in json.dumps(template["Resources"]), literal
    proc = _cfn_lint(stackset.template, tmp_path)
    assert proc.returncode == 0, _output(proc)
    assert proc.stdout.strip() == "", _output(proc)


def test_every_region_reads_the_code_from_its_own_bucket(stackset: Any) -> None:
    template = json.loads(stackset.template.read_text())
    assert CODE_PARAMETER in template["Parameters"]
    located = {
        r["Properties"].get("Code", r["Properties"].get("Content"))["S3Key"]: r["Type"]
        for r in template["Resources"].values()
        if r["Type"] in ("AWS::Lambda::Function", "AWS::Lambda::LayerVersion")
    }
    assert sorted(located.values()) == ["AWS::Lambda::Function", "AWS::Lambda::LayerVersion"]
    assert set(located) == set(stackset.archives)
    for resource in template["Resources"].values():
        code = resource["Properties"].get("Code") or resource["Properties"].get("Content")
        if resource["Type"].startswith("AWS::Lambda::") and code:
            assert code["S3Bucket"] == REGIONAL_BUCKET
    for key, path in stackset.archives.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert key.startswith(f"orgkeypolicy/{__version__}/") and key.endswith(f"-{digest}.zip")


def test_a_new_build_is_a_new_key_and_a_new_version(
    built: Path, stackset: Any, tmp_path: Path
) -> None:
    def versions(template: dict[str, Any]) -> set[str]:
        return {n for n, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Version"}

    again = package(TEMPLATE, built, tmp_path / "again")
    first = json.loads(stackset.template.read_text())
    # The same build packs into the same bytes: nothing changes, nothing is published.
    assert json.loads(again.template.read_text()) == first
    assert set(again.archives) == set(stackset.archives)

    changed = tmp_path / "build"
    shutil.copytree(built, changed)
    (changed / FUNCTION / "app.py").write_text((built / FUNCTION / "app.py").read_text() + "\n#\n")
    other = package(TEMPLATE, changed, tmp_path / "other")
    second = json.loads(other.template.read_text())
    assert set(other.archives) != set(stackset.archives)
    assert versions(second) and versions(second) != versions(first)


def test_archives_are_reproducible_and_keep_executable_bits(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "bin").mkdir(parents=True)
    (source / "a.py").write_text("A = 1\n")
    (source / "bin" / "tool").write_text("#!/bin/sh\n")
    (source / "bin" / "tool").chmod(0o755)
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x")
    first = archive(source)
    os.utime(source / "a.py", (0, 0))
    assert archive(source) == first
    (tmp_path / "x.zip").write_bytes(first)
    with zipfile.ZipFile(tmp_path / "x.zip") as zipped:
        names = zipped.namelist()
        assert names == ["a.py", "bin/tool"]
        assert (zipped.getinfo("bin/tool").external_attr >> 16) & 0o777 == 0o755


# --- The StackSet deployed: two accounts, two regions ---------------------------------------------

REGIONS = ("us-east-1", "eu-west-1")
BUCKETS = "orgkeypolicy-code"


@pytest.fixture
def organization(aws: LocalAws) -> Iterator[tuple[str, list[str]]]:
    """An organization with one OU holding two member accounts; the management account is
    moto's own."""
    org = aws.organizations()
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    unit = org.create_organizational_unit(ParentId=root, Name="Workloads")
    ou_id = unit["OrganizationalUnit"]["Id"]
    accounts = []
    for name in ("app-a", "app-b"):
        status = org.create_account(Email=f"{name}@example.com", AccountName=name)
        account = status["CreateAccountStatus"]["AccountId"]
        org.move_account(AccountId=account, SourceParentId=root, DestinationParentId=ou_id)
        accounts.append(account)
    yield ou_id, accounts


def _member(aws: LocalAws, account: str) -> boto3.Session:
    """A session in a member account, through the role Organizations creates there."""
    credentials = aws.sts().assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole",
        RoleSessionName="check",
    )["Credentials"]
    return boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def test_the_stackset_deploys_to_every_account_and_region_of_an_ou(
    aws: LocalAws, organization: tuple[str, list[str]], stackset: Any
) -> None:
    ou_id, accounts = organization
    # The code, in one bucket per region of the management account, readable by the members.
    for region in REGIONS:
        s3 = aws.client("s3", region)
        if region == "us-east-1":
            s3.create_bucket(Bucket=f"{BUCKETS}-{region}")
        else:
            s3.create_bucket(
                Bucket=f"{BUCKETS}-{region}",
                CreateBucketConfiguration={"LocationConstraint": region},
            )
        for key, path in stackset.archives.items():
            s3.put_object(Bucket=f"{BUCKETS}-{region}", Key=key, Body=path.read_bytes())

    cloudformation = aws.client("cloudformation")
    # The same parameters for every account: nothing per account.
    cloudformation.create_stack_set(
        StackSetName="org-key-policy",
        TemplateBody=stackset.template.read_text(),
        Parameters=[
            {"ParameterKey": CODE_PARAMETER, "ParameterValue": BUCKETS},
            {"ParameterKey": "OrganizationsRoleArn", "ParameterValue": READER_ARN},
            {
                "ParameterKey": "ServiceTokenExportName",
                "ParameterValue": "org-key-policy-ServiceToken",
            },
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
        PermissionModel="SERVICE_MANAGED",
        AutoDeployment={"Enabled": True, "RetainStacksOnAccountRemoval": False},
    )
    cloudformation.create_stack_instances(
        StackSetName="org-key-policy",
        DeploymentTargets={"OrganizationalUnitIds": [ou_id]},
        Regions=list(REGIONS),
    )
    instances = cloudformation.list_stack_instances(StackSetName="org-key-policy")["Summaries"]
    assert sorted((i["Account"], i["Region"]) for i in instances) == sorted(
        (account, region) for account in accounts for region in REGIONS
    )
    assert {i["StackInstanceStatus"]["DetailedStatus"] for i in instances} == {"SUCCEEDED"}

    function_key = next(k for k in stackset.archives if FUNCTION in k)
    function_sha = hashlib.sha256(stackset.archives[function_key].read_bytes()).digest()
    for account in accounts:
        session = _member(aws, account)
        iam = session.client("iam", region_name="us-east-1", endpoint_url=aws.url)
        for region in REGIONS:
            # The provider's role, by its fixed name: what the organization's reader trusts.
            role = iam.get_role(RoleName=f"OrgKeyPolicy-Provider-{region}")["Role"]
            assert role["Arn"] == f"arn:aws:iam::{account}:role/OrgKeyPolicy-Provider-{region}"
            lambda_ = session.client("lambda", region_name=region, endpoint_url=aws.url)
            (function,) = lambda_.list_functions()["Functions"]
            assert function["Role"] == role["Arn"]
            assert function["Description"] == f"Provider of Custom::OrgKeyPolicy {__version__}"
            variables = function["Environment"]["Variables"]
            assert variables["ORGANIZATIONS_ROLE_ARN"] == READER_ARN
            assert variables["KEY_CONSENT"] == "Required"
            # The code came from this region's bucket.
            assert base64.b64decode(function["CodeSha256"]) == function_sha
        # The key policy permissions as deployed in this account decide as the template does:
        # one managed policy per stack, each with the account's ID filled in.
        documents = _key_policy_permissions(iam)
        assert len(documents) == len(REGIONS)
        key = f"arn:aws:kms:eu-west-1:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        for document in documents:
            principal = Principal(f"arn:aws:iam::{account}:role/OrgKeyPolicy-Provider-eu-west-1")
            tagged = identity_decision(
                document, principal, "kms:PutKeyPolicy", key, {TAG: "enabled"}
            )
            untagged = identity_decision(document, principal, "kms:PutKeyPolicy", key, {})
            assert (tagged.decision, untagged.decision) == (Decision.ALLOW, Decision.IMPLICIT_DENY)


def _key_policy_permissions(iam: Any) -> list[dict[str, Any]]:
    """The account's own managed policies that allow writing key policies."""
    documents = []
    for policy in iam.list_policies(Scope="Local")["Policies"]:
        version = iam.get_policy_version(
            PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"]
        )["PolicyVersion"]["Document"]
        document = json.loads(version) if isinstance(version, str) else version
        if "kms:PutKeyPolicy" in json.dumps(document):
            documents.append(document)
    return documents
