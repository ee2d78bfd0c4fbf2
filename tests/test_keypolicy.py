"""Merge, strip and the checks on key-policy documents, property-tested over generated policies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orgkeypolicy import keypolicy
from orgkeypolicy.errors import OrgKeyPolicyError, PolicyTooLargeError

PREFIX = "OrgKeyPolicy0123456789abcdef"
OTHER = "OrgKeyPolicyfedcba9876543210"

sids = st.one_of(
    st.none(),
    st.text(min_size=1, max_size=30),
    st.sampled_from(["Enable IAM User Permissions", f"{OTHER}Use", "OrgKeyPolicy", PREFIX[:-1]]),
)
scalars = st.one_of(st.text(max_size=20), st.integers(), st.booleans())
foreign_statements = st.builds(
    lambda sid, body: {**({"Sid": sid} if sid is not None else {}), **body},
    sids,
    st.dictionaries(
        st.sampled_from(["Effect", "Action", "Principal", "Condition", "Resource"]), scalars
    ),
).filter(lambda s: not keypolicy.owns(s, PREFIX))
ours = st.lists(
    st.builds(
        lambda suffix, n: {"Sid": f"{PREFIX}{suffix}", "Effect": "Allow", "N": n},
        st.sampled_from(["Use", "Grants", "UsePaths"]),
        st.integers(),
    ),
    max_size=3,
)
policies = st.builds(
    lambda statements, version: {"Version": version, "Statement": statements},
    st.lists(foreign_statements, max_size=8),
    st.sampled_from(["2012-10-17", "2008-10-17"]),
)


def foreign(policy: dict[str, Any]) -> list[Any]:
    return [s for s in policy["Statement"] if not keypolicy.owns(s, PREFIX)]


@given(policies, ours)
def test_strip_of_merge_gives_back_the_original(
    policy: dict[str, Any], statements: list[Any]
) -> None:
    assert keypolicy.strip(keypolicy.merge(policy, PREFIX, statements), PREFIX) == policy


@given(policies, ours, ours)
def test_merge_is_idempotent_and_replaces(
    policy: dict[str, Any], first: list[Any], second: list[Any]
) -> None:
    once = keypolicy.merge(policy, PREFIX, first)
    assert keypolicy.merge(once, PREFIX, first) == once
    again = keypolicy.merge(once, PREFIX, second)
    assert keypolicy.managed(again, PREFIX) == second
    assert again == keypolicy.merge(policy, PREFIX, second)


@given(policies, ours, st.integers(min_value=0, max_value=8), ours)
def test_foreign_statements_are_never_altered_nor_reordered(
    policy: dict[str, Any], existing: list[Any], at: int, wanted: list[Any]
) -> None:
    # Our old statements may sit anywhere among the foreign ones.
    statements = list(policy["Statement"])
    mixed = {**policy, "Statement": statements[:at] + existing + statements[at:]}
    merged = keypolicy.merge(mixed, PREFIX, wanted)
    assert foreign(merged) == foreign(mixed)
    assert keypolicy.managed(merged, PREFIX) == wanted
    assert {k: v for k, v in merged.items() if k != "Statement"} == {
        k: v for k, v in mixed.items() if k != "Statement"
    }


def test_merge_takes_the_place_of_the_old_statements() -> None:
    policy = {"Statement": [{"Sid": "A"}, {"Sid": f"{PREFIX}Use"}, {"Sid": "B"}]}
    merged = keypolicy.merge(policy, PREFIX, [{"Sid": f"{PREFIX}Use", "New": 1}])
    assert [s["Sid"] for s in merged["Statement"]] == ["A", f"{PREFIX}Use", "B"]
    assert merged["Statement"][1]["New"] == 1


def test_merge_does_not_touch_its_input() -> None:
    policy = {"Statement": [{"Sid": "A", "Action": ["x"]}]}
    snapshot = json.dumps(policy)
    keypolicy.merge(policy, PREFIX, [{"Sid": f"{PREFIX}Use"}])
    assert json.dumps(policy) == snapshot


def test_a_single_statement_object_is_accepted() -> None:
    policy = {"Version": "2012-10-17", "Statement": {"Sid": "Only", "Effect": "Allow"}}
    merged = keypolicy.merge(policy, PREFIX, [{"Sid": f"{PREFIX}Use"}])
    assert merged["Statement"] == [{"Sid": "Only", "Effect": "Allow"}, {"Sid": f"{PREFIX}Use"}]


def test_merge_refuses_statements_it_would_not_own() -> None:
    with pytest.raises(ValueError, match="lacks the prefix"):
        keypolicy.merge({"Statement": []}, PREFIX, [{"Sid": "Foreign"}])


def test_another_resource_with_a_longer_logical_id_is_not_ours() -> None:
    assert not keypolicy.owns({"Sid": f"{OTHER}Use"}, PREFIX)
    assert not keypolicy.owns({"Sid": None}, PREFIX)
    assert not keypolicy.owns("not a statement", PREFIX)


def test_size_limit_is_checked_in_bytes_and_names_the_key() -> None:
    filler = "é" * 5_500  # written as a six-byte escape: over the limit though short in characters
    policy = {"Statement": [{"Sid": "Big", "Condition": filler}]}
    assert len(filler) < keypolicy.MAX_POLICY_BYTES < keypolicy.size(policy)
    assert keypolicy.serialize(policy).isascii()
    with pytest.raises(PolicyTooLargeError) as raised:
        keypolicy.check_size(policy, "arn:aws:kms:us-east-1:123456789012:key/k", 900)
    message = str(raised.value)
    assert "arn:aws:kms:us-east-1:123456789012:key/k" in message
    assert "900 accounts" in message
    assert "PrincipalMode: Auto or OrgPaths" in message
    assert len(message) < 256


def test_a_policy_at_the_limit_fits() -> None:
    base = keypolicy.size({"Statement": [{"Sid": ""}]})
    policy = {"Statement": [{"Sid": "x" * (keypolicy.MAX_POLICY_BYTES - base)}]}
    assert keypolicy.size(policy) == keypolicy.MAX_POLICY_BYTES
    keypolicy.check_size(policy, "k", 1)


SAFE = {
    "Sid": f"{PREFIX}Use",
    "Effect": "Allow",
    "Principal": {"AWS": "*"},
    "Action": ["kms:Decrypt"],
    "Resource": "*",
    "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"}},
}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"Effect": "Deny"}, "Effect"),
        ({"Principal": "*"}, "bare"),
        ({"Principal": {"AWS": "*", "Service": "x"}}, "bare"),
        ({"Condition": {}}, "PrincipalOrgID"),
        ({"Condition": {"StringLike": {"aws:PrincipalOrgID": "o-*"}}}, "PrincipalOrgID"),
        ({"Action": ["kms:PutKeyPolicy"]}, "outside key use"),
        ({"Action": "kms:*"}, "outside key use"),
        ({"Resource": "arn:aws:kms:*"}, "Resource"),
    ],
)
def test_unsafe_statements_are_named(change: dict[str, Any], problem: str) -> None:
    assert keypolicy.unsafe_reasons([SAFE]) == []
    reasons = keypolicy.unsafe_reasons([{**SAFE, **change}])
    assert reasons
    assert any(problem in reason for reason in reasons)


def test_one_condition_key_in_two_spellings_is_unsafe() -> None:
    statement = {
        "Sid": "OrgKeyPolicy0123456789abcdefGrants",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
        "Action": ["kms:CreateGrant"],
        "Resource": "*",
        "Condition": {
            "StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"},
            "Bool": {"kms:GrantIsForAWSResource": "true", "kms:grantisforawsresource": "false"},
        },
    }
    [problem] = keypolicy.unsafe_reasons([statement])
    assert "Bool names one key twice" in problem and "kms:grantisforawsresource" in problem
    # The organization condition is found whatever its spelling.
    statement["Condition"] = {"StringEquals": {"AWS:PrincipalOrgId": "o-abcdefghij"}}
    assert keypolicy.unsafe_reasons([statement]) == []


@pytest.mark.parametrize("version", ["2008-10-17", None])
def test_a_policy_variable_is_never_written_where_it_would_be_literal_text(
    version: str | None,
) -> None:
    statement = {
        "Sid": "OrgKeyPolicy0123456789abcdefUse",
        "Condition": {
            "ArnLike": {"aws:PrincipalArn": "arn:aws:iam::${aws:PrincipalAccount}:role/a"}
        },
    }
    policy: dict[str, Any] = {"Statement": []}
    if version:
        policy["Version"] = version
    with pytest.raises(OrgKeyPolicyError, match="Version") as refused:
        keypolicy.check_variables(policy, "arn:aws:kms:us-east-1:111111111111:key/k", [statement])
    assert "key/k" in str(refused.value) and "2012-10-17" in str(refused.value)
    # Under 2012-10-17 the variable is evaluated; without variables any version will do.
    keypolicy.check_variables({**policy, "Version": "2012-10-17"}, "k", [statement])
    keypolicy.check_variables(policy, "k", [{"Sid": "x", "Condition": {}}])
