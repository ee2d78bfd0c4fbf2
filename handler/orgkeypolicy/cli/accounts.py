"""Sessions in member accounts and the key calls ``probe`` makes there. A thin adapter: what
each call answered, as plain data; what it means is ``orgkeypolicy.cli.probing``'s business.

Nothing here shows, logs or keeps a plaintext or a data key: the probe's bytes are a fixed,
public string, and responses are read for their ciphertext only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from orgkeypolicy.aws import KeyInfo, client_config, error_code
from orgkeypolicy.cli.probing import (
    ALLOWED,
    DECRYPT,
    ENCRYPT,
    GENERATE_DATA_KEY,
    NOT_TESTED,
    AccountProbe,
)

T = TypeVar("T")
SESSION_NAME = "orgkeypolicy-probe"
# The shortest session STS grants: the probe needs seconds.
SESSION_SECONDS = 900
_PROBE_BYTES = b"orgkeypolicy probe"
_NOT_IN_AN_ORGANIZATION = "AWSOrganizationsNotInUseException"


def _failure(error: Exception) -> str:
    return error_code(error) if isinstance(error, ClientError) else type(error).__name__


def _attempt(call: Callable[[], T]) -> tuple[str, T | None]:
    try:
        return ALLOWED, call()
    except (ClientError, BotoCoreError) as error:
        return _failure(error), None


def key_calls(kms: Any, key_arn: str) -> dict[str, str]:
    """Encrypt a few bytes, generate a data key, and decrypt a ciphertext one of them gave.

    Decrypt uses Encrypt's ciphertext, or else the data key's: a policy that grants Decrypt
    and GenerateDataKey but not Encrypt (common for readers of S3 objects) is still tested.
    With neither, Decrypt is not tested. The data key's plaintext is dropped unread.
    """
    encrypt, encrypted = _attempt(
        lambda: kms.encrypt(KeyId=key_arn, Plaintext=_PROBE_BYTES)["CiphertextBlob"]
    )
    generate, generated = _attempt(
        lambda: kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256")["CiphertextBlob"]
    )
    ciphertext = encrypted or generated
    decrypt = NOT_TESTED
    if ciphertext is not None:
        decrypt, _ = _attempt(
            lambda: kms.decrypt(KeyId=key_arn, CiphertextBlob=ciphertext)["KeyId"]
        )
    return {ENCRYPT: encrypt, DECRYPT: decrypt, GENERATE_DATA_KEY: generate}


class Prober:
    """Assumes a role in each account and makes the key calls there, in the key's region."""

    def __init__(self, session: boto3.Session, key: KeyInfo, *, pool: int) -> None:
        self._key = key
        self._sts = session.client(
            "sts",
            region_name=key.region,
            config=client_config("standard", attempts=3, pool=pool),
        )

    def probe(self, account: str, role_arn: str, *, ask_organization: bool) -> AccountProbe:
        """Never raises for the account's sake: a refusal or a failure is its observation."""
        try:
            credentials = self._sts.assume_role(
                RoleArn=role_arn, RoleSessionName=SESSION_NAME, DurationSeconds=SESSION_SECONDS
            )["Credentials"]
        except (ClientError, BotoCoreError) as error:
            message = ""
            if isinstance(error, ClientError):
                message = str(error.response.get("Error", {}).get("Message", ""))[:160]
            return AccountProbe(account, role_arn, refusal=f"{_failure(error)} {message}".strip())
        # A session per account: clients of one session must not be made from many threads.
        member = boto3.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=self._key.region,
        )
        kms = member.client("kms", config=client_config("standard", attempts=3, pool=2))
        outcomes = key_calls(kms, self._key.arn)
        if not ask_organization:
            return AccountProbe(account, role_arn, outcomes)
        org_id, known = member_organization(member)
        return AccountProbe(account, role_arn, outcomes, org_id=org_id, org_known=known)


def member_organization(member: boto3.Session) -> tuple[str | None, bool]:
    """The organization an account reports itself in (any member may ask), and whether it
    could tell: ``(None, True)`` is no organization, ``(None, False)`` no answer."""
    client = member.client("organizations", config=client_config("standard", attempts=3, pool=2))
    try:
        return str(client.describe_organization()["Organization"]["Id"]), True
    except ClientError as error:
        return None, error_code(error) == _NOT_IN_AN_ORGANIZATION
    except BotoCoreError:
        return None, False
