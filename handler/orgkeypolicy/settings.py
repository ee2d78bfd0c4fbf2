"""The operator's tuning (read from the environment) and the time budget of one run.

Stack authors set resource properties; everything here belongs to whoever deploys the
provider, so it comes from the function's environment, never from a request.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from orgkeypolicy.errors import DeadlineExceededError


@dataclass(frozen=True)
class Settings:
    # Organizations throttles early and documents no rate: 8 concurrent listings walk a
    # 5,000-account tree about 5x faster than one at a time (bench/), and more only add
    # refused calls under throttling.
    org_workers: int = 8
    # A key's write is mostly waiting (the lock, the read-back delay): every key of a resource
    # (at most 50) can wait at once.
    key_workers: int = 50
    verify_delay: float = 1.0
    write_attempts: int = 4
    # KMS allows about 15 PutKeyPolicy per second per account and region; staying under it
    # keeps a re-sync of hundreds of keys from living on throttling errors and retries.
    write_rate: float = 10.0
    # Resources a re-sync works on at once. Their lookups share one organization cache and
    # their writes one KMS pacer, so a few at a time overlap the waits (locks, read-backs)
    # without multiplying the calls.
    resource_workers: int = 4
    default_role_arn: str | None = None
    # The DynamoDB table of the registry, which also holds the write locks.
    registry_table: str | None = None
    # IAM Access Analyzer's review of every policy before it is written.
    access_analyzer: bool = True

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ
        return cls(
            org_workers=int(env.get("ORG_WALK_CONCURRENCY", cls.org_workers)),
            key_workers=int(env.get("KEY_WRITE_CONCURRENCY", cls.key_workers)),
            verify_delay=float(env.get("VERIFY_DELAY_SECONDS", cls.verify_delay)),
            write_rate=float(env.get("KMS_WRITE_RATE", cls.write_rate)),
            resource_workers=int(env.get("RESYNC_CONCURRENCY", cls.resource_workers)),
            default_role_arn=env.get("ORGANIZATIONS_ROLE_ARN") or None,
            registry_table=env.get("REGISTRY_TABLE") or None,
            access_analyzer=env.get("ACCESS_ANALYZER", "true").lower() != "false",
        )


class Deadline:
    """The time left before the answer (to CloudFormation, or of a re-sync run) must go out."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def check(self, doing: str) -> None:
        if self.remaining() <= 0:
            raise DeadlineExceededError(f"Out of time before {doing}; raise the function timeout")
