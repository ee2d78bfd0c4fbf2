"""Who a set of managed statements lets in, and how a key-policy change moves access. Pure.

Both questions are answered by the evaluator, so that an ``OrgPaths`` grant (a wildcard
principal bound to ``aws:PrincipalOrgPaths``) is matched exactly as IAM matches it:

- :func:`reached_accounts`: the accounts a resource's statements grant as such, whatever their
  role names and extra conditions narrow the grant to inside each account;
- :func:`access_changes`: per principal, the actions it gains and loses between two whole key
  policies.

The organization's side (which accounts sit where) comes in as plain data: ``members`` maps an
account ID to the ``aws:PrincipalOrgPaths`` value IAM gives its principals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from orgkeypolicy.evaluation import (
    KMS_ACTIONS,
    Answer,
    Decision,
    Principal,
    compile_policy,
    evaluate_matrix,
)
from orgkeypolicy.keypolicy import VARIABLES_VERSION, Policy
from orgkeypolicy.statements import Statement, granted_accounts

# The condition keys that say which accounts a statement reaches; every other condition
# (RoleNames' aws:PrincipalArn, a resource's Conditions) narrows the grant inside an account.
_REACH_KEYS = frozenset({"aws:principalorgid", "aws:principalorgpaths", "aws:principalaccount"})
# Keys whose values come with the principal (the evaluator derives them from it).
_PRINCIPAL_KEYS = _REACH_KEYS | {"aws:principalarn"}
_ORG_PATH = re.compile(r"o-[a-z0-9]{10,32}/r-[0-9a-z]{4,32}/(?:ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}/)*")
# RoleNames as the statement builder writes them into aws:PrincipalArn.
_ROLE_ARN = re.compile(r"arn:[a-z-]+:iam::\$\{aws:PrincipalAccount\}:role/(?P<name>.+)", re.I)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _condition_values(statement: Statement, key: str) -> Iterable[tuple[str, str]]:
    """(operator, value) of every value the statement's conditions give ``key`` (any case)."""
    conditions = statement.get("Condition")
    if not isinstance(conditions, Mapping):
        return
    for operator, block in conditions.items():
        if isinstance(block, Mapping):
            for name, values in block.items():
                if str(name).lower() == key:
                    for value in _strings(values):
                        yield str(operator), value


def unit_grants(statements: Iterable[Statement]) -> list[tuple[str, bool]]:
    """The organization paths the statements grant by, each with whether the units below are
    covered too (``…/ou-…/*``) or only the accounts directly in it (``…/ou-…/``)."""
    found: dict[tuple[str, bool], None] = {}
    for statement in statements:
        for operator, value in _condition_values(statement, "aws:principalorgpaths"):
            nested = "like" in operator.lower() and value.endswith("/*")
            path = value.removesuffix("*") if nested else value
            if _ORG_PATH.fullmatch(path):
                found[(path, nested)] = None
    return list(found)


def role_names(statements: Iterable[Statement]) -> tuple[str, ...]:
    """The role names (``RoleNames``) the statements narrow their grant to."""
    names = {
        match["name"]
        for statement in statements
        for _, value in _condition_values(statement, "aws:principalarn")
        if (match := _ROLE_ARN.fullmatch(value))
    }
    return tuple(sorted(names))


def request_keys(statements: Iterable[Statement]) -> tuple[str, ...]:
    """The condition keys the statements read that come with a request rather than with its
    principal (``kms:ViaService``, ``kms:GrantIsForAWSResource``…), in first-seen spelling."""
    found: dict[str, str] = {}
    for statement in statements:
        conditions = statement.get("Condition")
        if not isinstance(conditions, Mapping):
            continue
        for block in conditions.values():
            for key in block if isinstance(block, Mapping) else ():
                name = str(key)
                if name.lower() not in _PRINCIPAL_KEYS:
                    found.setdefault(name.lower(), name)
    return tuple(found.values())


def statement_actions(statements: Iterable[Statement]) -> tuple[str, ...]:
    """The KMS actions (``KMS_ACTIONS`` order) that the statements' Action elements cover."""
    patterns = {
        pattern.lower()
        for statement in statements
        for pattern in _strings(statement.get("Action", []))
    }
    return tuple(
        action
        for action in KMS_ACTIONS
        if any(fnmatchcase(action.lower(), pattern) for pattern in patterns)
    )


def _reach_only(statement: Statement) -> Statement:
    """The statement with only the conditions that choose accounts."""
    result = {name: value for name, value in statement.items() if name != "Condition"}
    conditions = statement.get("Condition")
    if isinstance(conditions, Mapping):
        kept = {}
        for operator, block in conditions.items():
            if isinstance(block, Mapping):
                keys = {k: v for k, v in block.items() if str(k).lower() in _REACH_KEYS}
                if keys:
                    kept[operator] = keys
        if kept:
            result["Condition"] = kept
    return result


def account_principals(
    accounts: Iterable[str],
    members: Mapping[str, str],
    organization_id: str,
    partition: str,
    roles: Sequence[str] = (),
    context: Mapping[str, tuple[str, ...]] | None = None,
) -> list[Principal]:
    """Each account's root, or each of ``roles`` in it, with its organization and path (an
    account not in ``members`` has no path: no organization-path grant reaches it)."""
    return [
        Principal(
            arn,
            organization_id,
            (members[account],) if account in members else (),
            dict(context or {}),
        )
        for account in sorted(accounts)
        for arn in (
            [f"arn:{partition}:iam::{account}:role/{role}" for role in roles]
            or [f"arn:{partition}:iam::{account}:root"]
        )
    ]


def reached_accounts(
    statements: Sequence[Statement],
    members: Mapping[str, str],
    organization_id: str,
    partition: str,
) -> frozenset[str]:
    """The accounts ``statements`` let in: the accounts they name, and the ``members`` their
    organization-path grants cover, less the accounts they exclude. A grant to another
    organization reaches nobody."""
    allows = [_reach_only(s) for s in statements if s.get("Effect") == "Allow"]
    actions = statement_actions(allows)
    if not allows or not actions:
        return frozenset()
    candidates = granted_accounts(allows) | set(members)
    principals = account_principals(candidates, members, organization_id, partition)
    compiled = compile_policy({"Version": VARIABLES_VERSION, "Statement": allows})
    return frozenset(
        answer.principal.split(":")[4]
        for answer in evaluate_matrix(compiled, principals, actions, None)
        if answer.decision is Decision.ALLOW
    )


@dataclass(frozen=True)
class AccessChange:
    """What one principal may do on the key after a policy change and could not before (and
    the reverse); ``unknown``: actions the evaluator cannot decide on one side."""

    principal: str
    gained: tuple[str, ...]
    lost: tuple[str, ...]
    unknown: tuple[str, ...]

    def data(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "gained": list(self.gained),
            "lost": list(self.lost),
            "unknown": list(self.unknown),
        }


def access_changes(
    before: Policy,
    after: Policy,
    principals: Sequence[Principal],
    actions: Sequence[str],
    resource: str | None,
) -> list[AccessChange]:
    """Per principal whose access moves, the actions gained, lost and undecidable."""
    if not principals or not actions:
        return []
    old = evaluate_matrix(compile_policy(before), principals, actions, resource)
    new = evaluate_matrix(compile_policy(after), principals, actions, resource)
    changes = []
    width = len(actions)
    for start in range(0, len(old), width):
        pairs = list(zip(old[start : start + width], new[start : start + width], strict=True))
        gained = tuple(n.action for o, n in pairs if _allows(n) and _denies(o))
        lost = tuple(o.action for o, n in pairs if _allows(o) and _denies(n))
        unknown = tuple(
            o.action
            for o, n in pairs
            if Decision.UNKNOWN in (o.decision, n.decision) and o.decision != n.decision
        )
        if gained or lost or unknown:
            changes.append(AccessChange(old[start].principal, gained, lost, unknown))
    return changes


def _allows(answer: Answer) -> bool:
    return answer.decision is Decision.ALLOW


def _denies(answer: Answer) -> bool:
    return answer.decision in (Decision.EXPLICIT_DENY, Decision.IMPLICIT_DENY)
