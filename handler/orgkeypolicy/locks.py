"""Locks as leases on items of the registry table, owned, so that no lost answer strands one.

KMS offers no conditional write: two writers merging into one key policy at the same moment
would each write a policy without the other's statements. Every writer of this project takes
the key's lock around its read-merge-write, and a resource's lock around a whole deploy or
re-sync of it, so they take turns. DynamoDB's conditional writes make each step safe to retry:

- Taking a lock is a put on the condition that the item is absent or already ours. When the
  answer to a put that landed is lost, botocore's retry finds our own item and succeeds.
- "Ours" is a family of owners: the requests of one resource (CloudFormation sends them one at
  a time) share one, so a request that died holding a lock does not block the rollback after it.
- A lock whose lease ran out was left by a writer that died: it is taken over by a put on the
  condition that the owner and expiry are still those seen, so of two writers breaking the
  same stale lock, exactly one gets it.
- Releasing is a delete on the condition that we still own it: a retried delete that finds the
  item gone, or a lock taken over after our lease ran out, changes nothing.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import boto3
from botocore.exceptions import ClientError

from orgkeypolicy.aws import error_code
from orgkeypolicy.errors import LockBusyError, RegistryError
from orgkeypolicy.registry import CONDITION_FAILED, ID, table_client, table_errors

logger = logging.getLogger(__name__)

LOCK_ID_PREFIX = "lock/"
# Longer than any run of the function (Lambda stops every invocation within 15 minutes):
# a lock older than this was left by a writer that died holding it.
LEASE_SECONDS = 900
# Waiting for a lock polls with a backoff that grows to this.
_MAX_POLL = 1.0
_RELEASE_ATTEMPTS = 3


@dataclass(frozen=True)
class Holder:
    owner: str
    expires: int
    holder: str

    @property
    def expired(self) -> bool:
        return self.expires < time.time()


class Leases:
    """The locks of one writer: ``owner`` (unique to this run) in ``family``."""

    def __init__(
        self,
        session: boto3.Session,
        table: str,
        *,
        family: str,
        run_id: str,
        holder: str,
        lease: int = LEASE_SECONDS,
        pool: int = 10,
    ) -> None:
        self.table = table
        self.family = family
        self.owner = f"{family}{run_id}"
        self._holder = holder
        self._lease = lease
        self._client = table_client(session, pool)

    def member(self, *, family: str, run_id: str, holder: str) -> Leases:
        """Another owner's locks on the same table, sharing this one's client (a client is
        slow to make, and making clients from one session is not thread-safe)."""
        other = copy.copy(self)
        other.family = family
        other.owner = f"{family}{run_id}"
        other._holder = holder
        return other

    @contextmanager
    def held(self, name: str, wait: float) -> Iterator[None]:
        """Hold lock ``name`` for the ``with`` block, waiting at most ``wait`` seconds for it."""
        self.acquire(name, wait)
        try:
            yield
        finally:
            self.release(name)

    def acquire(self, name: str, wait: float) -> None:
        give_up = time.monotonic() + wait
        pause = 0.05
        while True:
            try:
                if self._take(name):
                    return
            except RegistryError:
                # The put may have landed with its answer lost: let nothing of ours linger.
                self.release(name)
                raise
            current = self.holder_of(name)
            if current is None:
                continue
            if current.expired:
                if self._take(name, stale=current):
                    logger.warning(
                        "Took over a lock whose lease had run out",
                        extra={"lock": name, "left_by": current.holder},
                    )
                    return
                continue
            if time.monotonic() > give_up:
                until = datetime.fromtimestamp(current.expires, UTC).isoformat(timespec="seconds")
                raise LockBusyError(
                    f"Lock {LOCK_ID_PREFIX}{name} in table {self.table} is held by "
                    f"{current.holder} until {until}; retry after that, or delete that item "
                    "if the writer is gone"
                )
            time.sleep(random.uniform(pause / 2, pause))  # noqa: S311 - jitter, not secrecy
            pause = min(pause * 2, _MAX_POLL)

    def _take(self, name: str, stale: Holder | None = None) -> bool:
        """Put our lock item; False when the condition refused it."""
        names = {"#id": ID, "#owner": "owner"}
        values = {":me": {"S": self.family}}
        condition = "attribute_not_exists(#id) OR begins_with(#owner, :me)"
        if stale is not None:
            names = {"#owner": "owner"}
            condition = "#owner = :seen AND expires = :seen_expires"
            values = {
                ":seen": {"S": stale.owner},
                ":seen_expires": {"N": str(stale.expires)},
            }
        try:
            with table_errors(self.table, f"taking the lock {name}"):
                self._client.put_item(
                    TableName=self.table,
                    Item={
                        ID: {"S": LOCK_ID_PREFIX + name},
                        "owner": {"S": self.owner},
                        "holder": {"S": self._holder},
                        "expires": {"N": str(int(time.time()) + self._lease)},
                    },
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
        except ClientError as error:
            if error_code(error) == CONDITION_FAILED:
                return False
            raise
        return True

    def holder_of(self, name: str) -> Holder | None:
        with table_errors(self.table, f"reading the lock {name}"):
            item = self._client.get_item(
                TableName=self.table, Key={ID: {"S": LOCK_ID_PREFIX + name}}, ConsistentRead=True
            ).get("Item")
        if not item:
            return None
        return Holder(
            owner=item["owner"]["S"],
            expires=int(item["expires"]["N"]),
            holder=item.get("holder", {}).get("S", "another writer"),
        )

    def release(self, name: str) -> None:
        """Delete our lock item. A lock left behind would hold up other writers until its lease
        lapses, so a failed release is tried again a few times beyond botocore's own retries."""
        for attempt in range(_RELEASE_ATTEMPTS):
            try:
                self._delete(name)
            except RegistryError as error:
                if attempt + 1 == _RELEASE_ATTEMPTS:
                    # The lease runs out on its own, and this writer's family may take it again.
                    logger.warning(
                        "Could not release a lock", extra={"lock": name, "error": str(error)}
                    )
                    return
                time.sleep(0.2 * (attempt + 1))
            else:
                return

    def _delete(self, name: str) -> None:
        try:
            with table_errors(self.table, f"releasing the lock {name}"):
                self._client.delete_item(
                    TableName=self.table,
                    Key={ID: {"S": LOCK_ID_PREFIX + name}},
                    ConditionExpression="#owner = :me",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":me": {"S": self.owner}},
                )
        except ClientError as error:
            if error_code(error) != CONDITION_FAILED:
                raise
            # Gone already (a retried delete whose first answer was lost), or taken over by
            # another writer after our lease ran out: either way nothing of ours is left.
            logger.debug("Lock already released", extra={"lock": name})
