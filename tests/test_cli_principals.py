"""Inputs of ``simulate``: principals (file, options, the live organization) and key policies."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localaws.seed import SeededOrg
from orgkeypolicy.aws import KeyStore
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.lookups import OrganizationReader
from orgkeypolicy.cli.principals import (
    PrincipalRecord,
    context_from,
    organization_principals,
    policy_from_file,
    policy_from_key,
    principal,
    principals_from_file,
    role_name,
    with_context,
)
from orgkeypolicy.organization import Account, Unit, unit_path, walk

ORG = "o-abcdefghij"
ROOT = "r-ab12"
PROD = f"{ORG}/{ROOT}/ou-ab12-11111111/"


def test_principals_file(tmp_path: Path) -> None:
    path = tmp_path / "principals.json"
    path.write_text(
        json.dumps(
            [
                {
                    "arn": "arn:aws:iam::111122223333:role/app",
                    "org_id": ORG,
                    "org_paths": [PROD],
                    "context": {"aws:SourceVpc": "vpc-1", "kms:EncryptionContextKeys": ["a", "b"]},
                },
                {"arn": "arn:aws:iam::444455556666:root"},
            ]
        )
    )
    assert principals_from_file(path) == [
        PrincipalRecord(
            "arn:aws:iam::111122223333:role/app",
            ORG,
            (PROD,),
            {"aws:SourceVpc": ("vpc-1",), "kms:EncryptionContextKeys": ("a", "b")},
        ),
        PrincipalRecord("arn:aws:iam::444455556666:root"),
    ]
    assert principals_from_file(path)[0].to_json() == {
        "arn": "arn:aws:iam::111122223333:role/app",
        "org_id": ORG,
        "org_paths": [PROD],
        "context": {"aws:SourceVpc": ["vpc-1"], "kms:EncryptionContextKeys": ["a", "b"]},
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"arn": "x"}, "is not a non-empty list of principals"),
        ([], "is not a non-empty list of principals"),
        ([{"org_id": ORG}], "[0]: is not a map with an arn"),
        ([{"arn": "arn:aws:iam::111122223333:root", "orgid": ORG}], "unknown field 'orgid'"),
        ([{"arn": "111122223333"}], "is not an IAM principal ARN"),
        ([{"arn": "arn:aws:iam::111122223333:role/*"}], "is not an IAM principal ARN"),
        (
            [{"arn": "arn:aws:iam::111122223333:root", "org_id": "o-1"}],
            "org_id 'o-1' is not an organization ID",
        ),
        (
            [{"arn": "arn:aws:iam::111122223333:root", "org_id": ORG, "org_paths": [PROD[:-1]]}],
            "is not o-.../r-.../ou-.../ (with /)",
        ),
        (
            [
                {
                    "arn": "arn:aws:iam::111122223333:root",
                    "org_id": "o-zzzzzzzzzz",
                    "org_paths": [PROD],
                }
            ],
            "is not in organization o-zzzzzzzzzz",
        ),
        (
            [{"arn": "arn:aws:iam::111122223333:root", "context": {"SourceVpc": "v"}}],
            "[0].context: 'SourceVpc' is not a condition key",
        ),
        (
            [{"arn": "arn:aws:iam::111122223333:root", "context": {"aws:x": {"a": 1}}}],
            "[0].context.aws:x: {'a': 1} is not a value",
        ),
    ],
)
def test_principals_file_errors_name_the_entry(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "principals.json"
    path.write_text(json.dumps(content))
    with pytest.raises(CommandError) as raised:
        principals_from_file(path)
    assert message in str(raised.value)


def test_one_principal_from_options() -> None:
    record = principal("arn:aws:sts::111122223333:assumed-role/app/session", ORG, [PROD, PROD])
    assert record == PrincipalRecord(
        "arn:aws:sts::111122223333:assumed-role/app/session", ORG, (PROD,)
    )
    with pytest.raises(CommandError, match="--principal: org paths need the organization ID"):
        principal("arn:aws:iam::111122223333:root", None, [PROD])


def test_context_keys_are_case_insensitive_and_repeatable() -> None:
    context = context_from(
        [("aws:SourceVpc", "vpc-1"), ("AWS:sourcevpc", "vpc-2"), ("aws:SourceVpc", "vpc-1")]
    )
    assert context == {"aws:SourceVpc": ("vpc-1", "vpc-2")}
    with pytest.raises(CommandError, match="--context: 'novalue' is not a condition key"):
        context_from([("novalue", "x")])
    records = [
        PrincipalRecord("arn:aws:iam::111122223333:root", context={"aws:sourcevpc": ("old",)}),
        PrincipalRecord("arn:aws:iam::444455556666:root", context={"kms:ViaService": ("s3",)}),
    ]
    assert [r.context for r in with_context(records, context)] == [
        {"aws:SourceVpc": ("vpc-1", "vpc-2")},
        {"kms:ViaService": ("s3",), "aws:SourceVpc": ("vpc-1", "vpc-2")},
    ]


def test_role_names() -> None:
    assert role_name("ops/Admin") == "ops/Admin"
    assert role_name("/ops/Admin/") == "ops/Admin"
    with pytest.raises(CommandError, match="--role 'Adm\\*': is not a role name"):
        role_name("Adm*")


class Organization:
    """An organization over plain data: ``children`` maps each unit to its child units."""

    def __init__(self, children: dict[str, list[str]], accounts: dict[str, list[Account]]) -> None:
        self.children = children
        self.by_parent = accounts

    def organization_id(self) -> str:
        return ORG

    def root_id(self) -> str:
        return ROOT

    def child_units(self, parent_id: str) -> list[Unit]:
        return [Unit(child) for child in self.children.get(parent_id, [])]

    def accounts(self, parent_id: str) -> list[Account]:
        return list(self.by_parent.get(parent_id, []))


units = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.lists(st.integers(min_value=0, max_value=n), min_size=n, max_size=n)
)


@settings(max_examples=60, deadline=None)
@given(units, st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=15))
def test_each_account_gets_the_path_of_the_unit_it_sits_in(
    parents: list[int], placements: list[tuple[int, bool]]
) -> None:
    # Unit i+1 hangs below unit parents[i] % (i+1) (unit 0 is the root): always a tree.
    names = [ROOT] + [f"ou-ab12-{i:08d}" for i in range(1, len(parents) + 1)]
    parent_of = {names[i + 1]: names[parents[i] % (i + 1)] for i in range(len(parents))}
    children: dict[str, list[str]] = {}
    for child, parent in parent_of.items():
        children.setdefault(parent, []).append(child)
    accounts: dict[str, list[Account]] = {}
    for index, (unit, active) in enumerate(placements):
        state = "ACTIVE" if active else "SUSPENDED"
        accounts.setdefault(names[unit % len(names)], []).append(Account(f"{index:012d}", state))

    def path(unit: str) -> str:
        chain = [unit]
        while chain[0] in parent_of:
            chain.insert(0, parent_of[chain[0]])
        return unit_path(ORG, chain)

    expected = [
        PrincipalRecord(f"arn:aws:iam::{account.id}:root", ORG, (path(unit),))
        for unit, found in accounts.items()
        for account in found
        if account.active
    ]
    records = organization_principals(Organization(children, accounts), partition="aws")
    assert records == sorted(expected, key=lambda record: record.arn)


def test_roles_and_paths_given_by_the_api() -> None:
    class WithPaths(Organization):
        def child_units(self, parent_id: str) -> list[Unit]:
            return [
                Unit(child, f"{ORG}/{ROOT}/{child}/") for child in self.children.get(parent_id, [])
            ]

    organization = WithPaths(
        {ROOT: ["ou-ab12-11111111"]},
        {
            ROOT: [Account("000000000001", "ACTIVE")],
            "ou-ab12-11111111": [Account("000000000002", "ACTIVE")],
        },
    )
    records = organization_principals(
        organization, partition="aws-cn", roles=["ops/Admin", "Reader"]
    )
    assert [(r.arn, r.org_paths) for r in records] == [
        ("arn:aws-cn:iam::000000000001:role/ops/Admin", (f"{ORG}/{ROOT}/",)),
        ("arn:aws-cn:iam::000000000001:role/Reader", (f"{ORG}/{ROOT}/",)),
        ("arn:aws-cn:iam::000000000002:role/ops/Admin", (PROD,)),
        ("arn:aws-cn:iam::000000000002:role/Reader", (PROD,)),
    ]


def test_paths_need_a_walk_from_the_root() -> None:
    organization = Organization(
        {"ou-ab12-11111111": []}, {"ou-ab12-11111111": [Account("000000000002", "ACTIVE")]}
    )
    tree = walk(organization, ["ou-ab12-11111111"], include_nested=True, max_workers=2)
    with pytest.raises(ValueError, match="did not start at the root"):
        tree.principal_org_path(ORG, "000000000002")


def test_the_live_organization(demo_org: SeededOrg) -> None:
    reader = OrganizationReader(boto3.Session(), "aws", pool=4)
    progress: list[tuple[int, int]] = []
    records = organization_principals(
        reader,
        partition="aws",
        roles=["Admin"],
        progress=lambda done, total: progress.append((done, total)),
    )
    by_account = {record.arn.split(":")[4]: record for record in records}
    active = demo_org.accounts_under("Root")
    assert set(by_account) == active
    assert demo_org.accounts["prod-closed"] not in by_account
    for record in records:
        assert record.org_id == demo_org.org_id
        assert record.arn.endswith(":role/Admin")
    prod_a = by_account[demo_org.accounts["prod-a"]]
    assert prod_a.org_paths == (demo_org.ou_path("Prod"),)
    assert by_account[demo_org.accounts["crit-a"]].org_paths == (demo_org.ou_path("Critical"),)
    assert by_account[demo_org.management_account_id].org_paths == (demo_org.ou_path("Root"),)
    assert progress[-1][0] == progress[-1][1] == 2 * (len(demo_org.ous) + 1)


def test_policy_from_a_key(demo_org: SeededOrg) -> None:
    store = KeyStore(boto3.Session(), pool=2)
    for ref in (
        "alias/demo-logs",
        demo_org.key_arn("logs"),
        demo_org.key_arn("logs").split("/")[-1],
    ):
        arn, policy = policy_from_key(store, ref)
        assert arn == demo_org.key_arn("logs")
        assert policy == demo_org.original_policies[arn]
    with pytest.raises(CommandError, match="--key alias/nope: no such key or alias"):
        policy_from_key(store, "alias/nope")
    with pytest.raises(CommandError, match="--key logs: is not a key ID"):
        policy_from_key(store, "logs")


def test_policy_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}
    path.write_text(json.dumps(policy))
    assert policy_from_file(path) == policy
    path.write_text(json.dumps({"Version": "2012-10-17"}))
    with pytest.raises(CommandError, match="is not a policy document"):
        policy_from_file(path)
