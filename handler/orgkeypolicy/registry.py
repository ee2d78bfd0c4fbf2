"""The registry: one DynamoDB item per deployed resource, so that grants can be kept true
between deploys (re-sync, ``verify``) and Update/Delete know every key written before.

Create and Update record the resource after a successful write; Delete removes the record.
The same table holds the write locks (``orgkeypolicy.locks``): their items' IDs start with
``lock/``, never with the Sid prefix base, so a scan for records passes them over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from orgkeypolicy.aws import client_config, error_code
from orgkeypolicy.errors import RegistryError
from orgkeypolicy.statements import SID_PREFIX_BASE

logger = logging.getLogger(__name__)

ID = "id"
CONDITION_FAILED = "ConditionalCheckFailedException"
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@dataclass(frozen=True)
class Record:
    """What a deploy wrote, and from which properties: enough to write it again."""

    sid_prefix: str
    stack_id: str
    logical_id: str
    request_id: str
    properties: Mapping[str, Any]
    """``ResourceProperties`` as CloudFormation sent them."""
    keys: Mapping[str, str]
    """Key ARN -> principal mode written (``Accounts``/``OrgPaths``, empty for DryRun)."""
    policy_digest: str
    dry_run: bool
    updated_at: str
    synced_at: str | None = None

    def item(self) -> dict[str, Any]:
        item = {
            ID: self.sid_prefix,
            "stack_id": self.stack_id,
            "logical_id": self.logical_id,
            "request_id": self.request_id,
            "properties": _to_dynamodb(self.properties),
            "keys": dict(self.keys),
            "policy_digest": self.policy_digest,
            "dry_run": self.dry_run,
            "updated_at": self.updated_at,
        }
        if self.synced_at:
            item["synced_at"] = self.synced_at
        return {name: _serializer.serialize(value) for name, value in item.items()}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Record:
        plain = {name: _from_dynamodb(_deserializer.deserialize(v)) for name, v in item.items()}
        return cls(
            sid_prefix=str(plain[ID]),
            stack_id=str(plain["stack_id"]),
            logical_id=str(plain["logical_id"]),
            request_id=str(plain.get("request_id", "")),
            properties=dict(plain.get("properties") or {}),
            keys={str(k): str(v) for k, v in (plain.get("keys") or {}).items()},
            policy_digest=str(plain.get("policy_digest", "")),
            dry_run=bool(plain.get("dry_run", False)),
            updated_at=str(plain.get("updated_at", "")),
            synced_at=plain.get("synced_at"),
        )


def _to_dynamodb(value: Any) -> Any:
    """DynamoDB numbers are Decimals; CloudFormation sends strings, the command line may not."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, Mapping):
        return {str(k): _to_dynamodb(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamodb(v) for v in value]
    return str(value)


def _from_dynamodb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {k: _from_dynamodb(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_from_dynamodb(v) for v in value]
    return value


def table_client(session: boto3.Session, pool: int = 10) -> Any:
    # DynamoDB answers in milliseconds; standard retries cover throttling and lost answers.
    return session.client("dynamodb", config=client_config("standard", attempts=5, pool=pool))


@contextmanager
def table_errors(table: str, doing: str) -> Iterator[None]:
    """DynamoDB failures as reasons naming the table, what was being done, and the fix."""
    try:
        yield
    except ClientError as error:
        code = error_code(error)
        if code == CONDITION_FAILED:
            raise
        fix = (
            "check the REGISTRY_TABLE setting of the function"
            if code == "ResourceNotFoundException"
            else "check the function role's DynamoDB permissions on it"
        )
        raise RegistryError(f"Registry table {table}: {doing} failed ({code}); {fix}") from error
    except BotoCoreError as error:
        raise RegistryError(
            f"Registry table {table}: {doing} failed ({type(error).__name__}); retry"
        ) from error


class Registry:
    """Records of deployed resources in a DynamoDB table (partition key ``id``)."""

    def __init__(self, session: boto3.Session, table: str) -> None:
        self.table = table
        self._client = table_client(session)

    def get(self, sid_prefix: str) -> Record | None:
        with table_errors(self.table, f"reading {sid_prefix}"):
            found = self._client.get_item(
                TableName=self.table, Key={ID: {"S": sid_prefix}}, ConsistentRead=True
            ).get("Item")
        return Record.from_item(found) if found else None

    def put(self, record: Record) -> None:
        """Record a deploy. Deploys of one resource are serialised by its resource lock, and a
        put is idempotent, so a lost answer retried by botocore writes the same item again."""
        with table_errors(self.table, f"recording {record.sid_prefix}"):
            self._client.put_item(TableName=self.table, Item=record.item())

    def delete(self, sid_prefix: str) -> None:
        with table_errors(self.table, f"removing {sid_prefix}"):
            self._client.delete_item(TableName=self.table, Key={ID: {"S": sid_prefix}})

    def mark_synced(self, record: Record, when: str) -> bool:
        """Note a re-sync of ``record``; False when the record was removed or redeployed since
        (the condition keeps a re-sync from bringing back a record that Delete removed)."""
        try:
            with table_errors(self.table, f"updating {record.sid_prefix}"):
                self._client.update_item(
                    TableName=self.table,
                    Key={ID: {"S": record.sid_prefix}},
                    UpdateExpression="SET synced_at = :when",
                    ConditionExpression="attribute_exists(#id) AND request_id = :request",
                    ExpressionAttributeNames={"#id": ID},
                    ExpressionAttributeValues={
                        ":when": {"S": when},
                        ":request": {"S": record.request_id},
                    },
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return False
            raise
        return True

    def records(self) -> Iterator[Record]:
        """Every record, paginated (a scan: the table holds one item per resource)."""
        paginator = self._client.get_paginator("scan")
        with table_errors(self.table, "listing the records"):
            for page in paginator.paginate(
                TableName=self.table,
                FilterExpression="begins_with(#id, :base)",
                ExpressionAttributeNames={"#id": ID},
                ExpressionAttributeValues={":base": {"S": SID_PREFIX_BASE}},
                ConsistentRead=True,
            ):
                for item in page.get("Items", []):
                    yield Record.from_item(item)
