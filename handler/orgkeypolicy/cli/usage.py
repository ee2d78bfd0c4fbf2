"""What ``audit`` makes of CloudTrail's record of a key: who called it, how often, and whether
the key policy grants each of those requests now. Pure: parsed events in, plain rows out.

The caller of a KMS call recorded in the key's account is ``userIdentity``: its ``accountId``
is the calling account, for cross-account calls too (``recipientAccountId`` is the account
that received the event, always the key's own here). An AWS service calling for itself
(``type: AWSService``) has no account: it is listed under its name (``invokedBy``).

Each distinct request is judged with the principal that made it (the role session, user or
root of the event, or the service), its account's organization and OU path, and the
encryption context the event records. Request keys CloudTrail does not record are unknown
(conditions on them are undecidable), so a grant that depends on them is never flagged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orgkeypolicy.cli.principals import PrincipalRecord
from orgkeypolicy.evaluation import (
    KMS_ACTIONS,
    CompiledPolicy,
    Decision,
    Principal,
    evaluate,
    evaluate_matrix,
)
from orgkeypolicy.identifiers import ACCOUNT_ID
from orgkeypolicy.properties import USE_ACTIONS

KMS_SOURCE = "kms.amazonaws.com"
REFUSALS = frozenset({"AccessDenied", "AccessDeniedException"})
ORG_KEYS = ("aws:PrincipalOrgID", "aws:PrincipalOrgPaths")
# Keys a KMS request may carry that its CloudTrail event does not show.
UNRECORDED_KEYS: tuple[str, ...] = (
    "kms:ViaService",
    "aws:CalledVia",
    "aws:ViaAWSService",
    "aws:SourceIp",
    "aws:SourceVpc",
    "aws:SourceVpce",
    "aws:SourceArn",
    "aws:SourceAccount",
    "aws:SourceOrgID",
    "aws:SourceOrgPaths",
)
CONCRETE_USE_ACTIONS = tuple(sorted(action for action in USE_ACTIONS if "*" not in action))
_KEY_ACTIONS = frozenset(KMS_ACTIONS)

Context = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class KeyCall:
    """One recorded request: who (``caller`` groups it, ``principal`` made it), what, when."""

    caller: str
    principal: str | None
    action: str
    time: datetime
    denied: bool
    context: Context = ()


def key_call(event: Mapping[str, Any], key_arn: str) -> KeyCall | None:
    """A parsed ``CloudTrailEvent`` as a call on the key; None when it is not a KMS call."""
    if event.get("eventSource") != KMS_SOURCE or not event.get("eventName"):
        return None
    identity = event.get("userIdentity") or {}
    caller, principal = _who(identity, key_arn.split(":")[1])
    parameters = event.get("requestParameters") or {}
    return KeyCall(
        caller=caller,
        principal=principal,
        action=_action(str(event["eventName"]), parameters, key_arn),
        time=datetime.fromisoformat(str(event["eventTime"])),
        denied=str(event.get("errorCode", "")) in REFUSALS,
        context=_encryption_context(parameters.get("encryptionContext")),
    )


def _who(identity: Mapping[str, Any], partition: str) -> tuple[str, str | None]:
    service = identity.get("invokedBy")
    if identity.get("type") == "AWSService" and isinstance(service, str):
        return service, service
    arn = identity.get("arn")
    account = identity.get("accountId")
    if not isinstance(account, str) and isinstance(arn, str) and arn.count(":") >= 5:
        account = arn.split(":")[4]
    if not isinstance(account, str):
        return "unknown", None
    if not isinstance(arn, str):
        arn = f"arn:{partition}:iam::{account}:root"
    return account, arn


def _action(name: str, parameters: Mapping[str, Any], key_arn: str) -> str:
    """The IAM action of an event: ReEncrypt is ReEncryptTo on its destination key and
    ReEncryptFrom on its source."""
    if name == "ReEncrypt":
        destination = str(parameters.get("destinationKeyId", ""))
        to_this_key = destination in (key_arn, key_arn.rpartition("/")[2])
        return "kms:ReEncryptTo" if to_this_key else "kms:ReEncryptFrom"
    return f"kms:{name}"


def _encryption_context(value: object) -> Context:
    if not isinstance(value, Mapping) or not value:
        return ()
    pairs = sorted((str(key), str(item)) for key, item in value.items())
    keys = ("kms:EncryptionContextKeys", tuple(key for key, _ in pairs))
    return (*((f"kms:EncryptionContext:{key}", (item,)) for key, item in pairs), keys)


@dataclass
class Usage:
    """One caller's calls: by action (denied ones apart), first and last seen, and the
    distinct requests to judge."""

    caller: str
    calls: Counter[str] = field(default_factory=Counter)
    denied: Counter[str] = field(default_factory=Counter)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    requests: set[tuple[str | None, str, Context]] = field(default_factory=set)

    def add(self, call: KeyCall) -> None:
        (self.denied if call.denied else self.calls)[call.action] += 1
        self.first_seen = min(filter(None, (self.first_seen, call.time)))
        self.last_seen = max(filter(None, (self.last_seen, call.time)))
        self.requests.add((call.principal, call.action, call.context))


def summarise(calls: Iterable[KeyCall]) -> dict[str, Usage]:
    usages: dict[str, Usage] = {}
    for call in calls:
        usages.setdefault(call.caller, Usage(call.caller)).add(call)
    return usages


def account_principals(policy: Mapping[str, Any]) -> set[str]:
    """The accounts the policy's Principal elements name (an account ID or any IAM ARN)."""
    statements = policy.get("Statement")
    found: set[str] = set()
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, Mapping):
            continue
        named = statement.get("Principal")
        values = named.get("AWS", []) if isinstance(named, Mapping) else []
        for value in values if isinstance(values, list) else [values]:
            parts = str(value).split(":")
            account = parts[0] if len(parts) == 1 else parts[4] if len(parts) > 4 else ""
            if ACCOUNT_ID.fullmatch(account):
                found.add(account)
    return found


@dataclass(frozen=True)
class AccountAudit:
    """One row of the audit. ``ungranted``: actions it used or tried that the key policy does
    not allow it now; ``undecided``: actions the evaluator could not decide for it."""

    account: str
    granted: bool
    calls: Mapping[str, int]
    denied: int
    first_seen: datetime | None
    last_seen: datetime | None
    ungranted: tuple[str, ...] = ()
    undecided: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        return bool(self.ungranted)

    @property
    def unused(self) -> bool:
        return self.granted and not self.calls and not self.denied

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "granted": self.granted,
            "calls": dict(self.calls),
            "denied": self.denied,
            "first_seen": _timestamp(self.first_seen),
            "last_seen": _timestamp(self.last_seen),
        }


def _timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Principals:
    """Who the audit judges: principals made from ARNs and the organization's records.

    ``records`` holds each known account's root record (org ID, OU path); ``None`` when the
    organization could not be read, and then every account's org keys are unknown.
    """

    partition: str
    records: Mapping[str, PrincipalRecord] | None
    _made: dict[str, Principal | None] = field(default_factory=dict, repr=False)

    def root(self, account: str) -> Principal:
        principal = self.of(f"arn:{self.partition}:iam::{account}:root", account)
        assert principal is not None  # a root ARN always parses
        return principal

    def of(self, arn: str, account: str) -> Principal | None:
        """The principal ``arn`` (None when the evaluator does not know its kind)."""
        if arn not in self._made:
            self._made[arn] = self._make(arn, account)
        return self._made[arn]

    def _make(self, arn: str, account: str) -> Principal | None:
        unknown: tuple[str, ...] = UNRECORDED_KEYS
        record = None
        if ACCOUNT_ID.fullmatch(account):
            if self.records is None:
                unknown = (*ORG_KEYS, *UNRECORDED_KEYS)
            else:
                record = self.records.get(account)
        try:
            if record is None:
                return Principal(arn, unknown=unknown)
            return Principal(arn, record.org_id, record.org_paths, unknown=unknown)
        except ValueError:
            return None


def audit(
    usages: Mapping[str, Usage],
    candidates: Iterable[str],
    principals: Principals,
    compiled: CompiledPolicy,
    key_arn: str,
) -> list[AccountAudit]:
    """Every caller, and every candidate account the key policy grants now, by account."""
    judge = _Judge(compiled, key_arn)
    rows = [_caller_row(usage, principals, judge) for usage in usages.values()]
    unused = sorted(set(candidates) - set(usages))
    granted = judge.grant_use([principals.root(account) for account in unused])
    rows += [
        AccountAudit(account, True, {}, 0, None, None)
        for account, grants in zip(unused, granted, strict=True)
        if grants
    ]
    return sorted(rows, key=lambda row: row.account)


@dataclass
class _Judge:
    compiled: CompiledPolicy
    key_arn: str

    def decide(self, principal: Principal, action: str, context: Context) -> Decision:
        return evaluate(self.compiled, principal, action, self.key_arn, dict(context)).decision

    def grant_use(self, principals: list[Principal]) -> list[bool]:
        """For each principal: does the policy allow it some use of the key?"""
        width = len(CONCRETE_USE_ACTIONS)
        answers = evaluate_matrix(self.compiled, principals, CONCRETE_USE_ACTIONS, self.key_arn)
        return [
            any(answer.decision is Decision.ALLOW for answer in answers[at : at + width])
            for at in range(0, len(answers), width)
        ]


def _caller_row(usage: Usage, principals: Principals, judge: _Judge) -> AccountAudit:
    ungranted: set[str] = set()
    undecided: set[str] = set()
    allowed = False
    for arn, action, context in usage.requests:
        # Operations not authorized on a key (CreateKey, KMS's own RotateKey) are not judged.
        if action not in _KEY_ACTIONS:
            continue
        principal = principals.of(arn, usage.caller) if arn else None
        decision = (
            Decision.UNKNOWN if principal is None else judge.decide(principal, action, context)
        )
        if decision is Decision.ALLOW:
            allowed = True
        elif decision is Decision.UNKNOWN:
            undecided.add(action)
        else:
            ungranted.add(action)
    if not allowed and ACCOUNT_ID.fullmatch(usage.caller):
        allowed = judge.grant_use([principals.root(usage.caller)])[0]
    return AccountAudit(
        account=usage.caller,
        granted=allowed,
        calls=dict(sorted(usage.calls.items())),
        denied=sum(usage.denied.values()),
        first_seen=usage.first_seen,
        last_seen=usage.last_seen,
        ungranted=tuple(sorted(ungranted)),
        undecided=tuple(sorted(undecided - ungranted)),
    )


def blind_spots(account: str, region: str, days: int, unreadable: str | None) -> list[str]:
    """What this audit cannot see, said plainly: part of its result."""
    spots = [
        "A cross-account call that KMS refused is recorded only in the calling account, not "
        "here: an organization trail or a CloudTrail Lake event data store shows it.",
        f"Event history covers management events of account {account} in {region} for 90 "
        f"days; this audit read the last {days}. Replicas of a multi-Region key are audited "
        "by their own ARN.",
        "Events reach event history minutes after the call (about 5 on average): the most "
        "recent calls may be missing.",
        "A trail or Lake event data store may exclude KMS events "
        "(ExcludeManagementEventSources kms.amazonaws.com): one set that way does not show "
        "the calls this audit cannot see either.",
        "CloudTrail does not record every request key (kms:ViaService, aws:SourceVpc, "
        "aws:SourceIp, aws:SourceArn, ...): a grant that depends on one is undecided, "
        "never flagged.",
        "A call allowed by a grant (CreateGrant) looks like any other: one the key policy "
        "does not allow may be allowed by a grant (see ListGrants).",
    ]
    if unreadable is not None:
        spots.append(
            f"The organization could not be read ({unreadable}): grants that depend on "
            "aws:PrincipalOrgID or aws:PrincipalOrgPaths are undecided, and granted accounts "
            "are looked for among the key policy's account principals only."
        )
    return spots
