"""``orgkeypolicy plan`` end to end against the local AWS: a new resource, a deployed one (its
Create run through the handler first), templates and stacks, IAM Access Analyzer through
botocore's Stubber, the JSON document, exit codes, and that a plan writes nothing. A property
test ties the plan to the handler: what the plan shows is what a Create then writes."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from moto.cloudformation.models import cloudformation_backends

import app
from localaws.cfn import CloudFormation
from localaws.proxy import FaultProxy
from localaws.seed import CONSENT_TAGS, DEFAULT_STATEMENT, SeededOrg
from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy import keypolicy
from orgkeypolicy.analyzer import AccessAnalyzer
from orgkeypolicy.cli import plan as plan_module
from orgkeypolicy.cli.main import cli
from orgkeypolicy.cli.output import ExitCode
from orgkeypolicy.properties import USE_ACTIONS
from orgkeypolicy.statements import sid_prefix
from tests.endtoend import read_policy, run

pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("orgkeypolicy")
ANSI = "\x1b["
PLACEHOLDER = (
    f"arn:aws:cloudformation:{DEFAULT_REGION}:{MOTO_ACCOUNT_ID}:stack/"
    "orgkeypolicy-plan/00000000-0000-0000-0000-000000000000"
)
# The document SPEC'd for plan, and the fields it adds (documented in docs/cli.md).
TOP = {"sid_prefix", "organization_id", "changed", "keys"}
TOP_EXTRA = {
    "stack_id",
    "logical_id",
    "new_resource",
    "dry_run",
    "accounts_granted",
    "accounts_not_granted",
}
KEY = {
    "key_arn",
    "mode",
    "changed",
    "accounts_added",
    "accounts_removed",
    "size_before",
    "size_after",
    "before",
    "after",
    "findings",
}
KEY_EXTRA = {"change", "access", "access_analyzer"}
WRITES = (
    "kms:PutKeyPolicy",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:TransactWriteItems",
)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(mix_stderr=False).invoke(
        cli, list(args), prog_name="orgkeypolicy", env=env, catch_exceptions=False
    )


def plan_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = invoke("plan", *args, "--json")
    assert result.exit_code in (ExitCode.OK, ExitCode.CHANGED), result.stderr
    document = json.loads(result.stdout)
    assert set(document) == TOP | TOP_EXTRA
    for key in document["keys"]:
        assert set(key) == KEY | KEY_EXTRA
        assert key["size_before"] == keypolicy.size(key["before"])
        assert key["size_after"] == keypolicy.size(key["after"])
    return result.exit_code, document


def write(tmp_path: Path, name: str, content: object) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def writes(proxy: FaultProxy) -> list[str]:
    return [call.name for call in proxy.calls if call.name in WRITES]


def roots(*accounts: str) -> list[str]:
    return [f"arn:aws:iam::{account}:root" for account in accounts]


def active(org: SeededOrg, unit: str, *without: str) -> list[str]:
    return sorted(org.accounts_under(unit) - {org.accounts[name] for name in without})


# --- A new resource ---------------------------------------------------------------------------


def test_plan_for_a_new_resource(
    demo_org: SeededOrg, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    props = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "ExcludeAccountIds": [demo_org.accounts["dev-a"]],
        "AllowGrants": "true",
    }
    path = write(tmp_path, "props.json", props)
    code, document = plan_json("--properties", path)
    assert code == ExitCode.CHANGED
    prefix = sid_prefix(PLACEHOLDER, "NewResource")
    granted = active(demo_org, "Workloads", "dev-a")
    assert document["sid_prefix"] == prefix
    assert document["stack_id"] == PLACEHOLDER
    assert document["new_resource"] is True
    assert document["organization_id"] == demo_org.org_id
    assert document["changed"] is True
    assert document["accounts_granted"] == granted
    assert document["accounts_not_granted"] == {
        demo_org.accounts["prod-closed"]: "SUSPENDED",
        demo_org.accounts["dev-a"]: "excluded",
    }
    assert [key["key_arn"] for key in document["keys"]] == [
        demo_org.key_arn("logs"),
        demo_org.key_arn("data"),
    ]
    for key in document["keys"]:
        assert key["before"] == demo_org.original_policies[key["key_arn"]]
        ours = [s for s in key["after"]["Statement"] if keypolicy.owns(s, prefix)]
        assert key["after"] == keypolicy.merge(key["before"], prefix, ours)
        assert [s["Sid"] for s in ours] == [f"{prefix}Use", f"{prefix}Grants"]
        assert ours[0]["Principal"] == {"AWS": roots(*granted)}
        assert (key["mode"], key["changed"], key["change"]) == ("Accounts", True, "add")
        assert key["accounts_added"] == granted
        assert key["accounts_removed"] == []
        assert key["findings"] == []
        assert key["access_analyzer"] is None
        assert [change["principal"] for change in key["access"]] == roots(*granted)
        for change in key["access"]:
            # Grants need kms:GrantIsForAWSResource, which no plain request carries.
            assert {a.lower() for a in change["gained"]} >= {"kms:decrypt", "kms:encrypt"}
            assert "kms:CreateGrant" not in change["gained"]
            assert change["lost"] == change["unknown"] == []
    assert writes(fault_proxy) == []

    human = invoke("plan", "--properties", path)
    assert human.exit_code == ExitCode.CHANGED
    assert f"Sid prefix {prefix} of the placeholder stack {PLACEHOLDER}" in human.stdout
    assert f"{len(granted)} accounts granted" in human.stdout
    assert f"{demo_org.accounts['prod-closed']} (SUSPENDED)" in human.stdout
    assert f"Accounts added: {', '.join(granted)}" in human.stdout
    assert f'+      "Sid": "{prefix}Use",' in human.stdout
    assert "2 of 2 keys would change" in human.stdout
    assert "kms:GrantIsForAWSResource; give --context" in human.stderr
    assert ANSI not in human.stdout + human.stderr
    context = invoke(
        "plan", "--properties", path, "--context", "kms:GrantIsForAWSResource=true", "--json"
    )
    gained = json.loads(context.stdout)["keys"][0]["access"][0]["gained"]
    assert "kms:CreateGrant" in gained
    coloured = invoke("plan", "--properties", path, env={"FORCE_COLOR": "1"})
    assert ANSI in coloured.stdout
    plain = invoke("plan", "--properties", path, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert ANSI not in plain.stdout + plain.stderr
    assert writes(fault_proxy) == []


def test_org_paths_and_roles(demo_org: SeededOrg, tmp_path: Path) -> None:
    props = {
        "KeyIds": ["alias/demo-logs"],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "AccountIds": [demo_org.accounts["sbx-a"]],
        "ExcludeAccountIds": [demo_org.accounts["prod-a"]],
        "PrincipalMode": "OrgPaths",
        "RoleNames": ["app"],
    }
    code, document = plan_json("--properties", write(tmp_path, "props.json", props))
    assert code == ExitCode.CHANGED
    (key,) = document["keys"]
    granted = sorted({*active(demo_org, "Workloads", "prod-a"), demo_org.accounts["sbx-a"]})
    assert key["mode"] == "OrgPaths"
    assert key["accounts_added"] == granted == document["accounts_granted"]
    principals = [change["principal"] for change in key["access"]]
    assert principals == [f"arn:aws:iam::{account}:role/app" for account in granted]


def test_nothing_to_do_on_a_dry_run(demo_org: SeededOrg, tmp_path: Path) -> None:
    props = {"KeyIds": ["alias/demo-logs"], "AccountIds": [demo_org.accounts["dev-a"]]}
    path = write(tmp_path, "props.json", {**props, "DryRun": "true"})
    code, document = plan_json("--properties", path)
    assert code == ExitCode.OK
    assert (document["changed"], document["dry_run"]) == (False, True)
    assert document["keys"][0]["changed"] is True
    human = invoke("plan", "--properties", path)
    assert "DryRun: the deploy writes nothing (1 keys would change without it)" in human.stdout


# --- Refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"KeyIds": ["alias/demo-logs"], "KeyID": "x", "AccountIds": ["A"]}, "KeyID"),
        ({"KeyIds": ["alias/nope"], "AccountIds": ["A"]}, "alias/nope"),
        ({"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": ["ou-ab12-99999999"]}, "ou-"),
        ({"KeyIds": ["alias/demo-logs"]}, "OrganizationalUnitIds"),
    ],
)
def test_a_refused_property_fails_with_the_functions_own_reason(
    demo_org: SeededOrg,
    cfn: CloudFormation,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    props: dict[str, Any],
    reason: str,
) -> None:
    props = json.loads(json.dumps(props).replace('"A"', f'"{demo_org.accounts["dev-a"]}"'))
    result = invoke("plan", "--properties", write(tmp_path, "props.json", props))
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("orgkeypolicy: error: ") and reason in line
    assert writes(fault_proxy) == []
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "FAILED"
    assert line.removeprefix("orgkeypolicy: error: ") == response.reason


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the properties: --properties FILE or --template FILE"),
        (["--properties", "P", "--template", "P"], "give the properties"),
        (["--properties", "P", "--parameter", "A=b"], "--parameter goes with --template"),
        (["--properties", "P", "--stack", "s", "--stack-id", "a"], "give the stack once"),
        (["--properties", "P", "--stack", "s"], "--logical-id is required with a stack"),
        (["--template", "T"], "--logical-id is required with --template"),
        (["--template", "T", "--logical-id", "Share"], "Ref StackKey names a resource"),
        (["--properties", "P", "--stack", "gone", "--logical-id", "X"], "--stack gone: cannot"),
    ],
)
def test_usage_errors(demo_org: SeededOrg, tmp_path: Path, args: list[str], message: str) -> None:
    del demo_org
    files = {
        "P": write(tmp_path, "props.json", {"KeyIds": ["alias/demo-logs"]}),
        "T": write(tmp_path, "template.yaml", NEW_TEMPLATE),
    }
    result = invoke("plan", *[files.get(arg, arg) for arg in args])
    assert result.exit_code == ExitCode.ERROR
    (line,) = result.stderr.splitlines()
    assert message in line, line


# --- A deployed resource ----------------------------------------------------------------------

STACK_TEMPLATE = {
    "Parameters": {"Unit": {"Type": "String"}},
    "Resources": {
        "StackKey": {
            "Type": "AWS::KMS::Key",
            # A string: moto keeps a map here as it is, and then cannot describe the key.
            "Properties": {
                "KeyPolicy": json.dumps({"Version": "2012-10-17", "Statement": [DEFAULT_STATEMENT]})
            },
        }
    },
}
DEPLOYED_TEMPLATE = textwrap.dedent(
    """\
    Parameters:
      Unit: {Type: String}
    Resources:
      StackKey:
        Type: AWS::KMS::Key
      Share:
        Type: Custom::OrgKeyPolicy
        Properties:
          ServiceToken: !ImportValue org-key-policy-ServiceToken
          KeyIds: [!Ref StackKey, alias/demo-logs]
          OrganizationalUnitIds: [!Ref Unit]
          AllowGrants: true
    """
)
NEW_TEMPLATE = textwrap.dedent(
    """\
    Parameters:
      Unit: {Type: String}
      Without: {Type: CommaDelimitedList, Default: ""}
    Conditions:
      Excluding: !Not [!Equals [!Join [",", !Ref Without], ""]]
    Resources:
      StackKey:
        Type: AWS::KMS::Key
      Share:
        Type: Custom::OrgKeyPolicy
        Properties:
          ServiceToken: !ImportValue org-key-policy-ServiceToken
          KeyIds: [!Ref StackKey]
          OrganizationalUnitIds: [!Ref Unit]
          ExcludeAccountIds: !If [Excluding, !Ref Without, !Ref AWS::NoValue]
          AllowGrants: true
    """
)


class Consumer:
    """A stack of the local AWS holding a key, where the resource ``Share`` is deployed."""

    def __init__(self, aws: LocalAws, org: SeededOrg) -> None:
        self.aws = aws
        cloudformation = aws.client("cloudformation")
        self.stack_id: str = cloudformation.create_stack(
            StackName="consumer",
            TemplateBody=json.dumps(STACK_TEMPLATE),
            Parameters=[{"ParameterKey": "Unit", "ParameterValue": org.ous["Prod"]}],
        )["StackId"]
        self.key_id = cloudformation.describe_stack_resource(
            StackName="consumer", LogicalResourceId="StackKey"
        )["StackResourceDetail"]["PhysicalResourceId"]
        self.key_arn = aws.kms().describe_key(KeyId=self.key_id)["KeyMetadata"]["Arn"]
        # The key consents to being shared, as the provider requires by default (moto's
        # CloudFormation does not take a key's Tags).
        aws.kms().tag_resource(KeyId=self.key_id, Tags=CONSENT_TAGS)
        self.prefix = sid_prefix(self.stack_id, "Share")

    def deployed(self, template: str) -> None:
        """The stack runs ``template`` now, as after CloudFormation deployed the custom
        resource (which moto cannot run: it would invoke a Lambda function)."""
        backend = cloudformation_backends[MOTO_ACCOUNT_ID][DEFAULT_REGION]
        backend.get_stack(self.stack_id).template = template


@pytest.fixture
def consumer(aws: LocalAws, demo_org: SeededOrg) -> Consumer:
    return Consumer(aws, demo_org)


def test_plan_an_update_of_a_deployed_resource(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    consumer: Consumer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    old = {
        "KeyIds": [consumer.key_id, "alias/demo-logs"],
        "OrganizationalUnitIds": [demo_org.ous["Prod"]],
        "AllowGrants": "true",
    }
    created = run(cfn, cfn.event("Create", old, logical_id="Share", stack_id=consumer.stack_id))
    assert created.status == "SUCCESS", created.reason
    assert created.physical_id == consumer.prefix
    consumer.deployed(DEPLOYED_TEMPLATE)
    template = write(tmp_path, "template.yaml", NEW_TEMPLATE)
    args = ["--template", template, "--stack", "consumer", "--logical-id", "Share"]
    args += ["--parameter", f"Unit={demo_org.ous['Workloads']}"]
    args += ["--parameter", f"Without={demo_org.accounts['prod-b']}"]
    fault_proxy.reset_log()
    code, document = plan_json(*args)
    assert code == ExitCode.CHANGED
    assert writes(fault_proxy) == []
    assert document["sid_prefix"] == consumer.prefix
    assert (document["stack_id"], document["new_resource"]) == (consumer.stack_id, False)
    update, removal = document["keys"]
    assert update["key_arn"] == consumer.key_arn
    assert (update["change"], update["mode"], update["changed"]) == ("update", "Accounts", True)
    assert update["accounts_added"] == [demo_org.accounts["dev-a"]]
    assert update["accounts_removed"] == [demo_org.accounts["prod-b"]]
    gains = {c["principal"]: c for c in update["access"]}
    assert gains[roots(demo_org.accounts["dev-a"])[0]]["lost"] == []
    assert gains[roots(demo_org.accounts["prod-b"])[0]]["gained"] == []
    assert set(gains[roots(demo_org.accounts["prod-b"])[0]]["lost"]) >= {"kms:Decrypt"}
    assert update["size_after"] == update["size_before"]  # one account for another
    # The key dropped from KeyIds: known from the deployed properties and the registry.
    logs = demo_org.key_arn("logs")
    assert removal["key_arn"] == logs
    assert (removal["change"], removal["mode"], removal["changed"]) == ("remove", None, True)
    assert removal["after"] == demo_org.original_policies[logs]
    assert removal["accounts_removed"] == active(demo_org, "Prod")
    assert removal["size_after"] < removal["size_before"]

    human = invoke("plan", *args)
    assert human.exit_code == ExitCode.CHANGED
    assert f"Share in stack {consumer.stack_id}: Sid prefix {consumer.prefix}" in human.stdout
    assert "remove" in human.stdout and "update" in human.stdout
    prod_b = roots(demo_org.accounts["prod-b"])[0]
    assert any(line.startswith("-") and prod_b in line for line in human.stdout.splitlines())

    # The Update that CloudFormation would send writes exactly what the plan showed.
    new = {
        "KeyIds": [consumer.key_id],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "ExcludeAccountIds": [demo_org.accounts["prod-b"]],
        "AllowGrants": "true",
    }
    event = cfn.event(
        "Update",
        new,
        logical_id="Share",
        stack_id=consumer.stack_id,
        old_properties=old,
        physical_id=consumer.prefix,
    )
    assert run(cfn, event).status == "SUCCESS"
    for key in document["keys"]:
        assert read_policy(aws, key["key_arn"]) == key["after"]
    consumer.deployed(NEW_TEMPLATE)
    fault_proxy.reset_log()
    code, again = plan_json(*args)
    assert code == ExitCode.OK
    assert again["changed"] is False
    assert [key["change"] for key in again["keys"]] == ["unchanged"]
    assert all(key["access"] == [] for key in again["keys"])
    assert invoke("plan", *args).stdout.rstrip().endswith("Nothing would change")
    assert writes(fault_proxy) == []


def test_the_registry_knows_keys_the_template_does_not(
    cfn: CloudFormation, demo_org: SeededOrg, consumer: Consumer, tmp_path: Path
) -> None:
    props = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "AccountIds": [demo_org.accounts["dev-a"]],
    }
    event = cfn.event("Create", props, logical_id="Share", stack_id=consumer.stack_id)
    assert run(cfn, event).status == "SUCCESS"
    path = write(tmp_path, "props.json", {**props, "KeyIds": ["alias/demo-logs"]})
    args = ["--properties", path, "--stack-id", consumer.stack_id, "--logical-id", "Share"]
    _, document = plan_json(*args)
    assert [(k["key_arn"], k["change"]) for k in document["keys"]] == [
        (demo_org.key_arn("logs"), "unchanged"),
        (demo_org.key_arn("data"), "remove"),
    ]
    # Without the registry, and with no such resource in the deployed template, the plan
    # knows only the keys it targets.
    result = invoke("plan", *args, "--table", "", "--json")
    assert [k["key_arn"] for k in json.loads(result.stdout)["keys"]] == [demo_org.key_arn("logs")]
    assert "No registry table" in result.stderr


def test_a_template_reference_resolved_through_the_stack(
    consumer: Consumer, demo_org: SeededOrg, tmp_path: Path
) -> None:
    template = write(tmp_path, "template.yaml", NEW_TEMPLATE)
    _, document = plan_json(
        "--template",
        template,
        "--stack-id",
        consumer.stack_id,
        "--logical-id",
        "Share",
        "--parameter",
        f"Unit={demo_org.ous['Dev']}",
    )
    (key,) = document["keys"]
    assert key["key_arn"] == consumer.key_arn
    assert key["accounts_added"] == [demo_org.accounts["dev-a"]]
    # The stack's own parameter value applies when none is given.
    _, deployed = plan_json(
        "--template", template, "--stack-id", consumer.stack_id, "--logical-id", "Share"
    )
    assert deployed["accounts_granted"] == active(demo_org, "Prod")


def test_the_access_summary_is_what_the_function_logs(
    cfn: CloudFormation, demo_org: SeededOrg, consumer: Consumer, tmp_path: Path
) -> None:
    props = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "ExcludeAccountIds": [demo_org.accounts["dev-a"]],
    }
    path = write(tmp_path, "props.json", props)
    package = logging.getLogger("orgkeypolicy")
    level, handlers = package.level, list(package.handlers)
    _, document = plan_json(
        "--properties", path, "--stack-id", consumer.stack_id, "--logical-id", "Share"
    )
    # The function's logging, as the command line found it.
    package.setLevel(level)
    package.handlers[:] = handlers
    handler = app.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        run(cfn, cfn.event("Create", props, logical_id="Share", stack_id=consumer.stack_id))
    finally:
        handler.setStream(previous)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    (logged,) = [line for line in lines if line["message"].startswith("Access summary")]
    assert logged["organization_id"] == document["organization_id"]
    assert logged["accounts_granted"] == document["accounts_granted"]
    assert logged["accounts_not_granted"] == document["accounts_not_granted"]
    assert logged["keys"] == [
        {"key_arn": k["key_arn"], "mode": k["mode"], "change": k["change"]}
        for k in document["keys"]
    ]
    assert logged["dry_run"] is False


# --- IAM Access Analyzer ----------------------------------------------------------------------


@pytest.fixture
def analyzer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    """Access Analyzer answered by botocore's Stubber (the local AWS has none)."""
    session = boto3.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=DEFAULT_REGION
    )
    service = AccessAnalyzer(session, pool=2)
    monkeypatch.setattr(plan_module, "AccessAnalyzer", lambda session, pool: service)
    with Stubber(service.client(DEFAULT_REGION)) as stub:
        yield stub
        stub.assert_no_pending_responses()


def _expect(
    stub: Stubber,
    key: dict[str, Any],
    findings: list[dict[str, Any]],
    public: dict[str, Any],
    new_access: dict[str, Any] | None,
) -> None:
    after, before = keypolicy.serialize(key["after"]), keypolicy.serialize(key["before"])
    stub.add_response(
        "validate_policy",
        {"findings": findings},
        {"policyDocument": after, "policyType": "RESOURCE_POLICY"},
    )
    stub.add_response(
        "check_no_public_access",
        public,
        {"policyDocument": after, "resourceType": "AWS::KMS::Key"},
    )
    if new_access is not None:
        stub.add_response(
            "check_no_new_access",
            new_access,
            {
                "newPolicyDocument": after,
                "existingPolicyDocument": before,
                "policyType": "RESOURCE_POLICY",
            },
        )


def _finding(kind: str, code: str, index: int) -> dict[str, Any]:
    spot = {"line": 1, "column": 1, "offset": 0}
    return {
        "findingDetails": f"{code} details.",
        "findingType": kind,
        "issueCode": code,
        "learnMoreLink": "https://docs.aws.amazon.com/IAM/latest/UserGuide/",
        "locations": [
            {
                "path": [{"value": "Statement"}, {"index": index}],
                "span": {"start": spot, "end": spot},
            }
        ],
    }


@pytest.fixture
def new_plan(demo_org: SeededOrg, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Prod"]]}
    path = write(tmp_path, "props.json", props)
    _, document = plan_json("--properties", path)
    return path, document


def test_access_analyzer_findings_and_new_access(
    analyzer: Stubber, new_plan: tuple[str, dict[str, Any]]
) -> None:
    path, document = new_plan
    (key,) = document["keys"]
    ours = len(key["before"]["Statement"])  # our statement is appended
    _expect(
        analyzer,
        key,
        [_finding("SUGGESTION", "EMPTY_OBJECT", 0)],
        {"result": "PASS", "message": "No public access."},
        {
            "result": "FAIL",
            "message": "New access.",
            "reasons": [{"description": "Grants new accounts.", "statementIndex": ours}],
        },
    )
    result = invoke("plan", "--properties", path, "--access-analyzer", "--json")
    assert result.exit_code == ExitCode.CHANGED, result.stderr
    (reviewed,) = json.loads(result.stdout)["keys"]
    assert reviewed["access_analyzer"] == {
        "available": True,
        "cause": "",
        "public": False,
        "new_access": "FAIL",
    }
    suggestion, new_access = reviewed["findings"]
    assert (suggestion["issue_code"], suggestion["ours"], suggestion["blocking"]) == (
        "EMPTY_OBJECT",
        False,
        False,
    )
    assert new_access == {
        "finding_type": "NEW_ACCESS",
        "issue_code": "CheckNoNewAccess",
        "detail": "Grants new accounts.",
        "statement_index": ours,
        "sid": f"{document['sid_prefix']}Use",
        "ours": True,
        "blocking": False,
        "learn_more": None,
    }


@pytest.mark.parametrize("kind", ["finding in our statement", "public access"])
def test_access_analyzer_blocks(
    analyzer: Stubber, new_plan: tuple[str, dict[str, Any]], kind: str
) -> None:
    path, document = new_plan
    (key,) = document["keys"]
    ours = len(key["before"]["Statement"])
    if kind == "public access":
        findings: list[dict[str, Any]] = []
        public = {
            "result": "FAIL",
            "message": "Public.",
            "reasons": [{"description": "Anyone can use it.", "statementIndex": 0}],
        }
    else:
        findings = [_finding("SECURITY_WARNING", "MISSING_CONDITION", ours)]
        public = {"result": "PASS", "message": "No public access."}
    _expect(analyzer, key, findings, public, {"result": "PASS", "message": "None."})
    result = invoke("plan", "--properties", path, "--access-analyzer", "--json")
    assert result.exit_code == ExitCode.ERROR
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"orgkeypolicy: error: {key['key_arn']}: Access Analyzer ")
    assert ("public access" in line) == (kind == "public access")
    (reviewed,) = json.loads(result.stdout)["keys"]
    assert [f["blocking"] for f in reviewed["findings"]] == [True]


def test_access_analyzer_unavailable_is_said_not_fatal(
    new_plan: tuple[str, dict[str, Any]],
) -> None:
    path, _ = new_plan
    # In a process of its own: moto, serving in this one, prints its complaint to stdout.
    completed = command("plan", "--properties", path, "--access-analyzer", "--json")
    assert completed.returncode == ExitCode.CHANGED, completed.stderr
    (reviewed,) = json.loads(completed.stdout)["keys"]
    status = reviewed["access_analyzer"]
    assert status["available"] is False and "not offered" in status["cause"]
    assert completed.stderr == ""
    human = command("plan", "--properties", path, "--access-analyzer")
    assert "IAM Access Analyzer: ValidatePolicy in us-east-1 is not offered" in human.stdout


def command(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, run on this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "handler")}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


# --- The installed command --------------------------------------------------------------------


def test_the_installed_command(demo_org: SeededOrg, tmp_path: Path) -> None:
    props = {"KeyIds": ["alias/data-lake"], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    path = write(tmp_path, "props.json", props)
    completed = command("plan", "--properties", path, "--json")
    assert completed.returncode == ExitCode.CHANGED, completed.stderr
    document = json.loads(completed.stdout)
    _, in_process = plan_json("--properties", path)
    assert document == in_process
    assert document["keys"][0]["accounts_added"] == [demo_org.accounts["dev-a"]]


# --- One planning path ------------------------------------------------------------------------

_UNITS = ["Root", "Workloads", "Prod", "Critical", "Dev", "Sandbox"]
_ACCOUNTS = ["prod-a", "prod-b", "prod-closed", "crit-a", "dev-a", "sbx-a"]
_counter = itertools.count()


@st.composite
def properties(draw: st.DrawFn, org: SeededOrg) -> dict[str, Any]:
    units = draw(st.lists(st.sampled_from(_UNITS), max_size=2, unique=True))
    accounts = draw(st.lists(st.sampled_from(_ACCOUNTS), max_size=2, unique=True))
    props: dict[str, Any] = {
        "KeyIds": draw(
            st.lists(
                st.sampled_from(["alias/demo-logs", "alias/data-lake", org.key_arn("logs")]),
                min_size=1,
                max_size=2,
                unique=True,
            )
        ),
        "OrganizationalUnitIds": [org.ou_id(unit) for unit in units],
        "AccountIds": [org.accounts[name] for name in accounts],
        "ExcludeAccountIds": [
            org.accounts[name] for name in draw(st.lists(st.sampled_from(_ACCOUNTS), max_size=1))
        ],
        "IncludeNestedOUs": draw(st.sampled_from(["true", "false"])),
        "PrincipalMode": draw(st.sampled_from(["Accounts", "OrgPaths", "Auto"])),
        "AllowGrants": draw(st.sampled_from(["true", "false"])),
    }
    if draw(st.booleans()):
        props["RoleNames"] = ["app"]
    if draw(st.booleans()):
        props["Actions"] = sorted(draw(st.sets(st.sampled_from(sorted(USE_ACTIONS)), min_size=1)))
    return props


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_plan_is_what_a_create_writes(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    consumer: Consumer,
    tmp_path: Path,
    data: st.DataObject,
) -> None:
    props = data.draw(properties(demo_org))
    logical_id = f"Share{next(_counter)}"
    path = write(tmp_path, f"{logical_id}.json", props)
    args = ["--properties", path, "--stack-id", consumer.stack_id, "--logical-id", logical_id]
    result = invoke("plan", *args, "--json")
    response = run(
        cfn, cfn.event("Create", props, logical_id=logical_id, stack_id=consumer.stack_id)
    )
    try:
        event("refused" if result.exit_code == ExitCode.ERROR else "planned")
        if result.exit_code == ExitCode.ERROR:
            assert response.status == "FAILED"
            assert result.stderr == f"orgkeypolicy: error: {response.reason}\n"
            return
        assert response.status == "SUCCESS", response.reason
        document = json.loads(result.stdout)
        assert document["sid_prefix"] == response.physical_id
        assert ",".join(k["key_arn"] for k in document["keys"]) == response.data["KeyArns"]
        assert ",".join(k["mode"] for k in document["keys"]) == response.data["PrincipalModes"]
        assert ",".join(document["accounts_granted"]) == response.data["AccountIds"]
        for key in document["keys"]:
            assert read_policy(aws, key["key_arn"]) == key["after"]
    finally:
        for key, policy in demo_org.original_policies.items():
            aws.kms().put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))


def test_access_analyzer_reviews_what_the_function_reviews(
    analyzer: Stubber, cfn: CloudFormation, demo_org: SeededOrg, consumer: Consumer, tmp_path: Path
) -> None:
    # The stub has no answer queued: a key reviewed here would fail the command.
    props = {"KeyIds": ["alias/demo-logs"], "AccountIds": [demo_org.accounts["dev-a"]]}
    event = cfn.event("Create", props, logical_id="Share", stack_id=consumer.stack_id)
    assert run(cfn, event).status == "SUCCESS"
    path = write(tmp_path, "props.json", props)
    args = ["--properties", path, "--stack-id", consumer.stack_id, "--logical-id", "Share"]
    result = invoke("plan", *args, "--access-analyzer", "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert [k["access_analyzer"] for k in json.loads(result.stdout)["keys"]] == [None]
