"""Thin adapters over boto3: Organizations, KMS and STS. No policy logic lives here.

Every client is made once per run with bounded timeouts and botocore's retry modes:
``adaptive`` for Organizations (it throttles early and adaptive mode rate-limits the client
instead of hammering it) and ``standard`` for KMS and STS. ``AWS_ENDPOINT_URL`` (boto3's own
setting) points every client at a local emulator.

Failures become ``OrgKeyPolicyError``s whose message names the service, the key or OU, and the
fix, including those that are not ``ClientError``s: a region that cannot be reached (a typo
such as ``us-esat-1``, an opt-in region that is not enabled) or a connection that broke.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from orgkeypolicy.concurrency import Pacer
from orgkeypolicy.errors import (
    InvalidPropertyError,
    KeyAccessError,
    KeyUnreachableError,
    OrganizationsError,
    OrgKeyPolicyError,
)
from orgkeypolicy.identifiers import KeyRef, KeyRefKind
from orgkeypolicy.organization import Account, Unit, unit_path
from orgkeypolicy.properties import ACCOUNT_IDS, KEY_IDS, ORGANIZATIONS_ROLE_ARN, OU_IDS

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Organizations is a global service served from one region per partition.
_ORGANIZATIONS_REGION = {
    "aws": "us-east-1",
    "aws-cn": "cn-northwest-1",
    "aws-us-gov": "us-gov-west-1",
}
_UNIT_NOT_FOUND = {"ParentNotFoundException", "OrganizationalUnitNotFoundException"}
_KEY_NOT_FOUND = "NotFoundException"
# What an opt-in region that is not enabled for the account answers: the credentials are
# unknown there.
_REGION_NOT_ENABLED = {"UnrecognizedClientException", "InvalidClientTokenId"}


def client_config(mode: Literal["standard", "adaptive"], *, attempts: int, pool: int) -> Config:
    """Bounded everything: the handler must answer CloudFormation before its own timeout."""
    return Config(
        retries={"mode": mode, "max_attempts": attempts},
        connect_timeout=5,
        read_timeout=20,
        max_pool_connections=pool,
    )


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _why(error: BaseException) -> str:
    return error_code(error) if isinstance(error, ClientError) else type(error).__name__


@dataclass(frozen=True)
class Identity:
    account: str
    partition: str
    region: str


def identity(session: boto3.Session) -> Identity:
    sts = session.client("sts", config=client_config("standard", attempts=5, pool=2))
    try:
        caller = sts.get_caller_identity()
    except (ClientError, BotoCoreError) as error:
        raise OrgKeyPolicyError(
            f"STS GetCallerIdentity failed ({_why(error)}); check the function's credentials "
            "and network access to STS"
        ) from error
    return Identity(
        account=caller["Account"],
        partition=caller["Arn"].split(":")[1],
        region=session.region_name or "us-east-1",
    )


def organizations_session(
    session: boto3.Session, role_arn: str | None, session_name: str
) -> boto3.Session:
    """The session for Organizations reads: the function's own, or the given role's."""
    if not role_arn:
        return session
    sts = session.client("sts", config=client_config("standard", attempts=5, pool=2))
    try:
        credentials = sts.assume_role(
            RoleArn=role_arn, RoleSessionName=session_name[:64], DurationSeconds=900
        )["Credentials"]
    except (ClientError, BotoCoreError) as error:
        raise InvalidPropertyError(
            ORGANIZATIONS_ROLE_ARN,
            role_arn,
            f"could not be assumed ({_why(error)})",
            "trust the function's role in that role",
        ) from error
    return boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=session.region_name,
    )


class OrganizationsDirectory:
    """Organizations reads, paginated; errors become messages that name the property."""

    def __init__(self, session: boto3.Session, partition: str, *, pool: int) -> None:
        self._client = session.client(
            "organizations",
            region_name=_ORGANIZATIONS_REGION.get(partition, "us-east-1"),
            config=client_config("adaptive", attempts=8, pool=pool),
        )
        # Paginators are made here, once: the walk then uses them from many threads.
        self._units = self._client.get_paginator("list_organizational_units_for_parent")
        self._accounts = self._client.get_paginator("list_accounts_for_parent")

    def organization_id(self) -> str:
        with _organizations_errors("DescribeOrganization", OU_IDS, ""):
            return str(self._client.describe_organization()["Organization"]["Id"])

    def child_units(self, parent_id: str) -> list[Unit]:
        with _organizations_errors("ListOrganizationalUnitsForParent", OU_IDS, parent_id):
            return [
                Unit(unit["Id"], unit.get("Path"))
                for page in self._units.paginate(ParentId=parent_id)
                for unit in page.get("OrganizationalUnits", [])
            ]

    def accounts(self, parent_id: str) -> list[Account]:
        with _organizations_errors("ListAccountsForParent", OU_IDS, parent_id):
            return [
                Account.from_api(account)
                for page in self._accounts.paginate(ParentId=parent_id)
                for account in page.get("Accounts", [])
            ]

    def account(self, account_id: str) -> Account:
        with _organizations_errors("DescribeAccount", ACCOUNT_IDS, account_id):
            return Account.from_api(self._client.describe_account(AccountId=account_id)["Account"])

    def unit_path(self, organization_id: str, unit_id: str) -> str:
        """The unit's ``o-…/r-…/ou-…/`` path: its ``Path`` field, else found from its parents."""
        if unit_id.startswith("r-"):
            return unit_path(organization_id, [unit_id])
        with _organizations_errors("DescribeOrganizationalUnit", OU_IDS, unit_id):
            described = self._client.describe_organizational_unit(OrganizationalUnitId=unit_id)
            path = described["OrganizationalUnit"].get("Path")
            if isinstance(path, str) and path:
                return path
            ancestors = [unit_id]
            while not ancestors[0].startswith("r-"):
                parents = self._client.list_parents(ChildId=ancestors[0])["Parents"]
                ancestors.insert(0, parents[0]["Id"])
        return unit_path(organization_id, ancestors)


@contextmanager
def _organizations_errors(operation: str, prop: str, value: str) -> Iterator[None]:
    try:
        yield
    except BotoCoreError as error:
        raise OrganizationsError(
            f"Organizations {operation} {value} could not be reached ({_why(error)}); "
            "check the network path to Organizations (us-east-1) and retry"
        ) from error
    except ClientError as error:
        code = error_code(error)
        if code in _UNIT_NOT_FOUND:
            raise InvalidPropertyError(
                prop, value, "is not an OU or root of this organization", "check the ID"
            ) from error
        if code == "AccountNotFoundException":
            raise InvalidPropertyError(
                prop, value, "is not an account of this organization", "check the ID"
            ) from error
        if code == "AWSOrganizationsNotInUseException":
            raise OrganizationsError(
                "The function's account is not in an organization; set OrganizationsRoleArn"
            ) from error
        if code == "AccessDeniedException":
            raise OrganizationsError(
                f"Organizations refused {operation} (AccessDenied): deploy the reader role in the "
                "management account and set OrganizationsRoleArn"
            ) from error
        raise OrganizationsError(f"Organizations {operation} failed: {code}") from error


@dataclass(frozen=True)
class KeyInfo:
    """A resolved key: ``ref`` as the user wrote it, the rest from DescribeKey."""

    ref: KeyRef
    arn: str
    account: str
    region: str
    state: str
    manager: str

    @property
    def pending_deletion(self) -> bool:
        return self.state in ("PendingDeletion", "PendingReplicaDeletion")

    @classmethod
    def at(cls, arn: str) -> KeyInfo:
        """A key known only by its ARN (from a record): enough to read and write it."""
        parts = arn.split(":")
        ref = KeyRef(arn, KeyRefKind.KEY_ARN, parts[3], parts[4], parts[1])
        return cls(ref, arn, parts[4], parts[3], state="Unknown", manager="CUSTOMER")


class KeyStore:
    """DescribeKey, ListResourceTags, GetKeyPolicy and PutKeyPolicy, in whichever region a key
    lives."""

    def __init__(self, session: boto3.Session, *, pool: int, write_rate: float = 10.0) -> None:
        self._session = session
        self.pool = pool
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pacer = Pacer(write_rate)

    def _client(self, region: str | None) -> Any:
        region = region or self._session.region_name or "us-east-1"
        # Making clients from one session is not thread-safe; using them afterwards is.
        with self._lock:
            if region not in self._clients:
                # KMS answers in milliseconds: 3 attempts of at most 10 s fit inside the time
                # the handler keeps back to put keys back and answer.
                config = client_config("standard", attempts=3, pool=self.pool)
                self._clients[region] = self._session.client(
                    "kms",
                    region_name=region,
                    config=config.merge(Config(read_timeout=10)),
                )
            return self._clients[region]

    def _call(self, what: str, region: str, call: Callable[[Any], T], permission: str) -> T:
        try:
            return call(self._client(region))
        except BotoCoreError as error:
            raise _unreachable(what, region, error) from error
        except ClientError as error:
            if error_code(error) in _REGION_NOT_ENABLED:
                raise _unreachable(what, region, error) from error
            message = str(error.response.get("Error", {}).get("Message", ""))[:100]
            raise KeyAccessError(
                f"{what}: {permission} failed ({error_code(error)}) {message}; "
                f"check the function role's {permission} permission and the key policy"
            ) from error

    def describe(self, ref: KeyRef) -> KeyInfo | None:
        """The key a reference names now, or ``None`` when the key or alias does not exist."""
        try:
            meta = self._call(
                f"{KEY_IDS}: {ref.text}",
                ref.region or self._region(),
                lambda kms: kms.describe_key(KeyId=ref.text)["KeyMetadata"],
                "kms:DescribeKey",
            )
        except KeyAccessError as error:
            if _cause_code(error) == _KEY_NOT_FOUND:
                return None
            raise
        return KeyInfo(
            ref=ref,
            arn=meta["Arn"],
            account=meta["AWSAccountId"],
            region=meta["Arn"].split(":")[3],
            state=meta.get("KeyState", "Unknown"),
            manager=meta.get("KeyManager", "CUSTOMER"),
        )

    def _region(self) -> str:
        return self._session.region_name or "us-east-1"

    def tags(self, key: KeyInfo) -> dict[str, str]:
        """The key's tags (ListResourceTags, paginated): the provider reads them to explain a
        missing consent tag, so its role may call this on every key."""
        return self._call(
            key.arn,
            key.region,
            lambda kms: {
                tag["TagKey"]: tag["TagValue"]
                for page in kms.get_paginator("list_resource_tags").paginate(KeyId=key.arn)
                for tag in page.get("Tags", [])
            },
            "kms:ListResourceTags",
        )

    def read(self, key: KeyInfo) -> str:
        return self._call(
            key.arn,
            key.region,
            lambda kms: str(kms.get_key_policy(KeyId=key.arn, PolicyName="default")["Policy"]),
            "kms:GetKeyPolicy",
        )

    def write(self, key: KeyInfo, policy: str) -> None:
        self._pacer.wait(key.region)
        # The lockout safety check stays on: KMS refuses a policy that would lock us out.
        self._call(
            key.arn,
            key.region,
            lambda kms: kms.put_key_policy(
                KeyId=key.arn,
                PolicyName="default",
                Policy=policy,
                BypassPolicyLockoutSafetyCheck=False,
            ),
            "kms:PutKeyPolicy",
        )


def _unreachable(what: str, region: str, error: BaseException) -> KeyUnreachableError:
    return KeyUnreachableError(
        f"{what}: KMS in {region} could not be reached ({_why(error)}); check the region "
        "name and that the region is enabled for this account"
    )


def _cause_code(error: BaseException) -> str | None:
    cause = error.__cause__
    return error_code(cause) if isinstance(cause, ClientError) else None


def is_denied(error: BaseException) -> bool:
    """Whether KMS (or IAM in front of it) refused the call."""
    return _cause_code(error) == "AccessDeniedException"


def is_missing(error: BaseException) -> bool:
    """Whether a KMS error says the key is gone or going (not an error on Delete)."""
    return _cause_code(error) in (_KEY_NOT_FOUND, "KMSInvalidStateException")


class StackDirectory:
    """CloudFormation DescribeStacks, in whichever region a stack lives."""

    def __init__(self, session: boto3.Session) -> None:
        self._session = session
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def status(self, stack_id: str) -> str | None:
        """The stack's status (``DELETE_COMPLETE`` for a deleted one, which CloudFormation
        keeps describing by ID for a while), or ``None`` when it knows no such stack."""
        region = stack_id.split(":")[3]
        with self._lock:
            if region not in self._clients:
                self._clients[region] = self._session.client(
                    "cloudformation",
                    region_name=region,
                    config=client_config("standard", attempts=5, pool=4),
                )
            client = self._clients[region]
        try:
            stacks = client.describe_stacks(StackName=stack_id)["Stacks"]
        except ClientError as error:
            message = str(error.response.get("Error", {}).get("Message", ""))
            if error_code(error) == "ValidationError" and "does not exist" in message:
                return None
            raise OrgKeyPolicyError(
                f"CloudFormation DescribeStacks {stack_id} failed ({error_code(error)}); "
                "check the function role's cloudformation:DescribeStacks permission"
            ) from error
        except BotoCoreError as error:
            raise OrgKeyPolicyError(
                f"CloudFormation in {region} could not be reached ({_why(error)}); retry"
            ) from error
        return str(stacks[0]["StackStatus"]) if stacks else None
