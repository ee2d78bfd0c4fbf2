"""The organization lookup: calls it makes, and how long it takes at a given concurrency."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import boto3
from botocore.exceptions import ClientError

from bench.bounds import critical_path, list_calls_lower_bound, pages
from bench.local import Local
from localaws.proxy import Call
from localaws.seed import LargeOrg
from orgkeypolicy import lifecycle
from orgkeypolicy.aws import OrganizationsDirectory
from orgkeypolicy.organization import Account, Unit, walk
from orgkeypolicy.settings import Deadline, Settings

_ORG_REGION = "us-east-1"
_WALK_LISTINGS = ("ListAccountsForParent", "ListOrganizationalUnitsForParent")
_STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/bench/00000000-0000-0000-0000-0"


# --- the straightforward baseline -------------------------------------------------------------


def sequential_walk(client: Any, unit: str, *, include_nested: bool = True) -> set[str]:
    """Every account in ``unit`` (and below): a plain recursion, one call at a time."""
    accounts_pages = client.get_paginator("list_accounts_for_parent")
    units_pages = client.get_paginator("list_organizational_units_for_parent")
    found: set[str] = set()

    def visit(parent: str) -> None:
        for page in accounts_pages.paginate(ParentId=parent):
            found.update(account["Id"] for account in page["Accounts"])
        if include_nested:
            for page in units_pages.paginate(ParentId=parent):
                for child in page["OrganizationalUnits"]:
                    visit(child["Id"])

    visit(unit)
    return found


# --- timed walks ------------------------------------------------------------------------------


@dataclass
class WalkRun:
    """One walk of ``unit``: ``workers`` is 0 for the sequential baseline."""

    walk: str
    workers: int
    latency: float
    wall: float
    calls: int
    accounts: int
    peak_in_flight: int
    calls_by_operation: dict[str, int]
    repeated_listings: int

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.wall if self.wall else 0.0


def _org_calls(local: Local) -> list[Call]:
    return local.proxy.calls_for("organizations:*")


def repeated_listings(calls: Sequence[Call]) -> int:
    """First pages requested more than once for the same parent: each unit should be listed
    once, however the named units overlap."""
    first_pages = Counter(
        (call.operation, call.body.get("ParentId"))
        for call in calls
        if call.operation in _WALK_LISTINGS and not call.body.get("NextToken")
    )
    return sum(count - 1 for count in first_pages.values())


def _record(
    local: Local, name: str, workers: int, wall: float, found: set[str], unit: str
) -> WalkRun:
    expected = local.org.accounts_under(unit)
    if found != expected:
        raise AssertionError(
            f"{name} walk of {unit} found {len(found)} accounts, the organization has "
            f"{len(expected)} there"
        )
    calls = _org_calls(local)
    return WalkRun(
        walk=name,
        workers=workers,
        latency=local.proxy.latency,
        wall=wall,
        calls=len(calls),
        accounts=len(found),
        peak_in_flight=local.proxy.max_concurrency("organizations:*"),
        calls_by_operation=dict(Counter(call.operation for call in calls)),
        repeated_listings=repeated_listings(calls),
    )


def time_sequential(local: Local, unit: str) -> WalkRun:
    client = boto3.Session().client("organizations", region_name=_ORG_REGION)
    local.proxy.reset_log()
    started = time.perf_counter()
    found = sequential_walk(client, unit)
    wall = time.perf_counter() - started
    return _record(local, "sequential (boto3 paginators)", 0, wall, found, unit)


def time_concurrent(local: Local, unit: str, workers: int) -> WalkRun:
    """``organization.walk`` over the handler's own Organizations adapter, as ``apply`` runs
    it; making the client stays outside the timing, as it does for the baseline."""
    directory = OrganizationsDirectory(boto3.Session(), "aws", pool=workers)
    local.proxy.reset_log()
    started = time.perf_counter()
    subtree = walk(directory, [unit], include_nested=True, max_workers=workers)
    wall = time.perf_counter() - started
    return _record(
        local, "concurrent (organization.walk)", workers, wall, set(subtree.accounts), unit
    )


class LatencyOnlyDirectory:
    """The organization's shape behind nothing but latency: each page is a sleep, with no
    HTTP, no botocore and no moto. Walking it measures the walk's scheduling alone."""

    def __init__(self, org: LargeOrg, latency: float) -> None:
        self._org = org
        self._latency = latency
        self._lock = threading.Lock()
        self.calls = 0

    def _pages(self, items: int) -> None:
        for _ in range(pages(items)):
            with self._lock:
                self.calls += 1
            time.sleep(self._latency)

    def child_units(self, parent_id: str) -> list[Unit]:
        children = self._org.children[parent_id]
        self._pages(len(children))
        return [Unit(child) for child in children]

    def accounts(self, parent_id: str) -> list[Account]:
        found = self._org.accounts[parent_id]
        self._pages(len(found))
        return [Account(account, self._org.states[account]) for account in found]


@dataclass
class IdealRun:
    workers: int
    latency: float
    wall: float
    calls: int


def time_latency_only(org: LargeOrg, unit: str, workers: int, latency: float) -> IdealRun:
    directory = LatencyOnlyDirectory(org, latency)
    started = time.perf_counter()
    subtree = walk(directory, [unit], include_nested=True, max_workers=workers)
    wall = time.perf_counter() - started
    if set(subtree.accounts) != org.accounts_under(unit):
        raise AssertionError(f"latency-only walk of {unit} found the wrong accounts")
    return IdealRun(workers, latency, wall, directory.calls)


# --- resource-level lookups -------------------------------------------------------------------


@dataclass(frozen=True)
class LookupCase:
    name: str
    named: tuple[str, ...]
    include_nested: bool
    mode: str


@dataclass
class LookupRun:
    """``lifecycle.apply`` with DryRun: the calls its one organization lookup made."""

    case: str
    named: list[str]
    include_nested: bool
    mode: str
    modes_chosen: str
    accounts_granted: int
    org_calls: int
    calls_by_operation: dict[str, int]
    lower_bound: int
    allowed: int
    repeated_listings: int
    lookup_wall: float
    apply_wall: float
    critical_path_pages: int
    all_calls: dict[str, int] = field(default_factory=dict)

    @property
    def moto_only_calls(self) -> int:
        """ListParents calls: the handler's fallback when DescribeOrganizationalUnit has no
        ``Path``, which AWS returns (it is in the API model) and moto 5.2.5 does not."""
        return self.calls_by_operation.get("ListParents", 0)

    @property
    def met(self) -> bool:
        within = self.org_calls - self.moto_only_calls <= self.allowed
        return within and self.repeated_listings == 0


def dry_run(local: Local, case: LookupCase, key_arn: str, settings: Settings) -> LookupRun:
    properties = {
        "KeyIds": [key_arn],
        "OrganizationalUnitIds": list(case.named),
        "IncludeNestedOUs": "true" if case.include_nested else "false",
        "PrincipalMode": case.mode,
        "DryRun": "true",
    }
    request = lifecycle.Request(
        request_type="Create",
        stack_id=_STACK_ID,
        logical_id="BenchLookup",
        request_id=str(uuid.uuid4()),
        properties=properties,
    )
    local.proxy.reset_log()
    started = time.perf_counter()
    outcome = lifecycle.apply(request, boto3.Session(), settings, Deadline(600))
    apply_wall = time.perf_counter() - started
    calls = _org_calls(local)
    active = {
        account
        for unit in case.named
        for account in (
            local.org.accounts_under(unit) if case.include_nested else set(local.org.accounts[unit])
        )
        if local.org.states[account] == "ACTIVE"
    }
    granted = int(outcome.data["AccountCount"])
    if granted != len(active):
        raise AssertionError(f"{case.name}: granted {granted}, the organization has {len(active)}")
    bound = list_calls_lower_bound(local.org, case.named, include_nested=case.include_nested)
    return LookupRun(
        case=case.name,
        named=list(case.named),
        include_nested=case.include_nested,
        mode=case.mode,
        modes_chosen=outcome.data["PrincipalModes"],
        accounts_granted=granted,
        org_calls=len(calls),
        calls_by_operation=dict(Counter(call.operation for call in calls)),
        lower_bound=bound + 1,
        allowed=bound + 1 + len(case.named),
        repeated_listings=repeated_listings(calls),
        lookup_wall=(max(c.ended for c in calls) - min(c.started for c in calls)) if calls else 0.0,
        apply_wall=apply_wall,
        critical_path_pages=critical_path(
            local.org, case.named, include_nested=case.include_nested
        ).chain_pages,
        all_calls=dict(Counter(call.name for call in local.proxy.calls)),
    )


def lookup_settings(workers: int) -> Settings:
    """The function's settings as ``local_aws`` sets its environment (the registry table)."""
    return replace(Settings.from_environment(), org_workers=workers)


# --- checks of the stand-in -------------------------------------------------------------------


@dataclass
class PagingCheck:
    """What moto answers for a parent with more than 20 accounts."""

    parent: str
    accounts_in_parent: int
    default_page: int
    has_next_token: bool
    max_results_21: str


def moto_paging(local: Local) -> PagingCheck:
    client = local.direct("organizations")
    parent = local.org.busiest_ou()
    page = client.list_accounts_for_parent(ParentId=parent)
    try:
        bigger = client.list_accounts_for_parent(ParentId=parent, MaxResults=21)
        answer = f"accepted, {len(bigger['Accounts'])} items (AWS refuses MaxResults > 20)"
    except ClientError as error:
        answer = f"refused ({error.response['Error']['Code']}), as AWS does"
    return PagingCheck(
        parent=parent,
        accounts_in_parent=len(local.org.accounts[parent]),
        default_page=len(page["Accounts"]),
        has_next_token=bool(page.get("NextToken")),
        max_results_21=answer,
    )


# --- an emulated Organizations rate limit -----------------------------------------------------


class TokenBucket:
    """A ``when`` predicate for a FaultProxy rule: true (answer TooManyRequestsException) when
    the bucket of ``rate`` calls per second, ``burst`` deep, is empty. The proxy calls it under
    its own lock, so it needs none."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.perf_counter()

    def __call__(self, _body: dict[str, Any]) -> bool:
        now = time.perf_counter()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return False
        return True


@dataclass
class ThrottledRun:
    workers: int
    rate: float
    wall: float
    calls: int
    throttled: int
    error: str | None


def time_throttled(local: Local, unit: str, workers: int, rate: float) -> ThrottledRun:
    """``organization.walk`` while the proxy refuses calls beyond ``rate`` per second, the way
    Organizations answers TooManyRequestsException; botocore's adaptive mode must absorb it."""
    directory = OrganizationsDirectory(boto3.Session(), "aws", pool=workers)
    rule = local.proxy.add_rule(
        "organizations:*",
        error_code="TooManyRequestsException",
        message="You have sent too many requests in too short a period of time.",
        when=TokenBucket(rate, burst=rate),
    )
    local.proxy.reset_log()
    error: str | None = None
    started = time.perf_counter()
    try:
        subtree = walk(directory, [unit], include_nested=True, max_workers=workers)
        if set(subtree.accounts) != local.org.accounts_under(unit):
            error = "wrong accounts"
    except Exception as failure:
        error = f"{type(failure).__name__}: {failure}"[:160]
    wall = time.perf_counter() - started
    local.proxy.clear_rules()
    return ThrottledRun(workers, rate, wall, len(_org_calls(local)), rule.fired, error)
