"""Unit tests of the evaluator: the KMS action list against botocore, the tricky IAM rules, the
batch API against one-by-one evaluation, input checks, and the identity-policy mode."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest

from orgkeypolicy.evaluation import (
    KMS_ACTIONS,
    Answer,
    Decision,
    Principal,
    compile_policy,
    evaluate,
    evaluate_identity_policy,
    evaluate_matrix,
)
from orgkeypolicy.evaluation.kms import ACTION_SCOPED_KEYS, SCOPE_DESCRIBED_ACTIONS

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROLE = Principal("arn:aws:iam::111122223333:role/App")
# KMS operations not authorized on a key, so outside what a key policy decides.
NOT_ON_A_KEY = {
    "ConnectCustomKeyStore",
    "CreateCustomKeyStore",
    "CreateKey",
    "DeleteCustomKeyStore",
    "DescribeCustomKeyStores",
    "DisconnectCustomKeyStore",
    "GenerateRandom",
    "ListAliases",
    "ListKeys",
    "ListRetirableGrants",
    "UpdateCustomKeyStore",
}


def policy(*statements: dict[str, Any], version: str | None = "2012-10-17") -> dict[str, Any]:
    document: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        document["Version"] = version
    return document


def allow(condition: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": "Tested", "Effect": "Allow", "Principal": "*"}
    statement |= {"Action": "kms:*", "Resource": "*", **fields}
    if condition is not None:
        statement["Condition"] = condition
    return statement


def decide(document: dict[str, Any], principal: Principal = ROLE, **request: Any) -> Answer:
    return evaluate(
        compile_policy(document),
        principal,
        request.get("action", "kms:Decrypt"),
        request.get("resource", KEY_ARN),
        request.get("context"),
    )


def test_kms_actions_are_the_key_operations_of_botocores_model() -> None:
    operations = botocore.session.get_session().get_service_model("kms").operation_names
    expected = {f"kms:{name}" for name in operations if name not in NOT_ON_A_KEY}
    # ReEncrypt is authorized as two permissions, one on each key.
    expected = expected - {"kms:ReEncrypt"} | {"kms:ReEncryptFrom", "kms:ReEncryptTo"}
    assert set(KMS_ACTIONS) == expected
    assert len(KMS_ACTIONS) == len(set(KMS_ACTIONS))
    assert set(operations) >= NOT_ON_A_KEY


def test_action_scoped_keys_name_kms_actions_only() -> None:
    lowered = {action.lower() for action in KMS_ACTIONS}
    assert lowered >= SCOPE_DESCRIBED_ACTIONS
    for key, actions in ACTION_SCOPED_KEYS.items():
        assert actions and actions <= SCOPE_DESCRIBED_ACTIONS, key


@pytest.mark.parametrize(
    ("operator", "decision"),
    [
        ("StringEquals", Decision.IMPLICIT_DENY),
        ("StringNotEquals", Decision.ALLOW),
        ("StringEqualsIfExists", Decision.ALLOW),
        ("StringNotEqualsIfExists", Decision.ALLOW),
        ("ForAllValues:StringEquals", Decision.ALLOW),
        ("ForAnyValue:StringEquals", Decision.IMPLICIT_DENY),
        ("ForAllValues:StringNotEquals", Decision.ALLOW),
        ("ForAnyValue:StringNotEquals", Decision.IMPLICIT_DENY),
        ("ArnNotLike", Decision.ALLOW),
        ("NumericNotEquals", Decision.ALLOW),
        ("NotIpAddress", Decision.ALLOW),
        ("IpAddress", Decision.IMPLICIT_DENY),
    ],
)
def test_missing_keys(operator: str, decision: Decision) -> None:
    value = {"Arn": "arn:aws:sns:*:*:*", "Num": "1", "NotIp": "192.0.2.0/24", "IpA": "192.0.2.0/24"}
    chosen = next((v for k, v in value.items() if k in operator), "x")
    assert decide(policy(allow({operator: {"example:absent": chosen}}))).decision is decision


@pytest.mark.parametrize("values", [(), ("",)])
def test_for_all_values_holds_and_for_any_value_fails_on_a_null_data_set(
    values: tuple[str, ...],
) -> None:
    context = {"example:set": values}
    for_all = policy(allow({"ForAllValues:StringEquals": {"example:set": "a"}}))
    for_any = policy(allow({"ForAnyValue:StringEquals": {"example:set": "a"}}))
    assert decide(for_all, context=context).decision is Decision.ALLOW
    assert decide(for_any, context=context).decision is Decision.IMPLICIT_DENY


def test_a_key_present_with_no_value_is_not_guessed_for_plain_operators_and_null() -> None:
    for condition in ({"StringEquals": {"example:set": "a"}}, {"Null": {"example:set": "true"}}):
        answer = decide(policy(allow(condition)), context={"example:set": ()})
        assert answer.decision is Decision.UNKNOWN
        assert any("example:set" in reason for reason in answer.unsupported), answer


def test_negated_operators_need_every_value_to_miss() -> None:
    document = policy(allow({"StringNotLike": {"example:name": ["a*", "b*"]}}))
    assert decide(document, context={"example:name": "cat"}).decision is Decision.ALLOW
    assert decide(document, context={"example:name": "bat"}).decision is Decision.IMPLICIT_DENY


def test_condition_key_names_ignore_case_on_both_sides() -> None:
    document = policy(allow({"StringEquals": {"AWS:PrincipalTag/Team": "blue"}}))
    tagged = Principal(ROLE.arn, context={"aws:principaltag/team": ("blue",)})
    assert decide(document, tagged).decision is Decision.ALLOW


def test_keys_named_unknown_make_their_conditions_undecidable_not_false() -> None:
    org = "o-abcdefghij"
    document = policy(
        allow({"StringEquals": {"aws:PrincipalOrgID": org}}, Sid="Org"),
        allow({"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": f"{org}/*"}}, Sid="Paths"),
    )
    member = Principal(ROLE.arn, org_id=org, unknown=("AWS:PrincipalOrgPaths",))
    assert decide(document, member).decision is Decision.ALLOW
    unknown_paths = decide(document, Principal(ROLE.arn, unknown=("aws:PrincipalOrgID",)))
    assert unknown_paths.decision is Decision.UNKNOWN
    assert any("aws:PrincipalOrgID" in reason for reason in unknown_paths.unsupported)
    assert decide(document, Principal(ROLE.arn)).decision is Decision.IMPLICIT_DENY
    with pytest.raises(TypeError, match="tuple of keys"):
        Principal(ROLE.arn, unknown="aws:PrincipalOrgID")  # type: ignore[arg-type]


def test_a_key_given_twice_in_a_block_is_unknown_not_a_pick() -> None:
    document = policy(allow({"StringEquals": {"example:k": "a", "EXAMPLE:K": "b"}}))
    for value in ("a", "b", "c"):
        answer = decide(document, context={"example:k": value})
        assert answer.decision is Decision.UNKNOWN, answer
        assert any("example:k and EXAMPLE:K" in reason for reason in answer.unsupported)


@pytest.mark.parametrize("version", ["2008-10-17", None])
def test_variables_are_literal_text_before_2012_10_17(version: str | None) -> None:
    arn = "arn:aws:iam::${aws:PrincipalAccount}:role/App"
    old = policy(allow({"ArnLike": {"aws:PrincipalArn": arn}}), version=version)
    new = policy(allow({"ArnLike": {"aws:PrincipalArn": arn}}))
    assert decide(old).decision is Decision.IMPLICIT_DENY
    assert decide(new).decision is Decision.ALLOW


def test_unsupported_constructs_are_named_with_their_statement() -> None:
    document = policy(
        allow({"StringEqualsSometimes": {"example:k": "a"}}, Sid="Odd"),
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:CurrentTime": "soon"}},
        },
    )
    answer = decide(document)
    assert answer.decision is Decision.UNKNOWN
    assert answer.statements == ("#1",)  # the undecidable Deny decides before any Allow
    assert any(r.startswith("#1: ") and "'soon'" in r for r in answer.unsupported), answer
    assert decide(document, action="kms:Encrypt").statements == ("Odd",)


def test_an_undecidable_statement_that_cannot_apply_changes_nothing() -> None:
    document = policy(
        allow(),
        {
            "Effect": "Deny",
            "Principal": {"AWS": "444455556666"},
            "Action": "kms:*",
            "Resource": "*",
            "Condition": {"StringEqualsSometimes": {"example:k": "a"}},
        },
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:ScheduleKeyDeletion",
            "Resource": "*",
            "Condition": {"StringEqualsSometimes": {"example:k": "a"}},
        },
    )
    answer = decide(document)
    assert (answer.decision, answer.unsupported) == (Decision.ALLOW, ())


def test_delegation_is_unknown_when_an_undecidable_statement_may_grant_directly() -> None:
    document = policy(
        {
            "Sid": "Account",
            "Effect": "Allow",
            "Principal": {"AWS": "111122223333"},
            "Action": "kms:*",
            "Resource": "*",
        },
        allow({"StringEqualsSometimes": {"example:k": "a"}}, Sid="Maybe"),
    )
    answer = decide(document)
    assert answer.decision is Decision.UNKNOWN
    assert answer.statements == ("Maybe",)
    certain = policy(document["Statement"][0], allow(Sid="Direct"))
    assert decide(certain).delegated is False
    assert decide(policy(document["Statement"][0])).delegated is True


def test_a_policy_that_is_not_a_policy_is_unknown_for_every_request() -> None:
    answer = decide({"Version": "2012-10-17", "Statement": "allow everything"})
    assert answer.decision is Decision.UNKNOWN
    assert answer.unsupported == ("Statement is not a statement or a list of statements",)


def test_the_matrix_answers_exactly_as_one_request_at_a_time() -> None:
    document = policy(
        allow({"Bool": {"kms:GrantIsForAWSResource": "true"}}, Sid="Grants"),
        allow({"StringEquals": {"kms:EncryptionContext:app": "x"}}, Sid="Context"),
        {
            "Sid": "NoDecryptForBob",
            "Effect": "Deny",
            "Principal": {"AWS": "arn:aws:iam::111122223333:user/Bob"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    compiled = compile_policy(document)
    principals = [
        ROLE,
        Principal("arn:aws:iam::111122223333:user/Bob"),
        Principal(
            "arn:aws:iam::444455556666:role/App", context={"kms:EncryptionContext:app": ("y",)}
        ),
    ]
    actions = [
        "kms:CreateGrant",
        "kms:Decrypt",
        "kms:Encapsulate",
        "kms:DescribeKey",
        "s3:GetObject",
    ]
    context = {"kms:GrantIsForAWSResource": "true", "kms:EncryptionContext:app": "x"}
    matrix = evaluate_matrix(compiled, principals, actions, KEY_ARN, context)
    one_by_one = [
        evaluate(compiled, principal, action, KEY_ARN, context)
        for principal in principals
        for action in actions
    ]
    assert matrix == one_by_one
    assert [(a.principal, a.action) for a in matrix] == [
        (p.arn, action) for p in principals for action in actions
    ]
    decisions = {(a.principal.split(":")[4], a.action): a.decision for a in matrix[5:]}
    assert [a.decision for a in matrix[:5]] == [
        Decision.ALLOW,  # CreateGrant carries kms:GrantIsForAWSResource
        Decision.ALLOW,  # Decrypt carries the encryption context
        Decision.UNKNOWN,  # Encapsulate is newer than the reference of action-scoped keys
        Decision.IMPLICIT_DENY,  # DescribeKey carries neither
        Decision.IMPLICIT_DENY,  # not a KMS action
    ]
    assert decisions[("111122223333", "kms:Decrypt")] is Decision.EXPLICIT_DENY
    # The request's context keys override the principal's.
    assert decisions[("444455556666", "kms:Decrypt")] is Decision.ALLOW


def test_inputs_are_checked_with_messages_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="arn:aws:iam::ID:root"):
        Principal("arn:aws:iam::111122223333:group/Admins")
    with pytest.raises(ValueError, match="service principal has no organization"):
        Principal("cloudtrail.amazonaws.com", org_id="o-a1b2c3d4e5")
    with pytest.raises(TypeError, match="org_paths"):
        Principal(ROLE.arn, org_paths="o-a1b2c3d4e5/r-ab12/")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tuple of strings"):
        Principal(ROLE.arn, context={"example:k": (1,)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="given twice"):
        Principal(ROLE.arn, context={"example:K": ("a",), "EXAMPLE:k": ("b",)})
    with pytest.raises(ValueError, match="not an ARN"):
        evaluate(compile_policy(policy(allow())), ROLE, "kms:Decrypt", "key/1234")


def test_identity_policy_allows_key_policy_writes_only_on_tagged_keys() -> None:
    # The shape of the function role's tag-guarded key-policy permission.
    document = policy(
        {
            "Sid": "KeyPolicyReadWrite",
            "Effect": "Allow",
            "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
            "Resource": "arn:aws:kms:*:111122223333:key/*",
            "Condition": {"StringEquals": {"aws:ResourceTag/orgkeypolicy": "managed"}},
        }
    )
    function = Principal("arn:aws:sts::111122223333:assumed-role/OrgKeyPolicyFunction/session")

    def write(resource: str, tags: dict[str, str], action: str = "kms:PutKeyPolicy") -> Answer:
        context = {f"aws:ResourceTag/{key}": value for key, value in tags.items()}
        return evaluate_identity_policy(document, function, action, resource, context)

    tagged = write(KEY_ARN, {"orgkeypolicy": "managed"})
    assert (tagged.decision, tagged.statements, tagged.delegated) == (
        Decision.ALLOW,
        ("KeyPolicyReadWrite",),
        False,
    )
    assert write(KEY_ARN, {}).decision is Decision.IMPLICIT_DENY
    assert write(KEY_ARN, {"orgkeypolicy": "Managed"}).decision is Decision.IMPLICIT_DENY
    assert write(KEY_ARN, {"other": "managed"}).decision is Decision.IMPLICIT_DENY
    assert write(KEY_ARN, {"OrgKeyPolicy": "managed"}).decision is Decision.ALLOW
    other_account = KEY_ARN.replace("111122223333", "444455556666")
    assert write(other_account, {"orgkeypolicy": "managed"}).decision is Decision.IMPLICIT_DENY
    scheduled = write(KEY_ARN, {"orgkeypolicy": "managed"}, "kms:ScheduleKeyDeletion")
    assert scheduled.decision is Decision.IMPLICIT_DENY
