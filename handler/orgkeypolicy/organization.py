"""The organization side: walking the OU tree and choosing the accounts to grant.

The walk is generic over a ``Directory`` (what the Organizations adapter implements), so the
selection and traversal rules are testable over plain data with no AWS in sight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

ACTIVE = "ACTIVE"
# Organizations retired the account ``Status`` field in favour of ``State``; these are the
# ``State`` values the old ``Status`` values correspond to, for responses that lack ``State``.
_STATE_FROM_STATUS = {
    "ACTIVE": ACTIVE,
    "SUSPENDED": "SUSPENDED",
    "PENDING_CLOSURE": "PENDING_CLOSURE",
}


@dataclass(frozen=True)
class Account:
    id: str
    state: str

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    @classmethod
    def from_api(cls, item: Mapping[str, object]) -> Account:
        state = item.get("State")
        if not isinstance(state, str):
            state = _STATE_FROM_STATUS.get(str(item.get("Status")), "UNKNOWN")
        return cls(id=str(item["Id"]), state=state)


@dataclass(frozen=True)
class Unit:
    """An OU or root; ``path`` is its ``o-…/r-…/ou-…/`` path when the API gave it."""

    id: str
    path: str | None = None


class Directory(Protocol):
    """What the tree walk needs from Organizations: the direct children of a parent."""

    def child_units(self, parent_id: str) -> list[Unit]: ...

    def accounts(self, parent_id: str) -> list[Account]: ...


class Reader(Directory, Protocol):
    """Everything one resource's lookup reads from Organizations."""

    def organization_id(self) -> str: ...

    def account(self, account_id: str) -> Account: ...

    def unit_path(self, organization_id: str, unit_id: str) -> str: ...


class SharedReader:
    """A ``Reader`` whose every answer is kept for one run, so that resources naming the same
    or overlapping OUs list each unit once; a question asked while the same one is in flight
    waits for its answer instead of asking again. Failures are kept too: an OU that is not
    found stays not found for the run."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._answers: dict[Hashable, Future[Any]] = {}

    def _once(self, question: Hashable, ask: Callable[[], T]) -> T:
        with self._lock:
            answer = self._answers.get(question)
            asking = answer is None
            if answer is None:
                answer = self._answers[question] = Future()
        if asking:
            try:
                answer.set_result(ask())
            except BaseException as error:
                answer.set_exception(error)
        result: T = answer.result()
        return result

    def organization_id(self) -> str:
        return self._once(("organization",), self._reader.organization_id)

    def child_units(self, parent_id: str) -> list[Unit]:
        return self._once(("units", parent_id), lambda: self._reader.child_units(parent_id))

    def accounts(self, parent_id: str) -> list[Account]:
        return self._once(("accounts", parent_id), lambda: self._reader.accounts(parent_id))

    def account(self, account_id: str) -> Account:
        return self._once(("account", account_id), lambda: self._reader.account(account_id))

    def unit_path(self, organization_id: str, unit_id: str) -> str:
        return self._once(
            ("path", organization_id, unit_id),
            lambda: self._reader.unit_path(organization_id, unit_id),
        )


class BoundedReader:
    """A ``Reader`` that lets at most ``slots`` calls run at once, however many walks use it at
    the same moment (a re-sync looks many resources up in parallel, and Organizations throttles
    early)."""

    def __init__(self, reader: Reader, slots: int) -> None:
        self._reader = reader
        self._slots = threading.BoundedSemaphore(slots)

    def _call(self, ask: Callable[[], T]) -> T:
        with self._slots:
            return ask()

    def organization_id(self) -> str:
        return self._call(self._reader.organization_id)

    def child_units(self, parent_id: str) -> list[Unit]:
        return self._call(lambda: self._reader.child_units(parent_id))

    def accounts(self, parent_id: str) -> list[Account]:
        return self._call(lambda: self._reader.accounts(parent_id))

    def account(self, account_id: str) -> Account:
        return self._call(lambda: self._reader.account(account_id))

    def unit_path(self, organization_id: str, unit_id: str) -> str:
        return self._call(lambda: self._reader.unit_path(organization_id, unit_id))


# Called with the listings done and the listings known so far (the total grows as units appear).
Progress = Callable[[int, int], None]


@dataclass
class Subtree:
    """The accounts found below the named units, and how the walk went.

    ``parents`` maps every account and unit found to the unit it sits directly in.
    """

    accounts: dict[str, Account] = field(default_factory=dict)
    units_visited: int = 0
    paths: dict[str, str] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)

    def principal_org_path(self, organization_id: str, account_id: str) -> str:
        """The account's ``aws:PrincipalOrgPaths`` value: the path of the unit it sits in.

        IAM gives a principal the ``o-…/r-…/ou-…/`` path of its account's parent unit, without
        the account ID (``ForAnyValue:StringEquals`` on an OU's path matches the accounts
        directly in it). Known only for accounts of a walk that started at the root.
        """
        parent = self.parents[account_id]
        if parent in self.paths:
            return self.paths[parent]
        ancestors = [parent]
        while ancestors[0] in self.parents:
            ancestors.insert(0, self.parents[ancestors[0]])
        if not ancestors[0].startswith("r-"):
            raise ValueError(f"{account_id}: the walk did not start at the root")
        return unit_path(organization_id, ancestors)


def walk(
    directory: Directory,
    named: Sequence[str],
    *,
    include_nested: bool,
    max_workers: int,
    progress: Progress | None = None,
) -> Subtree:
    """Collect the accounts directly in ``named`` units, and below them when ``include_nested``.

    Each unit is listed once, even when named units overlap (a named OU inside another), and
    the listings of different units run concurrently on at most ``max_workers`` threads: the
    tree's depth, not its size, then bounds the wall time.
    """
    result = Subtree()
    visited: set[str] = set()
    lock = threading.Lock()
    listed = 0

    def record_accounts(unit_id: str) -> None:
        found = directory.accounts(unit_id)
        with lock:
            result.accounts.update((account.id, account) for account in found)
            result.parents.update((account.id, unit_id) for account in found)

    def record_children(unit_id: str) -> list[Unit]:
        children = directory.child_units(unit_id)
        with lock:
            result.parents.update((child.id, unit_id) for child in children)
        return children

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="org-walk") as pool:
        pending: set[Future[Any]] = set()

        def visit(unit: Unit) -> None:
            if unit.id in visited:
                return
            visited.add(unit.id)
            if unit.path:
                result.paths[unit.id] = unit.path
            pending.add(pool.submit(record_accounts, unit.id))
            if include_nested:
                pending.add(pool.submit(record_children, unit.id))

        for unit_id in named:
            visit(Unit(unit_id))
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    for child in future.result() or ():
                        visit(child)
                listed += len(done)
                if progress is not None:
                    progress(listed, listed + len(pending))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    result.units_visited = len(visited)
    return result


@dataclass(frozen=True)
class Selection:
    """The accounts to grant, and those left out with the reason, for the log."""

    granted: tuple[str, ...]
    inactive: Mapping[str, str]
    excluded: tuple[str, ...]


def select_accounts(
    found: Iterable[Account], explicit: Iterable[Account], exclude: frozenset[str]
) -> Selection:
    """Grant ACTIVE accounts that are not excluded; report the rest."""
    everyone = {account.id: account for account in (*found, *explicit)}
    excluded = sorted(everyone.keys() & exclude)
    inactive = {
        account.id: account.state
        for account in everyone.values()
        if not account.active and account.id not in exclude
    }
    granted = sorted(
        account.id for account in everyone.values() if account.active and account.id not in exclude
    )
    return Selection(granted=tuple(granted), inactive=inactive, excluded=tuple(excluded))


def unit_path(organization_id: str, ancestors: Sequence[str]) -> str:
    """The ``aws:PrincipalOrgPaths`` path of a unit from its ancestry (root first, unit last)."""
    return "/".join((organization_id, *ancestors)) + "/"
