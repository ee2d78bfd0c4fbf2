"""The key-policy statements one resource owns, built from its spec and the organization.

Every statement is an Allow with ``Resource: "*"`` (in a key policy that means this key) and
carries ``aws:PrincipalOrgID``, so that a stale or mistyped account can never reach the key
from outside the organization. Statements are compact: one per action set, principals sorted,
so that a key policy holds as many accounts as possible.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orgkeypolicy.properties import GRANT_ACTIONS, ConditionBlock, PrincipalMode, Spec

Statement = dict[str, Any]
SID_PREFIX_BASE = "OrgKeyPolicy"
# An account principal: its root ARN (what this project writes) or the bare ID (what IAM
# accepts, and may show after a policy was edited by hand).
_ACCOUNT_PRINCIPAL = re.compile(r"arn:[a-z-]+:iam::(\d{12}):root|(\d{12})")


def sid_prefix(stack_id: str, logical_id: str) -> str:
    """The Sid prefix that marks this resource's statements: unique per stack and logical ID.

    The stack ID carries a UUID, so a stack deleted and created again under the same name does
    not claim the old stack's statements; a fixed-length hash means no prefix is the start of
    another's.
    """
    digest = hashlib.sha256(f"{stack_id}\n{logical_id}".encode()).hexdigest()[:16]
    return f"{SID_PREFIX_BASE}{digest}"


@dataclass(frozen=True)
class Grantees:
    """Who a resource grants, as the organization lookup found them."""

    organization_id: str
    partition: str
    accounts: tuple[str, ...]
    """Every granted account (ACTIVE, not excluded): the principals of ``Accounts`` mode."""
    unit_paths: tuple[str, ...] = ()
    """``aws:PrincipalOrgPaths`` paths of the named units, for ``OrgPaths`` mode."""
    outside_units: tuple[str, ...] = ()
    """Granted accounts that no named unit covers (from ``AccountIds``)."""
    excluded: tuple[str, ...] = ()
    include_nested: bool = True


def build_statements(
    spec: Spec, prefix: str, grantees: Grantees, mode: PrincipalMode
) -> list[Statement]:
    """The managed statements for one key in ``Accounts`` or ``OrgPaths`` mode."""
    if mode is PrincipalMode.AUTO:
        raise ValueError("Auto is decided per key by the caller, not here")
    statements: list[Statement] = []
    accounts = grantees.accounts
    if mode is PrincipalMode.ORG_PATHS:
        accounts = grantees.outside_units
        if grantees.unit_paths:
            statements += _statement_pair(spec, prefix, "Paths", grantees, _paths_grant(grantees))
    if accounts:
        arns = sorted({f"arn:{grantees.partition}:iam::{account}:root" for account in accounts})
        statements += _statement_pair(spec, prefix, "", grantees, ({"AWS": arns}, {}))
    return statements


def _paths_grant(grantees: Grantees) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if grantees.include_nested:
        operator, paths = "ForAnyValue:StringLike", [f"{path}*" for path in grantees.unit_paths]
    else:
        operator, paths = "ForAnyValue:StringEquals", list(grantees.unit_paths)
    conditions: dict[str, dict[str, Any]] = {operator: {"aws:PrincipalOrgPaths": sorted(paths)}}
    if grantees.excluded:
        conditions["StringNotEquals"] = {"aws:PrincipalAccount": _one_or_many(grantees.excluded)}
    return {"AWS": "*"}, conditions


def _statement_pair(
    spec: Spec,
    prefix: str,
    suffix: str,
    grantees: Grantees,
    grant: tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]],
) -> list[Statement]:
    principal, grant_conditions = grant
    base: dict[str, dict[str, Any]] = {}
    _merge_conditions(base, spec.conditions)
    _merge_conditions(base, grant_conditions)
    _merge_conditions(base, {"StringEquals": {"aws:PrincipalOrgID": grantees.organization_id}})
    if spec.role_names:
        # The account is the principal's own: exact, where an account wildcard would read
        # (to policy checkers and to people) as a grant to that role name in any account.
        arns = [
            f"arn:{grantees.partition}:iam::${{aws:PrincipalAccount}}:role/{name.strip('/')}"
            for name in spec.role_names
        ]
        _merge_conditions(base, {"ArnLike": {"aws:PrincipalArn": _one_or_many(sorted(arns))}})
    statements = [_statement(f"{prefix}Use{suffix}", principal, spec.actions, base)]
    if spec.allow_grants:
        grants = {op: dict(keys) for op, keys in base.items()}
        _merge_conditions(grants, {"Bool": {"kms:GrantIsForAWSResource": "true"}})
        statements.append(_statement(f"{prefix}Grants{suffix}", principal, GRANT_ACTIONS, grants))
    return statements


def _statement(
    sid: str, principal: Mapping[str, Any], actions: Sequence[str], conditions: dict[str, Any]
) -> Statement:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": dict(principal),
        "Action": sorted(actions),
        "Resource": "*",
        "Condition": {op: dict(sorted(keys.items())) for op, keys in sorted(conditions.items())},
    }


def _merge_conditions(
    target: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]] | ConditionBlock
) -> None:
    """Add ``extra`` into ``target``; on a clash the later (this resource's own) value wins.

    Condition key names are case-insensitive in IAM: ``kms:grantisforawsresource`` is the
    same key as ``kms:GrantIsForAWSResource``, so a clash is found whatever the spelling, and
    the later spelling replaces the earlier one rather than standing beside it.
    """
    for operator, keys in extra.items():
        block = target.setdefault(operator, {})
        for key, value in keys.items():
            for existing in [name for name in block if name.lower() == key.lower()]:
                del block[existing]
            block[key] = _one_or_many(value) if isinstance(value, tuple) else value


def _one_or_many(values: Sequence[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else list(values)


def digest(statements_by_key: Mapping[str, Sequence[Statement]]) -> str:
    """A hash of every managed statement on every key: it changes exactly when the grant does."""
    canonical = json.dumps(statements_by_key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def aws_principals(statement: Statement) -> list[object]:
    """The entries of the statement's ``Principal.AWS`` (one string or a list)."""
    principal = statement.get("Principal")
    value = principal.get("AWS") if isinstance(principal, Mapping) else None
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []


def principal_account(entry: object) -> str | None:
    """The account a principal entry names as a whole (its root ARN or bare ID), else None."""
    match = _ACCOUNT_PRINCIPAL.fullmatch(entry) if isinstance(entry, str) else None
    return (match[1] or match[2]) if match else None


def granted_accounts(statements: Iterable[Statement]) -> frozenset[str]:
    """The accounts that ``statements`` name as principals (root ARNs or bare IDs).

    A wildcard principal bound to organization paths names no account: what it grants depends
    on where accounts sit at request time, not on the policy.
    """
    return frozenset(
        account
        for statement in statements
        for account in map(principal_account, aws_principals(statement))
        if account is not None
    )
