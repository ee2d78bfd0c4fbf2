"""How many accounts a key policy can hold in ``Accounts`` mode.

For planning: whether a grant will fit a key beside the statements it already holds, and the
figure users ask first ("how many accounts per key?"). Pure: it builds the same statements the
resource would write and measures the merged policy.
"""

from __future__ import annotations

from dataclasses import replace

from orgkeypolicy import keypolicy
from orgkeypolicy.properties import PrincipalMode, Spec
from orgkeypolicy.statements import Grantees, build_statements


def accounts_that_fit(
    policy: keypolicy.Policy, spec: Spec, prefix: str, grantees: Grantees, *, ceiling: int = 4000
) -> int:
    """The most accounts (12-digit IDs) whose grant, merged into ``policy``, stays within
    KMS's key-policy limit; found by bisection, since the size grows with every account."""

    def fits(count: int) -> bool:
        many = replace(grantees, accounts=tuple(f"{100000000000 + i}" for i in range(count)))
        statements = build_statements(spec, prefix, many, PrincipalMode.ACCOUNTS)
        merged = keypolicy.merge(policy, prefix, statements)
        return keypolicy.size(merged) <= keypolicy.MAX_POLICY_BYTES

    low, high = 0, ceiling
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
