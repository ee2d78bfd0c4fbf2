"""``orgkeypolicy.access``: who a resource's statements reach, and how a policy change moves
access. Pure; the statements come from the real statement builder."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orgkeypolicy import keypolicy
from orgkeypolicy.access import (
    access_changes,
    account_principals,
    reached_accounts,
    request_keys,
    role_names,
    statement_actions,
    unit_grants,
)
from orgkeypolicy.evaluation import Principal
from orgkeypolicy.organization import Account, select_accounts, unit_path
from orgkeypolicy.properties import PrincipalMode, parse_properties
from orgkeypolicy.statements import Grantees, build_statements, sid_prefix

ORG = "o-abcdefghij"
ROOT = "r-ab12"
PREFIX = sid_prefix("arn:aws:cloudformation:us-east-1:111122223333:stack/s/1", "Share")
KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DEFAULT = {
    "Sid": "Enable IAM User Permissions",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
    "Action": "kms:*",
    "Resource": "*",
}


def unit(index: int) -> str:
    return ROOT if index == 0 else f"ou-ab12-{index:08d}"


@st.composite
def organizations(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str]]:
    """(unit -> its path, account -> the path of the unit it sits in)."""
    count = draw(st.integers(min_value=1, max_value=8))
    parents = {unit(i): unit(draw(st.integers(0, i - 1))) for i in range(1, count + 1)}

    def path(node: str) -> str:
        chain = [node]
        while chain[0] in parents:
            chain.insert(0, parents[chain[0]])
        return unit_path(ORG, chain)

    paths = {unit(i): path(unit(i)) for i in range(count + 1)}
    placed = draw(st.lists(st.integers(0, count), min_size=1, max_size=14))
    members = {f"{200000000000 + n}": paths[unit(u)] for n, u in enumerate(placed)}
    return paths, members


@settings(max_examples=120, deadline=None)
@given(
    organizations(),
    st.data(),
    st.sampled_from([PrincipalMode.ACCOUNTS, PrincipalMode.ORG_PATHS]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_the_statements_reach_exactly_the_accounts_the_lookup_grants(
    org: tuple[dict[str, str], dict[str, str]],
    data: st.DataObject,
    mode: PrincipalMode,
    nested: bool,
    roles: bool,
    grants: bool,
) -> None:
    paths, members = org
    named = data.draw(st.lists(st.sampled_from(sorted(paths)), min_size=1, max_size=3, unique=True))
    accounts = sorted(members)
    explicit = data.draw(st.lists(st.sampled_from(accounts), max_size=2, unique=True))
    excluded = data.draw(st.lists(st.sampled_from(accounts), max_size=2, unique=True))

    def covered(account: str) -> bool:
        where = members[account]
        return any(where.startswith(paths[u]) if nested else where == paths[u] for u in named)

    found = [Account(a, "ACTIVE") for a in accounts if covered(a)]
    selection = select_accounts(
        found, [Account(a, "ACTIVE") for a in explicit], frozenset(excluded)
    )
    spec = parse_properties(
        {
            "KeyIds": ["alias/shared"],
            "OrganizationalUnitIds": named,
            "AccountIds": explicit,
            "ExcludeAccountIds": excluded,
            "IncludeNestedOUs": str(nested).lower(),
            "AllowGrants": str(grants).lower(),
            "RoleNames": ["app", "ops/admin"] if roles else [],
            "Conditions": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}},
        }
    )
    grantees = Grantees(
        organization_id=ORG,
        partition="aws",
        accounts=selection.granted,
        unit_paths=tuple(paths[u] for u in named),
        outside_units=tuple(a for a in selection.granted if not covered(a)),
        excluded=tuple(sorted(excluded)),
        include_nested=nested,
    )
    statements = build_statements(spec, PREFIX, grantees, mode)
    assert reached_accounts(statements, members, ORG, "aws") == set(selection.granted)
    # Another organization's grant reaches nobody here.
    assert reached_accounts(statements, members, "o-zzzzzzzzzz", "aws") == set()
    assert role_names(statements) == (("app", "ops/admin") if roles and statements else ())
    keys = {key.lower() for key in request_keys(statements)}
    assert ("kms:viaservice" in keys) == bool(statements)
    assert ("kms:grantisforawsresource" in keys) == (grants and bool(statements))
    if mode is PrincipalMode.ORG_PATHS and set(selection.granted) - set(grantees.outside_units):
        assert {path for path, _ in unit_grants(statements)} == set(grantees.unit_paths)
        assert {is_nested for _, is_nested in unit_grants(statements)} == {nested}


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [DEFAULT, *statements]}


def _grant(accounts: list[str], actions: list[str], sid: str = "Use") -> dict[str, Any]:
    return {
        "Sid": f"{PREFIX}{sid}",
        "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam::{a}:root" for a in accounts]},
        "Action": actions,
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}},
    }


ACCOUNTS = [f"{300000000000 + n}" for n in range(6)]
USE = ["kms:Decrypt", "kms:Encrypt", "kms:DescribeKey", "kms:GenerateDataKey*"]


@settings(max_examples=80, deadline=None)
@given(
    st.sets(st.sampled_from(ACCOUNTS)),
    st.sets(st.sampled_from(ACCOUNTS)),
    st.sets(st.sampled_from(USE), min_size=1),
    st.sets(st.sampled_from(USE), min_size=1),
)
def test_access_changes_are_the_difference_of_the_grants(
    old_accounts: set[str], new_accounts: set[str], old_actions: set[str], new_actions: set[str]
) -> None:
    before = _policy(*([_grant(sorted(old_accounts), sorted(old_actions))] if old_accounts else []))
    after = keypolicy.merge(
        before, PREFIX, [_grant(sorted(new_accounts), sorted(new_actions))] if new_accounts else []
    )
    principals = account_principals(sorted(set(ACCOUNTS)), {}, ORG, "aws")
    actions = statement_actions([_grant(ACCOUNTS, sorted(old_actions | new_actions))])
    changes = {
        c.principal.split(":")[4]: c
        for c in access_changes(before, after, principals, actions, KEY)
    }
    old_covered = set(statement_actions([_grant(ACCOUNTS, sorted(old_actions))]))
    new_covered = set(statement_actions([_grant(ACCOUNTS, sorted(new_actions))]))
    for account in ACCOUNTS:
        had = old_covered if account in old_accounts else set()
        has = new_covered if account in new_accounts else set()
        change = changes.get(account)
        assert set(change.gained if change else ()) == has - had
        assert set(change.lost if change else ()) == had - has
        assert not (change and change.unknown)
    reverse = {
        c.principal: (c.gained, c.lost)
        for c in access_changes(after, before, principals, actions, KEY)
    }
    assert reverse == {c.principal: (c.lost, c.gained) for c in changes.values()}


def test_role_principals_and_undecidable_answers() -> None:
    narrowed = _grant(["300000000000"], ["kms:Decrypt"])
    narrowed["Condition"]["ArnLike"] = {
        "aws:PrincipalArn": "arn:aws:iam::${aws:PrincipalAccount}:role/app"
    }
    principals = account_principals(["300000000000"], {}, ORG, "aws", ["app", "other"])
    assert [p.arn for p in principals] == [
        "arn:aws:iam::300000000000:role/app",
        "arn:aws:iam::300000000000:role/other",
    ]
    changes = access_changes(_policy(), _policy(narrowed), principals, ["kms:Decrypt"], KEY)
    assert [(c.principal, c.gained) for c in changes] == [
        ("arn:aws:iam::300000000000:role/app", ("kms:Decrypt",))
    ]
    # aws:userid of a role's session cannot be known from its ARN: Unknown, never guessed.
    unknowable = _grant(["300000000000"], ["kms:Decrypt"])
    unknowable["Condition"]["StringEquals"]["aws:userid"] = "AROAEXAMPLE:session"
    changes = access_changes(_policy(), _policy(unknowable), principals[:1], ["kms:Decrypt"], KEY)
    assert [c.unknown for c in changes] == [("kms:Decrypt",)]
    assert changes[0].gained == ()


def test_small_helpers() -> None:
    statement = {
        "Effect": "Allow",
        "Action": ["kms:ReEncrypt*", "KMS:describekey"],
        "Condition": {
            "ForAnyValue:StringLike": {
                "aws:PrincipalOrgPaths": [f"{ORG}/{ROOT}/ou-ab12-00000001/*"]
            },
            "ForAnyValue:StringEquals": {"AWS:PrincipalOrgPaths": f"{ORG}/{ROOT}/"},
            "StringEquals": {"aws:PrincipalOrgID": ORG, "aws:SourceVpc": "vpc-1"},
        },
    }
    assert statement_actions([statement]) == (
        "kms:DescribeKey",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
    )
    assert unit_grants([statement]) == [
        (f"{ORG}/{ROOT}/ou-ab12-00000001/", True),
        (f"{ORG}/{ROOT}/", False),
    ]
    assert request_keys([statement]) == ("aws:SourceVpc",)
    principal = account_principals(["300000000000"], {"300000000000": f"{ORG}/{ROOT}/"}, ORG, "aws")
    assert principal == [Principal("arn:aws:iam::300000000000:root", ORG, (f"{ORG}/{ROOT}/",))]
