"""The StackSet template (``make stackset``): plain CloudFormation that a service-managed StackSet
can deploy, code read from each region's bucket, and the StackSet deployed to every account and
region of an OU of the local AWS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from localaws.server import MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy import __version__
from orgkeypolicy.evaluation import Decision, Principal
from orgkeypolicy.evaluation import evaluate_identity_policy as identity_decision
from scripts.stackset import CODE_PARAMETER, REGIONAL_BUCKET, archive, package
from tests.test_template import FUNCTION, REPO, TEMPLATE, _cfn_lint, _output

READER_ARN = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/OrgKeyPolicyOrganizationsReader"
TAG = "aws:ResourceTag/orgkeypolicy:share"
RESYNC_FUNCTION = "ResyncFunction"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `sam build` leaves for the packaging step: one directory per function and layer."""
    build = tmp_path_factory.mktemp("build")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
    # Both functions are built from the same code.
    for function in (FUNCTION, RESYNC_FUNCTION):
        shutil.copytree(REPO / "handler", build / function, ignore=ignore)
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
    assert sorted(located.values()) == [
        "AWS::Lambda::Function",
        "AWS::Lambda::Function",
        "AWS::Lambda::LayerVersion",
    ]
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


# Resource types moto's CloudFormation does not create (it warns and goes on): the local deploy
# does not cover them; cfn-lint and the checks of test_template_adoption.py do.
NOT_CREATED_BY_MOTO = frozenset(
    {
        "AWS::Lambda::Alias",
        "AWS::Lambda::EventInvokeConfig",
        "AWS::IAM::RolePolicy",
        "AWS::CloudWatch::Alarm",
        "AWS::SQS::QueuePolicy",
    }
)


def test_the_stackset_deploys_to_every_account_and_region_of_an_ou(
    aws: LocalAws,
    organization: tuple[str, list[str]],
    stackset: Any,
    recwarn: pytest.WarningsRecorder,
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
    skipped = {
        match[1]
        for warning in recwarn
        if (match := re.search(r"parse (\S+) but it's not supported", str(warning.message)))
    }
    assert skipped <= NOT_CREATED_BY_MOTO, skipped - NOT_CREATED_BY_MOTO

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
            functions = {f["Handler"]: f for f in lambda_.list_functions()["Functions"]}
            assert set(functions) == {"app.lambda_handler", "app.resync_handler"}
            function = functions["app.lambda_handler"]
            assert function["Role"] == role["Arn"]
            resync = functions["app.resync_handler"]
            assert resync["Role"].endswith(f":role/OrgKeyPolicy-Resync-{region}")
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
