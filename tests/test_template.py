"""Checks of the deployment templates, the layer pins and the SAM build.

The IAM checks run on the template as SAM translates it, so that anything the
transform adds (an implicit role, a managed policy) is checked too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import decode  # type: ignore[import-untyped]
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

from localaws.registry import ATTRIBUTES, KEY_SCHEMA

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"
READER_TEMPLATE = REPO / "templates" / "organizations-reader-role.yaml"
SAMCONFIG = REPO / "samconfig.toml"
LAYER_REQUIREMENTS = REPO / "layers" / "requirements.txt"
DEV_REQUIREMENTS = REPO / "requirements-dev.txt"
VENV_BIN = Path(sys.executable).parent

FUNCTION = "OrgKeyPolicyFunction"
FUNCTION_ROLE = "OrgKeyPolicyFunctionRole"
RESYNC_ROLE = "ResyncFunctionRole"
LOG_GROUP = "OrgKeyPolicyFunctionLogGroup"
READER_ROLE = "OrganizationsReaderRole"

ORGANIZATIONS_READ = frozenset(
    {
        "organizations:DescribeOrganization",
        "organizations:DescribeOrganizationalUnit",
        "organizations:DescribeAccount",
        "organizations:ListRoots",
        "organizations:ListOrganizationalUnitsForParent",
        "organizations:ListAccountsForParent",
        "organizations:ListParents",
    }
)
# Looking keys up (resolving aliases, reading the consent tag), and reading and writing their
# policies: only the second pair needs the key's consent.
KMS_LOOKUP = frozenset({"kms:DescribeKey", "kms:ListResourceTags"})
KMS_POLICY = frozenset({"kms:GetKeyPolicy", "kms:PutKeyPolicy"})
ACCOUNT_KEYS = "arn:${AWS::Partition}:kms:*:${AWS::AccountId}:key/*"
NO_VALUE = {"Ref": "AWS::NoValue"}
POLICY_RESOURCE_TYPES = frozenset(
    {"AWS::IAM::Role", "AWS::IAM::RolePolicy", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}
)


def _fake_aws_env(tmp_path: Path) -> dict[str, str]:
    """Environment for the CLIs: no telemetry, a region, and credentials that reach nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        SAM_CLI_TELEMETRY="0",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
    )
    return env


def _run(
    args: list[str | Path], *, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# --- loading and walking templates -------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches, f"{path} does not parse: {matches}"
    # Plain dicts and strs from here on: the decoder's node types carry positions.
    loaded: dict[str, Any] = json.loads(json.dumps(template))
    return loaded


def _translate(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation that the SAM transform makes of the template, as deployed."""
    sam = json.loads(json.dumps(template))
    for resource in sam["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                # `sam package` replaces local paths with S3 locations before the transform.
                props[key] = "s3://bucket/artifact.zip"
    if "CodeUri" in sam.get("Globals", {}).get("Function", {}):
        sam["Globals"]["Function"]["CodeUri"] = "s3://bucket/artifact.zip"
    translator = Translator(
        None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1")
    )
    translated: dict[str, Any] = translator.translate(sam, {}, get_managed_policy_map=dict)
    return translated


@pytest.fixture(scope="module")
def main_template() -> dict[str, Any]:
    return _load(TEMPLATE)


@pytest.fixture(scope="module")
def deployed_template(main_template: dict[str, Any]) -> dict[str, Any]:
    return _translate(main_template)


@pytest.fixture(scope="module")
def reader_template() -> dict[str, Any]:
    return _load(READER_TEMPLATE)


Choice = tuple[str, bool]


def _branches(
    node: Any, choices: tuple[Choice, ...] = ()
) -> Iterator[tuple[Any, tuple[Choice, ...]]]:
    """Each value `node` can take through Fn::If, with the condition choices leading to it."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        condition, if_true, if_false = node["Fn::If"]
        yield from _branches(if_true, (*choices, (condition, True)))
        yield from _branches(if_false, (*choices, (condition, False)))
    elif node != NO_VALUE:
        yield node, choices


def _text(value: Any) -> str:
    """A scalar or intrinsic as Fn::Sub text: {"Ref": "X"} -> "${X}", GetAtt -> "${R.Attr}"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref":
            return f"${{{arg}}}"
        if fn == "Fn::Sub" and isinstance(arg, str):
            return arg
        if fn == "Fn::GetAtt":
            return "${" + (arg if isinstance(arg, str) else ".".join(arg)) + "}"
    raise AssertionError(f"value the checks cannot read: {value!r}")


def _texts(value: Any) -> list[str]:
    return [_text(v) for v in (value if isinstance(value, list) else [value])]


@dataclass(frozen=True)
class Statement:
    resource: str
    trust: bool
    body: dict[str, Any]
    choices: tuple[Choice, ...]

    @property
    def actions(self) -> list[str]:
        assert "NotAction" not in self.body, f"NotAction in {self}"
        return _texts(self.body["Action"])

    @property
    def resources(self) -> list[str]:
        assert "NotResource" not in self.body, f"NotResource in {self}"
        return _texts(self.body["Resource"])


def _document(node: Any) -> dict[str, Any]:
    # A policy written as a JSON string (for Fn::Sub) keeps its ${...} inside JSON strings.
    if isinstance(node, dict) and set(node) == {"Fn::Sub"}:
        node = node["Fn::Sub"]
    if isinstance(node, str):
        parsed: dict[str, Any] = json.loads(node)
        return parsed
    assert isinstance(node, dict), f"policy document the checks cannot read: {node!r}"
    return node


def _statements(template: dict[str, Any]) -> list[Statement]:
    """Every IAM statement of the template, in every combination of its conditions."""
    found: list[Statement] = []

    def add(
        resource: str, trust: bool, document_node: Any, choices: tuple[Choice, ...] = ()
    ) -> None:
        for document, chosen in _branches(document_node, choices):
            body = _document(document)
            listed = body["Statement"]
            for entry in listed if isinstance(listed, list) else [listed]:
                for statement, more in _branches(entry, chosen):
                    found.append(Statement(resource, trust, statement, more))

    for name, resource in template["Resources"].items():
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind.startswith("AWS::IAM::"):
            assert kind in POLICY_RESOURCE_TYPES, f"{name}: unchecked IAM resource type {kind}"
        if kind == "AWS::IAM::Role":
            add(name, True, props["AssumeRolePolicyDocument"])
            for entry in props.get("Policies", []):
                # A whole inline policy may depend on a condition.
                for policy, choices in _branches(entry):
                    add(name, False, policy["PolicyDocument"], choices)
        elif kind in POLICY_RESOURCE_TYPES:
            add(name, False, props["PolicyDocument"])
    return found


def _role_statements(template: dict[str, Any], role: str) -> list[Statement]:
    """The statements of ``role``: its trust policy, its inline policies and the policy
    resources attached to it."""
    resources = template["Resources"]

    managed = _attached(template, role)

    def attached(name: str) -> bool:
        props = resources[name].get("Properties", {})
        names = [props.get("RoleName"), *props.get("Roles", [])]
        return name == role or name in managed or {"Ref": role} in names

    return [statement for statement in _statements(template) if attached(statement.resource)]


def _condition_is_not_empty(template: dict[str, Any], condition: str, parameter: str) -> None:
    """Assert that `condition` is exactly: the parameter is not the empty string."""
    definition = template["Conditions"][condition]
    assert set(definition) == {"Fn::Not"}, definition
    (equals,) = definition["Fn::Not"]
    assert sorted(equals["Fn::Equals"], key=str) == sorted([{"Ref": parameter}, ""], key=str)


# --- linters -------------------------------------------------------------------------------------


def test_sam_validate_lint_passes(tmp_path: Path) -> None:
    proc = _run(
        [VENV_BIN / "sam", "validate", "--lint", "--template", TEMPLATE],
        env=_fake_aws_env(tmp_path),
        cwd=REPO,
    )
    assert proc.returncode == 0, _output(proc)
    assert "is a valid SAM Template" in proc.stdout + proc.stderr, _output(proc)


def test_sam_validate_lint_rejects_an_invalid_template(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("MemorySize: 512", "MemorySize: 64"))
    proc = _run(
        [VENV_BIN / "sam", "validate", "--lint", "--template", broken],
        env=_fake_aws_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode != 0, _output(proc)


def _cfn_lint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        [VENV_BIN / "cfn-lint", "--format", "parseable", "--", path],
        env=_fake_aws_env(tmp_path),
        cwd=tmp_path,
    )


@pytest.mark.parametrize("template", [TEMPLATE, READER_TEMPLATE], ids=lambda p: p.name)
def test_cfn_lint_reports_nothing(template: Path, tmp_path: Path) -> None:
    proc = _cfn_lint(template, tmp_path)
    # cfn-lint's exit code is a bit mask (2 errors, 4 warnings, 8 informational): any is a failure.
    assert proc.returncode == 0, _output(proc)
    assert proc.stdout.strip() == "", _output(proc)


def test_cfn_lint_fails_on_a_warning(tmp_path: Path) -> None:
    # An unused parameter is only a warning (W2001); it must still fail the run. The reader
    # template is used because cfn-lint does not report unused parameters of SAM templates.
    text = READER_TEMPLATE.read_text().replace(
        "Parameters:\n", "Parameters:\n  Unused:\n    Type: String\n    Default: x\n", 1
    )
    copy = tmp_path / "template.yaml"
    copy.write_text(text)
    proc = _cfn_lint(copy, tmp_path)
    assert proc.returncode == 4, _output(proc)
    assert "W2001" in proc.stdout, _output(proc)


# --- least privilege -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_statements(
    deployed_template: dict[str, Any], reader_template: dict[str, Any]
) -> list[Statement]:
    return _statements(deployed_template) + _statements(reader_template)


def test_no_statement_allows_a_wildcard_action(all_statements: list[Statement]) -> None:
    assert len(all_statements) >= 8
    for statement in all_statements:
        assert statement.body.get("Effect") == "Allow", statement
        assert statement.actions, statement
        for action in statement.actions:
            assert "*" not in action, statement
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), statement


def _attached(template: dict[str, Any], role: str) -> set[str]:
    """The template's own managed policies attached to ``role``."""
    arns = template["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
    return {arn["Ref"] for arn in arns}


def test_no_aws_managed_policies(
    deployed_template: dict[str, Any], reader_template: dict[str, Any]
) -> None:
    # Only policies this template defines (and the checks here read) may be attached.
    for template in (deployed_template, reader_template):
        resources = template["Resources"]
        for name, resource in resources.items():
            for arn in resource.get("Properties", {}).get("ManagedPolicyArns", []):
                assert set(arn) == {"Ref"}, (name, arn)
                assert resources[arn["Ref"]]["Type"] == "AWS::IAM::ManagedPolicy", (name, arn)


def test_function_runs_with_the_templates_own_role(deployed_template: dict[str, Any]) -> None:
    resources = deployed_template["Resources"]
    roles = [n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"]
    assert sorted(roles) == sorted([FUNCTION_ROLE, RESYNC_ROLE]), (
        "the SAM transform must not add a role of its own"
    )
    function = resources[FUNCTION]
    assert function["Type"] == "AWS::Lambda::Function"
    assert function["Properties"]["Role"] == {"Fn::GetAtt": [FUNCTION_ROLE, "Arn"]}
    (trust,) = [s for s in _role_statements(deployed_template, FUNCTION_ROLE) if s.trust]
    assert trust.body["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust.actions == ["sts:AssumeRole"]


def test_function_role_grants_only_the_expected_services(
    deployed_template: dict[str, Any],
) -> None:
    permissions = [s for s in _role_statements(deployed_template, FUNCTION_ROLE) if not s.trust]
    services = {a.split(":")[0] for s in permissions for a in s.actions}
    assert services == {
        "logs",
        "xray",
        "organizations",
        "sts",
        "kms",
        "dynamodb",
        "access-analyzer",
    }
    attached = _attached(deployed_template, FUNCTION_ROLE)
    for statement in permissions:
        assert (
            statement.resource in {FUNCTION_ROLE, *attached}
            or statement.body.get("Sid") == "WriteOwnLogGroup"
        ), statement


def test_logs_only_to_the_functions_own_log_group(deployed_template: dict[str, Any]) -> None:
    resources = deployed_template["Resources"]
    log_group = resources[LOG_GROUP]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{FUNCTION}}}"}
    logs = [
        s
        for s in _role_statements(deployed_template, FUNCTION_ROLE)
        if any(a.startswith("logs:") for a in s.actions)
    ]
    assert logs
    for statement in logs:
        assert set(statement.actions) == {"logs:CreateLogStream", "logs:PutLogEvents"}
        assert statement.resources == [f"${{{LOG_GROUP}.Arn}}"]
        # Attached to the function's role, which is the one the function runs with.
        policy = resources[statement.resource]
        assert policy["Type"] == "AWS::IAM::RolePolicy"
        assert policy["Properties"]["RoleName"] == {"Ref": FUNCTION_ROLE}


def test_access_analyzer_only_the_two_policy_checks_and_only_when_reviews_are_on(
    deployed_template: dict[str, Any], main_template: dict[str, Any]
) -> None:
    checks = [
        s
        for s in _role_statements(deployed_template, FUNCTION_ROLE)
        if any(a.startswith("access-analyzer:") for a in s.actions)
    ]
    assert len(checks) == 1
    [statement] = checks
    assert set(statement.actions) == {
        "access-analyzer:ValidatePolicy",
        "access-analyzer:CheckNoPublicAccess",
    }
    assert statement.choices == (("ReviewsPolicies", True),)
    parameter = main_template["Parameters"]["AccessAnalyzerReview"]
    assert parameter["Default"] == "Enabled"
    assert main_template["Conditions"]["ReviewsPolicies"] == {
        "Fn::Equals": [{"Ref": "AccessAnalyzerReview"}, "Enabled"]
    }


def test_xray_only_the_two_write_actions(deployed_template: dict[str, Any]) -> None:
    xray = [
        s
        for s in _role_statements(deployed_template, FUNCTION_ROLE)
        if any(a.startswith("xray:") for a in s.actions)
    ]
    assert len(xray) == 1
    assert set(xray[0].actions) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    assert xray[0].choices == ()


def test_organizations_actions_are_the_read_only_list(all_statements: list[Statement]) -> None:
    granted: dict[str, set[str]] = {}
    for statement in all_statements:
        actions = [a for a in statement.actions if a.startswith("organizations:")]
        if actions:
            assert set(statement.actions) == set(actions), "keep Organizations apart"
            assert statement.resources == ["*"], statement
            granted.setdefault(statement.resource, set()).update(actions)
    # The functions' roles share one managed policy; the reader role has its own.
    assert granted == {
        name: set(ORGANIZATIONS_READ) for name in ("OrganizationAccessPolicy", READER_ROLE)
    }
    for action in ORGANIZATIONS_READ:
        assert re.fullmatch(r"organizations:(Describe|List)[A-Za-z]+", action)


def test_kms_limited_to_key_policy_actions_on_the_accounts_keys(
    deployed_template: dict[str, Any],
) -> None:
    everything = [
        s
        for s in _role_statements(deployed_template, FUNCTION_ROLE)
        if any(a.startswith("kms:") for a in s.actions)
    ]
    kms = everything
    assert {s.resource for s in kms} <= _attached(deployed_template, FUNCTION_ROLE)
    for statement in kms:
        assert set(statement.actions) in (KMS_LOOKUP, KMS_POLICY), statement
        assert statement.resources == [ACCOUNT_KEYS], statement
        if set(statement.actions) == KMS_LOOKUP:
            # Resolving aliases and reading the consent tag: never conditioned.
            assert "Condition" not in statement.body, statement
    by_choice = {(s.choices, frozenset(s.actions)): s for s in kms}
    assert len(by_choice) == len(kms) == 4, kms
    off = by_choice[(("ConsentRequired", False),), KMS_POLICY]
    assert "Condition" not in off.body
    required = by_choice[(("ConsentRequired", True),), KMS_POLICY]
    assert required.body["Condition"] == {
        "StringEquals": {"aws:ResourceTag/${KeyTagKey}": "${KeyTagValue}"}
    }
    assert deployed_template["Conditions"]["ConsentRequired"] == {
        "Fn::Equals": [{"Ref": "KeyConsent"}, "Required"]
    }


def test_key_tag_parameters_default_to_consent_and_are_json_safe(
    main_template: dict[str, Any],
) -> None:
    # The consent-guarded policy is JSON text built by Fn::Sub: a quote or backslash in the
    # tag would break it, so the parameter patterns must rule them out.
    assert main_template["Parameters"]["KeyConsent"]["Default"] == "Required"
    defaults = {"KeyTagKey": "orgkeypolicy:share", "KeyTagValue": "enabled"}
    for name, default in defaults.items():
        parameter = main_template["Parameters"][name]
        assert parameter["Default"] == default
        assert parameter["MinLength"] == 1
        pattern = re.compile(parameter["AllowedPattern"])
        assert pattern.fullmatch(default)
        assert pattern.fullmatch("team:owner/key-policy=shared @x+y.z")
        for bad in ('a"b', "a\\b", "a\nb", "a{b}"):
            assert not pattern.fullmatch(bad), (name, bad)


def test_assume_role_only_on_the_parameter_and_only_when_set(
    deployed_template: dict[str, Any],
) -> None:
    sts = [
        s
        for s in _role_statements(deployed_template, FUNCTION_ROLE)
        if not s.trust and any(a.startswith("sts:") for a in s.actions)
    ]
    assert len(sts) == 2, sts
    reader, allowed = sts
    for statement in sts:
        assert statement.actions == ["sts:AssumeRole"]
        assert statement.resource == "OrganizationAccessPolicy"
    assert reader.resources == ["${OrganizationsRoleArn}"]
    assert reader.choices == (("HasOrganizationsRole", True),)
    # The list parameter is the Resource list itself.
    assert allowed.body["Resource"] == {"Ref": "AllowedOrganizationsRoles"}
    assert allowed.choices == (("HasAllowedRoles", True),)
    _condition_is_not_empty(deployed_template, "HasOrganizationsRole", "OrganizationsRoleArn")


def test_organizations_role_parameter_accepts_empty_or_a_role_arn(
    main_template: dict[str, Any],
) -> None:
    parameter = main_template["Parameters"]["OrganizationsRoleArn"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("")
    assert pattern.fullmatch("arn:aws:iam::111111111111:role/OrgKeyPolicyOrganizationsReader")
    assert pattern.fullmatch("arn:aws-us-gov:iam::111111111111:role/path/Reader")
    for bad in ("*", "arn:aws:iam::111111111111:user/x", "arn:aws:iam::1111:role/x", " "):
        assert not pattern.fullmatch(bad), bad


def test_reader_role_trusts_the_function_roles_when_named(reader_template: dict[str, Any]) -> None:
    statements = _statements(reader_template)
    trust = [s for s in statements if s.trust and s.choices == (("TrustsOneRole", True),)]
    assert len(trust) == 1, trust
    (statement,) = trust
    assert statement.resource == READER_ROLE
    assert statement.body["Effect"] == "Allow"
    assert statement.actions == ["sts:AssumeRole"]
    assert statement.body["Principal"] == {
        "AWS": [
            {"Ref": "FunctionRoleArn"},
            {"Fn::If": ["HasResyncRole", {"Ref": "ResyncRoleArn"}, NO_VALUE]},
        ]
    }
    _condition_is_not_empty(reader_template, "HasResyncRole", "ResyncRoleArn")
    assert reader_template["Parameters"]["ResyncRoleArn"]["Default"] == ""
    assert "Condition" not in statement.body
    assert set(reader_template["Parameters"]["FunctionRoleArn"]) >= {"AllowedPattern"}
    _condition_is_not_empty(reader_template, "TrustsOneRole", "FunctionRoleArn")

    permissions = [s for s in statements if not s.trust]
    assert {a for s in permissions for a in s.actions} == set(ORGANIZATIONS_READ)

    role = reader_template["Resources"][READER_ROLE]["Properties"]
    assert role["RoleName"] == {"Ref": "RoleName"}
    assert reader_template["Parameters"]["RoleName"]["Default"] == "OrgKeyPolicyOrganizationsReader"
    assert reader_template["Outputs"]["RoleArn"]["Value"] == {"Fn::GetAtt": [READER_ROLE, "Arn"]}


# --- function, layer and outputs -----------------------------------------------------------------


def test_function_settings(main_template: dict[str, Any]) -> None:
    # What both functions share is in the template's Globals.
    props = {
        **main_template["Globals"]["Function"],
        **main_template["Resources"][FUNCTION]["Properties"],
    }
    assert props["CodeUri"] == "handler/"
    assert props["Handler"] == "app.lambda_handler"
    assert props["Runtime"] == "python3.13"
    assert props["Architectures"] == ["arm64"]
    assert props["Timeout"] == 300
    assert props["MemorySize"] == 512
    assert props["Tracing"] == "Active"
    assert props["Layers"] == [{"Ref": "DependenciesLayer"}]
    assert props["Role"] == {"Fn::GetAtt": [FUNCTION_ROLE, "Arn"]}
    assert "Policies" not in props
    assert props["Environment"]["Variables"] == {
        "POWERTOOLS_SERVICE_NAME": "OrgKeyPolicy",
        "POWERTOOLS_METRICS_NAMESPACE": "OrgKeyPolicy",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "ORGANIZATIONS_ROLE_ARN": {"Ref": "OrganizationsRoleArn"},
        "VERIFY_DELAY_SECONDS": "1",
        "REGISTRY_TABLE": {"Ref": "RegistryTable"},
        "ACCESS_ANALYZER": {"Fn::If": ["ReviewsPolicies", "true", "false"]},
        "ALLOWED_ORGANIZATIONS_ROLES": {"Fn::Join": [",", {"Ref": "AllowedOrganizationsRoles"}]},
        "KEY_CONSENT": {"Ref": "KeyConsent"},
        "KEY_CONSENT_TAG_KEY": {"Ref": "KeyTagKey"},
        "KEY_CONSENT_TAG_VALUE": {"Ref": "KeyTagValue"},
        "AWS_ENDPOINT_URL": "",
    }
    # A Lambda retry would run after CloudFormation had its answer and rolled back.
    assert props["EventInvokeConfig"] == {
        "MaximumRetryAttempts": 0,
        "MaximumEventAgeInSeconds": 3600,
    }


def test_registry_table(main_template: dict[str, Any], all_statements: list[Statement]) -> None:
    table = main_template["Resources"]["RegistryTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    # The records outlive the provider stack: they are what cleans the keys up later.
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True}
    # Lapsed locks are cleared by TTL on the attribute the lock code writes.
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires", "Enabled": True}
    # The table the tests and the demo create is this one.
    assert props["KeySchema"] == KEY_SCHEMA
    assert props["AttributeDefinitions"] == ATTRIBUTES
    dynamodb = [s for s in all_statements if any(a.startswith("dynamodb:") for a in s.actions)]
    assert dynamodb
    for statement in dynamodb:
        assert statement.resources == ["${RegistryTable.Arn}"], statement
        assert "dynamodb:Scan" not in statement.actions or statement.resource != FUNCTION_ROLE


def test_layer_settings(main_template: dict[str, Any]) -> None:
    layer = main_template["Resources"]["DependenciesLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "layers/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Properties"]["RetentionPolicy"] == "Delete"
    assert layer["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}


def test_outputs(main_template: dict[str, Any]) -> None:
    outputs = main_template["Outputs"]
    assert outputs["ServiceToken"]["Value"] == {
        "Fn::If": [
            "ExportsFunction",
            {"Fn::GetAtt": [FUNCTION, "Arn"]},
            {"Ref": f"{FUNCTION}.Alias"},
        ]
    }
    assert outputs["ServiceToken"]["Export"]["Name"] == {
        "Fn::If": [
            "HasExportName",
            {"Ref": "ServiceTokenExportName"},
            {"Fn::Sub": "${AWS::StackName}-ServiceToken"},
        ]
    }
    assert outputs["FunctionRoleArn"]["Value"] == {"Fn::GetAtt": [FUNCTION_ROLE, "Arn"]}


# --- configuration and pins ----------------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[A-Za-z0-9_,-]+\])?==([^\s;]+)", line)
        assert match, f"{path.name}: not an exact pin: {raw!r}"
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[3]
    return pins


def test_layer_pins_are_the_versions_the_tests_run_against() -> None:
    layer = _pins(LAYER_REQUIREMENTS)
    dev = _pins(DEV_REQUIREMENTS)
    assert {"crhelper", "aws-lambda-powertools", "aws-xray-sdk", "boto3", "botocore"} <= set(layer)
    assert {name: dev.get(name) for name in layer} == layer


def test_handler_requirements_defer_to_the_layer() -> None:
    lines = (REPO / "handler" / "requirements.txt").read_text().splitlines()
    assert lines, "SAM expects the file"
    assert all(not line.strip() or line.lstrip().startswith("#") for line in lines)


def test_samconfig(main_template: dict[str, Any]) -> None:
    config = tomllib.loads(SAMCONFIG.read_text())
    assert config["version"] == 0.1
    assert config["default"]["global"]["parameters"]["stack_name"] == "org-key-policy"
    assert config["default"]["validate"]["parameters"]["lint"] is True
    stack_names = set()
    for env in ("default", "prod"):
        deploy = config[env]["deploy"]["parameters"]
        # The function's role has a fixed name.
        assert deploy["capabilities"] == "CAPABILITY_NAMED_IAM"
        assert deploy["confirm_changeset"] is True
        assert deploy["resolve_s3"] is True
        stack_names.add(
            deploy.get("stack_name") or config[env]["global"]["parameters"]["stack_name"]
        )
        overrides = deploy["parameter_overrides"]
        pairs = overrides if isinstance(overrides, list) else shlex.split(overrides)
        for pair in pairs:
            name, _, value = pair.partition("=")
            parameter = main_template["Parameters"].get(name)
            assert parameter, f"{env}: {name} is not a template parameter"
            if "AllowedPattern" in parameter:
                assert re.fullmatch(parameter["AllowedPattern"], value), (env, pair)
            if "AllowedValues" in parameter:
                assert int(value) in parameter["AllowedValues"], (env, pair)
    assert len(stack_names) == 2, "each environment needs its own stack"


# --- sam build -----------------------------------------------------------------------------------


def _python313_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with a python3.13 first on PATH, which `sam build` needs for the python3.13 runtime."""
    probe = "import sys; assert sys.version_info[:2] == (3, 13)"

    def works(executable: str) -> bool:
        try:
            return _run([executable, "-c", probe], env=env, cwd=REPO, timeout=60).returncode == 0
        except OSError:
            return False

    on_path = shutil.which("python3.13", path=env.get("PATH", os.defpath))
    if on_path and works(on_path):
        return env
    # A pyenv shim on PATH answers only when its version is selected: use the install itself.
    pyenv_root = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv")
    installs = [
        p
        for p in pyenv_root.glob("versions/3.13.*/bin/python3.13")
        if re.fullmatch(r"3\.13\.\d+", p.parent.parent.name)
    ]
    installs.sort(key=lambda p: int(p.parent.parent.name.rsplit(".", 1)[1]), reverse=True)
    for executable in installs:
        if works(str(executable)):
            found = dict(env)
            found["PATH"] = os.pathsep.join([str(executable.parent), env.get("PATH", "")])
            found["PYENV_VERSION"] = executable.parent.parent.name
            return found
    pytest.fail(
        "sam build needs a python3.13 interpreter for the python3.13 runtime: none works on "
        f"PATH and none is installed under {pyenv_root}/versions (e.g. `pyenv install 3.13`)"
    )


def test_sam_build(tmp_path: Path) -> None:
    # Build from a copy so that nothing (.aws-sam, build.toml, a stub) lands in the repository.
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy2(TEMPLATE, source / "template.yaml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")
    shutil.copytree(REPO / "handler", source / "handler", ignore=ignore)
    shutil.copytree(REPO / "layers", source / "layers", ignore=ignore)
    if not (source / "handler" / "app.py").exists():
        (source / "handler" / "app.py").write_text(
            "def lambda_handler(event, context):\n    pass\n"
        )
    build = tmp_path / "build"

    env = _python313_env(_fake_aws_env(tmp_path))
    proc = _run(
        [
            VENV_BIN / "sam",
            "build",
            "--template",
            source / "template.yaml",
            "--build-dir",
            build,
            "--cache-dir",
            tmp_path / "cache",
        ],
        env=env,
        cwd=source,
        timeout=540,
    )
    assert proc.returncode == 0, _output(proc)

    function = build / FUNCTION
    assert (function / "app.py").is_file(), _output(proc)
    assert not list(function.glob("*.dist-info")), "dependencies belong in the layer"

    site = build / "DependenciesLayer" / "python"
    assert (site / "crhelper").is_dir(), _output(proc)
    assert (site / "aws_lambda_powertools").is_dir(), _output(proc)
    installed = {
        re.sub(r"[-_.]+", "-", d.name.removesuffix(".dist-info").rsplit("-", 1)[0]).lower(): (
            d.name.removesuffix(".dist-info").rsplit("-", 1)[1]
        )
        for d in site.glob("*.dist-info")
    }
    # The pins are the whole dependency closure: nothing unpinned came along.
    assert installed == _pins(LAYER_REQUIREMENTS)
    # Compiled extensions must be the Lambda arm64 ones, not the build machine's.
    extensions = [p.name for p in site.rglob("*.so")]
    assert extensions, "wrapt ships a compiled extension"
    assert all("aarch64" in name for name in extensions), extensions

    built = _load(build / "template.yaml")
    assert built["Resources"][FUNCTION]["Properties"]["CodeUri"] == FUNCTION
    assert built["Resources"]["DependenciesLayer"]["Properties"]["ContentUri"] == (
        "DependenciesLayer"
    )
