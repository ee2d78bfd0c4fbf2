"""How fast ``simulate --org`` decides: every account of a 5,000-account organization against
a ~30 KB key policy, for every KMS action.

``.venv/bin/python bench/simulate.py [--accounts N] [--granted N] [--repeats N]``

The policy is built the way the resource builds it: the key's default statement, an
``Accounts``-mode grant to ``--granted`` account roots and an ``OrgPaths``-mode grant to a few
OUs (RoleNames, Conditions and AllowGrants on both), merged with ``keypolicy.merge``. The
organization is synthetic (seeded): OUs up to five levels deep, accounts spread over them.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (str(REPO / "handler"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from orgkeypolicy import keypolicy  # noqa: E402
from orgkeypolicy.evaluation import (  # noqa: E402
    KMS_ACTIONS,
    Principal,
    compile_policy,
    evaluate_matrix,
)
from orgkeypolicy.properties import PrincipalMode, parse_properties  # noqa: E402
from orgkeypolicy.statements import Grantees, build_statements, sid_prefix  # noqa: E402

ORG = "o-a1b2c3d4e5"
ROOT = "r-ab12"
KEY_ACCOUNT = "111122223333"
KEY_ARN = f"arn:aws:kms:us-east-1:{KEY_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROLE = "OrganizationAccountAccessRole"


def organization(accounts: int, ous: int, seed: int) -> dict[str, str]:
    """Account ID -> its aws:PrincipalOrgPaths path."""
    rng = random.Random(seed)
    paths = [f"{ORG}/{ROOT}/"]
    for index in range(ous):
        parent = rng.choice([p for p in paths if p.count("/") < 7])
        paths.append(f"{parent}ou-ab12-{index:08d}/")
    return {f"{200000000000 + index}": rng.choice(paths) for index in range(accounts)}


def policy(members: dict[str, str], granted: int, seed: int) -> keypolicy.Policy:
    rng = random.Random(seed)
    ids = sorted(members)
    units = sorted({path for path in members.values() if path.count("/") == 4})[:8]
    default = {
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{KEY_ACCOUNT}:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    document: keypolicy.Policy = {"Version": "2012-10-17", "Statement": [default]}
    common = {
        "KeyIds": [KEY_ARN],
        "OrganizationalUnitIds": [unit.rstrip("/").rpartition("/")[2] for unit in units],
        "RoleNames": [ROLE],
        "Conditions": {"StringEquals": {"aws:RequestedRegion": ["us-east-1", "eu-west-1"]}},
    }
    stack = "arn:aws:cloudformation:us-east-1:111122223333:stack/bench/uuid"
    accounts = tuple(sorted(rng.sample(ids, granted)))
    for logical, mode, grantees, grants in (
        ("Accounts", PrincipalMode.ACCOUNTS, Grantees(ORG, "aws", accounts), False),
        (
            "Paths",
            PrincipalMode.ORG_PATHS,
            Grantees(ORG, "aws", (), unit_paths=tuple(units), excluded=(ids[0], ids[1])),
            True,
        ),
    ):
        spec = parse_properties({**common, "AllowGrants": grants})
        prefix = sid_prefix(stack, logical)
        document = keypolicy.merge(document, prefix, build_statements(spec, prefix, grantees, mode))
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/simulate.py", description=__doc__)
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--ous", type=int, default=500)
    parser.add_argument("--granted", type=int, default=900, help="accounts of the Accounts grant")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    members = organization(args.accounts, args.ous, args.seed)
    document = policy(members, args.granted, args.seed)
    context = {"aws:RequestedRegion": "us-east-1"}
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        compiled = compile_policy(document)
        principals = [
            Principal(f"arn:aws:iam::{account}:role/{ROLE}", org_id=ORG, org_paths=(path,))
            for account, path in members.items()
        ]
        answers = evaluate_matrix(compiled, principals, KMS_ACTIONS, KEY_ARN, context)
        best = min(best, time.perf_counter() - started)
    counts = Counter(answer.decision.value for answer in answers)
    statements = len(keypolicy.parse(keypolicy.serialize(document))["Statement"])
    print(f"policy: {keypolicy.size(document):,} bytes, {statements} statements")
    print(f"principals: {len(principals):,}  actions: {len(KMS_ACTIONS)}")
    print(f"decisions: {len(answers):,}  " + "  ".join(f"{d}: {n:,}" for d, n in counts.items()))
    print(f"wall time (compile + principals + evaluate, best of {args.repeats}): {best:.3f} s")
    print(f"decisions/s: {len(answers) / best:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
