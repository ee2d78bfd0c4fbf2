"""Thin adapters over boto3: Organizations, KMS and STS. No policy logic lives here.

Every client is made once per request with bounded timeouts and botocore's retry modes:
``adaptive`` for Organizations (it throttles early and adaptive mode rate-limits the client
instead of hammering it) and ``standard`` for KMS and STS. ``AWS_ENDPOINT_URL`` (boto3's own
setting) points every client at a local emulator.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from orgkeypolicy.errors import InvalidPropertyError, KeyAccessError, OrganizationsError
from orgkeypolicy.identifiers import KeyRef, KeyRefKind
from orgkeypolicy.organization import Account, Unit, unit_path
from orgkeypolicy.properties import ACCOUNT_IDS, KEY_IDS, ORGANIZATIONS_ROLE_ARN, OU_IDS

logger = logging.getLogger(__name__)

# Organizations is a global service served from one region per partition.
_ORGANIZATIONS_REGION = {
    "aws": "us-east-1",
    "aws-cn": "cn-northwest-1",
    "aws-us-gov": "us-gov-west-1",
}
_UNIT_NOT_FOUND = {"ParentNotFoundException", "OrganizationalUnitNotFoundException"}
_KEY_NOT_FOUND = "NotFoundException"


def client_config(mode: Literal["standard", "adaptive"], *, attempts: int, pool: int) -> Config:
    """Bounded everything: the handler must answer CloudFormation before its own timeout."""
    return Config(
        retries={"mode": mode, "max_attempts": attempts},
        connect_timeout=5,
        read_timeout=20,
        max_pool_connections=pool,
    )


@dataclass(frozen=True)
class Identity:
    account: str
    partition: str
    region: str


def identity(session: boto3.Session) -> Identity:
    sts = session.client("sts", config=client_config("standard", attempts=5, pool=2))
    caller = sts.get_caller_identity()
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
    except ClientError as error:
        raise InvalidPropertyError(
            ORGANIZATIONS_ROLE_ARN,
            role_arn,
            f"could not be assumed ({_code(error)})",
            "trust the function's role in that role",
        ) from error
    return boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=session.region_name,
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


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
    except ClientError as error:
        code = _code(error)
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


# A key's write lock: an alias, which KMS creates atomically or refuses as existing.
LOCK_ALIAS_PREFIX = "alias/orgkeypolicy-lock/"
# A lock older than Lambda's longest run was left by a writer that died holding it.
LOCK_STALE_SECONDS = 900


class KeyStore:
    """DescribeKey, GetKeyPolicy and PutKeyPolicy, in whichever region each key lives."""

    def __init__(self, session: boto3.Session, *, pool: int) -> None:
        self._session = session
        self.pool = pool
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

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

    @contextmanager
    def locked(self, key: KeyInfo, wait: float) -> Iterator[None]:
        """Hold the key's write lock, waiting at most ``wait`` seconds for it.

        KMS offers no conditional write: two resources merging into one key at the same moment
        would each write a policy without the other's statements. Every writer of this project
        takes the lock around its read-merge-write, so they take turns instead.
        """
        client = self._client(key.region)
        name = LOCK_ALIAS_PREFIX + key.arn.rsplit("/", 1)[-1]
        give_up = time.monotonic() + wait
        while True:
            try:
                client.create_alias(AliasName=name, TargetKeyId=key.arn)
                break
            except ClientError as error:
                if _code(error) != "AlreadyExistsException":
                    raise KeyAccessError(
                        f"{key.arn}: taking its write lock failed ({_code(error)}); "
                        "check the function role's kms:CreateAlias permission"
                    ) from error
            self._break_if_stale(client, name, key)
            if time.monotonic() > give_up:
                raise KeyAccessError(
                    f"{key.arn}: another writer holds {name}; retry, or delete that alias "
                    "if no deploy is running"
                )
            time.sleep(random.uniform(0.05, 0.3))  # noqa: S311 - jitter, not secrecy
        try:
            yield
        finally:
            try:
                client.delete_alias(AliasName=name)
            except ClientError as error:
                logger.warning(
                    "Could not release the write lock", extra={"alias": name, "error": _code(error)}
                )

    @staticmethod
    def _break_if_stale(client: Any, name: str, key: KeyInfo) -> None:
        try:
            aliases = client.list_aliases(KeyId=key.arn.rsplit("/", 1)[-1])["Aliases"]
            created = next(a.get("CreationDate") for a in aliases if a["AliasName"] == name)
        except (ClientError, StopIteration):
            return
        if (
            isinstance(created, datetime)
            and (datetime.now(UTC) - created).total_seconds() > LOCK_STALE_SECONDS
        ):
            logger.warning("Breaking a stale write lock", extra={"alias": name})
            with suppress(ClientError):
                client.delete_alias(AliasName=name)

    def describe(self, ref: KeyRef) -> KeyInfo | None:
        """The key a reference names now, or ``None`` when the key or alias does not exist."""
        try:
            meta = self._client(ref.region).describe_key(KeyId=ref.text)["KeyMetadata"]
        except ClientError as error:
            if _code(error) == _KEY_NOT_FOUND:
                return None
            raise KeyAccessError(
                f"{KEY_IDS}: {ref.text} could not be described ({_code(error)}); "
                "check the function role's kms:DescribeKey permission"
            ) from error
        return KeyInfo(
            ref=ref,
            arn=meta["Arn"],
            account=meta["AWSAccountId"],
            region=meta["Arn"].split(":")[3],
            state=meta.get("KeyState", "Unknown"),
            manager=meta.get("KeyManager", "CUSTOMER"),
        )

    def key_arns(self, region: str) -> list[str]:
        """Every key of the account in ``region`` (ListKeys, paginated)."""
        paginator = self._client(region).get_paginator("list_keys")
        try:
            return [key["KeyArn"] for page in paginator.paginate() for key in page.get("Keys", [])]
        except ClientError as error:
            raise KeyAccessError(
                f"Listing the keys of {region} failed ({_code(error)}); "
                "check the function role's kms:ListKeys permission"
            ) from error

    @staticmethod
    def key_at(arn: str) -> KeyInfo:
        """A key known only by its ARN (from ListKeys), enough to read and write its policy."""
        parts = arn.split(":")
        ref = KeyRef(arn, KeyRefKind.KEY_ARN, parts[3], parts[4], parts[1])
        return KeyInfo(ref, arn, parts[4], parts[3], state="Unknown", manager="CUSTOMER")

    def read(self, key: KeyInfo) -> str:
        try:
            return str(
                self._client(key.region).get_key_policy(KeyId=key.arn, PolicyName="default")[
                    "Policy"
                ]
            )
        except ClientError as error:
            raise KeyAccessError(
                f"{key.arn}: reading its policy failed ({_code(error)})"
            ) from error

    def write(self, key: KeyInfo, policy: str) -> None:
        try:
            # The lockout safety check stays on: KMS refuses a policy that would lock us out.
            self._client(key.region).put_key_policy(
                KeyId=key.arn,
                PolicyName="default",
                Policy=policy,
                BypassPolicyLockoutSafetyCheck=False,
            )
        except ClientError as error:
            message = str(error.response.get("Error", {}).get("Message", ""))[:100]
            raise KeyAccessError(
                f"{key.arn}: writing its policy failed ({_code(error)}) {message}".rstrip()
            ) from error


def is_missing(error: BaseException) -> bool:
    """Whether a KMS error says the key is gone or going (not an error on Delete)."""
    cause = error.__cause__
    return isinstance(cause, ClientError) and _code(cause) in (
        _KEY_NOT_FOUND,
        "KMSInvalidStateException",
    )
