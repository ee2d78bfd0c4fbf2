"""Organizations and KMS keys in the local AWS.

:func:`seed_demo_org` builds a small, named organization over the boto3 API, the way an
administrator would: the fixture for functional tests and the demo.

:func:`seed_large_org` builds a synthetic organization of thousands of accounts for
benchmarks. The organization itself is created over the API; its OUs and accounts are put
straight into moto's Organizations backend, which lives in this process (the moto server is
a thread here). Measured on the 2-core machine this project runs on, for 5,000 accounts:

- over the API: ~17 ms per account (CreateAccount + MoveAccount), growing with the size of
  the organization: well over a minute;
- ``backend.create_account``: ~0.6 ms per account, but it creates an IAM role in a new IAM
  backend per account, and moto looks up the caller's access key in every IAM backend on
  *every* request: with 3,000 accounts each API call costs ~25 ms more;
- building moto's account objects directly (no per-account IAM backend): 5,000 accounts and
  500 OUs in well under a second, and API calls keep their ~3-6 ms cost.

So the direct route is used; it depends on moto's model attributes (pinned moto 5.2.5), and
the tests check the result through the API.
"""

from __future__ import annotations

import json
import math
import random
import string
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from moto.core.utils import utcnow
from moto.organizations import utils as org_utils
from moto.organizations.models import (
    FakeAccount,
    FakeOrganizationalUnit,
    organizations_backends,
)

from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, fake_client
from orgkeypolicy.settings import CONSENT_TAG_KEY, CONSENT_TAG_VALUE

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_kms.type_defs import TagTypeDef
    from mypy_boto3_organizations import OrganizationsClient

ACTIVE = "ACTIVE"
SUSPENDED = "SUSPENDED"

# The tag that lets the provider change a key's policy (its default consent rule). Keys
# created for tests and demos carry it, so that they exercise the provider as deployed.
CONSENT_TAGS: list[TagTypeDef] = [{"TagKey": CONSENT_TAG_KEY, "TagValue": CONSENT_TAG_VALUE}]

DEFAULT_STATEMENT: dict[str, Any] = {
    "Sid": "Enable IAM User Permissions",
    "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:root"},
    "Action": "kms:*",
    "Resource": "*",
}

# The demo organization: OU name -> parent OU name (None: the root), in creation order.
DEMO_OUS: dict[str, str | None] = {
    "Workloads": None,
    "Prod": "Workloads",
    "Critical": "Prod",
    "Dev": "Workloads",
    "Sandbox": None,
}
# Account name -> OU name.
DEMO_ACCOUNTS: dict[str, str] = {
    "prod-a": "Prod",
    "prod-b": "Prod",
    "prod-closed": "Prod",
    "crit-a": "Critical",
    "dev-a": "Dev",
    "sbx-a": "Sandbox",
}
DEMO_CLOSED = ("prod-closed",)


def organizations_client(url: str) -> OrganizationsClient:
    client: OrganizationsClient = fake_client("organizations", url)
    return client


def kms_client(url: str, region: str = DEFAULT_REGION) -> KMSClient:
    client: KMSClient = fake_client("kms", url, region)
    return client


def read_key_policy(url: str, key_id: str, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """The key's current policy, parsed."""
    policy = kms_client(url, region).get_key_policy(KeyId=key_id, PolicyName="default")
    parsed: dict[str, Any] = json.loads(policy["Policy"])
    return parsed


def demo_key_policies(account_id: str = MOTO_ACCOUNT_ID) -> dict[str, dict[str, Any]]:
    """The policies the demo keys start with: the default statement plus one statement
    someone else wrote, which a merge must leave alone."""
    default = dict(DEFAULT_STATEMENT, Principal={"AWS": f"arn:aws:iam::{account_id}:root"})
    return {
        "logs": {
            "Version": "2012-10-17",
            "Id": "key-consolepolicy-3",
            "Statement": [
                default,
                {
                    "Sid": "AllowCloudTrailEncrypt",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudtrail.amazonaws.com"},
                    "Action": "kms:GenerateDataKey*",
                    "Resource": "*",
                    "Condition": {
                        "StringLike": {
                            "kms:EncryptionContext:aws:cloudtrail:arn": (
                                f"arn:aws:cloudtrail:*:{account_id}:trail/*"
                            )
                        },
                        "StringEquals": {
                            "aws:SourceArn": (
                                f"arn:aws:cloudtrail:us-east-1:{account_id}:trail/org-trail"
                            )
                        },
                    },
                },
            ],
        },
        "data": {
            "Version": "2012-10-17",
            "Id": "key-consolepolicy-3",
            "Statement": [
                default,
                {
                    "Sid": "Allow use by analytics role",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account_id}:role/analytics"},
                    "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"],
                    "Resource": "*",
                },
            ],
        },
    }


DEMO_KEYS: dict[str, tuple[str, str]] = {
    # name -> (alias, description)
    "logs": ("alias/demo-logs", "Organization CloudTrail logs"),
    "data": ("alias/data-lake", "Data lake objects"),
}


@dataclass(frozen=True)
class SeededOrg:
    """What :func:`seed_demo_org` created. ``parents`` maps every OU and account id to its
    parent's id (the root's parent is absent)."""

    org_id: str
    root_id: str
    management_account_id: str
    ous: dict[str, str]
    accounts: dict[str, str]
    suspended: set[str]
    keys: dict[str, str]
    aliases: dict[str, str]
    original_policies: dict[str, dict[str, Any]]
    parents: dict[str, str] = field(default_factory=dict)
    region: str = DEFAULT_REGION

    def ou_id(self, name_or_id: str) -> str:
        """An OU (or ``"Root"``) by name, or an id passed through."""
        if name_or_id in ("Root", self.root_id):
            return self.root_id
        return self.ous.get(name_or_id, name_or_id)

    def ou_path(self, name_or_id: str) -> str:
        """``o-…/r-…/ou-…/…/`` as used by the ``aws:PrincipalOrgPaths`` condition key."""
        return _org_path(self.org_id, self.parents, self.ou_id(name_or_id))

    def accounts_under(self, name_or_id: str, *, include_suspended: bool = False) -> set[str]:
        """Account ids anywhere below the OU (or the root, which holds the management
        account)."""
        top = self.ou_id(name_or_id)
        found = set()
        for account_id in [*self.accounts.values(), self.management_account_id]:
            if not include_suspended and account_id in self.suspended:
                continue
            node: str | None = account_id
            while node is not None:
                if node == top:
                    found.add(account_id)
                    break
                node = self.parents.get(node)
        return found

    def key_arn(self, name_or_alias: str) -> str:
        for name, alias in self.aliases.items():
            if name_or_alias in (name, alias):
                return self.keys[name]
        return self.keys[name_or_alias]


def ou_path(seeded: SeededOrg, name_or_id: str) -> str:
    """See :meth:`SeededOrg.ou_path`."""
    return seeded.ou_path(name_or_id)


def _org_path(org_id: str, parents: dict[str, str], node: str) -> str:
    chain = [node]
    while chain[-1] in parents:
        chain.append(parents[chain[-1]])
    return "/".join([org_id, *reversed(chain)]) + "/"


def seed_demo_org(url: str, region: str = DEFAULT_REGION) -> SeededOrg:
    """Create the demo organization and keys (see the module constants) in an empty local
    AWS at ``url``::

        Root ── Workloads ── Prod ── Critical      prod-a, prod-b, prod-closed (SUSPENDED)
             │            │                        crit-a
             │            └─ Dev                   dev-a
             └─ Sandbox                            sbx-a

    plus the management account 123456789012 under the root, and two KMS keys
    (alias/demo-logs, alias/data-lake) whose policies are :func:`demo_key_policies`, tagged
    with the consent tag (:data:`CONSENT_TAGS`).
    """
    org = organizations_client(url)
    organization = org.create_organization(FeatureSet="ALL")["Organization"]
    org_id = organization["Id"]
    management = organization["MasterAccountId"]
    root_id = org.list_roots()["Roots"][0]["Id"]
    parents: dict[str, str] = {management: root_id}

    ous: dict[str, str] = {}
    for name, parent_name in DEMO_OUS.items():
        parent_id = root_id if parent_name is None else ous[parent_name]
        created = org.create_organizational_unit(ParentId=parent_id, Name=name)
        ous[name] = created["OrganizationalUnit"]["Id"]
        parents[ous[name]] = parent_id

    accounts: dict[str, str] = {}
    for name, ou_name in DEMO_ACCOUNTS.items():
        status = org.create_account(Email=f"{name}@example.com", AccountName=name)
        account_id = status["CreateAccountStatus"]["AccountId"]
        org.move_account(
            AccountId=account_id, SourceParentId=root_id, DestinationParentId=ous[ou_name]
        )
        accounts[name] = account_id
        parents[account_id] = ous[ou_name]
    suspended = set()
    for name in DEMO_CLOSED:
        org.close_account(AccountId=accounts[name])
        suspended.add(accounts[name])

    kms = kms_client(url, region)
    policies = demo_key_policies(management)
    keys: dict[str, str] = {}
    aliases: dict[str, str] = {}
    original: dict[str, dict[str, Any]] = {}
    for name, (alias, description) in DEMO_KEYS.items():
        metadata = kms.create_key(
            Description=description,
            Tags=[{"TagKey": "purpose", "TagValue": name}, *CONSENT_TAGS],
        )["KeyMetadata"]
        kms.create_alias(AliasName=alias, TargetKeyId=metadata["KeyId"])
        kms.put_key_policy(
            KeyId=metadata["KeyId"],
            PolicyName="default",
            Policy=json.dumps(policies[name], indent=4),
        )
        keys[name] = metadata["Arn"]
        aliases[name] = alias
        original[metadata["Arn"]] = policies[name]

    return SeededOrg(
        org_id=org_id,
        root_id=root_id,
        management_account_id=management,
        ous=ous,
        accounts=accounts,
        suspended=suspended,
        keys=keys,
        aliases=aliases,
        original_policies=original,
        parents=parents,
        region=region,
    )


@dataclass(frozen=True)
class LargeOrg:
    """A synthetic organization's shape, as moto will list it.

    ``children`` maps the root and every OU to its child OU ids and ``accounts`` to its
    direct account ids, both in moto's listing order; ``states`` maps account id to
    ``ACTIVE``/``SUSPENDED``; ``parent`` maps every OU and account to its parent; ``depth``
    is 0 for the root.
    """

    org_id: str
    root_id: str
    management_account_id: str
    children: dict[str, list[str]]
    accounts: dict[str, list[str]]
    states: dict[str, str]
    parent: dict[str, str]
    depth: dict[str, int]
    names: dict[str, str]
    seed: int

    @property
    def ou_ids(self) -> list[str]:
        return [node for node in self.children if node != self.root_id]

    @property
    def account_count(self) -> int:
        return len(self.states)

    def subtree(self, node: str) -> list[str]:
        """``node`` and every OU below it, breadth first."""
        order = []
        queue = deque([node])
        while queue:
            current = queue.popleft()
            order.append(current)
            queue.extend(self.children[current])
        return order

    def accounts_under(self, node: str, *, include_suspended: bool = True) -> set[str]:
        return {
            account
            for ou in self.subtree(node)
            for account in self.accounts[ou]
            if include_suspended or self.states[account] == ACTIVE
        }

    def list_calls(self, node: str, page_size: int = 20) -> dict[str, int]:
        """The fewest Organizations list calls that walk the subtree under ``node``, per
        operation: every OU and the node need at least one ListOrganizationalUnitsForParent
        and one ListAccountsForParent call, and one more per further page."""
        ou_calls = account_calls = 0
        for ou in self.subtree(node):
            ou_calls += max(1, math.ceil(len(self.children[ou]) / page_size))
            account_calls += max(1, math.ceil(len(self.accounts[ou]) / page_size))
        return {
            "ListOrganizationalUnitsForParent": ou_calls,
            "ListAccountsForParent": account_calls,
        }

    def min_list_calls(self, node: str, page_size: int = 20) -> int:
        return sum(self.list_calls(node, page_size).values())

    def ou_path(self, node: str) -> str:
        return _org_path(self.org_id, self.parent, node)

    def busiest_ou(self) -> str:
        """The OU with the most direct accounts."""
        return max(self.ou_ids, key=lambda ou: len(self.accounts[ou]))

    def deepest_ou(self) -> str:
        return max(self.ou_ids, key=lambda ou: self.depth[ou])

    def largest_subtree(self, max_accounts: int | None = None) -> str:
        """The OU with the most accounts below it (at most ``max_accounts`` if given)."""
        candidates = [
            ou
            for ou in self.ou_ids
            if max_accounts is None or len(self.accounts_under(ou)) <= max_accounts
        ]
        return max(candidates, key=lambda ou: len(self.accounts_under(ou)))


def seed_large_org(
    url: str,
    *,
    accounts: int = 5000,
    ous: int = 500,
    depth: int = 5,
    seed: int = 0,
    suspended_fraction: float = 0.03,
    root_fraction: float = 0.02,
) -> LargeOrg:
    """Create a synthetic organization in an empty local AWS at ``url`` (which must be
    served by this process's moto; see the module docstring).

    The OU tree has ``ous`` OUs at most ``depth`` levels below the root: one chain reaches
    the full depth, and the rest attach to parents drawn with heavy-tailed weights that fall
    with depth, so a few OUs have dozens of children (several pages), most have few, and
    most OUs sit two to four levels down. Accounts: ``root_fraction`` directly under the
    root, the rest spread with heavy-tailed weights (some OUs hold hundreds of accounts,
    many hold none); ``suspended_fraction`` are SUSPENDED, most of them in a "Suspended" OU
    as organizations usually keep them. ``accounts`` excludes the management account, which
    moto puts under the root. The same ``seed`` gives the same shape and ids
    (except the organization and root ids, which moto draws).
    """
    if depth < 1 or ous < 1:
        raise ValueError("a large organization needs at least one OU and depth >= 1")
    org_api = organizations_client(url)
    organization = org_api.create_organization(FeatureSet="ALL")["Organization"]
    org_id = organization["Id"]
    management = organization["MasterAccountId"]
    root_id = org_api.list_roots()["Roots"][0]["Id"]
    backend = organizations_backends[management]["aws"]
    if backend.org is None or backend.org.id != org_id:
        raise RuntimeError(
            f"the moto server at {url} is not this process's: seed_large_org fills moto's "
            "backend directly"
        )

    shape = _Shape(random.Random(seed), root_id, management)
    shape.grow_tree(ous, depth)
    shape.place_accounts(accounts, suspended_fraction, root_fraction)
    shape.fill(backend)
    return LargeOrg(
        org_id=org_id,
        root_id=root_id,
        management_account_id=management,
        children=shape.children,
        accounts=shape.direct,
        states=shape.states,
        parent=shape.parent,
        depth=shape.depth,
        names=shape.names,
        seed=seed,
    )


class _Shape:
    """The synthetic organization being drawn, then written into moto's backend."""

    def __init__(self, rng: random.Random, root_id: str, management: str) -> None:
        self.rng = rng
        self.root_id = root_id
        self.children: dict[str, list[str]] = {root_id: []}
        self.depth: dict[str, int] = {root_id: 0}
        self.parent: dict[str, str] = {management: root_id}
        self.names: dict[str, str] = {root_id: "Root"}
        self.direct: dict[str, list[str]] = {root_id: [management]}
        self.states: dict[str, str] = {management: ACTIVE}
        self.suspended_ou = ""
        self._used_ids: set[str] = {root_id, management}

    def _new_id(self, prefix: str, alphabet: str, length: int) -> str:
        while True:
            candidate = prefix + "".join(self.rng.choices(alphabet, k=length))
            if candidate not in self._used_ids:
                self._used_ids.add(candidate)
                return candidate

    def add_ou(self, parent_id: str, name: str) -> str:
        ou_id = self._new_id(f"ou-{self.root_id[2:]}-", string.ascii_lowercase + string.digits, 8)
        self.children[parent_id].append(ou_id)
        self.children[ou_id] = []
        self.direct[ou_id] = []
        self.depth[ou_id] = self.depth[parent_id] + 1
        self.parent[ou_id] = parent_id
        self.names[ou_id] = name
        return ou_id

    @property
    def ou_ids(self) -> list[str]:
        return [node for node in self.children if node != self.root_id]

    def grow_tree(self, ous: int, depth: int) -> None:
        rng, root_id = self.rng, self.root_id
        self.suspended_ou = self.add_ou(root_id, "Suspended")
        for index in range(1, max(1, min(ous, 4 + ous // 40))):
            self.add_ou(root_id, f"Top-{index:02d}")
        # One chain to the full depth, so deep walks are always exercised.
        chain = self.children[root_id][-1]
        while len(self.children) - 1 < ous and self.depth[chain] < depth:
            chain = self.add_ou(chain, f"Deep-{self.depth[chain] + 1}")
        fertility = {node: rng.paretovariate(1.3) for node in self.children}
        fertility[self.suspended_ou] = fertility[root_id] = 0.0
        while len(self.children) - 1 < ous:
            candidates = [
                node for node in self.children if self.depth[node] < depth and fertility[node]
            ]
            # Halving the pull per level keeps most OUs two to four levels down, as in
            # organizations grown by hand, while a few parents still get dozens of children.
            weights = [fertility[node] * 0.5 ** self.depth[node] for node in candidates]
            chosen = rng.choices(candidates, weights=weights)[0]
            created = self.add_ou(chosen, f"OU-{len(self.children):04d}")
            fertility[created] = rng.paretovariate(1.3)

    def place_accounts(
        self, accounts: int, suspended_fraction: float, root_fraction: float
    ) -> None:
        rng = self.rng
        # Heavy-tailed weights; about a fifth of OUs only group others and hold no account.
        weight = {ou: 0.0 if rng.random() < 0.2 else rng.paretovariate(1.1) for ou in self.ou_ids}
        weight[self.suspended_ou] = 0.0
        homes = [ou for ou in self.ou_ids if weight[ou] > 0] or [self.root_id]
        home_weights = [weight.get(ou, 1.0) for ou in homes]
        n_root = round(accounts * root_fraction)
        n_suspended = round(accounts * suspended_fraction)
        in_suspended_ou = (n_suspended * 2) // 3
        placements: list[tuple[str, str]] = []
        for index in range(accounts):
            if index < n_root:
                placements.append((self.root_id, ACTIVE))
            elif index < n_root + in_suspended_ou:
                placements.append((self.suspended_ou, SUSPENDED))
            else:
                placements.append((rng.choices(homes, weights=home_weights)[0], ACTIVE))
        active = [i for i, (_, state) in enumerate(placements) if state == ACTIVE]
        for i in rng.sample(active, k=min(len(active), n_suspended - in_suspended_ou)):
            placements[i] = (placements[i][0], SUSPENDED)
        for home, state in placements:
            account_id = self._new_id("", string.digits, 12)
            self.direct[home].append(account_id)
            self.states[account_id] = state
            self.parent[account_id] = home

    def fill(self, backend: Any) -> None:
        organization = backend.org
        default_policies = [
            policy
            for policy in backend.policies
            if policy.id in (org_utils.DEFAULT_SCP_POLICY_ID, org_utils.DEFAULT_RCP_POLICY_ID)
        ]
        for ou_id in self.ou_ids:
            model = FakeOrganizationalUnit(
                organization, Name=self.names[ou_id], ParentId=self.parent[ou_id]
            )
            model.id = ou_id
            model.attached_policies = list(default_policies)
            for policy in default_policies:
                policy.attachments.append(model)
            backend.ou.append(model)
        # moto lists accounts by creation time; spacing them by a microsecond keeps the
        # listing order the order drawn here.
        created_at = utcnow()
        management = self.direct[self.root_id][0]
        index = 0
        for home, account_ids in self.direct.items():
            for account_id in account_ids:
                if account_id == management:
                    continue
                index += 1
                backend.accounts.append(
                    _account_model(
                        organization,
                        account_id=account_id,
                        name=f"acct-{index:05d}",
                        parent_id=home,
                        state=self.states[account_id],
                        created_at=created_at + timedelta(microseconds=index),
                        policies=default_policies,
                    )
                )
                organizations_backends.master_accounts[account_id] = (management, "aws")


def _account_model(
    organization: Any,
    *,
    account_id: str,
    name: str,
    parent_id: str,
    state: str,
    created_at: Any,
    policies: Iterable[Any],
) -> FakeAccount:
    # FakeAccount.__init__ also creates an IAM role in a fresh per-account IAM backend,
    # which makes every later request to moto slower (see the module docstring); the
    # attributes below are the rest of what it sets.
    account = cast(FakeAccount, FakeAccount.__new__(FakeAccount))
    account.type = "ACCOUNT"
    account.region = organization.region
    account.organization_id = organization.id
    account.master_account_id = organization.master_account_id
    account.create_account_status_id = org_utils.make_random_create_account_status_id()
    account.id = account_id
    account.name = name
    account.email = f"{name}@example.com"
    account.create_time = created_at
    account.status = state
    account.state = state
    account.joined_method = "CREATED"
    account.parent_id = parent_id
    account.attached_policies = list(policies)
    account.tags = {}
    for policy in account.attached_policies:
        policy.attachments.append(account)
    return account
