"""Create, Update and Delete of ``Custom::OrgKeyPolicy`` over planning and writing.

This module knows the CloudFormation lifecycle but not crhelper or Lambda. Every request is
idempotent and runs under its resource's lock, so that a re-sync never writes a resource's
keys from properties that a deploy is replacing. All checks run before the first write; a
failed write puts back every key attempted before the failure is reported; the registry
records the resource only after a successful write, and forgets it on Delete.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3

from orgkeypolicy import __version__, keyrefs, planning
from orgkeypolicy.analyzer import AccessAnalyzer, Gate
from orgkeypolicy.aws import KeyInfo, KeyStore, OrganizationsDirectory, identity
from orgkeypolicy.aws import organizations_session as reader_session
from orgkeypolicy.errors import OrgKeyPolicyError
from orgkeypolicy.locks import Leases
from orgkeypolicy.properties import check_organizations_role, parse_properties
from orgkeypolicy.registry import Record, Registry
from orgkeypolicy.settings import Deadline, Settings
from orgkeypolicy.statements import sid_prefix
from orgkeypolicy.writing import Ledger, Writer, rolled_back, write_all

logger = logging.getLogger(__name__)

# The attribute naming the release that answered, so a stack can tell which one changed its keys.
VERSION = "Version"


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


@dataclass
class Outcome:
    physical_id: str
    data: dict[str, str] = field(default_factory=dict)
    keys_written: int = 0
    accounts_granted: int = 0


def resource_lock(prefix: str) -> str:
    return f"resource/{prefix}"


def deploy_leases(session: boto3.Session, settings: Settings, request: Request) -> Leases:
    """The locks of one request. Its family is the resource: CloudFormation sends a resource's
    requests one at a time, so a lock left by an earlier request of it is this request's."""
    if not settings.registry_table:
        raise OrgKeyPolicyError(
            "REGISTRY_TABLE is not set; deploy the provider from template.yaml, which sets it"
        )
    stack = request.stack_id.split("/")[1] if "/" in request.stack_id else request.stack_id
    return Leases(
        session,
        settings.registry_table,
        family=f"{request.sid_prefix}/",
        run_id=request.request_id,
        holder=f"{request.request_type} of {request.logical_id} in stack {stack}",
        pool=settings.key_workers,
    )


def apply(
    request: Request, session: boto3.Session, settings: Settings, deadline: Deadline
) -> Outcome:
    """Create or Update: make every target key carry exactly the wanted statements."""
    prefix = request.sid_prefix
    spec = parse_properties(request.properties, default_role_arn=settings.default_role_arn)
    check_organizations_role(
        spec,
        default_role_arn=settings.default_role_arn,
        assumable_roles=settings.assumable_roles,
    )
    me = identity(session)
    keyrefs.check_refs(spec.key_refs, me)
    leases = deploy_leases(session, settings, request)
    registry = Registry(session, leases.table)
    store = KeyStore(session, pool=settings.key_workers, write_rate=settings.write_rate)
    with leases.held(resource_lock(prefix), deadline.remaining()):
        record = registry.get(prefix)
        reader = OrganizationsDirectory(
            reader_session(session, spec.organizations_role_arn, f"OrgKeyPolicy-{prefix}"),
            me.partition,
            pool=settings.org_workers,
        )
        gate = Gate(AccessAnalyzer(session, pool=settings.key_workers))
        review = gate if settings.access_analyzer and not spec.dry_run else None
        plan = planning.prepare(
            spec,
            prefix,
            reader,
            store,
            me,
            request.old_properties,
            recorded_keys(record),
            settings,
            review,
        )
        planning.log_access(plan)
        writer = Writer(store, leases, settings, review)
        ledger = Ledger()
        if spec.dry_run:
            logger.info("DryRun: nothing written", extra={"keys": [p.key.arn for p in plan.writes]})
            # Nothing was written: the keys of an earlier real deploy still hold its grant.
            written = dict(record.keys) if record and not record.dry_run else {}
        else:
            write_all(writer, plan.writes, deadline, ledger)
            written = {p.key.arn: p.mode.value if p.mode else "" for p in plan.targets}
        try:
            registry.put(
                Record(
                    sid_prefix=prefix,
                    stack_id=request.stack_id,
                    logical_id=request.logical_id,
                    request_id=request.request_id,
                    properties=dict(request.properties),
                    keys=written,
                    policy_digest=plan.data()["PolicyDigest"],
                    dry_run=spec.dry_run,
                    updated_at=now(),
                )
            )
        except OrgKeyPolicyError as error:
            # A grant the registry does not know would escape re-sync and verify: take it back.
            raise rolled_back(error, writer, ledger) from error
    data = {**plan.data(), VERSION: __version__}
    return Outcome(prefix, data, ledger.writes, len(plan.lookup.selection.granted))


def recorded_keys(record: Record | None) -> list[KeyInfo]:
    """The keys the registry says this resource wrote (and may still hold its statements)."""
    return [KeyInfo.at(arn) for arn in record.keys] if record else []


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def delete(
    request: Request, session: boto3.Session, settings: Settings, deadline: Deadline
) -> Outcome:
    """Remove this resource's statements, and nothing else, from every key it wrote.

    A key that is gone or pending deletion is no error, nor are properties that no longer
    validate (Delete after a failed Create): the well-formed key references are used, with
    the keys the registry recorded.
    """
    prefix = request.sid_prefix
    if request.physical_id and request.physical_id != prefix:
        logger.warning("Delete of a physical ID this resource never returned; nothing to remove")
        return Outcome(request.physical_id)
    me = identity(session)
    leases = deploy_leases(session, settings, request)
    registry = Registry(session, leases.table)
    store = KeyStore(session, pool=settings.key_workers, write_rate=settings.write_rate)
    with leases.held(resource_lock(prefix), deadline.remaining()):
        record = registry.get(prefix)
        keys = [
            *keyrefs.resolve_previous(store, request.properties, me, settings.key_workers),
            *recorded_keys(record),
        ]
        cleanups = planning.cleanups(
            prefix,
            store,
            keys,
            settings.key_workers,
            consent=settings.key_consent,
            written=record.keys if record else (),
        )
        writer = Writer(store, leases, settings)
        ledger = write_all(writer, cleanups, deadline)
        try:
            registry.delete(prefix)
        except OrgKeyPolicyError as error:
            # The resource stays (DELETE_FAILED) and so does its record: give its keys back
            # their grant, so that keys, record and stack agree until the Delete is retried.
            raise rolled_back(error, writer, ledger) from error
    arns = ",".join(plan.key.arn for plan in cleanups)
    return Outcome(
        prefix, {"StatementSid": prefix, "KeyArns": arns, VERSION: __version__}, ledger.writes
    )
