"""Statements built for each principal mode, checked by hand and by independent policy tools."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaws.seed import DEFAULT_STATEMENT
from orgkeypolicy import keypolicy
from orgkeypolicy.capacity import accounts_that_fit
from orgkeypolicy.errors import InvalidPropertyError
from orgkeypolicy.properties import PrincipalMode, Spec, parse_properties
from orgkeypolicy.statements import (
    Grantees,
    build_statements,
    digest,
    granted_accounts,
    sid_prefix,
)
from tests.policychecks import assert_policy_safe

ORG = "o-abcdefghij"
PREFIX = sid_prefix("arn:aws:cloudformation:us-east-1:123456789012:stack/s/uuid", "Share")
KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"
GRANTEES = Grantees(
    organization_id=ORG,
    partition="aws",
    accounts=("111111111111", "222222222222", "333333333333"),
    unit_paths=(f"{ORG}/r-ab12/ou-ab12-11111111/",),
    outside_units=("333333333333",),
    excluded=("444444444444",),
)


def spec(**props: object) -> Spec:
    return parse_properties(
        {"KeyIds": [KEY], "OrganizationalUnitIds": ["ou-ab12-11111111"], **props}
    )


def test_sid_prefix_is_stable_distinct_and_fixed_length() -> None:
    stack = "arn:aws:cloudformation:us-east-1:123456789012:stack/s/uuid"
    assert sid_prefix(stack, "Share") == PREFIX
    others = {
        sid_prefix(stack, "Share2"),
        sid_prefix(stack + "x", "Share"),
        sid_prefix(stack, "Shar"),
    }
    assert PREFIX not in others
    assert len({len(p) for p in {PREFIX, *others}}) == 1
    assert PREFIX.isalnum()


def test_accounts_mode_grants_account_roots_within_the_organization() -> None:
    [use] = build_statements(spec(), PREFIX, GRANTEES, PrincipalMode.ACCOUNTS)
    assert use == {
        "Sid": f"{PREFIX}Use",
        "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam::{a}:root" for a in GRANTEES.accounts]},
        "Action": sorted(
            [
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
                "kms:DescribeKey",
            ]
        ),
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}},
    }


def test_org_paths_mode_uses_a_wildcard_principal_bound_to_paths_and_the_org() -> None:
    use_paths, use = build_statements(spec(), PREFIX, GRANTEES, PrincipalMode.ORG_PATHS)
    assert use_paths["Sid"] == f"{PREFIX}UsePaths"
    assert use_paths["Principal"] == {"AWS": "*"}
    assert use_paths["Condition"] == {
        "ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": [f"{ORG}/r-ab12/ou-ab12-11111111/*"]},
        "StringEquals": {"aws:PrincipalOrgID": ORG},
        "StringNotEquals": {"aws:PrincipalAccount": "444444444444"},
    }
    # Accounts named in AccountIds outside the named OUs keep an explicit statement.
    assert use["Principal"] == {"AWS": ["arn:aws:iam::333333333333:root"]}


def test_org_paths_without_nesting_matches_the_ou_itself_only() -> None:
    flat = replace(GRANTEES, include_nested=False, excluded=())
    use_paths, _ = build_statements(
        spec(IncludeNestedOUs="false"), PREFIX, flat, PrincipalMode.ORG_PATHS
    )
    assert use_paths["Condition"] == {
        "ForAnyValue:StringEquals": {"aws:PrincipalOrgPaths": [f"{ORG}/r-ab12/ou-ab12-11111111/"]},
        "StringEquals": {"aws:PrincipalOrgID": ORG},
    }


def test_grants_statement_is_limited_to_aws_resources() -> None:
    use, grants = build_statements(
        spec(AllowGrants="true"), PREFIX, GRANTEES, PrincipalMode.ACCOUNTS
    )
    assert grants["Sid"] == f"{PREFIX}Grants"
    assert grants["Action"] == ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"]
    assert grants["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert grants["Principal"] == use["Principal"]


def test_role_names_and_conditions_apply_to_every_statement() -> None:
    conditions = {
        "StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"},
        "Bool": {"aws:SecureTransport": "true"},
    }
    built = build_statements(
        spec(RoleNames=["app", "/team/app2/"], Conditions=conditions, AllowGrants="true"),
        PREFIX,
        GRANTEES,
        PrincipalMode.ORG_PATHS,
    )
    assert len(built) == 4
    for statement in built:
        condition = statement["Condition"]
        assert condition["StringEquals"]["aws:PrincipalOrgID"] == ORG
        assert condition["StringEquals"]["kms:ViaService"] == "s3.us-east-1.amazonaws.com"
        assert condition["ArnLike"]["aws:PrincipalArn"] == [
            "arn:aws:iam::${aws:PrincipalAccount}:role/app",
            "arn:aws:iam::${aws:PrincipalAccount}:role/team/app2",
        ]
    # A user's Bool block merges with the grant condition, which keeps its value.
    assert built[1]["Condition"]["Bool"] == {
        "aws:SecureTransport": "true",
        "kms:GrantIsForAWSResource": "true",
    }


@pytest.mark.parametrize(
    "spelling",
    ["kms:GrantIsForAWSResource", "kms:grantisforawsresource", "KMS:GRANTISFORAWSRESOURCE"],
)
def test_no_condition_can_weaken_the_grant_restriction_in_any_spelling(spelling: str) -> None:
    # The parser refuses the key in Conditions; the builder keeps its own value even so.
    with pytest.raises(InvalidPropertyError, match="AllowGrants"):
        spec(AllowGrants="true", Conditions={"Bool": {spelling: "false"}})
    unchecked = replace(spec(AllowGrants="true"), conditions={"Bool": {spelling: ("false",)}})
    grants = build_statements(unchecked, PREFIX, GRANTEES, PrincipalMode.ACCOUNTS)[1]
    # IAM reads key names case-insensitively: one key, with this resource's value.
    assert grants["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert keypolicy.unsafe_reasons([grants]) == []


@given(
    st.lists(
        st.sampled_from(["aws:SourceVpc", "AWS:SOURCEVPC", "aws:sourcevpc", "kms:ViaService"]),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=30)
def test_the_builder_never_writes_one_key_in_two_spellings(spellings: list[str]) -> None:
    conditions = {"StringEquals": dict.fromkeys(spellings, ("x",))}
    built = build_statements(
        replace(spec(AllowGrants="true"), conditions=conditions),
        PREFIX,
        GRANTEES,
        PrincipalMode.ACCOUNTS,
    )
    for statement in built:
        for block in statement["Condition"].values():
            names = [name.lower() for name in block]
            assert len(names) == len(set(names)), block
    assert keypolicy.unsafe_reasons(built) == []


def test_no_accounts_means_no_statements() -> None:
    empty = replace(GRANTEES, accounts=(), outside_units=(), unit_paths=())
    assert build_statements(spec(), PREFIX, empty, PrincipalMode.ACCOUNTS) == []
    assert build_statements(spec(), PREFIX, empty, PrincipalMode.ORG_PATHS) == []


def test_auto_is_not_a_statement_mode() -> None:
    with pytest.raises(ValueError, match="Auto"):
        build_statements(spec(), PREFIX, GRANTEES, PrincipalMode.AUTO)


def test_digest_changes_exactly_with_the_grant() -> None:
    one = build_statements(spec(), PREFIX, GRANTEES, PrincipalMode.ACCOUNTS)
    same = build_statements(spec(), PREFIX, GRANTEES, PrincipalMode.ACCOUNTS)
    fewer = build_statements(
        spec(), PREFIX, replace(GRANTEES, accounts=GRANTEES.accounts[:2]), PrincipalMode.ACCOUNTS
    )
    assert digest({"k": one}) == digest({"k": same})
    assert digest({"k": one}) != digest({"k": fewer})
    assert digest({"k": one}) != digest({"k2": one})


DEFAULT_KEY_POLICY = {
    "Version": "2012-10-17",
    "Id": "key-default-1",
    "Statement": [DEFAULT_STATEMENT],
}


def test_accounts_per_key_policy_in_accounts_mode() -> None:
    """How many accounts fit beside the default key statement: the figure the README quotes."""
    most = accounts_that_fit(DEFAULT_KEY_POLICY, spec(), PREFIX, GRANTEES)
    assert 900 <= most <= 1000, most
    with_grants = accounts_that_fit(DEFAULT_KEY_POLICY, spec(AllowGrants="true"), PREFIX, GRANTEES)
    # The grants statement repeats the principals: about half as many.
    assert most // 2 - 20 <= with_grants <= most // 2 + 5, with_grants
    for count, fits in ((most, True), (most + 1, False)):
        many = replace(GRANTEES, accounts=tuple(f"{100000000000 + i}" for i in range(count)))
        merged = keypolicy.merge(
            DEFAULT_KEY_POLICY,
            PREFIX,
            build_statements(spec(), PREFIX, many, PrincipalMode.ACCOUNTS),
        )
        assert (keypolicy.size(merged) <= keypolicy.MAX_POLICY_BYTES) == fits


accounts = st.lists(
    st.from_regex(r"[0-9]{12}", fullmatch=True), min_size=1, max_size=30, unique=True
)
paths = st.lists(
    st.from_regex(r"ou-ab12-[a-z0-9]{8}", fullmatch=True), max_size=4, unique=True
).map(lambda ous: tuple(f"{ORG}/r-ab12/{ou}/" for ou in ous))


@settings(max_examples=40, deadline=None)
@given(
    accounts,
    paths,
    st.booleans(),
    st.booleans(),
    st.sampled_from([PrincipalMode.ACCOUNTS, PrincipalMode.ORG_PATHS]),
    st.lists(st.from_regex(r"[A-Za-z0-9_+=,.@-]{1,20}", fullmatch=True), max_size=3, unique=True),
)
def test_every_built_policy_passes_independent_checks(
    granted: list[str],
    unit_paths: tuple[str, ...],
    nested: bool,
    grants: bool,
    mode: PrincipalMode,
    roles: list[str],
) -> None:
    grantees = Grantees(
        ORG, "aws", tuple(sorted(granted)), unit_paths, tuple(granted[:2]), (), nested
    )
    props = {
        "AllowGrants": str(grants).lower(),
        "IncludeNestedOUs": str(nested).lower(),
        "RoleNames": roles,
    }
    statements = build_statements(spec(**props), PREFIX, grantees, mode)
    assert statements
    assert keypolicy.unsafe_reasons(statements) == []
    assert_policy_safe({"Version": "2012-10-17", "Statement": statements})


@settings(max_examples=40, deadline=None)
@given(accounts=st.sets(st.from_regex(r"[0-9]{12}", fullmatch=True), max_size=8))
def test_granted_accounts_are_the_accounts_the_statements_were_built_for(
    accounts: set[str],
) -> None:
    grantees = replace(GRANTEES, accounts=tuple(sorted(accounts)), outside_units=())
    for mode in (PrincipalMode.ACCOUNTS, PrincipalMode.ORG_PATHS):
        built = build_statements(spec(AllowGrants="true"), PREFIX, grantees, mode)
        # OrgPaths grants by path: it names no account.
        assert granted_accounts(built) == (accounts if mode is PrincipalMode.ACCOUNTS else set())


def test_granted_accounts_reads_bare_ids_and_passes_over_other_principals() -> None:
    statements: list[dict[str, object]] = [
        {"Principal": {"AWS": "111111111111"}},
        {"Principal": {"AWS": ["arn:aws-cn:iam::222222222222:root", "arn:aws:iam::3:root"]}},
        {"Principal": {"AWS": ["arn:aws:iam::444444444444:role/app", "*"]}},
        {"Principal": {"Service": "logs.amazonaws.com"}},
        {"Principal": "*"},
        {"Principal": {"AWS": {"odd": "shape"}}},
    ]
    assert granted_accounts(statements) == {"111111111111", "222222222222"}
