"""One resource's plan: its keys resolved, the organization looked up, every key's wanted
statements merged and checked. Nothing is written here.

The custom resource (Create/Update), the re-sync and the command line's ``plan`` all go
through :func:`plan_resource` and :func:`check`; only ``orgkeypolicy.writing`` changes a key
policy. Every check runs before the first write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orgkeypolicy import keypolicy, keyrefs
from orgkeypolicy.aws import Identity, KeyInfo, KeyStore, is_denied, is_missing
from orgkeypolicy.concurrency import fan_out
from orgkeypolicy.errors import (
    InvalidPropertyError,
    KeyAccessError,
    OrgKeyPolicyError,
)
from orgkeypolicy.organization import Account, Reader, Selection, Subtree, select_accounts, walk
from orgkeypolicy.properties import KEY_IDS, PrincipalMode, Spec
from orgkeypolicy.settings import KeyConsent, Settings
from orgkeypolicy.statements import Grantees, Statement, build_statements, digest

logger = logging.getLogger(__name__)

PolicyReview = Callable[["KeyPlan", keypolicy.Policy], None]
"""A last look at a policy about to be written (Access Analyzer); raises to stop the write."""


# --- The organization -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    """Who one resource grants, as the organization is now."""

    grantees: Grantees
    selection: Selection
    _paths: Callable[[], tuple[str, ...]] = field(repr=False)

    def paths(self) -> tuple[str, ...]:
        """The ``aws:PrincipalOrgPaths`` of the named units (OrgPaths mode only: they cost
        Organizations calls)."""
        return self._paths()


def look_up(spec: Spec, reader: Reader, partition: str, workers: int) -> Lookup:
    """One organization lookup per resource, shared by every key."""
    organization_id = reader.organization_id()
    subtree = (
        walk(reader, spec.ou_ids, include_nested=spec.include_nested_ous, max_workers=workers)
        if spec.ou_ids
        else Subtree()
    )
    explicit: list[Account] = fan_out(reader.account, spec.account_ids, workers)
    selection = select_accounts(subtree.accounts.values(), explicit, spec.exclude_account_ids)
    grantees = Grantees(
        organization_id=organization_id,
        partition=partition,
        accounts=selection.granted,
        outside_units=tuple(a for a in selection.granted if a not in subtree.accounts),
        excluded=tuple(sorted(spec.exclude_account_ids)),
        include_nested=spec.include_nested_ous,
    )
    found: list[tuple[str, ...]] = []

    def paths() -> tuple[str, ...]:
        if not found:
            found.append(
                tuple(
                    fan_out(
                        lambda unit: reader.unit_path(organization_id, unit), spec.ou_ids, workers
                    )
                )
            )
        return found[0]

    return Lookup(grantees, selection, paths)


# --- The plan ---------------------------------------------------------------------------------


@dataclass
class KeyPlan:
    """One key: its policy as read, and this resource's statements as wanted on it."""

    key: KeyInfo
    prefix: str
    before: keypolicy.Policy
    wanted: list[Statement]
    mode: PrincipalMode | None = None
    skipped: str | None = None
    """Why the key is left as it is (a deployed key now pending deletion), or ``None``."""

    @property
    def current(self) -> list[Statement]:
        return keypolicy.managed(self.before, self.prefix)

    @property
    def changed(self) -> bool:
        return self.skipped is None and self.current != self.wanted

    def after(self) -> keypolicy.Policy:
        return (
            self.before if self.skipped else keypolicy.merge(self.before, self.prefix, self.wanted)
        )


@dataclass
class Plan:
    prefix: str
    spec: Spec
    lookup: Lookup
    targets: list[KeyPlan]
    """The keys of ``KeyIds``, in their order."""
    cleanups: list[KeyPlan]
    """Keys this resource may have written before and no longer targets: to be emptied."""

    @property
    def writes(self) -> list[KeyPlan]:
        """Every key to converge; a skipped key is left alone."""
        return [plan for plan in (*self.targets, *self.cleanups) if plan.skipped is None]

    def data(self) -> dict[str, str]:
        """The ``Fn::GetAtt`` attributes."""
        granted = self.lookup.selection.granted
        return {
            "OrganizationId": self.lookup.grantees.organization_id,
            "AccountCount": str(len(granted)),
            "AccountIds": ",".join(granted),
            "KeyArns": ",".join(plan.key.arn for plan in self.targets),
            "PrincipalModes": ",".join(
                plan.mode.value if plan.mode else "" for plan in self.targets
            ),
            "PolicyDigest": digest({plan.key.arn: plan.wanted for plan in self.targets}),
            "StatementSid": self.prefix,
            "DryRun": str(self.spec.dry_run).lower(),
        }


def plan_resource(
    spec: Spec,
    prefix: str,
    lookup: Lookup,
    store: KeyStore,
    targets: Sequence[KeyInfo],
    previous: Sequence[KeyInfo],
    workers: int,
    *,
    consent: KeyConsent | None = None,
    written: Collection[str] = (),
) -> Plan:
    """Read every key's policy and compute what this resource wants on it.

    ``previous`` are the keys this resource may have written before (the old properties'
    keys, the registry's record): those no longer among ``targets`` are emptied of its
    statements. A target pending deletion is refused, unless this resource already holds
    statements on it: then it is left as it is, so that a key scheduled for deletion after a
    deploy never blocks an Update or CloudFormation's rollback. ``consent`` and ``written``
    are as in :func:`cleanups`.
    """
    deployed = {key.arn for key in previous}
    befores = fan_out(lambda key: _read(store, key), targets, workers)
    plans: list[KeyPlan] = []
    for key, before in zip(targets, befores, strict=True):
        if before is None and not key.pending_deletion:
            raise InvalidPropertyError(
                KEY_IDS, key.ref.text, "does not exist", "check the ID, alias and region"
            )
        plan = _plan_key(spec, prefix, lookup, key, before or {"Statement": []})
        if key.pending_deletion:
            if key.arn not in deployed and not plan.current:
                raise InvalidPropertyError(
                    KEY_IDS, key.ref.text, "is pending deletion", "cancel the deletion or drop it"
                )
            plan.skipped = "pending deletion"
            logger.warning(
                "Key is pending deletion; its statements are left as they are",
                extra={"key": key.arn},
            )
        plans.append(plan)
    known = {key.arn for key in targets}
    dropped = [key for key in previous if key.arn not in known]
    emptied = cleanups(prefix, store, dropped, workers, consent=consent, written=written)
    return Plan(prefix, spec, lookup, plans, emptied)


def cleanups(
    prefix: str,
    store: KeyStore,
    keys: Sequence[KeyInfo],
    workers: int,
    *,
    consent: KeyConsent | None = None,
    written: Collection[str] = (),
) -> list[KeyPlan]:
    """Plans that empty ``keys`` (one each) of this resource's statements; a key that is gone
    or pending deletion and unreadable has nothing left to remove.

    With ``consent``, a key whose policy the provider may not read because it lacks the tag
    is passed over when this resource never wrote it (a Create refused for that key, then
    its Delete), and is an error naming the fix when it is among the ``written`` key ARNs:
    its statements stay until the tag is back.
    """
    unique = list({key.arn: key for key in keys}.values())

    def read(key: KeyInfo) -> keypolicy.Policy | None:
        try:
            return _read(store, key)
        except KeyAccessError as error:
            if consent is None or not is_denied(error) or consent.given(store.tags(key)):
                raise
            if key.arn in written:
                logger.warning(
                    "Key lost its consent tag and still holds this resource's statements",
                    extra={"key": key.arn, "tag": consent.tag},
                )
                raise KeyAccessError(
                    "This resource's statements stay on a key that lost its consent tag; "
                    f"to remove them, tag it again: {keyrefs.tag_command(consent, key)}"
                ) from error
            logger.warning(
                "Key passed over: it lacks the consent tag and this resource's record holds "
                "no write to it",
                extra={"key": key.arn, "tag": consent.tag},
            )
            return None

    befores = fan_out(read, unique, workers)
    return [
        KeyPlan(key, prefix, before, [])
        for key, before in zip(unique, befores, strict=True)
        if before is not None
    ]


def _read(store: KeyStore, key: KeyInfo) -> keypolicy.Policy | None:
    """The key's policy, or ``None`` when the key is gone or pending deletion and unreadable."""
    try:
        return keypolicy.parse(store.read(key))
    except KeyAccessError as error:
        if not is_missing(error):
            raise
        logger.info("Key is gone or pending deletion", extra={"key": key.arn})
        return None


def _plan_key(
    spec: Spec, prefix: str, lookup: Lookup, key: KeyInfo, before: keypolicy.Policy
) -> KeyPlan:
    mode = spec.principal_mode
    if mode is PrincipalMode.AUTO:
        wanted = build_statements(spec, prefix, lookup.grantees, PrincipalMode.ACCOUNTS)
        if keypolicy.size(keypolicy.merge(before, prefix, wanted)) <= keypolicy.MAX_POLICY_BYTES:
            return KeyPlan(key, prefix, before, wanted, PrincipalMode.ACCOUNTS)
        mode = PrincipalMode.ORG_PATHS
    grantees = lookup.grantees
    if mode is PrincipalMode.ORG_PATHS:
        grantees = replace(grantees, unit_paths=lookup.paths())
    return KeyPlan(key, prefix, before, build_statements(spec, prefix, grantees, mode), mode)


def check(plan: Plan, review: PolicyReview | None = None) -> None:
    """Every check that must pass before the first write, naming the key and the fix; then
    ``review`` (Access Analyzer) of every policy that gains statements."""
    accounts = len(plan.lookup.selection.granted)
    for key_plan in plan.writes:
        problems = keypolicy.unsafe_reasons(key_plan.wanted)
        if problems:
            raise OrgKeyPolicyError(f"Refusing unsafe statements: {'; '.join(problems)}")
        after = key_plan.after()
        keypolicy.check_variables(after, key_plan.key.arn, key_plan.wanted)
        keypolicy.check_size(after, key_plan.key.arn, accounts)
    if review is not None:
        fan_out(
            lambda key_plan: review(key_plan, key_plan.after()),
            [key_plan for key_plan in plan.writes if key_plan.wanted and key_plan.changed],
            len(plan.writes) or 1,
        )


def prepare(
    spec: Spec,
    prefix: str,
    reader: Reader,
    store: KeyStore,
    me: Identity,
    previous_properties: Mapping[str, Any] | None,
    recorded: Sequence[KeyInfo],
    settings: Settings,
    review: PolicyReview | None = None,
) -> Plan:
    """The checked plan of a Create or Update: the organization looked up, the keys resolved,
    every key's policy read and merged, every check passed (and ``review``, see
    :func:`check`). Writes nothing.

    ``previous_properties`` are the properties deployed before (an Update's old ones) and
    ``recorded`` the keys the registry says this resource wrote: the keys of either that are
    no longer targets are emptied of its statements.
    """
    lookup = look_up(spec, reader, me.partition, settings.org_workers)
    targets = keyrefs.resolve_targets(store, spec.key_refs, me, settings.key_workers)
    keyrefs.check_consent(store, targets, settings.key_consent, settings.key_workers)
    previous = [
        *keyrefs.resolve_previous(store, previous_properties, me, settings.key_workers),
        *recorded,
    ]
    plan = plan_resource(
        spec,
        prefix,
        lookup,
        store,
        targets,
        previous,
        settings.key_workers,
        consent=settings.key_consent,
        written={key.arn for key in recorded},
    )
    check(plan, review)
    return plan


# --- What a plan grants -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeySummary:
    key_arn: str
    mode: str | None
    """The principal mode written (what ``Auto`` picked); ``None`` on a key being emptied."""
    change: str
    """``add``, ``update``, ``remove``, ``unchanged`` or ``skip (<why>)``."""


@dataclass(frozen=True)
class AccessSummary:
    """Who one resource grants, who it leaves out and why, and what happens on each key."""

    organization_id: str
    granted: tuple[str, ...]
    not_granted: Mapping[str, str]
    """Account -> why: its state (``SUSPENDED``, ``PENDING_CLOSURE``…) or ``excluded``."""
    keys: tuple[KeySummary, ...]

    def data(self) -> dict[str, Any]:
        return {
            "organization_id": self.organization_id,
            "accounts_granted": list(self.granted),
            "accounts_not_granted": dict(self.not_granted),
            "keys": [
                {"key_arn": key.key_arn, "mode": key.mode, "change": key.change}
                for key in self.keys
            ],
        }


def access_summary(plan: Plan) -> AccessSummary:
    """What the function logs on every Create and Update, and what ``orgkeypolicy plan``
    prints: one account list for the resource (every key grants the same accounts)."""
    selection = plan.lookup.selection
    not_granted = {account: selection.inactive[account] for account in sorted(selection.inactive)}
    not_granted.update((account, "excluded") for account in selection.excluded)
    return AccessSummary(
        organization_id=plan.lookup.grantees.organization_id,
        granted=selection.granted,
        not_granted=not_granted,
        keys=tuple(
            KeySummary(key.key.arn, key.mode.value if key.mode else None, key_change(key))
            for key in (*plan.targets, *plan.cleanups)
        ),
    )


def key_change(key: KeyPlan) -> str:
    """What carrying out the plan does to the key, in a word."""
    if key.skipped:
        return f"skip ({key.skipped})"
    if not key.changed:
        return "unchanged"
    if not key.wanted:
        return "remove"
    return "update" if key.current else "add"


def log_access(plan: Plan) -> None:
    """The access summary, logged before the writes (so a failed write still shows it)."""
    summary = access_summary(plan)
    logger.info(
        "Access summary: %d accounts granted, %d not granted, %d keys%s",
        len(summary.granted),
        len(summary.not_granted),
        len(summary.keys),
        " (DryRun: nothing is written)" if plan.spec.dry_run else "",
        extra={**summary.data(), "dry_run": plan.spec.dry_run},
    )
