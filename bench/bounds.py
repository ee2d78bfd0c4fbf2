"""What a lookup cannot do better than, computed from the organization's shape alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from localaws.seed import DEFAULT_STATEMENT, LargeOrg
from orgkeypolicy.capacity import accounts_that_fit
from orgkeypolicy.properties import parse_properties
from orgkeypolicy.statements import Grantees, sid_prefix

PAGE_SIZE = 20
"""Organizations' largest (and moto's default) page for both list calls the walk makes."""


def pages(items: int, page_size: int = PAGE_SIZE) -> int:
    """A listing costs one call even when empty, and one more per further page."""
    return max(1, math.ceil(items / page_size))


def outermost(org: LargeOrg, named: Sequence[str]) -> list[str]:
    """The named units that no other named unit contains (the rest are walked with them)."""
    names = list(dict.fromkeys(named))
    inside: set[str] = set()
    for unit in names:
        inside.update(org.subtree(unit)[1:])
    return [unit for unit in names if unit not in inside]


def list_calls_lower_bound(org: LargeOrg, named: Sequence[str], *, include_nested: bool) -> int:
    """The fewest list calls that find every account of ``named`` (and below, if nested)."""
    if include_nested:
        return sum(org.min_list_calls(unit, PAGE_SIZE) for unit in outermost(org, named))
    return sum(pages(len(org.accounts[unit])) for unit in dict.fromkeys(named))


@dataclass(frozen=True)
class CriticalPath:
    """The longest chain of calls that must run one after another, and the busiest bound.

    A unit's children are known only once every page of its child listing has come back, and
    pages of one listing follow each other (each needs the previous NextToken). So the
    earliest a unit can be done is the sum of its ancestors' child-listing pages plus its own
    longest listing. ``chain_pages`` is that, in calls, for the slowest unit; ``chain`` is the
    units on the way.
    """

    chain_pages: int
    chain: tuple[str, ...]
    calls: int

    def seconds(self, latency: float, workers: int) -> float:
        """max(serial chain x latency, calls x latency / workers)."""
        return max(self.chain_pages * latency, self.calls * latency / max(1, workers))

    def chain_seconds(self, latency: float) -> float:
        return self.chain_pages * latency

    def work_seconds(self, latency: float, workers: int) -> float:
        return self.calls * latency / max(1, workers)


def critical_path(org: LargeOrg, named: Sequence[str], *, include_nested: bool) -> CriticalPath:
    names = set(named)
    best: tuple[int, tuple[str, ...]] = (0, ())
    calls = list_calls_lower_bound(org, named, include_nested=include_nested)
    roots = outermost(org, named) if include_nested else list(dict.fromkeys(named))
    stack: list[tuple[str, int, tuple[str, ...]]] = [(unit, 0, (unit,)) for unit in roots]
    while stack:
        unit, before, chain = stack.pop()
        own_accounts = pages(len(org.accounts[unit]))
        if not include_nested:
            best = max(best, (before + own_accounts, chain))
            continue
        own_units = pages(len(org.children[unit]))
        best = max(best, (before + max(own_units, own_accounts), chain))
        for child in org.children[unit]:
            # A named unit is listed from the start, not when its parent's listing ends.
            if child in names:
                stack.append((child, 0, (child,)))
            else:
                stack.append((child, before + own_units, (*chain, child)))
    return CriticalPath(chain_pages=best[0], chain=best[1], calls=calls)


def tree_depth(org: LargeOrg, unit: str) -> int:
    return max(org.depth[ou] for ou in org.subtree(unit)) - org.depth[unit]


# --- Accounts mode capacity -------------------------------------------------------------------

# A key's default policy plus this resource's statements, 12-digit account IDs.
_ORG = "o-abcdefghij"
_DEFAULT_POLICY = {"Version": "2012-10-17", "Id": "key-default-1", "Statement": [DEFAULT_STATEMENT]}


def accounts_per_key_policy(*, allow_grants: bool = False) -> int:
    """The most accounts one key policy holds in Accounts mode beside the default statement."""
    spec = parse_properties(
        {
            "KeyIds": ["1234abcd-12ab-34cd-56ef-1234567890ab"],
            "OrganizationalUnitIds": ["ou-ab12-11111111"],
            "AllowGrants": "true" if allow_grants else "false",
        }
    )
    prefix = sid_prefix("arn:aws:cloudformation:us-east-1:123456789012:stack/s/uuid", "Share")
    return accounts_that_fit(_DEFAULT_POLICY, spec, prefix, Grantees(_ORG, "aws", accounts=()))
