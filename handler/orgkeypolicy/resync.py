"""Re-sync: keep every recorded resource's grant true between deploys.

One run reads the registry and brings each resource's keys to what a deploy with the recorded
properties would write now: the same lookup, plan, checks and writer as Create and Update
(``planning``, ``writing``), under the same resource lock. It reports, per resource and key,
what it found and did (``drift``); with ``apply=False`` it writes no key policy: that is
``verify``.

- One ``SharedReader`` per Organizations role, behind one bound on concurrent calls: the
  overlapping OUs of many resources are listed once per run, and their walks together never
  ask Organizations more than one walk would. One ``KeyStore``: its pacer keeps PutKeyPolicy
  under KMS's quota for the whole run.
- Only keys whose managed statements differ are written, each on its own (converged, read
  back, put back on failure): one key failing leaves the resource's other keys fixed.
- Each resource's lock is taken in a family of the run's own per resource
  (``resync/<run>/<prefix>/``): the run never re-enters a deploy's locks, and two resources
  of one run that share a key take turns on it, as two deploys would.
- The record is read again under the lock. A deploy that replaced it during the run may have
  looked the organization up after this run's cache was filled: that resource is looked up
  afresh, so a run never writes an older view of the organization over a deploy's newer one.
- Records are taken least recently synced first: a run that runs out of time leaves the rest
  to the next, which starts with them.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import boto3

from orgkeypolicy import keyrefs, planning
from orgkeypolicy.analyzer import AccessAnalyzer, Gate
from orgkeypolicy.aws import (
    Identity,
    KeyStore,
    OrganizationsDirectory,
    StackDirectory,
    identity,
)
from orgkeypolicy.aws import organizations_session as reader_session
from orgkeypolicy.concurrency import fan_out, settle
from orgkeypolicy.drift import KeyReport, Report, ResourceReport, Status, compare
from orgkeypolicy.errors import InvalidPropertyError, OrgKeyPolicyError
from orgkeypolicy.identifiers import KeyRef
from orgkeypolicy.lifecycle import now, recorded_keys, resource_lock
from orgkeypolicy.locks import Leases
from orgkeypolicy.organization import BoundedReader, Progress, Reader, SharedReader
from orgkeypolicy.planning import KeyPlan, Plan, PolicyReview
from orgkeypolicy.properties import check_organizations_role, parse_properties
from orgkeypolicy.registry import Record, Registry
from orgkeypolicy.settings import Deadline, Settings
from orgkeypolicy.statements import SID_PREFIX_BASE
from orgkeypolicy.writing import Writer, write_all

logger = logging.getLogger(__name__)
_SID_PREFIX = re.compile(rf"{SID_PREFIX_BASE}[0-9a-f]{{16}}")

# The longest wait for a resource that a deploy holds. The deploy writes that resource's keys
# itself, and the next run checks whatever it leaves.
LOCK_WAIT_SECONDS = 60.0
# A whole run when the caller sets no deadline (the command line).
DEFAULT_RUN_SECONDS = 3600.0
DELETED_STACK = "DELETE_COMPLETE"


def run(
    session: boto3.Session,
    settings: Settings,
    *,
    table: str | None = None,
    only: Sequence[str] | None = None,
    apply: bool = False,
    deadline: Deadline | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Check every recorded resource (or those of the Sid prefixes in ``only``) against the
    organization and its keys as they are now; with ``apply``, rewrite the keys that drifted.

    ``verify`` is ``apply=False``: no key policy and no record is written (the resource locks
    are still taken, so that no half-deployed resource is reported as drifted). One resource
    or key failing never stops the others: each failure is in the report. Raises only when the
    registry cannot be read or the caller's identity is unknown. ``progress`` is told the
    resources done and their number as each one ends (the command line's progress bar).
    """
    table = table or settings.registry_table
    if not table:
        raise OrgKeyPolicyError("No registry table: pass its name, or set REGISTRY_TABLE")
    resync = _Run(
        session,
        settings,
        table,
        apply=apply,
        deadline=deadline or Deadline(DEFAULT_RUN_SECONDS),
        run_id=run_id or uuid.uuid4().hex,
    )
    records, unknown = resync.records(only)
    resync.prepare(records)
    done = 0
    counting = threading.Lock()

    def resource(record: Record) -> ResourceReport:
        nonlocal done
        report = resync.resource(record)
        if progress is not None:
            with counting:
                done += 1
                progress(done, len(records))
        return report

    reports = fan_out(resource, records, settings.resource_workers)
    report = Report([*unknown, *reports], applied=apply)
    logger.info("Re-sync finished", extra={"run_id": resync.run_id, **report.summary()})
    return report


class _Run:
    """One run: its clients, caches and time budget, shared by every resource."""

    def __init__(
        self,
        session: boto3.Session,
        settings: Settings,
        table: str,
        *,
        apply: bool,
        deadline: Deadline,
        run_id: str,
    ) -> None:
        self.session = session
        self.settings = settings
        self.table = table
        self.apply = apply
        self.deadline = deadline
        self.run_id = run_id
        # The clients are made here and in ``prepare``, in one thread: making clients from one
        # session is not thread-safe. (The KeyStore makes its own under its lock, and a role
        # first named by a resource redeployed during the run gets its reader under the run's.)
        self.me: Identity = identity(session)
        self.registry = Registry(session, table)
        self.store = KeyStore(session, pool=settings.key_workers, write_rate=settings.write_rate)
        self.stacks = StackDirectory(session)
        # Access Analyzer's review, as a deploy has it, of every policy the run would write.
        self.review: PolicyReview | None = (
            Gate(AccessAnalyzer(session, pool=settings.key_workers))
            if apply and settings.access_analyzer
            else None
        )
        self.leases = Leases(
            session,
            table,
            family=f"resync/{run_id}/",
            run_id=run_id,
            holder=f"Re-sync {run_id}",
            pool=settings.key_workers,
        )
        self._lock = threading.Lock()
        self._readers: dict[str | None, tuple[BoundedReader, SharedReader] | OrgKeyPolicyError] = {}
        self._stack_gone: dict[str, str | OrgKeyPolicyError | None] = {}

    # --- Before the resources ------------------------------------------------------------

    def records(self, only: Sequence[str] | None) -> tuple[list[Record], list[ResourceReport]]:
        """The records to re-sync, least recently synced first, and a report for each
        requested Sid prefix that has none."""
        unknown: list[ResourceReport] = []
        if only is None:
            found = list(self.registry.records())
        else:
            found = []
            for prefix in dict.fromkeys(only):
                record = self.registry.get(prefix)
                if record is None:
                    missing = ResourceReport("", "", prefix)
                    missing.settle(Status.ERROR, f"No record of {prefix} in table {self.table}")
                    unknown.append(missing)
                else:
                    found.append(record)
        found.sort(key=lambda record: (record.synced_at or "", record.updated_at))
        return found, unknown

    def prepare(self, records: Iterable[Record]) -> None:
        """Check each stack and make each Organizations reader once, before the fan-out."""
        for record in records:
            if record.dry_run:
                continue
            if record.stack_id not in self._stack_gone:
                self._stack_gone[record.stack_id] = self._check_stack(record.stack_id)
            try:
                role = self._role(record)
            except InvalidPropertyError:
                continue  # reported when the resource's turn comes
            self._reader_for(role)

    def _check_stack(self, stack_id: str) -> str | OrgKeyPolicyError | None:
        """Why the stack is gone, ``None`` when it exists, or the error that kept us from
        knowing (then the resource is not written)."""
        account = stack_id.split(":")[4] if stack_id.count(":") >= 5 else ""
        if account != self.me.account:
            # Another account's stacks cannot be described from here. The Delete of such a
            # resource still removes its record.
            logger.info("Stack of another account: not checked", extra={"stack_id": stack_id})
            return None
        try:
            status = self.stacks.status(stack_id)
        except OrgKeyPolicyError as error:
            return error
        if status is None or status == DELETED_STACK:
            return f"Stack {stack_id} no longer exists; its resource's keys are left as they are"
        return None

    def _role(self, record: Record) -> str | None:
        spec = parse_properties(record.properties, default_role_arn=self.settings.default_role_arn)
        return spec.organizations_role_arn

    def _reader_for(self, role: str | None) -> tuple[BoundedReader, SharedReader]:
        with self._lock:
            if role not in self._readers:
                try:
                    directory = OrganizationsDirectory(
                        reader_session(self.session, role, f"OrgKeyPolicy-resync-{self.run_id}"),
                        self.me.partition,
                        pool=self.settings.org_workers,
                    )
                    bounded = BoundedReader(directory, self.settings.org_workers)
                    self._readers[role] = (bounded, SharedReader(bounded))
                except OrgKeyPolicyError as error:
                    self._readers[role] = error
            found = self._readers[role]
        if isinstance(found, OrgKeyPolicyError):
            raise found
        return found

    # --- One resource --------------------------------------------------------------------

    def resource(self, seen: Record) -> ResourceReport:
        report = ResourceReport(seen.stack_id, seen.logical_id, seen.sid_prefix)
        try:
            self._resource(seen, report)
        except OrgKeyPolicyError as error:
            report.settle(Status.ERROR, str(error))
        except Exception as error:
            logger.exception("Unexpected failure", extra={"sid_prefix": seen.sid_prefix})
            report.settle(
                Status.ERROR,
                f"Internal error ({type(error).__name__}: {error}); see the function log",
            )
        _log(report)
        return report

    def _resource(self, seen: Record, report: ResourceReport) -> None:
        prefix = seen.sid_prefix
        if seen.dry_run:
            report.settle(Status.DRY_RUN, "DryRun resource: never written")
            return
        gone = self._stack_gone[seen.stack_id]
        if isinstance(gone, OrgKeyPolicyError):
            raise gone
        if gone:
            report.keys = [KeyReport(arn, Status.STACK_GONE, reason=gone) for arn in seen.keys]
            report.settle(Status.STACK_GONE, gone)
            return
        self.deadline.check(f"re-syncing {prefix}; the next run starts with it")
        stack = seen.stack_id.split("/")[1] if "/" in seen.stack_id else seen.stack_id
        leases = self.leases.member(
            family=f"{self.leases.family}{prefix}/",
            run_id=self.run_id,
            holder=f"Re-sync {self.run_id} of {seen.logical_id} in stack {stack}",
        )
        wait = max(0.0, min(LOCK_WAIT_SECONDS, self.deadline.remaining()))
        with leases.held(resource_lock(prefix), wait):
            record = self.registry.get(prefix)
            if record is None:
                report.settle(Status.REMOVED, "Removed by a Delete during the run")
                return
            if record.dry_run:
                report.settle(Status.DRY_RUN, "DryRun resource: never written")
                return
            redeployed = (record.request_id, record.updated_at) != (
                seen.request_id,
                seen.updated_at,
            )
            plan, gone_refs = self._plan(record, redeployed)
            report.keys = [
                _key_report(plan, key, self.review) for key in (*plan.targets, *plan.cleanups)
            ]
            report.keys += _gone(record, plan, gone_refs)
            if self.apply:
                writer = Writer(self.store, leases, self.settings, self.review)
                self._write(writer, record, plan, report)

    def _plan(self, record: Record, redeployed: bool) -> tuple[Plan, list[KeyRef]]:
        """The deploy's plan for the record's properties, and the references that no longer
        name a key."""
        settings = self.settings
        spec = parse_properties(record.properties, default_role_arn=settings.default_role_arn)
        # The deploy's checks of the properties against the provider's settings of now.
        check_organizations_role(
            spec,
            default_role_arn=settings.default_role_arn,
            assumable_roles=settings.assumable_roles,
        )
        keyrefs.check_refs(spec.key_refs, self.me)
        bounded, shared = self._reader_for(spec.organizations_role_arn)
        # Redeployed during this run: its deploy may have read the organization after this
        # run's cache did; read it again rather than write the older view over the newer.
        reader: Reader = SharedReader(bounded) if redeployed else shared
        lookup = planning.look_up(spec, reader, self.me.partition, settings.org_workers)
        gone: list[KeyRef] = []
        targets = keyrefs.resolve_targets(
            self.store, spec.key_refs, self.me, settings.key_workers, gone.append
        )
        keyrefs.check_consent(self.store, targets, settings.key_consent, settings.key_workers)
        previous = recorded_keys(record)
        if gone:
            # A recorded key that no target names now may be the one a vanished alias named:
            # a deploy would refuse these properties, so nothing is taken off such a key.
            named = {key.arn for key in targets}
            previous = [key for key in previous if key.arn in named]
        plan = planning.plan_resource(
            spec,
            record.sid_prefix,
            lookup,
            self.store,
            targets,
            previous,
            settings.key_workers,
            consent=settings.key_consent,
            written=set(record.keys),
        )
        return plan, gone

    def _write(self, writer: Writer, record: Record, plan: Plan, report: ResourceReport) -> None:
        keys = {key.key_arn: key for key in report.keys}
        drifted = [
            (key_plan, keys[key_plan.key.arn])
            for key_plan in (*plan.targets, *plan.cleanups)
            if keys[key_plan.key.arn].status is Status.DRIFT
        ]

        def write(item: tuple[KeyPlan, KeyReport]) -> None:
            key_plan, key = item
            # One key per write_all: a failure puts back that key alone.
            key.rewritten = write_all(writer, [key_plan], self.deadline).writes > 0

        errors = settle(write, drifted, self.settings.key_workers)
        for (_, key), error in zip(drifted, errors, strict=True):
            if error is not None:
                key.status, key.reason = Status.ERROR, str(error)
        if not any(key.status is Status.ERROR for key in report.keys):
            self.registry.mark_synced(record, now())


def _key_report(plan: Plan, key_plan: KeyPlan, review: PolicyReview | None) -> KeyReport:
    arn = key_plan.key.arn
    if key_plan.skipped:
        return KeyReport(arn, Status.KEY_GONE, reason=f"{arn} is {key_plan.skipped}; left as it is")
    difference = compare(key_plan.current, key_plan.wanted)
    try:
        # The deploy's checks, one key at a time: one key that would not fit, or that Access
        # Analyzer refuses, is reported while the others are written.
        planning.check(replace(plan, targets=[key_plan], cleanups=[]), review)
    except OrgKeyPolicyError as error:
        return KeyReport(arn, Status.ERROR, difference, reason=str(error))
    status = Status.DRIFT if key_plan.changed else Status.IN_SYNC
    return KeyReport(arn, status, difference)


def _gone(record: Record, plan: Plan, refs: list[KeyRef]) -> list[KeyReport]:
    """Reports for the references that name no key now, and for the recorded keys that were
    neither planned nor readable."""
    reports: dict[str, KeyReport] = {}
    for ref in refs:
        arn = next(
            (arn for arn in record.keys if ref.text in (arn, arn.rsplit("/", 1)[-1])), ref.text
        )
        reports[arn] = KeyReport(
            arn, Status.KEY_GONE, reason=f"KeyIds: {ref.text} no longer names a key"
        )
    planned = {key_plan.key.arn for key_plan in (*plan.targets, *plan.cleanups)}
    texts = ", ".join(ref.text for ref in refs)
    for arn in record.keys:
        if arn in planned or arn in reports:
            continue
        reason = (
            f"{arn} is no longer named by KeyIds ({texts}); left as it is until a deploy"
            if refs
            else f"{arn} no longer exists"
        )
        reports[arn] = KeyReport(arn, Status.KEY_GONE, reason=reason)
    return list(reports.values())


def _log(report: ResourceReport) -> None:
    for key in report.keys:
        logger.info(
            "Key re-synced" if key.rewritten else "Key checked",
            extra={"sid_prefix": report.sid_prefix, **key.data()},
        )
    logger.info(
        "Resource checked",
        extra={
            "sid_prefix": report.sid_prefix,
            "stack_id": report.stack_id,
            "logical_id": report.logical_id,
            "status": report.status.value,
            "reason": report.reason,
            "keys": len(report.keys),
            "keys_rewritten": sum(key.rewritten for key in report.keys),
        },
    )


def requested(event: Mapping[str, Any]) -> list[str] | None:
    """The Sid prefixes of a direct invocation ``{"resources": [...]}``; ``None``: all."""
    if "resources" not in event:
        return None
    prefixes = event["resources"]
    if not isinstance(prefixes, list) or not prefixes:
        raise ValueError(
            'resources: give a non-empty list of Sid prefixes, e.g. {"resources": '
            f'["{SID_PREFIX_BASE}0123456789abcdef"]}}, or leave it out to re-sync every resource'
        )
    for prefix in prefixes:
        if not isinstance(prefix, str) or not _SID_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"resources: {prefix!r} is not a Sid prefix ({SID_PREFIX_BASE} and 16 hex "
                "digits: the StatementSid attribute of the resource)"
            )
    return prefixes
