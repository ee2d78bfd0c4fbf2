"""What a re-sync or ``verify`` found, per resource and key, and the two documents made of it:
the summary the re-sync function returns and the report the command line prints. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orgkeypolicy.statements import (
    Statement,
    aws_principals,
    granted_accounts,
    principal_account,
)


class Status(StrEnum):
    IN_SYNC = "in-sync"
    DRIFT = "drift"
    KEY_GONE = "key-gone"
    STACK_GONE = "stack-gone"
    ERROR = "error"
    # Resource-level only: a DryRun record is never written, and a record that a Delete removed
    # while the run was under way has nothing left to keep true.
    DRY_RUN = "dry-run"
    REMOVED = "removed"


# What needs someone's attention: reported in the summary's failures.
FAILED = frozenset({Status.KEY_GONE, Status.STACK_GONE, Status.ERROR})
# Nothing to do, or nothing that may be done.
SETTLED = frozenset({Status.IN_SYNC, Status.DRY_RUN, Status.REMOVED})


@dataclass(frozen=True)
class Difference:
    """How a key's managed statements differ from the wanted ones."""

    accounts_to_add: tuple[str, ...] = ()
    accounts_to_remove: tuple[str, ...] = ()
    statements_missing: bool = False
    """A wanted statement's Sid is not on the key (removed, or the policy overwritten)."""
    statements_edited: bool = False
    """A statement with the resource's Sid prefix is on the key that the resource does not
    want, other than by its accounts (actions, conditions, an extra Sid, a dropped key)."""


def _without_accounts(statement: Statement) -> Statement:
    """The statement with its account principals left out, for comparing everything else."""
    entries = aws_principals(statement)
    others = [entry for entry in entries if principal_account(entry) is None]
    if len(others) == len(entries):
        return statement
    result = copy.deepcopy(statement)
    result["Principal"]["AWS"] = sorted(map(str, others))
    return result


def compare(current: Sequence[Statement], wanted: Sequence[Statement]) -> Difference:
    """The difference between a key's managed statements and the resource's wanted ones."""
    now, then = granted_accounts(current), granted_accounts(wanted)
    by_sid = {statement.get("Sid"): statement for statement in current}
    wanted_by_sid = {statement["Sid"]: statement for statement in wanted}
    return Difference(
        accounts_to_add=tuple(sorted(then - now)),
        accounts_to_remove=tuple(sorted(now - then)),
        statements_missing=any(sid not in by_sid for sid in wanted_by_sid),
        statements_edited=any(
            sid not in wanted_by_sid
            or _without_accounts(statement) != _without_accounts(wanted_by_sid[sid])
            for sid, statement in by_sid.items()
        ),
    )


@dataclass
class KeyReport:
    key_arn: str
    status: Status
    difference: Difference = field(default_factory=Difference)
    rewritten: bool = False
    """A re-sync with ``apply`` wrote the key (it was drifted, and now holds what is wanted)."""
    reason: str | None = None

    def data(self) -> dict[str, Any]:
        return {
            "key_arn": self.key_arn,
            "status": self.status.value,
            "accounts_to_add": list(self.difference.accounts_to_add),
            "accounts_to_remove": list(self.difference.accounts_to_remove),
            "statements_missing": self.difference.statements_missing,
            "statements_edited": self.difference.statements_edited,
            "rewritten": self.rewritten,
            "reason": self.reason,
        }


@dataclass
class ResourceReport:
    stack_id: str
    logical_id: str
    sid_prefix: str
    keys: list[KeyReport] = field(default_factory=list)
    settled_as: Status | None = None
    """A status for the whole resource (dry-run, removed, stack-gone, error), which then
    outranks its keys'."""
    reason: str | None = None

    @property
    def status(self) -> Status:
        if self.settled_as is not None:
            return self.settled_as
        for status in (Status.ERROR, Status.KEY_GONE, Status.DRIFT):
            if any(key.status is status for key in self.keys):
                return status
        return Status.IN_SYNC

    def settle(self, status: Status, reason: str | None = None) -> None:
        self.settled_as, self.reason = status, reason

    def data(self) -> dict[str, Any]:
        return {
            "stack_id": self.stack_id,
            "logical_id": self.logical_id,
            "sid_prefix": self.sid_prefix,
            "status": self.status.value,
            "reason": self.reason,
            "keys": [key.data() for key in self.keys],
        }


@dataclass
class Report:
    resources: list[ResourceReport]
    applied: bool

    @property
    def drifted(self) -> bool:
        """Whether anything is not as a deploy would leave it (``verify`` exits 2)."""
        return any(resource.status not in SETTLED for resource in self.resources)

    def keys(self, *statuses: Status) -> list[KeyReport]:
        return [
            key for resource in self.resources for key in resource.keys if key.status in statuses
        ]

    def failures(self) -> list[dict[str, str | None]]:
        found: list[dict[str, str | None]] = []
        for resource in self.resources:
            if resource.settled_as in FAILED:
                found.append(
                    {"sid_prefix": resource.sid_prefix, "key_arn": None, "reason": resource.reason}
                )
                continue
            found += [
                {"sid_prefix": resource.sid_prefix, "key_arn": key.key_arn, "reason": key.reason}
                for key in resource.keys
                if key.status in FAILED
            ]
        return found

    def rewritten(self) -> list[KeyReport]:
        return [key for resource in self.resources for key in resource.keys if key.rewritten]

    def accounts_added(self) -> set[str]:
        """Distinct accounts that gained a grant on at least one key this run rewrote."""
        return {a for key in self.rewritten() for a in key.difference.accounts_to_add}

    def accounts_removed(self) -> set[str]:
        """Distinct accounts that lost a grant on at least one key this run rewrote."""
        return {a for key in self.rewritten() for a in key.difference.accounts_to_remove}

    def summary(self) -> dict[str, Any]:
        """What the re-sync function returns and logs."""
        return {
            "resources": len(self.resources),
            "keys_checked": len(self.keys(Status.IN_SYNC, Status.DRIFT)),
            "keys_rewritten": len(self.rewritten()),
            "accounts_added": len(self.accounts_added()),
            "accounts_removed": len(self.accounts_removed()),
            "failures": self.failures(),
        }

    def detail(self) -> dict[str, Any]:
        """Per resource and key: what ``verify`` and ``resync`` print."""
        return {"resources": [resource.data() for resource in self.resources]}
