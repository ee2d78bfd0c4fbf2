"""Pure operations on a key-policy document: merge, strip, size and safety checks.

A resource owns exactly the statements whose Sid starts with its prefix. Every other
statement is foreign and is kept as it was, in its place: merging removes the resource's
old statements and appends its new ones, so stripping them gives back the original.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from typing import Any

from orgkeypolicy.errors import PolicyTooLargeError
from orgkeypolicy.properties import GRANT_ACTIONS, USE_ACTIONS

Policy = dict[str, Any]
Statement = dict[str, Any]

# KMS's key-policy limit; it cannot be raised and moto does not enforce it, so it is ours.
MAX_POLICY_BYTES = 32_768


def parse(text: str) -> Policy:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise TypeError("a key policy is a JSON object")
    return document


def serialize(policy: Policy) -> str:
    """Compact ASCII JSON: whitespace counts against the 32 KB limit (the console re-indents),
    and KMS accepts only printable ASCII and Latin-1 characters, which escapes always satisfy."""
    return json.dumps(policy, separators=(",", ":"))


def size(policy: Policy) -> int:
    return len(serialize(policy).encode("utf-8"))


def _statements(policy: Policy) -> list[Statement]:
    found = policy.get("Statement", [])
    # IAM allows a single statement object in place of a list.
    return [found] if isinstance(found, dict) else list(found)


def owns(statement: object, prefix: str) -> bool:
    sid = statement.get("Sid") if isinstance(statement, dict) else None
    return isinstance(sid, str) and sid.startswith(prefix)


def managed(policy: Policy, prefix: str) -> list[Statement]:
    """This resource's statements on the key, in their order."""
    return [statement for statement in _statements(policy) if owns(statement, prefix)]


def strip(policy: Policy, prefix: str) -> Policy:
    """The policy without this resource's statements; everything else untouched."""
    result = copy.deepcopy(policy)
    result["Statement"] = [s for s in _statements(result) if not owns(s, prefix)]
    return result


def merge(policy: Policy, prefix: str, statements: Sequence[Statement]) -> Policy:
    """The policy with this resource's statements replaced by ``statements``.

    The new statements take the place of the first old one (or the end, when there was none),
    so that two resources sharing a key never reorder each other's statements.
    """
    for statement in statements:
        if not owns(statement, prefix):
            raise ValueError(f"statement {statement.get('Sid')!r} lacks the prefix {prefix}")
    existing = _statements(policy)
    place = next((i for i, s in enumerate(existing) if owns(s, prefix)), len(existing))
    kept = [s for s in existing if not owns(s, prefix)]
    result = copy.deepcopy(policy)
    result["Statement"] = copy.deepcopy(kept[:place] + list(statements) + kept[place:])
    return result


def check_size(policy: Policy, key_arn: str, account_count: int) -> None:
    """Refuse a policy KMS would reject, before writing, naming the key and the fix."""
    needed = size(policy)
    if needed > MAX_POLICY_BYTES:
        raise PolicyTooLargeError(
            f"KeyIds: policy of {key_arn} would be {needed} bytes with {account_count} accounts, "
            f"over the {MAX_POLICY_BYTES}-byte limit; set PrincipalMode: Auto or OrgPaths"
        )


def unsafe_reasons(statements: Iterable[Statement]) -> list[str]:
    """Why a managed statement would be unsafe to write; empty when all are safe.

    A last line of defence behind the statement builder: whatever a future change does,
    a statement that opens the key beyond the organization or grants administration is
    never written.
    """
    allowed = USE_ACTIONS | set(GRANT_ACTIONS)
    problems = []
    for statement in statements:
        sid = statement.get("Sid")
        principal = statement.get("Principal")
        conditions = statement.get("Condition", {})
        org_id = conditions.get("StringEquals", {}).get("aws:PrincipalOrgID")
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if statement.get("Effect") != "Allow":
            problems.append(f"{sid}: Effect is not Allow")
        if not isinstance(principal, dict) or set(principal) != {"AWS"}:
            problems.append(f"{sid}: principal must be {{'AWS': ...}}, never bare '*'")
        if not isinstance(org_id, str) or not org_id.startswith("o-"):
            problems.append(f"{sid}: lacks the aws:PrincipalOrgID condition")
        if any(action not in allowed for action in actions):
            problems.append(f"{sid}: grants an action outside key use")
        if (
            statement.get("Resource") != "*"
            or "NotAction" in statement
            or "NotPrincipal" in statement
        ):
            problems.append(f"{sid}: must use Action, Principal and Resource '*'")
    return problems
