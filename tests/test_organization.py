"""The OU tree walk and account selection over an in-memory directory."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orgkeypolicy.organization import (
    Account,
    BoundedReader,
    Unit,
    select_accounts,
    unit_path,
    walk,
)


class Tree:
    """A directory over plain data that counts and can slow down its calls."""

    def __init__(
        self, children: dict[str, list[str]], accounts: dict[str, list[Account]], delay: float = 0
    ) -> None:
        self.children = children
        self.by_parent = accounts
        self.delay = delay
        self.calls: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def _enter(self, kind: str, parent: str) -> None:
        with self.lock:
            self.calls[(kind, parent)] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1

    def child_units(self, parent_id: str) -> list[Unit]:
        self._enter("units", parent_id)
        return [Unit(child) for child in self.children.get(parent_id, [])]

    def accounts(self, parent_id: str) -> list[Account]:
        self._enter("accounts", parent_id)
        return list(self.by_parent.get(parent_id, []))


def sample_tree() -> Tree:
    return Tree(
        children={"r-root": ["ou-a", "ou-b"], "ou-a": ["ou-a1", "ou-a2"], "ou-a1": ["ou-a1x"]},
        accounts={
            "r-root": [Account("000000000001", "ACTIVE")],
            "ou-a": [Account("000000000002", "ACTIVE")],
            "ou-a1": [Account("000000000003", "SUSPENDED")],
            "ou-a1x": [Account("000000000004", "ACTIVE")],
            "ou-a2": [Account("000000000005", "PENDING_CLOSURE")],
            "ou-b": [Account("000000000006", "ACTIVE")],
        },
    )


def test_nested_walk_finds_every_account_below_and_lists_each_unit_once() -> None:
    tree = sample_tree()
    # ou-a1 is named too, and lies inside ou-a: it must still be listed only once.
    found = walk(tree, ["ou-a", "ou-a1"], include_nested=True, max_workers=4)
    assert set(found.accounts) == {"000000000002", "000000000003", "000000000004", "000000000005"}
    assert found.units_visited == 4
    assert all(count == 1 for count in tree.calls.values())
    assert ("units", "ou-b") not in tree.calls


def test_without_nesting_only_direct_accounts_and_no_child_listing() -> None:
    tree = sample_tree()
    found = walk(tree, ["ou-a"], include_nested=False, max_workers=4)
    assert set(found.accounts) == {"000000000002"}
    assert set(tree.calls) == {("accounts", "ou-a")}


def test_walk_runs_listings_concurrently_within_the_bound() -> None:
    wide = Tree(
        children={"r-root": [f"ou-{i}" for i in range(12)]},
        accounts={f"ou-{i}": [Account(f"{i:012d}", "ACTIVE")] for i in range(12)},
        delay=0.05,
    )
    started = time.monotonic()
    found = walk(wide, ["r-root"], include_nested=True, max_workers=4)
    elapsed = time.monotonic() - started
    assert len(found.accounts) == 12
    assert wide.most_in_flight == 4
    # 26 calls of 50 ms: sequentially 1.3 s; four at a time about 0.35 s.
    assert elapsed < 0.9


class ReaderTree(Tree):
    """A ``Tree`` with the rest of a ``Reader``."""

    def organization_id(self) -> str:
        return "o-abcdefghij"

    def account(self, account_id: str) -> Account:
        self._enter("account", account_id)
        return Account(account_id, "ACTIVE")

    def unit_path(self, organization_id: str, unit_id: str) -> str:
        return unit_path(organization_id, ["r-root", unit_id])


def test_a_bounded_reader_caps_the_calls_of_every_walk_together() -> None:
    wide = ReaderTree(
        children={"r-root": [f"ou-{i}" for i in range(12)]},
        accounts={f"ou-{i}": [Account(f"{i:012d}", "ACTIVE")] for i in range(12)},
        delay=0.02,
    )
    bounded = BoundedReader(wide, 3)
    found: list[int] = []

    def walk_all() -> None:
        found.append(len(walk(bounded, ["r-root"], include_nested=True, max_workers=4).accounts))

    walkers = [threading.Thread(target=walk_all) for _ in range(4)]
    for walker in walkers:
        walker.start()
    bounded.account("000000000001")
    for walker in walkers:
        walker.join(10)
    assert found == [12] * 4
    assert wide.most_in_flight == 3
    assert bounded.organization_id() == "o-abcdefghij"
    assert bounded.unit_path("o-abcdefghij", "ou-1") == "o-abcdefghij/r-root/ou-1/"


def test_walk_raises_the_first_error() -> None:
    class Broken(Tree):
        def accounts(self, parent_id: str) -> list[Account]:
            if parent_id == "ou-a1":
                raise RuntimeError("boom")
            return super().accounts(parent_id)

    tree = sample_tree()
    broken = Broken(tree.children, tree.by_parent)
    with pytest.raises(RuntimeError, match="boom"):
        walk(broken, ["r-root"], include_nested=True, max_workers=2)


def test_selection_grants_active_not_excluded_and_reports_the_rest() -> None:
    found = [
        Account("000000000001", "ACTIVE"),
        Account("000000000002", "SUSPENDED"),
        Account("000000000003", "ACTIVE"),
    ]
    explicit = [Account("000000000009", "ACTIVE"), Account("000000000001", "ACTIVE")]
    selection = select_accounts(found, explicit, frozenset({"000000000003", "000000000777"}))
    assert selection.granted == ("000000000001", "000000000009")
    assert selection.inactive == {"000000000002": "SUSPENDED"}
    assert selection.excluded == ("000000000003",)


@pytest.mark.parametrize(
    ("item", "state"),
    [
        ({"Id": "1", "State": "ACTIVE", "Status": "SUSPENDED"}, "ACTIVE"),
        ({"Id": "1", "State": "PENDING_ACTIVATION", "Status": "ACTIVE"}, "PENDING_ACTIVATION"),
        ({"Id": "1", "Status": "ACTIVE"}, "ACTIVE"),
        ({"Id": "1", "Status": "SUSPENDED"}, "SUSPENDED"),
        ({"Id": "1"}, "UNKNOWN"),
    ],
)
def test_state_is_preferred_and_status_is_only_a_fallback(item: dict[str, str], state: str) -> None:
    assert Account.from_api(item).state == state
    assert Account.from_api(item).active == (state == "ACTIVE")


def test_unit_path_format() -> None:
    assert (
        unit_path("o-abcdefghij", ["r-ab12", "ou-ab12-11111111"])
        == "o-abcdefghij/r-ab12/ou-ab12-11111111/"
    )


trees = st.integers(min_value=1, max_value=25).flatmap(
    lambda n: st.tuples(
        st.just(n), st.lists(st.integers(min_value=0, max_value=n - 1), min_size=n, max_size=n)
    )
)


@settings(max_examples=60, deadline=None)
@given(
    trees, st.lists(st.integers(min_value=0, max_value=24), min_size=1, max_size=4), st.booleans()
)
def test_walk_matches_a_plain_recursive_walk(
    tree: tuple[int, list[int]], named_idx: list[int], nested: bool
) -> None:
    n, parents = tree
    # Unit i's parent is an earlier unit (or the root for unit 0), so the graph is a tree.
    children: dict[str, list[str]] = {}
    for i in range(1, n):
        children.setdefault(f"u{parents[i] % i}", []).append(f"u{i}")
    accounts = {f"u{i}": [Account(f"{i:012d}", "ACTIVE")] for i in range(n)}
    named = [f"u{i % n}" for i in named_idx]

    def below(unit: str) -> set[str]:
        result = {unit}
        if nested:
            for child in children.get(unit, []):
                result |= below(child)
        return result

    expected = set().union(*(below(u) for u in named))
    directory = Tree(children, accounts)
    found = walk(directory, named, include_nested=nested, max_workers=3)
    assert set(found.accounts) == {f"{int(u[1:]):012d}" for u in expected}
    assert found.units_visited == len(expected)
    assert max(directory.calls.values()) == 1
