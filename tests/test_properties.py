"""The property parser: every accepted form, every limit, and fuzzing over arbitrary JSON."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orgkeypolicy.errors import MAX_REASON, InvalidPropertyError, clip, shown
from orgkeypolicy.identifiers import (
    ACCOUNT_ID,
    OU_ID,
    ROOT_ID,
    KeyRef,
    KeyRefKind,
    parse_key_ref,
)
from orgkeypolicy.properties import (
    DEFAULT_ACTIONS,
    KNOWN,
    PASSED_THROUGH,
    RESERVED_CONDITION_KEYS,
    USE_ACTIONS,
    PrincipalMode,
    Spec,
    check_organizations_role,
    key_refs_leniently,
    parse_properties,
    role_allowed,
)

KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"
MRK = "mrk-1234abcd12ab34cd56ef1234567890ab"
ACCOUNT = "123456789012"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{KEY}"
MRK_ARN = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{MRK}"
ALIAS = "alias/app-data"
ALIAS_ARN = f"arn:aws:kms:eu-central-1:{ACCOUNT}:alias/app-data"
OU = "ou-ab12-cdefgh34"
ROOT = "r-ab12"
MEMBER = "111122223333"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/OrgReader"

PROPERTY_NAMES = (*KNOWN, "Properties", "ResourceProperties")
PRINTABLE_ASCII = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


def parse(**props: Any) -> Spec:
    return parse_properties({"KeyIds": [KEY], "OrganizationalUnitIds": [OU], **props})


def refused(props: Any, prop: str, *, base: bool = True) -> str:
    """Parse ``props`` (over a valid base), expect refusal for ``prop``; the message."""
    raw = {"KeyIds": [KEY], "OrganizationalUnitIds": [OU], **props} if base else props
    with pytest.raises(InvalidPropertyError) as info:
        parse_properties(raw)
    message = str(info.value)
    assert info.value.prop == prop, message
    assert message.startswith(f"{prop}: "), message
    assert len(message) <= MAX_REASON
    assert set(message) <= PRINTABLE_ASCII, message
    return message


# --- defaults and pass-through ------------------------------------------------------------------


def test_minimal_properties_get_every_default() -> None:
    spec = parse_properties({"KeyIds": [KEY], "OrganizationalUnitIds": [OU]})
    assert spec == Spec(key_refs=(KeyRef(KEY, KeyRefKind.KEY_ID),), ou_ids=(OU,))
    assert spec.account_ids == ()
    assert spec.exclude_account_ids == frozenset()
    assert spec.include_nested_ous is True
    assert spec.actions == DEFAULT_ACTIONS
    assert spec.allow_grants is False
    assert spec.principal_mode is PrincipalMode.ACCOUNTS
    assert spec.role_names == ()
    assert spec.conditions == {}
    assert spec.organizations_role_arn is None
    assert spec.dry_run is False


def test_accounts_alone_are_enough() -> None:
    spec = parse_properties({"KeyIds": [KEY], "AccountIds": [MEMBER]})
    assert spec.ou_ids == ()
    assert spec.account_ids == (MEMBER,)


def test_cloudformation_own_properties_pass_through() -> None:
    spec = parse(
        ServiceToken="arn:aws:lambda:us-east-1:123456789012:function:f", ServiceTimeout="60"
    )
    assert spec.ou_ids == (OU,)


def test_default_role_arn_applies_only_when_the_property_is_absent() -> None:
    other = f"arn:aws:iam::{ACCOUNT}:role/path/Explicit"
    raw = {"KeyIds": [KEY], "AccountIds": [MEMBER]}
    assert parse_properties(raw, default_role_arn=ROLE_ARN).organizations_role_arn == ROLE_ARN
    explicit = {**raw, "OrganizationsRoleArn": other}
    assert parse_properties(explicit, default_role_arn=ROLE_ARN).organizations_role_arn == other
    assert parse_properties(raw).organizations_role_arn is None
    # An empty string is the one way to say "no role" over a default (an If with "" in a template).
    empty = {**raw, "OrganizationsRoleArn": ""}
    assert parse_properties(empty, default_role_arn=ROLE_ARN).organizations_role_arn is None


def role_check(raw: dict[str, Any], default: str | None, assumable: list[str]) -> Spec:
    spec = parse_properties(raw, default_role_arn=default)
    check_organizations_role(spec, default_role_arn=default, assumable_roles=assumable)
    return spec


def test_the_provider_may_assume_its_reader_role_and_the_roles_it_allows() -> None:
    other = f"arn:aws:iam::{ACCOUNT}:role/path/Explicit"
    raw = {"KeyIds": [KEY], "AccountIds": [MEMBER]}
    assert role_check(raw, ROLE_ARN, []).organizations_role_arn == ROLE_ARN
    assert role_check(raw, None, []).organizations_role_arn is None
    explicit = {**raw, "OrganizationsRoleArn": other}
    assert role_check(explicit, ROLE_ARN, [other]).organizations_role_arn == other
    assert role_check(explicit, None, ["arn:aws:iam::*:role/path/*"]).organizations_role_arn
    same = {**raw, "OrganizationsRoleArn": ROLE_ARN}
    assert role_check(same, ROLE_ARN, []).organizations_role_arn == ROLE_ARN
    # Without a reader role the provider reads the organization itself: "" asks for that.
    assert role_check({**raw, "OrganizationsRoleArn": ""}, None, []).organizations_role_arn is None


def test_an_empty_role_over_a_reader_role_is_refused() -> None:
    # With a reader role, the provider's own role has no Organizations permissions.
    raw = {"KeyIds": [KEY], "AccountIds": [MEMBER], "OrganizationsRoleArn": ""}
    with pytest.raises(InvalidPropertyError) as info:
        role_check(raw, ROLE_ARN, [])
    assert info.value.prop == "OrganizationsRoleArn"
    assert str(info.value).startswith("OrganizationsRoleArn: '' ")
    assert "leave the property out" in str(info.value)


@pytest.mark.parametrize("default", [None, ROLE_ARN])
def test_a_role_outside_the_providers_list_is_refused(default: str | None) -> None:
    other = "arn:aws:iam::222222222222:role/Elsewhere"
    raw = {"KeyIds": [KEY], "AccountIds": [MEMBER], "OrganizationsRoleArn": other}
    with pytest.raises(InvalidPropertyError) as info:
        role_check(raw, default, ["arn:aws:iam::*:role/Reader*"])
    reason = str(info.value)
    assert reason == (
        f"OrganizationsRoleArn: '{other}' is not a role this provider may assume; "
        "add it to the provider's AllowedOrganizationsRoles or leave the property out"
    )


@pytest.mark.parametrize(
    ("arn", "patterns", "allowed"),
    [
        ("arn:aws:iam::111111111111:role/Reader", ["arn:aws:iam::111111111111:role/Reader"], True),
        ("arn:aws:iam::111111111111:role/Reader", ["arn:aws:iam::*:role/Reader"], True),
        ("arn:aws:iam::111111111111:role/ReaderX", ["arn:aws:iam::*:role/Reader"], False),
        ("arn:aws:iam::111111111111:role/path/Reader", ["arn:aws:iam::*:role/*Reader"], True),
        ("arn:aws:iam::111111111111:role/Reader1", ["arn:aws:iam::*:role/Reader?"], True),
        ("arn:aws:iam::111111111111:role/Reader12", ["arn:aws:iam::*:role/Reader?"], False),
        # Case matters, and regex characters in a pattern are literal.
        ("arn:aws:iam::111111111111:role/reader", ["arn:aws:iam::*:role/Reader"], False),
        ("arn:aws:iam::111111111111:role/a+b", ["arn:aws:iam::*:role/a+b"], True),
        ("arn:aws:iam::111111111111:role/aab", ["arn:aws:iam::*:role/a+b"], False),
        ("arn:aws:iam::111111111111:role/Reader", [], False),
    ],
)
def test_role_allowed_matches_like_an_iam_resource(
    arn: str, patterns: list[str], allowed: bool
) -> None:
    assert role_allowed(arn, patterns) is allowed


def test_a_malformed_default_role_arn_is_reported_under_the_property() -> None:
    with pytest.raises(InvalidPropertyError) as info:
        parse_properties({"KeyIds": [KEY], "AccountIds": [MEMBER]}, default_role_arn="not-an-arn")
    assert info.value.prop == "OrganizationsRoleArn"


# --- booleans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prop", ["IncludeNestedOUs", "AllowGrants", "DryRun"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        (True, True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        (False, False),
    ],
)
def test_booleans_accept_json_and_string_forms(prop: str, value: object, expected: bool) -> None:
    field = {"IncludeNestedOUs": "include_nested_ous", "AllowGrants": "allow_grants"}.get(
        prop, "dry_run"
    )
    assert getattr(parse(**{prop: value}), field) is expected


@pytest.mark.parametrize("prop", ["IncludeNestedOUs", "AllowGrants", "DryRun"])
@pytest.mark.parametrize("value", ["yes", "no", "1", "0", 1, 0, "", " true", "true\n", [], {}])
def test_booleans_refuse_everything_else(prop: str, value: object) -> None:
    message = refused({prop: value}, prop)
    assert "is not a boolean" in message


# --- key references -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "region", "account", "partition"),
    [
        (KEY, KeyRefKind.KEY_ID, None, None, None),
        (MRK, KeyRefKind.KEY_ID, None, None, None),
        (KEY_ARN, KeyRefKind.KEY_ARN, "us-east-1", ACCOUNT, "aws"),
        (MRK_ARN, KeyRefKind.KEY_ARN, "eu-west-1", ACCOUNT, "aws"),
        (ALIAS, KeyRefKind.ALIAS, None, None, None),
        ("alias/a/b_c-D:9", KeyRefKind.ALIAS, None, None, None),
        (ALIAS_ARN, KeyRefKind.ALIAS_ARN, "eu-central-1", ACCOUNT, "aws"),
        (
            f"arn:aws-cn:kms:cn-north-1:{ACCOUNT}:key/{KEY}",
            KeyRefKind.KEY_ARN,
            "cn-north-1",
            ACCOUNT,
            "aws-cn",
        ),
        (
            f"arn:aws-us-gov:kms:us-gov-west-1:{ACCOUNT}:alias/x",
            KeyRefKind.ALIAS_ARN,
            "us-gov-west-1",
            ACCOUNT,
            "aws-us-gov",
        ),
        # Another account's key has a valid form; the handler refuses it once it knows its own.
        (
            f"arn:aws:kms:us-east-1:{MEMBER}:key/{KEY}",
            KeyRefKind.KEY_ARN,
            "us-east-1",
            MEMBER,
            "aws",
        ),
    ],
)
def test_every_key_reference_form_is_classified(
    text: str, kind: KeyRefKind, region: str | None, account: str | None, partition: str | None
) -> None:
    assert parse_key_ref(text) == KeyRef(text, kind, region, account, partition)
    spec = parse(KeyIds=[text])
    assert spec.key_refs == (KeyRef(text, kind, region, account, partition),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        KEY.upper(),
        KEY[:-1],
        KEY + "0",
        KEY.replace("-", ""),
        "mrk-1234",
        "mrk-" + "g" * 32,
        MRK.upper(),
        "alias/",
        "alias",
        "alias/has space",
        "alias/star*",
        "Alias/x",
        f" {KEY}",
        f"{KEY} ",
        f"{KEY}\n",
        f"{ALIAS}\x00",
        f"arn:aws:kms:us-east-1:12345678901:key/{KEY}",
        f"arn:aws:kms:us-east-1:1234567890123:key/{KEY}",
        f"arn:aws:kms:US-EAST-1:{ACCOUNT}:key/{KEY}",
        f"arn:aws:kms::{ACCOUNT}:key/{KEY}",
        f"arn:aws:kms:us-east-1::key/{KEY}",
        f"arn:aws:s3:us-east-1:{ACCOUNT}:key/{KEY}",
        f"arn:aws-xx:kms:us-east-1:{ACCOUNT}:key/{KEY}",
        f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{ALIAS}",
        f"arn:aws:kms:us-east-1:{ACCOUNT}:{KEY}",
        "arn:aws:s3:::bucket",
        "*",
        "\u0661\u0662\u0663\u0664abcd-12ab-34cd-56ef-1234567890ab",
        "x" * 10_000,
    ],
)
def test_malformed_key_references_are_refused(text: str) -> None:
    assert parse_key_ref(text) is None
    message = refused({"KeyIds": [text]}, "KeyIds")
    assert "is not a key ID, key ARN, alias/NAME or alias ARN" in message


@pytest.mark.parametrize(
    "text",
    [
        "alias/aws/s3",
        "alias/aws/ebs",
        "alias/aws/",
        f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/s3",
        f"arn:aws-cn:kms:cn-north-1:{ACCOUNT}:alias/aws/rds",
    ],
)
def test_aws_managed_aliases_are_refused(text: str) -> None:
    ref = parse_key_ref(text)
    assert ref is not None
    assert ref.is_aws_managed_alias
    message = refused({"KeyIds": [KEY, text]}, "KeyIds")
    assert "AWS managed" in message


@pytest.mark.parametrize("text", ["alias/aws", "alias/awsome", "alias/my/aws/s3", "alias/AWSx/s3"])
def test_aliases_that_only_resemble_aws_managed_ones_are_accepted(text: str) -> None:
    ref = parse_key_ref(text)
    assert ref is not None
    assert not ref.is_aws_managed_alias
    assert parse(KeyIds=[text]).key_refs == (ref,)


@pytest.mark.parametrize(
    "value", [KEY, 5, {"Ref": "Key"}, {KEY: KEY}, True, "", [KEY, 5], [KEY, None], [[KEY]]]
)
def test_key_ids_must_be_a_list_of_strings(value: object) -> None:
    message = refused({"KeyIds": value}, "KeyIds")
    assert "is not a list" in message or "is not a string" in message


@pytest.mark.parametrize("value", [[], None])
def test_key_ids_are_required(value: object) -> None:
    raw: dict[str, Any] = {"OrganizationalUnitIds": [OU]}
    if value is not None:
        raw["KeyIds"] = value
    message = refused(raw, "KeyIds", base=False)
    assert "is empty" in message


# --- units and accounts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit",
    [OU, ROOT, "ou-0000-00000000", "r-" + "a" * 32, "ou-" + "z" * 32 + "-" + "9" * 32],
)
def test_ou_and_root_ids_are_accepted(unit: str) -> None:
    assert parse(OrganizationalUnitIds=[unit]).ou_ids == (unit,)


@pytest.mark.parametrize(
    "unit",
    [
        "ou-AB12-cdefgh34",
        "OU-ab12-cdefgh34",
        "ou-ab12",
        "ou-ab1-cdefgh34",
        "ou-ab12-cdefgh3",
        f"{OU} ",
        f"{OU}\n",
        f" {OU}",
        "r-AB12",
        "r-ab1",
        "o-abcdefghij",
        "ou-ab12_cdefgh34",
        "ou-ab\u0661\u0662-cdefgh34",
        "",
    ],
)
def test_malformed_unit_ids_are_refused(unit: str) -> None:
    message = refused({"OrganizationalUnitIds": [unit]}, "OrganizationalUnitIds")
    assert "is not an OU ID" in message


@pytest.mark.parametrize(
    "account",
    [
        "12345678901",
        "1234567890123",
        "".join(chr(0x0660 + int(d)) for d in "123456789012"),
        "".join(chr(0xFF10 + int(d)) for d in "123456789012"),
        "1234-5678-9012",
        f"{MEMBER} ",
        f"{MEMBER}\n",
        "12345678901O",
        "",
    ],
)
@pytest.mark.parametrize("prop", ["AccountIds", "ExcludeAccountIds"])
def test_malformed_account_ids_are_refused(account: str, prop: str) -> None:
    message = refused({prop: [account]}, prop)
    assert "is not a 12-digit account ID" in message


@pytest.mark.parametrize("prop", ["OrganizationalUnitIds", "AccountIds", "ExcludeAccountIds"])
@pytest.mark.parametrize("value", [123456789012, [123456789012], OU, {"a": OU}, [None]])
def test_id_lists_must_be_lists_of_strings(prop: str, value: object) -> None:
    message = refused({prop: value}, prop)
    assert "is not a list" in message or "is not a string" in message


@pytest.mark.parametrize(
    "raw",
    [
        {"KeyIds": [KEY]},
        {"KeyIds": [KEY], "OrganizationalUnitIds": [], "AccountIds": []},
        {"KeyIds": [KEY], "OrganizationalUnitIds": None},
        {"KeyIds": [KEY], "ExcludeAccountIds": [MEMBER]},
    ],
)
def test_neither_units_nor_accounts_is_refused(raw: dict[str, Any]) -> None:
    message = refused(raw, "OrganizationalUnitIds", base=False)
    assert "AccountIds" in message


def test_exclusions_are_a_set() -> None:
    spec = parse(ExcludeAccountIds=[MEMBER, ACCOUNT, MEMBER])
    assert spec.exclude_account_ids == frozenset({MEMBER, ACCOUNT})


# --- de-duplication and limits ------------------------------------------------------------------


def test_duplicates_are_dropped_keeping_first_order() -> None:
    spec = parse_properties(
        {
            "KeyIds": [ALIAS, KEY, ALIAS, MRK, KEY],
            "OrganizationalUnitIds": [OU, ROOT, OU],
            "AccountIds": [MEMBER, ACCOUNT, MEMBER, ACCOUNT],
            "RoleNames": ["B", "A", "B"],
        }
    )
    assert [ref.text for ref in spec.key_refs] == [ALIAS, KEY, MRK]
    assert spec.ou_ids == (OU, ROOT)
    assert spec.account_ids == (MEMBER, ACCOUNT)
    assert spec.role_names == ("B", "A")


def key_ids(count: int) -> list[str]:
    return [f"{n:08x}-0000-4000-8000-000000000000" for n in range(count)]


def ou_ids(count: int) -> list[str]:
    return [f"ou-root-{n:08x}" for n in range(count)]


def account_ids(count: int) -> list[str]:
    return [f"{n:012d}" for n in range(count)]


def test_limits_are_inclusive() -> None:
    spec = parse_properties(
        {
            "KeyIds": key_ids(50),
            "OrganizationalUnitIds": ou_ids(100),
            "AccountIds": account_ids(1000),
            "ExcludeAccountIds": account_ids(1000),
            "RoleNames": [f"Role{n}" for n in range(20)],
        }
    )
    assert len(spec.key_refs) == 50
    assert len(spec.ou_ids) == 100
    assert len(spec.account_ids) == 1000
    assert len(spec.exclude_account_ids) == 1000
    assert len(spec.role_names) == 20


def test_limits_count_distinct_entries() -> None:
    spec = parse(KeyIds=key_ids(50) * 3, OrganizationalUnitIds=ou_ids(100) + ou_ids(100))
    assert len(spec.key_refs) == 50
    assert len(spec.ou_ids) == 100


@pytest.mark.parametrize(
    ("prop", "values", "limit"),
    [
        ("KeyIds", key_ids(51), 50),
        ("OrganizationalUnitIds", ou_ids(101), 100),
        ("AccountIds", account_ids(1001), 1000),
        ("ExcludeAccountIds", account_ids(1001), 1000),
        ("RoleNames", [f"Role{n}" for n in range(21)], 20),
    ],
)
def test_one_over_a_limit_is_refused(prop: str, values: list[str], limit: int) -> None:
    message = refused({prop: values}, prop)
    assert f"'{limit + 1} entries' is more than {limit}" in message


def test_huge_lists_are_refused_quickly_with_a_short_reason() -> None:
    message = refused({"AccountIds": account_ids(100_000)}, "AccountIds")
    assert "'100000 entries' is more than 1000" in message


# --- actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(USE_ACTIONS))
def test_every_use_action_is_accepted_in_any_case(action: str) -> None:
    assert parse(Actions=[action.lower()]).actions == (action,)
    assert parse(Actions=[action.upper()]).actions == (action,)


def test_actions_are_canonicalised_then_deduplicated() -> None:
    spec = parse(Actions=["kms:decrypt", "KMS:ENCRYPT", "kms:Decrypt", "kms:generatedatakey*"])
    assert spec.actions == ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*")


@pytest.mark.parametrize(
    ("action", "why"),
    [
        ("kms:*", "only key use actions"),
        ("kms:PutKeyPolicy", "only key use actions"),
        ("kms:putkeypolicy", "only key use actions"),
        ("kms:ScheduleKeyDeletion", "only key use actions"),
        ("kms:DisableKey", "only key use actions"),
        ("kms:Decrypt*", "only key use actions"),
        ("kms:Enc*", "only key use actions"),
        ("kms:CreateGrant", "grant action"),
        ("kms:listgrants", "grant action"),
        ("kms:RevokeGrant", "grant action"),
        ("s3:GetObject", "not a KMS use action"),
        ("*", "not a KMS use action"),
        ("kms: Decrypt", "only key use actions"),
        (" kms:Decrypt", "not a KMS use action"),
        ("", "not a KMS use action"),
    ],
)
def test_refused_actions_say_why(action: str, why: str) -> None:
    message = refused({"Actions": ["kms:Decrypt", action]}, "Actions")
    assert why in message


@pytest.mark.parametrize("value", [[], "kms:Decrypt", 3, {"kms:Decrypt": 1}, ["kms:Decrypt", 1]])
def test_actions_must_be_a_non_empty_list_of_strings(value: object) -> None:
    refused({"Actions": value}, "Actions")


def test_case_spellings_of_one_action_do_not_exhaust_the_limit() -> None:
    # More spellings than there are use actions: the limit must not be the number of actions.
    spellings = sorted(_case_variants("kms:decrypt"))[: len(USE_ACTIONS) + 1]
    assert parse(Actions=spellings).actions == ("kms:Decrypt",)
    message = refused({"Actions": sorted(_case_variants("kms:decrypt"))}, "Actions")
    assert "'1024 entries' is more than" in message


def _case_variants(text: str) -> list[str]:
    variants = [""]
    for char in text:
        variants = [v + c for v in variants for c in {char.lower(), char.upper()}]
    return variants


# --- principal mode and role names --------------------------------------------------------------


@pytest.mark.parametrize("mode", list(PrincipalMode))
def test_principal_modes(mode: PrincipalMode) -> None:
    assert parse(PrincipalMode=mode.value).principal_mode is mode


@pytest.mark.parametrize(
    "value", ["accounts", "ACCOUNTS", "orgpaths", "Org Paths", "", 1, ["Auto"]]
)
def test_principal_mode_is_exact(value: object) -> None:
    message = refused({"PrincipalMode": value}, "PrincipalMode")
    assert "Accounts, OrgPaths, Auto" in message


@pytest.mark.parametrize(
    "name",
    ["Admin", "path/to/Role", "/path/to/Role/", "svc+role=x,y.z@w-1_2", "R" * 64, "a/" * 10 + "R"],
)
def test_role_names_with_paths_are_accepted(name: str) -> None:
    assert parse(RoleNames=[name]).role_names == (name,)


@pytest.mark.parametrize(
    "name",
    [
        "*",
        "Admin*",
        "Adm?n",
        "path/*",
        "a b",
        "",
        "/",
        "a//b",
        "R" * 65,
        f"arn:aws:iam::{ACCOUNT}:role/Admin",
        "Rôle",
        "Admin\n",
        "Admin\x00",
    ],
)
def test_role_names_with_wildcards_or_odd_characters_are_refused(name: str) -> None:
    message = refused({"RoleNames": [name]}, "RoleNames")
    assert "is not a role name" in message


def test_role_name_paths_are_bounded_as_iam_bounds_them() -> None:
    # IAM: a path of at most 512 characters counting its two outer slashes.
    longest = "p" * 510 + "/Role"
    assert parse(RoleNames=[longest]).role_names == (longest,)
    assert parse(RoleNames=["/" + longest]).role_names == ("/" + longest,)
    refused({"RoleNames": ["p" * 511 + "/Role"]}, "RoleNames")
    refused({"RoleNames": ["a/" * 300 + "Role"]}, "RoleNames")
    refused({"RoleNames": ["path/" + "R" * 65]}, "RoleNames")


# --- organizations role -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arn",
    [
        ROLE_ARN,
        f"arn:aws:iam::{ACCOUNT}:role/path/to/Reader",
        f"arn:aws-cn:iam::{ACCOUNT}:role/Reader",
        f"arn:aws-us-gov:iam::{ACCOUNT}:role/Reader+=,.@-_",
    ],
)
def test_organizations_role_arns_are_accepted(arn: str) -> None:
    assert parse(OrganizationsRoleArn=arn).organizations_role_arn == arn


@pytest.mark.parametrize(
    "arn",
    [
        "OrgReader",
        f"arn:aws:iam::{ACCOUNT}:user/Reader",
        f"arn:aws:iam::{ACCOUNT[:-1]}:role/Reader",
        f"arn:aws:iam::{ACCOUNT}:role/",
        f"arn:aws:iam::{ACCOUNT}:role/*",
        f"arn:aws:iam::{ACCOUNT}:role/Reader ",
        f"arn:aws:iam::{ACCOUNT}:role/Reader\n",
        f"arn:aws:iam::{ACCOUNT}:role/Rôle",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/Reader/session",
        f"arn:aws:iam:us-east-1:{ACCOUNT}:role/Reader",
        5,
        True,
        [ROLE_ARN],
    ],
)
def test_malformed_organizations_role_arns_are_refused(arn: object) -> None:
    message = refused({"OrganizationsRoleArn": arn}, "OrganizationsRoleArn")
    assert "is not an IAM role ARN" in message


@pytest.mark.parametrize("value", [[], {}, False, 0])
def test_falsy_non_string_organizations_role_arns_are_refused(value: object) -> None:
    refused({"OrganizationsRoleArn": value}, "OrganizationsRoleArn")


# --- conditions ---------------------------------------------------------------------------------


def test_condition_values_are_normalised_to_string_tuples() -> None:
    spec = parse(
        Conditions={
            "StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"},
            "StringLike": {"kms:EncryptionContext:app": ["a*", "b*", "a*"]},
            "Bool": {"aws:SecureTransport": True, "aws:ViaAWSService": "false"},
            "NumericLessThan": {"aws:MultiFactorAuthAge": 3600, "kms:KeySpec": 1.5},
        }
    )
    assert spec.conditions == {
        "StringEquals": {"kms:ViaService": ("s3.us-east-1.amazonaws.com",)},
        "StringLike": {"kms:EncryptionContext:app": ("a*", "b*")},
        "Bool": {"aws:SecureTransport": ("true",), "aws:ViaAWSService": ("false",)},
        "NumericLessThan": {"aws:MultiFactorAuthAge": ("3600",), "kms:KeySpec": ("1.5",)},
    }


@pytest.mark.parametrize(
    "operator",
    [
        "StringEqualsIfExists",
        "ForAnyValue:StringLike",
        "ForAllValues:StringEquals",
        "ForAnyValue:StringEqualsIgnoreCaseIfExists",
        "ArnLike",
        "IpAddress",
        "NotIpAddress",
        "DateGreaterThan",
        "BinaryEquals",
        "NumericGreaterThanEqualsIfExists",
        "Null",
    ],
)
def test_condition_operators_with_qualifiers_are_accepted(operator: str) -> None:
    spec = parse(Conditions={operator: {"aws:RequestTag/team": ["a", "b"]}})
    assert spec.conditions == {operator: {"aws:RequestTag/team": ("a", "b")}}


def test_no_conditions_is_the_same_as_an_empty_map() -> None:
    assert parse(Conditions={}).conditions == parse().conditions == {}


@pytest.mark.parametrize("operator", ["StringEquals", "ForAnyValue:StringLike", "Null", "ArnLike"])
@pytest.mark.parametrize(
    "key",
    [
        "aws:PrincipalOrgID",
        "aws:principalorgid",
        "AWS:PRINCIPALORGID",
        "aws:PrincipalOrgPaths",
        "aws:PrincipalAccount",
        "aws:PrincipalArn",
        "AWS:principalarn",
        "Aws:PrincipalAccount",
    ],
)
def test_reserved_condition_keys_are_refused_in_any_case(operator: str, key: str) -> None:
    message = refused({"Conditions": {operator: {key: "x"}}}, f"Conditions.{operator}")
    assert "is set by this resource" in message


@pytest.mark.parametrize(
    "key", ["kms:GrantIsForAWSResource", "kms:grantisforawsresource", "KMS:GrantIsForAwsResource"]
)
def test_the_grant_restriction_key_is_refused_in_any_case(key: str) -> None:
    message = refused({"Conditions": {"Bool": {key: "false"}}}, "Conditions.Bool")
    assert "AllowGrants" in message


def test_one_condition_key_in_two_spellings_is_refused() -> None:
    block = {"aws:RequestTag/Env": "prod", "aws:requesttag/env": "dev"}
    message = refused({"Conditions": {"StringEquals": block}}, "Conditions.StringEquals")
    assert "aws:requesttag/env" in message and "aws:RequestTag/Env" in message
    # The same key under two operators is two conditions, as IAM reads them.
    spec = parse(
        Conditions={
            "StringEquals": {"aws:RequestTag/Env": "prod"},
            "StringLike": {"aws:requesttag/env": "p*"},
        }
    )
    assert set(spec.conditions) == {"StringEquals", "StringLike"}


@pytest.mark.parametrize(
    "key", ["aws:Pr\u0131nc\u0131palOrgID", "aw\u017f:PrincipalArn", "\u212ams:ViaService"]
)
def test_condition_keys_with_look_alike_letters_are_refused(key: str) -> None:
    refused({"Conditions": {"StringEquals": {key: "x"}}}, "Conditions.StringEquals")


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("kms:Via\u202eService", []),
        ("\x1b[2J", None),
        ("bad\nkey", [["nested"]]),
        ("aws:PrincipalOrgID", []),
    ],
)
def test_condition_keys_are_checked_before_their_values(key: str, values: object) -> None:
    message = refused({"Conditions": {"StringEquals": {key: values}}}, "Conditions.StringEquals")
    assert "is not a condition key" in message or "is set by this resource" in message


@pytest.mark.parametrize(
    "value", ["StringEquals", ["StringEquals"], 1, True, [{"StringEquals": {}}]]
)
def test_conditions_must_be_a_map(value: object) -> None:
    message = refused({"Conditions": value}, "Conditions")
    assert "is not a map" in message


@pytest.mark.parametrize(
    "operator",
    ["StringEqual", "stringequals", "STRINGEQUALS", "ForAnyValue:Null", "NullIfExists", "Foo", ""],
)
def test_unknown_condition_operators_are_refused(operator: str) -> None:
    message = refused({"Conditions": {operator: {"kms:ViaService": "x"}}}, "Conditions")
    assert "is not an IAM condition operator" in message


@pytest.mark.parametrize("entries", [{}, "kms:ViaService", ["kms:ViaService"], None, 1])
def test_operator_blocks_must_be_non_empty_maps(entries: object) -> None:
    message = refused({"Conditions": {"StringEquals": entries}}, "Conditions.StringEquals")
    assert "is not a map of keys" in message


@pytest.mark.parametrize(
    "key", ["ViaService", "", ":x", "kms:", "k:x", "kms:Via*", "kms:Via\nService", "a" * 33 + ":x"]
)
def test_malformed_condition_keys_are_refused(key: str) -> None:
    message = refused({"Conditions": {"StringEquals": {key: "x"}}}, "Conditions.StringEquals")
    assert "is not a condition key" in message


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([], "needs 1 to 50 values"),
        ([str(n) for n in range(51)], "needs 1 to 50 values"),
        (None, "is not a string value"),
        ([["nested"]], "is not a string value"),
        ({"a": "b"}, "is not a string value"),
        ("x" * 1025, "is not a string value"),
        ("a\x00b", "holds characters a key policy cannot"),
        ("\u202eevil", "holds characters a key policy cannot"),
        (["ok", "tab\there"], "holds characters a key policy cannot"),
        ("\u65e5\u672c", "holds characters a key policy cannot"),
        ("\x7f", "holds characters a key policy cannot"),
        ("\x85", "holds characters a key policy cannot"),
    ],
)
def test_malformed_condition_values_are_refused(values: object, problem: str) -> None:
    prop = "Conditions.StringEquals.kms:ViaService"
    message = refused({"Conditions": {"StringEquals": {"kms:ViaService": values}}}, prop)
    assert problem in message


def test_latin1_condition_values_are_kept_as_written() -> None:
    spec = parse(Conditions={"StringEquals": {"aws:RequestTag/team": ["caf\xe9", "\xa0x\xff"]}})
    assert spec.conditions == {"StringEquals": {"aws:RequestTag/team": ("caf\xe9", "\xa0x\xff")}}


def test_condition_limits() -> None:
    twenty = {f"aws:RequestTag/t{n}": "v" for n in range(20)}
    assert len(parse(Conditions={"StringEquals": twenty}).conditions["StringEquals"]) == 20
    many = {"StringEquals": twenty, "StringLike": {"kms:ViaService": "x"}}
    message = refused({"Conditions": many}, "Conditions")
    assert "'21 keys' is more than 20" in message
    fifty = [str(n) for n in range(50)]
    spec = parse(Conditions={"StringEquals": {"kms:ViaService": fifty}})
    assert len(spec.conditions["StringEquals"]["kms:ViaService"]) == 50


# --- the whole map and unknown properties -------------------------------------------------------


@pytest.mark.parametrize("raw", [None, [], "KeyIds", 5, [{"KeyIds": [KEY]}]])
def test_properties_must_be_a_map(raw: object) -> None:
    message = refused(raw, "ResourceProperties", base=False)
    assert "is not a map" in message


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("KeyID", "did you mean KeyIds?"),
        ("keyids", "did you mean KeyIds?"),
        ("Keys", "did you mean KeyIds?"),
        ("OrganisationalUnitIds", "did you mean OrganizationalUnitIds?"),
        ("Action", "did you mean Actions?"),
        ("Foo", "known properties: KeyIds, "),
        ("x" * 10_000, "known properties: KeyIds, "),
        ("Key\u202eIds", "did you mean KeyIds?"),
    ],
)
def test_unknown_properties_are_refused_with_a_hint(name: str, hint: str) -> None:
    message = refused({name: "anything"}, "Properties")
    assert hint in message
    assert len(message) <= MAX_REASON


def test_unknown_properties_are_refused_even_when_everything_else_is_valid() -> None:
    refused({"KeyIds": [KEY], "AccountIds": [MEMBER], "keyids": [KEY]}, "Properties", base=False)


# --- key_refs_leniently -------------------------------------------------------------------------


def test_lenient_key_refs_keep_the_well_formed_entries_in_order() -> None:
    raw = {
        "KeyIds": [ALIAS, 5, "bogus", KEY, None, ALIAS, "alias/aws/s3", KEY_ARN, ["x"]],
        "Whatever": 1,
    }
    refs = key_refs_leniently(raw)
    assert [ref.text for ref in refs] == [ALIAS, KEY, "alias/aws/s3", KEY_ARN]
    assert refs == tuple(parse_key_ref(ref.text) for ref in refs)


@pytest.mark.parametrize(
    "raw", [None, [], "x", {}, {"KeyIds": KEY}, {"KeyIds": {KEY: KEY}}, {"KeyIds": None}]
)
def test_lenient_key_refs_of_unusable_properties_are_empty(raw: object) -> None:
    assert key_refs_leniently(raw) == ()


# --- errors.shown and errors.clip ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "'abc'"),
        ("", "''"),
        (5, "'5'"),
        (None, "'None'"),
        (["a"], "'['a']'"),
        ("a\x00b", "'a\\x00b'"),
        ("line\nbreak", "'line\\x0abreak'"),
        ("\x7f", "'\\x7f'"),
        ("\u202eabc", "'\\u202eabc'"),
        ("\u0661\u0662", "'\\u0661\\u0662'"),
        ("\U0001f600", "'\\U0001f600'"),
        ("\ud800", "'\\ud800'"),
    ],
)
def test_shown_escapes_everything_but_printable_ascii(value: object, expected: str) -> None:
    assert shown(value) == expected


def test_shown_shortens_long_values_in_the_middle() -> None:
    assert shown("x" * 90) == f"'{'x' * 90}'"
    assert shown("a" * 50 + "b" * 50) == f"'{'a' * 29}...{'a' * 8}{'b' * 50}'"
    assert shown("abcdefghijkl", limit=8) == "'a...ijkl'"
    assert len(shown("\u202e" * 1000)) == 92
    # Two key ARNs that differ only at the end stay told apart.
    arn = "arn:aws:kms:us-east-1:123456789012:key/"
    assert shown(arn + "a" * 36 + "/x" * 10).endswith("/x/x/x/x/x/x/x/x/x/x'")


def test_clip_keeps_the_start_and_stays_within_the_limit() -> None:
    assert clip("x" * 255) == "x" * 255
    assert clip("x" * 256) == "x" * 252 + "..."
    assert clip("") == ""
    assert len(clip("y" * 100_000)) == MAX_REASON


def test_invalid_property_error_formats_property_value_problem_and_fix() -> None:
    error = InvalidPropertyError("KeyIds", "a\nb", "is bad", "fix it")
    assert str(error) == "KeyIds: 'a\\x0ab' is bad; fix it"
    assert error.prop == "KeyIds"
    assert str(InvalidPropertyError("DryRun", 1, "is odd")) == "DryRun: '1' is odd"
    assert len(str(InvalidPropertyError("P", "v", "x" * 1000, "y" * 1000))) == MAX_REASON


# --- property tests -----------------------------------------------------------------------------

# Text that includes what JSON can carry and Python's default text strategy leaves out: lone
# surrogates, control and format characters.
hostile_text = st.sampled_from(
    ["", " ", "\x00", "\n", "\x1b[2J", "\u202e", "\ud800", "\ufeff", "'; DROP", "${AWS::Region}"]
)
any_text = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(exclude_categories=()), max_size=30),
    st.sampled_from(["true", "True", "false", "Auto", "kms:Decrypt", "kms:ViaService"]),
    hostile_text,
    st.builds(
        str.__add__, st.sampled_from(["kms:Via", "alias/", "ou-ab12-", "1234"]), hostile_text
    ),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(any_text, children, max_size=6),
    ),
    max_leaves=25,
)

uuids = st.uuids().map(str)
mrks = st.from_regex(r"mrk-[0-9a-f]{32}", fullmatch=True)
aliases = st.from_regex(r"alias/[a-zA-Z0-9/_-]{1,40}", fullmatch=True).filter(
    lambda a: not a.startswith("alias/aws/")
)
regions = st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1"])
valid_accounts = st.from_regex(r"[0-9]{12}", fullmatch=True)
key_texts = st.one_of(
    uuids,
    mrks,
    aliases,
    st.builds(lambda r, a, k: f"arn:aws:kms:{r}:{a}:key/{k}", regions, valid_accounts, uuids),
    st.builds(lambda r, a, n: f"arn:aws:kms:{r}:{a}:{n}", regions, valid_accounts, aliases),
)
valid_ous = st.from_regex(r"ou-[0-9a-z]{4,8}-[0-9a-z]{8,12}", fullmatch=True)
valid_roots = st.from_regex(r"r-[0-9a-z]{4,8}", fullmatch=True)
valid_units = st.one_of(valid_ous, valid_roots)
valid_actions = st.sampled_from(sorted(USE_ACTIONS))
condition_operators = st.sampled_from(
    ["StringEquals", "ForAnyValue:StringLike", "BoolIfExists", "Null", "NumericLessThan"]
)
condition_keys = st.sampled_from(
    ["kms:ViaService", "aws:RequestTag/team", "kms:EncryptionContext:app", "aws:SourceVpc"]
)
condition_values = st.one_of(
    st.text(st.characters(codec="ascii", min_codepoint=32, max_codepoint=126), max_size=20),
    st.booleans(),
    st.integers(),
)


def _almost_valid(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A property value that is usually valid, sometimes not: it reaches the deeper checks."""
    return st.one_of(
        st.lists(valid, max_size=5),
        st.lists(st.one_of(valid, json_scalars), max_size=5),
        json_values,
    )


property_values: dict[str, st.SearchStrategy[Any]] = {
    "KeyIds": _almost_valid(key_texts),
    "OrganizationalUnitIds": _almost_valid(valid_units),
    "AccountIds": _almost_valid(valid_accounts),
    "ExcludeAccountIds": _almost_valid(valid_accounts),
    "IncludeNestedOUs": st.one_of(st.sampled_from(["true", "false", True, False]), json_values),
    "Actions": _almost_valid(valid_actions),
    "AllowGrants": st.one_of(st.sampled_from(["True", "False", True]), json_values),
    "PrincipalMode": st.one_of(st.sampled_from([m.value for m in PrincipalMode]), json_values),
    "RoleNames": _almost_valid(st.from_regex(r"[A-Za-z0-9/+=,.@_-]{1,20}", fullmatch=True)),
    "Conditions": st.one_of(
        st.dictionaries(
            condition_operators,
            st.dictionaries(
                st.one_of(
                    condition_keys,
                    st.sampled_from(sorted(RESERVED_CONDITION_KEYS)),
                    any_text,
                ),
                st.one_of(
                    condition_values,
                    st.lists(condition_values, max_size=3),
                    st.lists(st.one_of(condition_values, json_values), max_size=3),
                    json_values,
                ),
                max_size=3,
            ),
            max_size=3,
        ),
        st.dictionaries(any_text, json_values, max_size=3),
        json_values,
    ),
    "OrganizationsRoleArn": st.one_of(
        st.builds(lambda a: f"arn:aws:iam::{a}:role/R", valid_accounts), json_values
    ),
    "DryRun": st.one_of(st.sampled_from(["false", False]), json_values),
    "ServiceToken": json_values,
    "ServiceTimeout": json_values,
}
property_maps = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from([*KNOWN, *PASSED_THROUGH, "KeyID", "keyids"]), json_values),
    st.fixed_dictionaries({}, optional=property_values),
    st.fixed_dictionaries(
        {
            "KeyIds": st.lists(key_texts, min_size=1, max_size=3),
            "AccountIds": st.lists(valid_accounts, min_size=1, max_size=3),
        },
        optional={
            name: strategy
            for name, strategy in property_values.items()
            if name not in ("KeyIds", "AccountIds")
        },
    ),
)


def _check_spec(spec: Spec) -> None:
    """What every accepted spec must satisfy, whatever the input was."""
    assert 1 <= len(spec.key_refs) <= 50
    assert all(parse_key_ref(ref.text) == ref for ref in spec.key_refs)
    assert not any(ref.is_aws_managed_alias for ref in spec.key_refs)
    assert spec.ou_ids or spec.account_ids
    assert all(OU_ID.fullmatch(u) or ROOT_ID.fullmatch(u) for u in spec.ou_ids)
    assert all(ACCOUNT_ID.fullmatch(a) for a in (*spec.account_ids, *spec.exclude_account_ids))
    assert spec.actions
    assert set(spec.actions) <= USE_ACTIONS
    for keys in spec.conditions.values():
        for key, values in keys.items():
            assert key.lower() not in RESERVED_CONDITION_KEYS
            assert values
            assert all(isinstance(value, str) and _latin1_printable(value) for value in values)
    for name in spec.role_names:
        assert "*" not in name
        assert "?" not in name


def _latin1_printable(text: str) -> bool:
    # What KMS accepts in a policy document: printable ASCII and the printable Latin-1 range.
    return all(" " <= ch <= "~" or "\xa0" <= ch <= "\xff" for ch in text)


def _check_error(error: InvalidPropertyError) -> None:
    message = str(error)
    assert len(message) < 256, message
    assert set(message) <= PRINTABLE_ASCII, message
    assert any(name in message for name in PROPERTY_NAMES), message
    assert error.prop in PROPERTY_NAMES or error.prop.startswith("Conditions."), error.prop
    assert message.startswith(f"{error.prop}: ") or len(error.prop) > 200


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(raw=property_maps)
def test_parse_properties_accepts_or_refuses_cleanly_anything(raw: object) -> None:
    try:
        spec = parse_properties(raw)
    except InvalidPropertyError as error:
        _check_error(error)
    else:
        assert isinstance(spec, Spec)
        _check_spec(spec)


one_property_changed = st.sampled_from(sorted(property_values)).flatmap(
    lambda name: st.tuples(st.just(name), property_values[name])
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(change=one_property_changed)
def test_one_arbitrary_property_among_valid_ones_is_accepted_or_refused_cleanly(
    change: tuple[str, Any],
) -> None:
    # Properties are checked in turn: over otherwise valid ones, every checker gets reached.
    name, value = change
    raw = {"KeyIds": [KEY, ALIAS], "OrganizationalUnitIds": [OU], "AccountIds": [MEMBER]}
    raw[name] = value
    try:
        spec = parse_properties(raw)
    except InvalidPropertyError as error:
        _check_error(error)
        assert name in str(error) or error.prop == "OrganizationalUnitIds", str(error)
    else:
        _check_spec(spec)


@settings(max_examples=300, deadline=None)
@given(
    operator=st.one_of(condition_operators, any_text),
    key=st.one_of(condition_keys, any_text),
    values=st.one_of(json_values, st.lists(any_text, max_size=3)),
)
def test_condition_blocks_of_any_content_are_accepted_or_refused_cleanly(
    operator: str, key: str, values: object
) -> None:
    raw = {"KeyIds": [KEY], "AccountIds": [MEMBER], "Conditions": {operator: {key: values}}}
    try:
        spec = parse_properties(raw)
    except InvalidPropertyError as error:
        _check_error(error)
        assert error.prop.startswith("Conditions")
    else:
        _check_spec(spec)
        assert spec.conditions == {operator: {key: spec.conditions[operator][key]}}


@settings(max_examples=100, deadline=None)
@given(raw=property_maps)
def test_lenient_key_refs_never_fail(raw: object) -> None:
    refs = key_refs_leniently(raw)
    assert len(set(refs)) == len(refs)
    assert all(parse_key_ref(ref.text) == ref for ref in refs)


@settings(max_examples=300, deadline=None)
@given(text=any_text)
def test_parse_key_ref_classifies_or_declines_any_text(text: str) -> None:
    ref = parse_key_ref(text)
    assert ref is None or (ref.text == text and text.isascii() and text.isprintable())


@settings(max_examples=200, deadline=None)
@given(value=json_values, limit=st.integers(min_value=4, max_value=200))
def test_shown_is_always_short_quoted_printable_ascii(value: object, limit: int) -> None:
    text = shown(value, limit)
    assert text.startswith("'")
    assert text.endswith("'")
    assert len(text) <= limit + 2
    assert set(text) <= PRINTABLE_ASCII


def _with_duplicates(items: list[str], picks: list[int], seed: int) -> list[str]:
    """``items`` with some entries repeated, shuffled deterministically: the input as written."""
    repeated = items + [items[p % len(items)] for p in picks] if items else []
    order = sorted(range(len(repeated)), key=lambda i: (i * 7919 + seed) % (len(repeated) + 1))
    return [repeated[i] for i in order]


@settings(max_examples=120, deadline=None)
@given(
    keys=st.lists(key_texts, min_size=1, max_size=12),
    units=st.lists(valid_units, max_size=12),
    accounts=st.lists(valid_accounts, max_size=12),
    excluded=st.lists(valid_accounts, max_size=6),
    actions=st.lists(valid_actions, min_size=1, max_size=8),
    picks=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
    seed=st.integers(min_value=0, max_value=10_000),
    action_case=st.sampled_from([str.lower, str.upper, str.swapcase, str]),
)
def test_valid_generated_specs_round_trip(
    keys: list[str],
    units: list[str],
    accounts: list[str],
    excluded: list[str],
    actions: list[str],
    picks: list[int],
    seed: int,
    action_case: Any,
) -> None:
    if not units and not accounts:
        accounts = ["000000000001"]
    written_keys = _with_duplicates(keys, picks, seed)
    written_units = _with_duplicates(units, picks, seed)
    written_accounts = _with_duplicates(accounts, picks, seed)
    raw = {
        "KeyIds": written_keys,
        "OrganizationalUnitIds": written_units,
        "AccountIds": written_accounts,
        "ExcludeAccountIds": excluded,
        "Actions": [action_case(action) for action in actions],
    }
    spec = parse_properties(raw)
    assert [ref.text for ref in spec.key_refs] == list(dict.fromkeys(written_keys))
    assert spec.ou_ids == tuple(dict.fromkeys(written_units))
    assert spec.account_ids == tuple(dict.fromkeys(written_accounts))
    assert spec.exclude_account_ids == frozenset(excluded)
    assert spec.actions == tuple(dict.fromkeys(actions))
    assert spec.key_refs == tuple(parse_key_ref(text) for text in dict.fromkeys(written_keys))


@settings(max_examples=150, deadline=None)
@given(
    block=st.dictionaries(
        condition_operators,
        st.dictionaries(
            condition_keys, st.one_of(condition_values, st.lists(condition_values, min_size=1))
        ).filter(bool),
        max_size=3,
    )
)
def test_valid_conditions_round_trip_as_strings(block: dict[str, dict[str, Any]]) -> None:
    spec = parse(Conditions=block)

    def as_text(value: object) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    expected = {
        operator: {
            key: tuple(
                dict.fromkeys(
                    as_text(v) for v in (values if isinstance(values, list) else [values])
                )
            )
            for key, values in keys.items()
        }
        for operator, keys in block.items()
    }
    assert spec.conditions == expected


def test_reason_shape_is_checked_by_the_helpers() -> None:
    # The fuzz test is only as good as its checks: a reason naming no property must fail them.
    with pytest.raises(AssertionError):
        _check_error(InvalidPropertyError("Nothing", "x", "is wrong"))
    with pytest.raises(AssertionError):
        _check_spec(Spec(key_refs=(), account_ids=(MEMBER,)))


@pytest.mark.parametrize("key", ["aws:PrincipalOrgID ", " aws:PrincipalArn", "kms:ViaService "])
def test_condition_keys_padded_with_spaces_are_refused(key: str) -> None:
    props = {
        "KeyIds": ["alias/x"],
        "AccountIds": ["123456789012"],
        "Conditions": {"StringEquals": {key: "v"}},
    }
    with pytest.raises(InvalidPropertyError, match="is not a condition key"):
        parse_properties(props)
