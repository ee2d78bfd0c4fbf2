"""The operator's tuning (read from the environment) and the time budget of one run.

Stack authors set resource properties; everything here belongs to whoever deploys the
provider, so it comes from the function's environment, never from a request.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from orgkeypolicy.errors import DeadlineExceededError

# The tag a key carries to consent to this provider changing its policy, unless the
# deployer names another (KEY_CONSENT_TAG_KEY / KEY_CONSENT_TAG_VALUE).
CONSENT_TAG_KEY = "orgkeypolicy:share"
CONSENT_TAG_VALUE = "enabled"


@dataclass(frozen=True)
class KeyConsent:
    """The tag a key must carry before this provider writes statements into its policy.

    Whoever can deploy a stack in the account can use the provider's ServiceToken; the tag,
    set by whoever administers the key, is the key's own consent to being shared. The
    provider's IAM role carries the same condition, so the function's check only explains a
    refusal that IAM would make anyway.
    """

    tag_key: str = CONSENT_TAG_KEY
    tag_value: str = CONSENT_TAG_VALUE

    def given(self, tags: dict[str, str]) -> bool:
        return tags.get(self.tag_key) == self.tag_value

    @property
    def tag(self) -> str:
        return f"{self.tag_key}={self.tag_value}"

    def command(self, key_id: str, region: str) -> str:
        """The AWS CLI command that gives a key this consent."""
        return (
            f"aws kms tag-resource --key-id {key_id} "
            f"--tags TagKey={self.tag_key},TagValue={self.tag_value} --region {region}"
        )


def consent_from(mode: str | None, tag_key: str | None, tag_value: str | None) -> KeyConsent | None:
    """The consent rule of the provider's environment: ``Off`` turns it off; anything else,
    a missing or mistyped value included, keeps it on (a typo must not share every key)."""
    if (mode or "").strip().lower() == "off":
        return None
    return KeyConsent(tag_key or CONSENT_TAG_KEY, tag_value or CONSENT_TAG_VALUE)


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
    # None: every customer managed key of the account may be changed (KeyConsent: Off).
    key_consent: KeyConsent | None = field(default_factory=KeyConsent)
    # Role ARNs (IAM wildcards * and ? allowed) that a resource's OrganizationsRoleArn may name
    # besides default_role_arn; the provider's IAM policy allows assuming exactly these.
    assumable_roles: tuple[str, ...] = ()
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
            key_consent=consent_from(
                env.get("KEY_CONSENT"),
                env.get("KEY_CONSENT_TAG_KEY"),
                env.get("KEY_CONSENT_TAG_VALUE"),
            ),
            assumable_roles=tuple(
                arn.strip()
                for arn in env.get("ALLOWED_ORGANIZATIONS_ROLES", "").split(",")
                if arn.strip()
            ),
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
