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

from orgkeypolicy.errors import OrgKeyPolicyError, PolicyTooLargeError
from orgkeypolicy.properties import GRANT_ACTIONS, USE_ACTIONS

Policy = dict[str, Any]
Statement = dict[str, Any]

# KMS's key-policy limit; it cannot be raised and moto does not enforce it, so it is ours.
MAX_POLICY_BYTES = 32_768
# The only policy language version in which IAM evaluates policy variables such as
# ${aws:PrincipalAccount}; under 2008-10-17 (also what a policy without Version means) they
# are literal text.
VARIABLES_VERSION = "2012-10-17"


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


def statement_list(policy: Policy) -> list[Statement]:
    found = policy.get("Statement", [])
    # IAM allows a single statement object in place of a list.
    return [found] if isinstance(found, dict) else list(found)


def owns(statement: object, prefix: str) -> bool:
    sid = statement.get("Sid") if isinstance(statement, dict) else None
    return isinstance(sid, str) and sid.startswith(prefix)


def managed(policy: Policy, prefix: str) -> list[Statement]:
    """This resource's statements on the key, in their order."""
    return [statement for statement in statement_list(policy) if owns(statement, prefix)]


def strip(policy: Policy, prefix: str) -> Policy:
    """The policy without this resource's statements; everything else untouched."""
    result = copy.deepcopy(policy)
    result["Statement"] = [s for s in statement_list(result) if not owns(s, prefix)]
    return result


def merge(policy: Policy, prefix: str, statements: Sequence[Statement]) -> Policy:
    """The policy with this resource's statements replaced by ``statements``.

    The new statements take the place of the first old one (or the end, when there was none),
    so that two resources sharing a key never reorder each other's statements.
    """
    for statement in statements:
        if not owns(statement, prefix):
            raise ValueError(f"statement {statement.get('Sid')!r} lacks the prefix {prefix}")
    existing = statement_list(policy)
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


def check_variables(policy: Policy, key_arn: str, statements: Iterable[Statement]) -> None:
    """Refuse to write a policy variable that IAM would read as literal text.

    The grant would then match nothing while the deploy reports success. Raising the key
    policy's Version is not ours to do: it changes what its other statements mean.
    """
    if policy.get("Version") == VARIABLES_VERSION:
        return
    if any("${" in serialize(statement) for statement in statements):
        version = policy.get("Version") or "none (2008-10-17)"
        raise OrgKeyPolicyError(
            f"KeyIds: policy of {key_arn} has Version {version}, where the RoleNames condition "
            f"would not be evaluated; set the key policy's Version to {VARIABLES_VERSION}, "
            "or drop RoleNames"
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
        org_id = _key(conditions.get("StringEquals", {}), "aws:PrincipalOrgID")
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
        for operator, keys in conditions.items():
            folded = [key.lower() for key in keys]
            twins = sorted({key for key in keys if folded.count(key.lower()) > 1})
            if twins:
                # IAM reads condition keys case-insensitively: two spellings of one key in a
                # block are one key with two contradicting values.
                problems.append(f"{sid}: {operator} names one key twice: {', '.join(twins)}")
    return problems


def _key(block: object, name: str) -> object:
    """``block[name]``, matching the condition key's name case-insensitively as IAM does."""
    if not isinstance(block, dict):
        return None
    return next((value for key, value in block.items() if key.lower() == name.lower()), None)
