"""Create, Update and Delete of ``Custom::OrgKeyPolicy`` as plain functions.

This module knows the CloudFormation lifecycle but not crhelper or Lambda: a command-line
tool can call it with a boto3 session. Every request is idempotent. All checks (properties,
organization membership, keys, policy sizes) run before the first write, and a failed write
puts back the keys already changed before the failure is reported.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import boto3

from orgkeypolicy import keypolicy
from orgkeypolicy.aws import (
    Identity,
    KeyInfo,
    KeyStore,
    OrganizationsDirectory,
    identity,
    is_missing,
    organizations_session,
)
from orgkeypolicy.errors import (
    DeadlineExceededError,
    InvalidPropertyError,
    KeyAccessError,
    OrgKeyPolicyError,
)
from orgkeypolicy.identifiers import KeyRef
from orgkeypolicy.organization import Account, Selection, Subtree, select_accounts, walk
from orgkeypolicy.properties import (
    KEY_IDS,
    PrincipalMode,
    Spec,
    key_refs_leniently,
    parse_properties,
)
from orgkeypolicy.statements import Grantees, Statement, build_statements, digest, sid_prefix

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Request:
    """The parts of a CloudFormation request that the lifecycle needs."""

    request_type: str
    stack_id: str
    logical_id: str
    request_id: str
    properties: Mapping[str, Any]
    old_properties: Mapping[str, Any] | None = None
    physical_id: str | None = None

    @property
    def sid_prefix(self) -> str:
        return sid_prefix(self.stack_id, self.logical_id)


@dataclass(frozen=True)
class Settings:
    """Tuning that is the operator's, not the stack author's: read from the environment."""

    # Organizations throttles early and documents no rate: 8 concurrent listings walk a
    # 5,000-account tree about 5x faster than one at a time (bench/), and more only add
    # refused calls under throttling.
    org_workers: int = 8
    # A key's write is mostly waiting (the lock, the read-back delay): every key of a resource
    # (at most 50) can wait at once; KMS throttling is absorbed by the retries.
    key_workers: int = 50
    verify_delay: float = 1.0
    write_attempts: int = 4
    default_role_arn: str | None = None

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ
        return cls(
            org_workers=int(env.get("ORG_WALK_CONCURRENCY", cls.org_workers)),
            key_workers=int(env.get("KEY_WRITE_CONCURRENCY", cls.key_workers)),
            verify_delay=float(env.get("VERIFY_DELAY_SECONDS", cls.verify_delay)),
            default_role_arn=env.get("ORGANIZATIONS_ROLE_ARN") or None,
        )


class Deadline:
    """The time left before the answer to CloudFormation must go out."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def check(self, doing: str) -> None:
        if self.remaining() <= 0:
            raise DeadlineExceededError(f"Out of time before {doing}; raise the function timeout")


@dataclass
class Outcome:
    physical_id: str
    data: dict[str, str] = field(default_factory=dict)
    keys_written: int = 0
    accounts_granted: int = 0


@dataclass
class KeyPlan:
    """One key's change: its policy as read and this resource's statements as wanted."""

    key: KeyInfo
    before: keypolicy.Policy
    wanted: list[Statement]
    mode: PrincipalMode | None = None
    writes: int = 0


# --- Create and Update ------------------------------------------------------------------------


def apply(
    request: Request, session: boto3.Session, settings: Settings, deadline: Deadline
) -> Outcome:
    """Create or Update: make every target key carry exactly the wanted statements."""
    prefix = request.sid_prefix
    spec = parse_properties(request.properties, default_role_arn=settings.default_role_arn)
    me = identity(session)
    _check_refs(spec.key_refs, me)
    org_session = organizations_session(
        session, spec.organizations_role_arn, f"OrgKeyPolicy-{prefix}"
    )
    directory = OrganizationsDirectory(org_session, me.partition, pool=settings.org_workers)
    lookup = _lookup(spec, directory, settings, me.partition)
    store = KeyStore(session, pool=settings.key_workers)
    targets = _resolve(store, spec.key_refs, me, settings)
    old = _resolve_leniently(store, request.old_properties, me, settings)
    kept = {key.arn for key in targets}
    dropped = list({key.arn: key for _, key in old if key and key.arn not in kept}.values())
    keys = [*targets, *dropped]
    befores = dict(
        zip(
            [key.arn for key in keys],
            _map(lambda key: keypolicy.parse(store.read(key)), keys, settings.key_workers),
            strict=True,
        )
    )
    stale = _stale_alias_regions(old, befores, prefix, me)
    plans = [_plan(spec, prefix, lookup, key, befores[key.arn]) for key in targets]
    plans += [KeyPlan(key, befores[key.arn], []) for key in dropped]
    plans += [KeyPlan(key, policy, []) for key, policy in _orphans(store, prefix, stale, kept)]
    for plan in plans:
        problems = keypolicy.unsafe_reasons(plan.wanted)
        if problems:
            raise OrgKeyPolicyError(f"Refusing unsafe statements: {'; '.join(problems)}")
        after = keypolicy.merge(plan.before, prefix, plan.wanted)
        keypolicy.check_size(after, plan.key.arn, len(lookup.selection.granted))
    _log_selection(lookup.selection)
    if not spec.dry_run:
        _write_all(store, plans, prefix, settings, deadline)
    else:
        logger.info("DryRun: nothing written", extra={"keys": [p.key.arn for p in plans]})
    granted = lookup.selection.granted
    data = {
        "OrganizationId": lookup.grantees.organization_id,
        "AccountCount": str(len(granted)),
        "AccountIds": ",".join(granted),
        "KeyArns": ",".join(plan.key.arn for plan in plans[: len(targets)]),
        "PrincipalModes": ",".join(
            str(plan.mode.value if plan.mode else "") for plan in plans[: len(targets)]
        ),
        "PolicyDigest": digest({plan.key.arn: plan.wanted for plan in plans[: len(targets)]}),
        "StatementSid": prefix,
        "DryRun": str(spec.dry_run).lower(),
    }
    return Outcome(prefix, data, sum(plan.writes for plan in plans), len(granted))


@dataclass
class _Lookup:
    grantees: Grantees
    selection: Selection
    paths: Callable[[], tuple[str, ...]]


def _lookup(
    spec: Spec, directory: OrganizationsDirectory, settings: Settings, partition: str
) -> _Lookup:
    """One organization lookup per request, shared by every key."""
    organization_id = directory.organization_id()
    subtree = (
        walk(
            directory,
            spec.ou_ids,
            include_nested=spec.include_nested_ous,
            max_workers=settings.org_workers,
        )
        if spec.ou_ids
        else Subtree()
    )
    explicit: list[Account] = _map(directory.account, spec.account_ids, settings.org_workers)
    selection = select_accounts(subtree.accounts.values(), explicit, spec.exclude_account_ids)
    grantees = Grantees(
        organization_id=organization_id,
        partition=partition,
        accounts=selection.granted,
        outside_units=tuple(a for a in selection.granted if a not in subtree.accounts),
        excluded=tuple(sorted(spec.exclude_account_ids)),
        include_nested=spec.include_nested_ous,
    )
    cache: list[tuple[str, ...]] = []

    def paths() -> tuple[str, ...]:
        # Paths cost Organizations calls and only OrgPaths (or Auto, when too large) needs them.
        if not cache:
            cache.append(
                tuple(
                    _map(
                        lambda unit: directory.unit_path(organization_id, unit),
                        spec.ou_ids,
                        settings.org_workers,
                    )
                )
            )
        return cache[0]

    return _Lookup(grantees, selection, paths)


def _plan(
    spec: Spec, prefix: str, lookup: _Lookup, key: KeyInfo, before: keypolicy.Policy
) -> KeyPlan:
    mode = spec.principal_mode
    if mode is PrincipalMode.AUTO:
        wanted = build_statements(spec, prefix, lookup.grantees, PrincipalMode.ACCOUNTS)
        if keypolicy.size(keypolicy.merge(before, prefix, wanted)) <= keypolicy.MAX_POLICY_BYTES:
            return KeyPlan(key, before, wanted, PrincipalMode.ACCOUNTS)
        mode = PrincipalMode.ORG_PATHS
    grantees = lookup.grantees
    if mode is PrincipalMode.ORG_PATHS:
        grantees = replace(grantees, unit_paths=lookup.paths())
    return KeyPlan(key, before, build_statements(spec, prefix, grantees, mode), mode)


def _check_refs(refs: Iterable[KeyRef], me: Identity) -> None:
    for ref in refs:
        if ref.account is not None and ref.account != me.account:
            raise InvalidPropertyError(
                KEY_IDS,
                ref.text,
                f"is in account {ref.account}, not {me.account}",
                "only keys of the function's own account can be changed",
            )
        if ref.partition is not None and ref.partition != me.partition:
            raise InvalidPropertyError(KEY_IDS, ref.text, f"is not in partition {me.partition}")


def _resolve(
    store: KeyStore, refs: Sequence[KeyRef], me: Identity, settings: Settings
) -> list[KeyInfo]:
    """Resolve every reference to a key of this account, or refuse before anything is written."""
    keys: dict[str, KeyInfo] = {}
    for ref, key in zip(refs, _map(store.describe, refs, settings.key_workers), strict=True):
        if key is None:
            raise InvalidPropertyError(
                KEY_IDS, ref.text, "does not exist", "check the ID, alias and region"
            )
        if key.manager != "CUSTOMER":
            raise InvalidPropertyError(
                KEY_IDS, ref.text, "is an AWS managed key", "its policy cannot change"
            )
        if key.account != me.account:
            raise InvalidPropertyError(
                KEY_IDS, ref.text, f"is in account {key.account}", "use a key of this account"
            )
        if key.state in ("PendingDeletion", "PendingReplicaDeletion"):
            raise InvalidPropertyError(
                KEY_IDS, ref.text, "is pending deletion", "cancel the deletion or drop the key"
            )
        if key.state == "Disabled":
            logger.warning(
                "Key is disabled; its policy is updated all the same", extra={"key": key.arn}
            )
        keys.setdefault(key.arn, key)
    return list(keys.values())


def _resolve_leniently(
    store: KeyStore, properties: Mapping[str, Any] | None, me: Identity, settings: Settings
) -> list[tuple[KeyRef, KeyInfo | None]]:
    """The key each well-formed reference of ``properties`` names now (``None``: none of ours).

    For the old side of an Update and for Delete: their properties may no longer validate,
    and their keys may be gone, yet the statements this resource wrote must still be found.
    """
    if properties is None:
        return []
    refs = [ref for ref in key_refs_leniently(properties) if ref.account in (None, me.account)]
    found = _map(store.describe, refs, settings.key_workers)
    return [
        (ref, key if key and key.account == me.account and key.manager == "CUSTOMER" else None)
        for ref, key in zip(refs, found, strict=True)
    ]


def _stale_alias_regions(
    resolved: Iterable[tuple[KeyRef, KeyInfo | None]],
    policies: Mapping[str, keypolicy.Policy],
    prefix: str,
    me: Identity,
) -> set[str]:
    """Regions where an alias no longer leads to a key holding this resource's statements.

    An alias can be re-pointed, or deleted, between deploys: the key it named before keeps
    this resource's statements, and only a look through the region's keys finds it.
    """
    return {
        ref.region or me.region
        for ref, key in resolved
        if ref.is_alias
        and (key is None or not keypolicy.managed(policies.get(key.arn, {}), prefix))
    }


def _orphans(
    store: KeyStore, prefix: str, regions: set[str], known: set[str]
) -> list[tuple[KeyInfo, keypolicy.Policy]]:
    """Keys in ``regions``, other than ``known``, that still hold this resource's statements."""
    if not regions:
        return []
    logger.info("Looking for keys an alias used to name", extra={"regions": sorted(regions)})
    arns = [arn for region in sorted(regions) for arn in store.key_arns(region) if arn not in known]

    def holding(arn: str) -> tuple[KeyInfo, keypolicy.Policy] | None:
        key = store.key_at(arn)
        try:
            policy = keypolicy.parse(store.read(key))
        except KeyAccessError:
            # Keys this function may not read (AWS managed ones) cannot hold its statements.
            return None
        return (key, policy) if keypolicy.managed(policy, prefix) else None

    return [found for found in _map(holding, arns, store.pool) if found]


def _log_selection(selection: Selection) -> None:
    if selection.inactive:
        logger.info(
            "Accounts not granted because they are not ACTIVE",
            extra={"accounts": dict(selection.inactive)},
        )
    if selection.excluded:
        logger.info(
            "Accounts not granted because they are excluded",
            extra={"accounts": list(selection.excluded)},
        )


# --- Writing ----------------------------------------------------------------------------------


def _write_all(
    store: KeyStore, plans: list[KeyPlan], prefix: str, settings: Settings, deadline: Deadline
) -> None:
    """Write every plan in parallel; on any failure put every key back before raising."""
    results = _map_settled(
        lambda plan: _settle(store, plan, prefix, plan.wanted, settings, deadline),
        plans,
        settings.key_workers,
    )
    failures = [
        (plan, error) for plan, error in zip(plans, results, strict=True) if error is not None
    ]
    if not failures:
        return
    plan, error = failures[0]
    logger.error(
        "Write failed; restoring the keys already changed",
        extra={"key": plan.key.arn, "error": str(error)},
    )
    touched = [p for p in plans if p.writes]
    restore = _map_settled(
        lambda p: _settle(store, p, prefix, keypolicy.managed(p.before, prefix), settings, None),
        touched,
        settings.key_workers,
    )
    unrestored = [p.key.arn for p, e in zip(touched, restore, strict=True) if e is not None]
    if unrestored:
        logger.error("Could not restore keys", extra={"keys": unrestored})
        # First: the keys left changed must survive the reason's length limit.
        raise OrgKeyPolicyError(f"NOT restored: {','.join(unrestored)}; {error}") from error
    raise OrgKeyPolicyError(f"{error}; {len(touched)} changed keys restored") from error


def _settle(
    store: KeyStore,
    plan: KeyPlan,
    prefix: str,
    wanted: list[Statement],
    settings: Settings,
    deadline: Deadline | None,
) -> None:
    """``_converge``, where removing statements from a key that is gone or going is done."""
    try:
        _converge(store, plan, prefix, wanted, settings, deadline)
    except KeyAccessError as error:
        if wanted or not is_missing(error):
            raise
        logger.info(
            "Key is gone or pending deletion; nothing to remove", extra={"key": plan.key.arn}
        )


# Waiting for another writer's lock when putting keys back, where no deadline applies.
RESTORE_LOCK_WAIT = 30.0


def _converge(
    store: KeyStore,
    plan: KeyPlan,
    prefix: str,
    wanted: list[Statement],
    settings: Settings,
    deadline: Deadline | None,
) -> None:
    """Make the key hold exactly ``wanted`` as this resource's statements, foreign ones untouched.

    Under the key's write lock, so that this project's writers take turns; the policy is read
    afresh under it. Writers that take no lock (people, other tools) can still replace the
    policy between our read and our write: reading back after a short wait, and merging again
    when our statements went missing, keeps both.
    """
    wait = deadline.remaining() if deadline is not None else RESTORE_LOCK_WAIT
    with store.locked(plan.key, wait):
        policy = keypolicy.parse(store.read(plan.key))
        for _ in range(settings.write_attempts):
            if keypolicy.managed(policy, prefix) == wanted:
                return
            target = keypolicy.merge(policy, prefix, wanted)
            keypolicy.check_size(target, plan.key.arn, _principal_count(wanted))
            if deadline is not None:
                deadline.check(f"writing {plan.key.arn}")
            store.write(plan.key, keypolicy.serialize(target))
            plan.writes += 1
            # Jitter keeps two writers that collided from colliding again.
            time.sleep(settings.verify_delay * random.uniform(1.0, 1.5))  # noqa: S311
            if deadline is not None:
                deadline.check(f"reading back {plan.key.arn}")
            policy = keypolicy.parse(store.read(plan.key))
    if keypolicy.managed(policy, prefix) != wanted:
        raise KeyAccessError(
            f"{plan.key.arn}: statements missing after {settings.write_attempts} writes; "
            "another writer keeps replacing this key policy"
        )


def _principal_count(statements: Iterable[Statement]) -> int:
    principals: set[str] = set()
    for statement in statements:
        value = statement["Principal"]["AWS"]
        principals.update([value] if isinstance(value, str) else value)
    return len(principals)


# --- Delete -----------------------------------------------------------------------------------


def delete(
    request: Request, session: boto3.Session, settings: Settings, deadline: Deadline
) -> Outcome:
    """Remove this resource's statements, and nothing else, from the keys it names.

    A key that is gone or pending deletion is no error, nor are properties that no longer
    validate (Delete after a failed Create): the well-formed key references are used.
    """
    prefix = request.sid_prefix
    if request.physical_id and request.physical_id != prefix:
        logger.warning("Delete of a physical ID this resource never returned; nothing to remove")
        return Outcome(request.physical_id)
    me = identity(session)
    store = KeyStore(session, pool=settings.key_workers)
    resolved = _resolve_leniently(store, request.properties, me, settings)
    keys = list({key.arn: key for _, key in resolved if key}.values())

    def read(key: KeyInfo) -> keypolicy.Policy | None:
        try:
            return keypolicy.parse(store.read(key))
        except KeyAccessError as error:
            if is_missing(error):
                logger.info(
                    "Key is gone or pending deletion; nothing to remove", extra={"key": key.arn}
                )
                return None
            raise

    policies = {
        key.arn: policy
        for key, policy in zip(keys, _map(read, keys, settings.key_workers), strict=True)
        if policy is not None
    }
    stale = _stale_alias_regions(resolved, policies, prefix, me)
    plans = [KeyPlan(key, policies[key.arn], []) for key in keys if key.arn in policies]
    plans += [
        KeyPlan(key, policy, []) for key, policy in _orphans(store, prefix, stale, set(policies))
    ]

    def remove(plan: KeyPlan) -> int:
        _settle(store, plan, prefix, [], settings, deadline)
        return plan.writes

    writes = _map(remove, plans, settings.key_workers)
    arns = ",".join(plan.key.arn for plan in plans)
    return Outcome(prefix, {"StatementSid": prefix, "KeyArns": arns}, sum(writes))


# --- Concurrency helpers ----------------------------------------------------------------------


def _map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``fn`` over ``items`` on a bounded pool, in order; the first error is raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def _map_settled(
    fn: Callable[[T], object], items: Sequence[T], workers: int
) -> list[BaseException | None]:
    """Run ``fn`` over every item even when some fail; the error of each, or ``None``."""

    def settled(item: T) -> BaseException | None:
        try:
            fn(item)
        except Exception as error:
            return error
        return None

    return _map(settled, items, workers)
