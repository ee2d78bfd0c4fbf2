"""The only code that changes a key policy: lock, converge, read back, put back.

Every writer (a deploy, a re-sync, the command line's ``resync --apply``) goes through
:func:`write_all`. Each key's read-merge-write runs under the key's lock, and the policy is
read back after a short wait and merged again when this resource's statements went missing
(writers that take no lock, people and other tools, can replace the policy at any moment).

What may have changed is every key a write was *attempted* on, answered or not: a
``PutKeyPolicy`` whose answer is lost may still have landed. The :class:`Ledger` records each
attempt before it is made, and a failure puts every attempted key back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from orgkeypolicy import keypolicy
from orgkeypolicy.aws import KeyStore, is_missing
from orgkeypolicy.concurrency import settle
from orgkeypolicy.errors import KeyAccessError, OrgKeyPolicyError, clip
from orgkeypolicy.locks import Leases
from orgkeypolicy.planning import KeyPlan, PolicyReview
from orgkeypolicy.settings import Deadline, Settings
from orgkeypolicy.statements import Statement

logger = logging.getLogger(__name__)

# Waiting for another writer's lock when putting keys back, where no deadline applies.
RESTORE_LOCK_WAIT = 30.0
# Key IDs are unique across regions and 36 characters long: this many fit in a reason.
_IDS_IN_A_REASON = 4


def key_lock(key_arn: str) -> str:
    return f"key/{key_arn}"


@dataclass
class Ledger:
    """The keys a write was attempted on, in the order attempted, and how many writes."""

    attempted: dict[str, KeyPlan] = field(default_factory=dict)
    writes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempt(self, plan: KeyPlan) -> None:
        with self._lock:
            self.attempted.setdefault(plan.key.arn, plan)
            self.writes += 1


@dataclass(frozen=True)
class Writer:
    """What a writer needs besides the plans: where keys live, its locks, its tuning."""

    store: KeyStore
    leases: Leases
    settings: Settings
    review: PolicyReview | None = None


def write_all(
    writer: Writer, plans: list[KeyPlan], deadline: Deadline, ledger: Ledger | None = None
) -> Ledger:
    """Converge every plan in parallel; on any failure put every attempted key back, then raise.

    The error raised names the first failure and, first in the reason, any key that could not
    be put back.
    """
    ledger = ledger if ledger is not None else Ledger()
    errors = settle(
        lambda plan: converge(writer, plan, plan.wanted, deadline, ledger),
        plans,
        writer.settings.key_workers,
    )
    failures = [(plan, error) for plan, error in zip(plans, errors, strict=True) if error]
    if not failures:
        return ledger
    plan, error = failures[0]
    logger.error(
        "Write failed; restoring the keys already changed",
        extra={"key": plan.key.arn, "error": str(error), "failed_keys": len(failures)},
    )
    raise rolled_back(error, writer, ledger) from error


def rolled_back(error: Exception, writer: Writer, ledger: Ledger) -> OrgKeyPolicyError:
    """Put back every attempted key; the error to report, naming first any key left changed
    (the reason's length limit must spare them)."""
    unrestored = put_back(writer, ledger)
    if unrestored:
        return OrgKeyPolicyError(f"{_not_restored(unrestored)}; {error}")
    return OrgKeyPolicyError(f"{error}; {len(ledger.attempted)} changed keys restored")


def put_back(writer: Writer, ledger: Ledger) -> list[str]:
    """Give every attempted key back this resource's statements as they were before; the ARNs
    of the keys that could not be put back."""
    attempted = list(ledger.attempted.values())
    # Giving a key back what it held is never a new grant: no review stops it.
    restorer = replace(writer, review=None)
    errors = settle(
        lambda plan: converge(restorer, plan, plan.current, None, Ledger()),
        attempted,
        writer.settings.key_workers,
    )
    unrestored = [plan.key.arn for plan, error in zip(attempted, errors, strict=True) if error]
    if unrestored:
        logger.error("Could not restore keys", extra={"keys": unrestored})
    return unrestored


def _not_restored(arns: list[str]) -> str:
    ids = [arn.rsplit("/", 1)[-1] for arn in arns]
    if len(ids) <= _IDS_IN_A_REASON:
        return f"NOT restored: {','.join(ids)}"
    return f"NOT restored: {len(ids)} keys, listed in the log as 'Could not restore keys'"


def converge(
    writer: Writer,
    plan: KeyPlan,
    wanted: list[Statement],
    deadline: Deadline | None,
    ledger: Ledger,
) -> None:
    """Make the key hold exactly ``wanted`` as this resource's statements, foreign ones untouched.

    Emptying a key that is gone or pending deletion is done already: it is no error.
    """
    store, settings, prefix = writer.store, writer.settings, plan.prefix
    wait = deadline.remaining() if deadline is not None else RESTORE_LOCK_WAIT
    try:
        with writer.leases.held(key_lock(plan.key.arn), wait):
            # Read afresh under the lock: the plan's copy may be stale by now.
            policy = keypolicy.parse(store.read(plan.key))
            for _ in range(settings.write_attempts):
                if keypolicy.managed(policy, prefix) == wanted:
                    return
                target = keypolicy.merge(policy, prefix, wanted)
                keypolicy.check_size(target, plan.key.arn, _principal_count(wanted))
                if writer.review is not None and wanted:
                    writer.review(plan, target)
                if deadline is not None:
                    deadline.check(f"writing {plan.key.arn}")
                ledger.attempt(plan)
                store.write(plan.key, keypolicy.serialize(target))
                # Jitter keeps two writers that collided from colliding again.
                time.sleep(settings.verify_delay * random.uniform(1.0, 1.5))  # noqa: S311
                if deadline is not None:
                    deadline.check(f"reading back {plan.key.arn}")
                policy = keypolicy.parse(store.read(plan.key))
    except KeyAccessError as error:
        if wanted or not is_missing(error):
            raise
        logger.info(
            "Key is gone or pending deletion; nothing to remove", extra={"key": plan.key.arn}
        )
        return
    if keypolicy.managed(policy, prefix) != wanted:
        raise KeyAccessError(
            clip(
                f"{plan.key.arn}: statements missing after {settings.write_attempts} writes; "
                "another writer keeps replacing this key policy"
            )
        )


def _principal_count(statements: Iterable[Statement]) -> int:
    principals: set[str] = set()
    for statement in statements:
        value = statement["Principal"]["AWS"]
        principals.update([value] if isinstance(value, str) else value)
    return len(principals)
