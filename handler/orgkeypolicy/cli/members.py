"""The accounts ``probe`` and ``audit`` look at, as principals with their place in the
organization: every ACTIVE account, or the accounts given. A thin adapter over Organizations.

The organization may not be readable with the caller's credentials (a member account, no
delegated administration): that is an answer here, ``Unreadable``, not a failure, and each
command says what it does without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import boto3
from botocore.exceptions import ClientError

from orgkeypolicy.aws import error_code
from orgkeypolicy.cli.lookups import OrganizationReader
from orgkeypolicy.cli.principals import PrincipalRecord, organization_principals
from orgkeypolicy.concurrency import fan_out
from orgkeypolicy.errors import OrganizationsError
from orgkeypolicy.organization import Progress

WORKERS = 8
# What Organizations answers a caller that may not read it, or that is in no organization.
_UNREADABLE = {"AccessDeniedException", "AWSOrganizationsNotInUseException"}
_NOT_A_MEMBER = "ChildNotFoundException"


@dataclass(frozen=True)
class Unreadable:
    """The organization could not be read; ``reason`` says why, for a note."""

    reason: str


class Membership(OrganizationReader):
    """Organizations reads for given accounts: the unit each sits in."""

    def parent(self, account_id: str) -> str | None:
        """The ID of the unit the account sits in; None when it is not in this organization."""
        try:
            parents = self._client.list_parents(ChildId=account_id)["Parents"]
        except ClientError as error:
            if error_code(error) == _NOT_A_MEMBER:
                return None
            raise
        return str(parents[0]["Id"])


def principal_arn(partition: str, account: str, role: str | None) -> str:
    """The ARN of ``role`` in the account, or of the account's root when None."""
    name = f"role/{role}" if role else "root"
    return f"arn:{partition}:iam::{account}:{name}"


def read_members(
    session: boto3.Session,
    partition: str,
    *,
    role: str | None,
    accounts: Sequence[str] = (),
    progress: Progress | None = None,
) -> list[PrincipalRecord] | Unreadable:
    """Each account as ``role`` in it (its root when None), with its organization and OU path.

    Without ``accounts``, every ACTIVE account of the organization (one walk from the root).
    With them, each one's place is looked up alone (its parent unit and that unit's path), so
    that probing two accounts of a large organization does not list all of it; an account
    outside the organization comes without one.
    """
    membership = Membership(session, partition, pool=WORKERS)
    roles = [role] if role else []
    try:
        if not accounts:
            return organization_principals(
                membership, partition=partition, roles=roles, max_workers=WORKERS, progress=progress
            )
        org_id = membership.organization_id()

        def place(account: str) -> PrincipalRecord:
            arn = principal_arn(partition, account, role)
            parent = membership.parent(account)
            if parent is None:
                return PrincipalRecord(arn)
            return PrincipalRecord(arn, org_id, (membership.unit_path(org_id, parent),))

        return fan_out(place, list(accounts), WORKERS)
    except (OrganizationsError, ClientError) as error:
        refusal = error if isinstance(error, ClientError) else error.__cause__
        if isinstance(refusal, ClientError) and error_code(refusal) in _UNREADABLE:
            return Unreadable(f"Organizations answered {error_code(refusal)}")
        raise
