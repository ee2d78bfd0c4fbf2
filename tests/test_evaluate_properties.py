"""The evaluator agrees with what the statement builder means to grant.

For generated organizations and resource specs (every principal mode, nested or not, role
names, conditions, excluded accounts, accounts outside the named units, grants), the managed
statements are merged into a key policy beside foreign statements; then every account of the
organization, and accounts outside it, are evaluated for every KMS action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orgkeypolicy import keypolicy
from orgkeypolicy.evaluation import (
    KMS_ACTIONS,
    Answer,
    Decision,
    Principal,
    compile_policy,
    evaluate_matrix,
)
from orgkeypolicy.properties import GRANT_ACTIONS, USE_ACTIONS, PrincipalMode, parse_properties
from orgkeypolicy.statements import Grantees, build_statements, sid_prefix

ORG = "o-a1b2c3d4e5"
ROOT = "r-ab12"
KEY_ACCOUNT = "111122223333"
KEY_ARN = f"arn:aws:kms:us-east-1:{KEY_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PREFIX = sid_prefix("arn:aws:cloudformation:us-east-1:111122223333:stack/s/uuid", "Share")
FOREIGN = [
    {
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{KEY_ACCOUNT}:root"},
        "Action": "kms:*",
        "Resource": "*",
    },
    {
        "Sid": "AllowCloudTrailEncrypt",
        "Effect": "Allow",
        "Principal": {"Service": "cloudtrail.amazonaws.com"},
        "Action": "kms:GenerateDataKey*",
        "Resource": "*",
    },
    {
        "Sid": "DenyOutsideTls",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:*",
        "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    },
]
# Conditions a resource may add, each with request values that satisfy it and that do not.
CONDITIONS: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, str]]] = {
    "region": (
        {"StringEquals": {"aws:RequestedRegion": ["us-east-1", "eu-west-1"]}},
        {"aws:RequestedRegion": "eu-west-1"},
        {"aws:RequestedRegion": "ap-south-1"},
    ),
    "team": (
        {"StringLike": {"aws:PrincipalTag/team": "blue*"}},
        {"aws:PrincipalTag/team": "blue-green"},
        {"aws:PrincipalTag/team": "red"},
    ),
    "network": (
        {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}, "Bool": {"aws:SecureTransport": "true"}},
        {"aws:SourceIp": "203.0.113.8"},
        {"aws:SourceIp": "198.51.100.8"},
    ),
}
ROLE_NAMES = ("App", "team/Deployer")


@dataclass(frozen=True)
class Organization:
    parents: dict[str, str]
    """Unit -> parent unit (the root has none)."""
    homes: dict[str, str]
    """Account -> the unit it sits in."""

    def path(self, unit: str) -> str:
        chain = [unit]
        while chain[-1] in self.parents:
            chain.append(self.parents[chain[-1]])
        return "/".join((ORG, *reversed(chain))) + "/"

    def below(self, unit: str, *, nested: bool) -> set[str]:
        units = {unit}
        if nested:
            units = {u for u in {*self.homes.values(), *self.parents} if self._under(u, unit)}
        return {account for account, home in self.homes.items() if home in units}

    def _under(self, unit: str, ancestor: str) -> bool:
        while unit != ancestor and unit in self.parents:
            unit = self.parents[unit]
        return unit == ancestor


@st.composite
def organizations(draw: st.DrawFn) -> Organization:
    parents: dict[str, str] = {}
    depth = {ROOT: 0}
    for index in range(draw(st.integers(1, 7))):
        unit = f"ou-ab12-{index:08d}"
        parent = draw(st.sampled_from(sorted(u for u, d in depth.items() if d < 4)))
        parents[unit] = parent
        depth[unit] = depth[parent] + 1
    count = draw(st.integers(1, 12))
    accounts = [f"{200000000000 + i * 7919}" for i in range(count)]
    homes = {account: draw(st.sampled_from(sorted(depth))) for account in accounts}
    return Organization(parents, homes)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Organization, dict[str, Any], PrincipalMode, str | None]:
    org = draw(organizations())
    units = sorted({*org.parents, ROOT})
    accounts = sorted(org.homes)
    named = draw(st.lists(st.sampled_from(units), max_size=3, unique=True))
    explicit = draw(st.lists(st.sampled_from(accounts), max_size=3, unique=True))
    if not named and not explicit:
        named = [draw(st.sampled_from(units))]
    condition = draw(st.none() | st.sampled_from(sorted(CONDITIONS)))
    actions = draw(st.lists(st.sampled_from(sorted(USE_ACTIONS)), min_size=1, max_size=4))
    properties: dict[str, Any] = {
        "KeyIds": [KEY_ARN],
        "OrganizationalUnitIds": named,
        "AccountIds": explicit,
        "ExcludeAccountIds": draw(st.lists(st.sampled_from(accounts), max_size=2, unique=True)),
        "IncludeNestedOUs": draw(st.booleans()),
        "Actions": actions,
        "AllowGrants": draw(st.booleans()),
        "RoleNames": draw(st.lists(st.sampled_from(ROLE_NAMES), max_size=2, unique=True)),
    }
    if condition is not None:
        properties["Conditions"] = CONDITIONS[condition][0]
    mode = draw(st.sampled_from([PrincipalMode.ACCOUNTS, PrincipalMode.ORG_PATHS]))
    return org, properties, mode, condition


def key_policy(org: Organization, properties: dict[str, Any], mode: PrincipalMode) -> Any:
    """The key policy the resource would write, its organization lookup done by hand."""
    spec = parse_properties(properties)
    found = set().union(*(org.below(u, nested=spec.include_nested_ous) for u in spec.ou_ids))
    granted = (found | set(spec.account_ids)) - spec.exclude_account_ids
    grantees = Grantees(
        organization_id=ORG,
        partition="aws",
        accounts=tuple(sorted(granted)),
        unit_paths=tuple(org.path(u) for u in spec.ou_ids),
        outside_units=tuple(sorted(granted - found)),
        excluded=tuple(sorted(spec.exclude_account_ids)),
        include_nested=spec.include_nested_ous,
    )
    statements = build_statements(spec, PREFIX, grantees, mode)
    policy = keypolicy.merge({"Version": "2012-10-17", "Statement": FOREIGN}, PREFIX, statements)
    return spec, granted, found, policy


def covered(patterns: tuple[str, ...]) -> set[str]:
    """The KMS actions a list of action patterns (``*`` at the end only) covers."""
    return {
        action
        for action in KMS_ACTIONS
        for pattern in patterns
        if action == pattern or (pattern.endswith("*") and action.startswith(pattern[:-1]))
    }


def principals_of(org: Organization, account: str, *, org_id: str = ORG) -> list[Principal]:
    path = org.path(org.homes[account]) if account in org.homes else f"{org_id}/{ROOT}/"
    return [
        Principal(f"arn:aws:iam::{account}:{kind}", org_id=org_id, org_paths=(path,))
        for kind in ("root", "role/App", "role/team/Deployer", "role/Other")
    ]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.booleans())
def test_grants_exactly_what_the_statements_intend(case: Any, for_aws_resource: bool) -> None:
    org, properties, mode, condition = case
    spec, granted, found, policy = key_policy(org, properties, mode)
    compiled = compile_policy(policy)
    context = {"aws:SecureTransport": "true"}
    if condition is not None:
        context.update(CONDITIONS[condition][1])
    if for_aws_resource:
        context["kms:GrantIsForAWSResource"] = "true"
    use = covered(spec.actions)
    grants = covered(GRANT_ACTIONS) if spec.allow_grants and for_aws_resource else set()

    everyone = [p for account in sorted(org.homes) for p in principals_of(org, account)]
    for answer in evaluate_matrix(compiled, everyone, KMS_ACTIONS, KEY_ARN, context):
        account = answer.principal.split(":")[4]
        role = answer.principal.split(":", 5)[5].removeprefix("role/")
        eligible = role in spec.role_names if spec.role_names else True
        if account in granted and eligible and answer.action in use | grants:
            _assert_allowed(
                answer, delegated=mode is PrincipalMode.ACCOUNTS or account not in found
            )
        else:
            assert answer.decision is Decision.IMPLICIT_DENY, answer

    outsiders = [
        Principal(f"arn:aws:iam::{KEY_ACCOUNT[:-1]}4:role/App"),
        *principals_of(org, sorted(org.homes)[0], org_id="o-zzzzzzzzzz"),
    ]
    for answer in evaluate_matrix(compiled, outsiders, KMS_ACTIONS, KEY_ARN, context):
        assert answer.decision is Decision.IMPLICIT_DENY, answer


def _assert_allowed(answer: Answer, *, delegated: bool) -> None:
    assert answer.decision is Decision.ALLOW, answer
    assert answer.delegated is delegated, answer
    assert all(sid.startswith(PREFIX) for sid in answer.statements), answer


@settings(max_examples=40, deadline=None)
@given(cases())
def test_conditions_and_tls_bind_every_grant(case: Any) -> None:
    org, properties, mode, condition = case
    spec, granted, _, policy = key_policy(org, properties, mode)
    compiled = compile_policy(policy)
    names = spec.role_names or ("App",)
    everyone = [
        Principal(f"arn:aws:iam::{account}:role/{names[0]}", org_id=ORG, org_paths=(path,))
        for account in sorted(granted)
        for path in (org.path(org.homes[account]),)
    ]
    failing = {"aws:SecureTransport": "true"}
    if condition is not None:
        failing.update(CONDITIONS[condition][2])
        for answer in evaluate_matrix(compiled, everyone, KMS_ACTIONS, KEY_ARN, failing):
            assert answer.decision is Decision.IMPLICIT_DENY, answer
    insecure = {"aws:SecureTransport": "false"}
    if condition is not None:
        insecure.update(CONDITIONS[condition][1])
    for answer in evaluate_matrix(
        compiled, everyone, sorted(covered(spec.actions)), KEY_ARN, insecure
    ):
        assert answer.decision is Decision.EXPLICIT_DENY, answer
        assert answer.statements == ("DenyOutsideTls",), answer
