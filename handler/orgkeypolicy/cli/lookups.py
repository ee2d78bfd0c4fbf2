"""AWS reads that only the command line makes: the account, a deployed stack, the
organization's root. Thin adapters, like ``orgkeypolicy.aws`` (whose client settings they use).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import boto3
from botocore.exceptions import ClientError

from orgkeypolicy.aws import Identity, OrganizationsDirectory, client_config, identity
from orgkeypolicy.cli.errors import CommandError

_URL_SUFFIX = {"aws-cn": "amazonaws.com.cn"}
_VALUE_FIX = "write the value, or pass it in as a --parameter"


def _config() -> Any:
    return client_config("standard", attempts=5, pool=4)


def key_arn(partition: str, region: str, account: str, key_id: str) -> str:
    """The ARN of a KMS key from its ID and where it lives (what Fn::GetAtt Key.Arn gives)."""
    return f"arn:{partition}:kms:{region}:{account}:key/{key_id}"


class LiveAccount:
    """An ``intrinsics.Environment`` without a stack: only the account and region are known."""

    def __init__(self, session: boto3.Session) -> None:
        self._session = session

    @cached_property
    def identity(self) -> Identity:
        return identity(self._session)

    def pseudo_parameter(self, name: str) -> str | None:
        if name == "AWS::Region":
            return self.identity.region
        if name == "AWS::AccountId":
            return self.identity.account
        if name == "AWS::Partition":
            return self.identity.partition
        if name == "AWS::URLSuffix":
            return _URL_SUFFIX.get(self.identity.partition, "amazonaws.com")
        return None

    def deployed_parameter(self, name: str) -> str | None:
        del name
        return None

    def physical_id(self, logical_id: str) -> str | None:
        del logical_id
        return None

    def attribute(self, logical_id: str, resource_type: str, attribute: str) -> str | None:
        del logical_id, resource_type, attribute
        return None

    def export(self, name: str) -> str | None:
        del name
        return None


class DeployedStack:
    """An ``intrinsics.Environment`` backed by a deployed stack, named or given by its ARN.

    Its parameters and resources are read once (DescribeStacks, ListStackResources); the
    region's exports (ListExports) only when a template imports one.
    """

    def __init__(self, session: boto3.Session, stack: str) -> None:
        region = stack.split(":")[3] if stack.startswith("arn:") else session.region_name
        self._session = session
        self._cloudformation = session.client(
            "cloudformation", region_name=region, config=_config()
        )
        try:
            described = self._cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        except ClientError as error:
            message = error.response.get("Error", {}).get("Message", "")
            raise CommandError(f"--stack {stack}: cannot be read ({message})") from error
        if described["StackStatus"] == "DELETE_COMPLETE":
            raise CommandError(f"--stack {stack}: was deleted")
        self.stack_id: str = described["StackId"]
        _, self.partition, _, self.region, self.account, rest = self.stack_id.split(":", 5)
        self.name = rest.split("/")[1]
        self._parameters = {
            parameter["ParameterKey"]: parameter.get("ResolvedValue", parameter["ParameterValue"])
            for parameter in described.get("Parameters", [])
        }
        pages = self._cloudformation.get_paginator("list_stack_resources").paginate(
            StackName=self.stack_id
        )
        self._resources = {
            summary["LogicalResourceId"]: summary.get("PhysicalResourceId", "")
            for page in pages
            for summary in page["StackResourceSummaries"]
        }

    def pseudo_parameter(self, name: str) -> str | None:
        values = {
            "AWS::AccountId": self.account,
            "AWS::Region": self.region,
            "AWS::Partition": self.partition,
            "AWS::StackName": self.name,
            "AWS::StackId": self.stack_id,
            "AWS::URLSuffix": _URL_SUFFIX.get(self.partition, "amazonaws.com"),
        }
        return values.get(name)

    def deployed_parameter(self, name: str) -> str | None:
        return self._parameters.get(name)

    def physical_id(self, logical_id: str) -> str:
        physical_id = self._resources.get(logical_id)
        if not physical_id:
            raise CommandError(
                f"{logical_id}: stack {self.name} has no such resource yet; deploy it first, "
                f"or {_VALUE_FIX}"
            )
        return physical_id

    def attribute(self, logical_id: str, resource_type: str, attribute: str) -> str:
        physical_id = self.physical_id(logical_id)
        if resource_type in ("AWS::KMS::Key", "AWS::KMS::ReplicaKey"):
            if attribute == "Arn":
                return key_arn(self.partition, self.region, self.account, physical_id)
            if attribute == "KeyId":
                return physical_id
        if resource_type == "AWS::IAM::Role" and attribute in ("Arn", "RoleId"):
            iam = self._session.client("iam", config=_config())
            role = iam.get_role(RoleName=physical_id)["Role"]
            return role["Arn"] if attribute == "Arn" else role["RoleId"]
        raise CommandError(
            f"Fn::GetAtt {logical_id}.{attribute}: attributes of {resource_type} are not read "
            f"here; {_VALUE_FIX}"
        )

    def export(self, name: str) -> str:
        value = self._exports.get(name)
        if value is None:
            raise CommandError(f"Fn::ImportValue {name}: no such export in {self.region}")
        return value

    @cached_property
    def _exports(self) -> dict[str, str]:
        pages = self._cloudformation.get_paginator("list_exports").paginate()
        return {export["Name"]: export["Value"] for page in pages for export in page["Exports"]}


class OrganizationReader(OrganizationsDirectory):
    """The Organizations reads of the function, and the root to walk from."""

    def root_id(self) -> str:
        roots = self._client.list_roots()["Roots"]
        return str(roots[0]["Id"])
