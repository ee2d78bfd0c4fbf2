"""Properties for ``plan``: properties files, and resources of templates (with a stack)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import boto3
import click
import pytest

from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.intrinsics import Resolver, Template
from orgkeypolicy.cli.lookups import DeployedStack, LiveAccount
from orgkeypolicy.cli.sources import (
    ASSIGNMENT,
    load_document,
    parameter_values,
    properties_from_file,
    properties_from_template,
)
from orgkeypolicy.properties import PrincipalMode, parse_properties
from tests.test_cli_intrinsics import KEY_ID, OFFLINE, STACK, FakeEnvironment

CONSUMER = """\
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Env: {Type: String, AllowedValues: [dev, prod], Default: dev}
  ProdOus: {Type: CommaDelimitedList, Default: "ou-ab12-11111111, ou-ab12-22222222"}
  DevOu: {Type: String}
  Extra: {Type: String, Default: ""}
Mappings:
  Audit:
    prod: {Account: "111122223333"}
    dev: {Account: 444455556666}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
  HasExtra: !Not [!Equals [!Ref Extra, ""]]
  ProdWithExtra: !And [!Condition IsProd, !Condition HasExtra]
Resources:
  LogsKey:
    Type: AWS::KMS::Key
    Properties: {KeyPolicy: {}}
  Share:
    Type: Custom::OrgKeyPolicy
    Properties:
      ServiceToken: !ImportValue org-key-policy-ServiceToken
      KeyIds:
        - !GetAtt LogsKey.Arn
        - !Sub "alias/${Env}-data"
        - !If [HasExtra, !Ref Extra, !Ref AWS::NoValue]
      OrganizationalUnitIds: !If [IsProd, !Ref ProdOus, [!Ref DevOu]]
      AccountIds: [!FindInMap [Audit, !Ref Env, Account]]
      IncludeNestedOUs: true
      AllowGrants: !If [ProdWithExtra, true, false]
      RoleNames: !Split [",", "ops/Admin,Reader"]
      PrincipalMode: !Select [1, [Accounts, OrgPaths]]
      OrganizationsRoleArn: !ImportValue reader-role
      Conditions:
        StringEquals:
          kms:ViaService: !Sub "s3.${AWS::Region}.${AWS::URLSuffix}"
  ProdOnly:
    Type: Custom::OrgKeyPolicy
    Condition: IsProd
    Properties:
      KeyIds: [!Join ["", ["arn:", !Ref AWS::Partition, ":kms:", !Ref AWS::Region, ":",
                           !Ref AWS::AccountId, ":key/", !Ref Extra]]]
      AccountIds: ["111122223333"]
"""


@pytest.fixture
def consumer(tmp_path: Path) -> Path:
    path = tmp_path / "consumer.yaml"
    path.write_text(CONSUMER)
    return path


def test_a_template_resource_resolves_to_what_cloudformation_delivers(consumer: Path) -> None:
    props = properties_from_template(consumer, "Share", [("DevOu", "ou-ab12-33333333")], STACK)
    assert props == {
        "KeyIds": [f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}", "alias/dev-data"],
        "OrganizationalUnitIds": ["ou-ab12-33333333"],
        "AccountIds": ["444455556666"],
        "IncludeNestedOUs": "true",
        "AllowGrants": "false",
        "RoleNames": ["ops/Admin", "Reader"],
        "PrincipalMode": "OrgPaths",
        "OrganizationsRoleArn": "arn:aws:iam::111122223333:role/reader",
        "Conditions": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
    }
    spec = parse_properties(props)
    assert spec.principal_mode is PrincipalMode.ORG_PATHS
    assert spec.include_nested_ous is True


def test_conditions_and_list_parameters(consumer: Path) -> None:
    props = properties_from_template(
        consumer, "Share", [("Env", "prod"), ("Extra", "alias/extra")], STACK
    )
    assert props["OrganizationalUnitIds"] == ["ou-ab12-11111111", "ou-ab12-22222222"]
    assert props["KeyIds"][1:] == ["alias/prod-data", "alias/extra"]
    assert props["AccountIds"] == ["111122223333"]
    assert props["AllowGrants"] == "true"


def test_the_deployed_value_of_a_parameter_applies_unless_one_is_given(consumer: Path) -> None:
    deployed = FakeEnvironment(
        deployed=True,
        resources=STACK.resources,
        exports=STACK.exports,
        parameters={"Env": "prod", "DevOu": "ou-ab12-33333333"},
    )
    assert properties_from_template(consumer, "Share", [], deployed)["KeyIds"][1] == (
        "alias/prod-data"
    )
    given = properties_from_template(consumer, "Share", [("Env", "dev")], deployed)
    assert given["KeyIds"][1] == "alias/dev-data"


@pytest.mark.parametrize(
    ("logical_id", "parameters", "env", "message"),
    [
        (
            "Share",
            [],
            STACK,
            "parameter DevOu has no value and no Default; give --parameter DevOu=",
        ),
        ("Share", [("Env", "test"), ("DevOu", "x")], STACK, "'test' is not one of its Allowed"),
        ("Share", [("Evn", "prod")], STACK, "--parameter Evn: the template has no such parameter"),
        (
            "Share",
            [("DevOu", "x")],
            OFFLINE,
            "KeyIds[0].Fn::GetAtt: Fn::GetAtt LogsKey.Arn is an attribute of a resource "
            "(AWS::KMS::Key); give --stack NAME or --stack-id ARN",
        ),
        ("ProdOnly", [], STACK, "is not created with these parameters (its Condition IsProd"),
        ("LogsKey", [], STACK, "is a AWS::KMS::Key, not a Custom::OrgKeyPolicy resource"),
        ("Nope", [], STACK, "--logical-id Nope: no such resource (OrgKeyPolicy resources: Share"),
        (None, [], STACK, "--logical-id is required with --template (OrgKeyPolicy resources in"),
    ],
)
def test_template_errors_name_the_place_and_the_fix(
    consumer: Path,
    logical_id: str | None,
    parameters: list[tuple[str, str]],
    env: FakeEnvironment,
    message: str,
) -> None:
    with pytest.raises(CommandError) as raised:
        properties_from_template(consumer, logical_id, parameters, env)
    assert message in str(raised.value)


def test_properties_file(tmp_path: Path) -> None:
    path = tmp_path / "props.yaml"
    path.write_text(
        "KeyIds: [alias/data-lake]\nAccountIds: [111122223333]\nIncludeNestedOUs: false\n"
        "ServiceToken: arn:aws:lambda:us-east-1:111122223333:function:f\n"
    )
    props = properties_from_file(path)
    assert props == {
        "KeyIds": ["alias/data-lake"],
        "AccountIds": ["111122223333"],
        "IncludeNestedOUs": "false",
    }
    assert parse_properties(props).account_ids == ("111122223333",)
    json_path = tmp_path / "props.json"
    json_path.write_text(json.dumps(props))
    assert properties_from_file(json_path) == props


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (CONSUMER, "is a whole template, not a Properties map; use --template"),
        ("Type: Custom::OrgKeyPolicy\nProperties: {KeyIds: [a]}\n", "is a resource; keep only"),
        ("KeyIds: [!Ref Key]\n", "Properties.KeyIds[0] holds Ref; a properties file holds plain"),
        ("- a\n- b\n", "does not hold a map of properties"),
        ("KeyIds: [a\nAccountIds: []\n", "line 2"),
        ('{"KeyIds": [1,]}', "line 1: Expecting value"),
        ("# nothing\n", "is empty"),
    ],
)
def test_properties_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "props.yaml"
    path.write_text(content)
    with pytest.raises(CommandError) as raised:
        properties_from_file(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot be read"):
        load_document(tmp_path / "missing.yaml")


def test_assignments() -> None:
    assert ASSIGNMENT.convert("Env=prod", None, None) == ("Env", "prod")
    assert ASSIGNMENT.convert("Url=a=b", None, None) == ("Url", "a=b")
    assert ASSIGNMENT.convert("Empty=", None, None) == ("Empty", "")
    for bad in ("Env", "=prod"):
        with pytest.raises(click.BadParameter, match="is not KEY=VALUE"):
            ASSIGNMENT.convert(bad, None, None)
    assert parameter_values([("A", "1"), ("A", "1"), ("B", "2")]) == {"A": "1", "B": "2"}
    with pytest.raises(CommandError, match="--parameter A: given twice"):
        parameter_values([("A", "1"), ("A", "2")])


DEPLOYED = {
    "Parameters": {"Env": {"Type": "String", "Default": "dev"}},
    "Resources": {
        "LogsKey": {
            "Type": "AWS::KMS::Key",
            # moto wants the policy as text; CloudFormation takes either form.
            "Properties": {
                "KeyPolicy": json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:root"},
                                "Action": "kms:*",
                                "Resource": "*",
                            }
                        ],
                    }
                )
            },
        },
        "LogsAlias": {
            "Type": "AWS::KMS::Alias",
            "Properties": {"AliasName": "alias/logs", "TargetKeyId": {"Ref": "LogsKey"}},
        },
        "ReaderRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Path": "/org/",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
            },
        },
    },
    "Outputs": {
        "Reader": {
            "Value": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/reader",
            "Export": {"Name": "reader-role"},
        }
    },
}

PLANNED = textwrap.dedent(
    """\
    Parameters:
      Env: {Type: String, Default: dev}
    Resources:
      LogsKey: {Type: AWS::KMS::Key, Properties: {KeyPolicy: {}}}
      LogsAlias: {Type: AWS::KMS::Alias, Properties: {AliasName: alias/logs}}
      NewKey: {Type: AWS::KMS::Key, Properties: {KeyPolicy: {}}}
      ReaderRole: {Type: AWS::IAM::Role, Properties: {Path: /org/}}
      Share:
        Type: Custom::OrgKeyPolicy
        Properties:
          KeyIds: [!GetAtt LogsKey.Arn, !Ref LogsAlias, !Sub "alias/${Env}-${AWS::StackName}"]
          AccountIds: [!Ref AWS::AccountId]
          OrganizationsRoleArn: !ImportValue reader-role
      Later:
        Type: Custom::OrgKeyPolicy
        Properties:
          KeyIds: [!Ref NewKey]
          AccountIds: ["111122223333"]
      ByRole:
        Type: AWS::CloudFormation::CustomResource
        Properties:
          KeyIds: [alias/logs]
          AccountIds: ["111122223333"]
          OrganizationsRoleArn: !GetAtt ReaderRole.Arn
      ByAliasAttribute:
        Type: Custom::OrgKeyPolicy
        Properties:
          KeyIds: [!GetAtt LogsAlias.TargetKeyId]
          AccountIds: ["111122223333"]
    """
)


def test_references_resolve_through_the_deployed_stack(aws: LocalAws, tmp_path: Path) -> None:
    stack_id = aws.client("cloudformation").create_stack(
        StackName="consumer",
        TemplateBody=json.dumps(DEPLOYED),
        Parameters=[{"ParameterKey": "Env", "ParameterValue": "prod"}],
    )["StackId"]
    template = tmp_path / "planned.yaml"
    template.write_text(PLANNED)
    session = boto3.Session()
    for stack in ("consumer", stack_id):
        deployed = DeployedStack(session, stack)
        assert deployed.stack_id == stack_id
        props = properties_from_template(template, "Share", [], deployed)
        key_id = aws.client("cloudformation").describe_stack_resource(
            StackName="consumer", LogicalResourceId="LogsKey"
        )["StackResourceDetail"]["PhysicalResourceId"]
        described = aws.kms().describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        assert props == {
            "KeyIds": [described, "alias/logs", "alias/prod-consumer"],
            "AccountIds": [MOTO_ACCOUNT_ID],
            "OrganizationsRoleArn": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/reader",
        }
    role = properties_from_template(template, "ByRole", [], deployed)["OrganizationsRoleArn"]
    assert role == aws.client("iam").list_roles(PathPrefix="/org/")["Roles"][0]["Arn"]
    assert role.startswith(f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/org/")
    with pytest.raises(CommandError, match="NewKey: stack consumer has no such resource yet"):
        properties_from_template(template, "Later", [], deployed)
    with pytest.raises(CommandError, match="attributes of AWS::KMS::Alias are not read here"):
        properties_from_template(template, "ByAliasAttribute", [], deployed)
    with pytest.raises(CommandError, match="--stack gone: cannot be read"):
        DeployedStack(session, "gone")


def test_without_a_stack_only_the_account_is_known(aws: LocalAws) -> None:
    del aws
    account = LiveAccount(boto3.Session())
    assert account.pseudo_parameter("AWS::AccountId") == MOTO_ACCOUNT_ID
    assert account.pseudo_parameter("AWS::Region") == DEFAULT_REGION
    assert account.pseudo_parameter("AWS::Partition") == "aws"
    assert account.pseudo_parameter("AWS::StackName") is None
    resolver = Resolver(Template(resources={}), {}, account)
    assert resolver.resolve({"Fn::Sub": "${AWS::AccountId}@${AWS::Region}"}, "P") == (
        f"{MOTO_ACCOUNT_ID}@{DEFAULT_REGION}"
    )
