"""IAM Access Analyzer's review of a merged key policy before it is written.

Two checks run on the whole merged policy, in the key's region:

- ``ValidatePolicy`` with ``policyType=RESOURCE_POLICY`` and no ``validatePolicyResourceType``
  (that parameter accepts only S3, IAM trust and DynamoDB types; left out, the service runs
  the checks that apply to every resource policy, which is what it documents for KMS keys);
- ``CheckNoPublicAccess`` with ``resourceType=AWS::KMS::Key``.

What blocks the write: an ERROR or SECURITY_WARNING finding located in one of this resource's
statements (Sid prefix, see :func:`orgkeypolicy.keypolicy.owns`), and a FAIL of the public-access
check wherever it points (a key open to the world is not shared further). Every other finding
(in someone else's statement, a SUGGESTION or WARNING, a finding without a location) is logged
and the write goes on: other statements are not this resource's to judge or to fix.

When the service gives no answer, the review says ``available=False`` with the cause, a
warning is logged the first time per process, region and kind of cause (later ones at debug
level), and the write goes on after the project's own checks
(:func:`orgkeypolicy.keypolicy.unsafe_reasons`), which refuse any statement of ours without
``aws:PrincipalOrgID``, with a bare ``"*"`` or with administrative actions, whatever Access
Analyzer says. Three kinds:

- not offered or not reachable: connection errors, HTTP 404 and 501,
  ``UnknownOperationException``, ``InvalidAction``, a ``ValidationException`` whose reason is
  ``unknownOperation`` or ``notSupported``, and an answer that is no AWS error document (a local
  emulator: moto answers HTTP 500 with an HTML page). Not asked again in that region by the
  same :class:`AccessAnalyzer`, so a missing endpoint costs its timeouts once per request.
- failing now: throttling, server errors and read timeouts once botocore's retries are spent.
  Asked again for the next key.
- not permitted: HTTP 403 (``AccessDeniedException``); that operation is not asked again. This
  goes on too, deliberately. The function's role is meant to hold the actions below, so a
  denial comes from outside it: a service control policy or a permissions boundary, the
  organization's own decision. Failing every deploy for it would hold every key share hostage
  to a second opinion while the project's own checks still stand; the warning names the
  actions to allow, and ``Review.cause`` carries it for the caller to show.

A ``ValidationException`` of another reason, ``InvalidParameterException`` and
``UnprocessableEntityException`` are answers: the service looked at this policy and could not
check it. That raises :class:`AccessAnalyzerError` rather than skip a check that is running.

The role needs ``access-analyzer:ValidatePolicy`` and ``access-analyzer:CheckNoPublicAccess``
(and ``access-analyzer:CheckNoNewAccess`` for plans) on ``Resource: "*"``: these actions have no
resource types, and need no analyzer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointResolutionError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from orgkeypolicy import keypolicy
from orgkeypolicy.aws import client_config
from orgkeypolicy.errors import OrgKeyPolicyError, shown
from orgkeypolicy.planning import KeyPlan

logger = logging.getLogger(__name__)

POLICY_TYPE = "RESOURCE_POLICY"
RESOURCE_TYPE = "AWS::KMS::Key"
BLOCKING_TYPES = frozenset({"ERROR", "SECURITY_WARNING"})
PUBLIC_ACCESS = "PUBLIC_ACCESS"
"""The ``finding_type`` of a reason the public-access check gave for its FAIL."""

_NOT_OFFERED_CODES = frozenset({"UnknownOperationException", "InvalidAction"})
_NOT_OFFERED_REASONS = frozenset({"unknownOperation", "notSupported"})
_NOT_PERMITTED = "not permitted"
_UNAVAILABLE = "unavailable"
_FAILING = "failing"
_REFUSED = "refused"
_ANY_OPERATION = "*"

T = TypeVar("T")


class AccessAnalyzerError(OrgKeyPolicyError):
    """IAM Access Analyzer found a blocking problem in a key policy, or refused to check it."""


@dataclass(frozen=True)
class Finding:
    """One finding, placed in the merged policy: ``statement_index`` counts from 0."""

    finding_type: str
    issue_code: str
    detail: str
    statement_index: int | None
    sid: str | None
    learn_more: str | None = None
    ours: bool = False
    """Located in one of this resource's statements."""


@dataclass(frozen=True)
class Review:
    available: bool
    """Both checks answered."""
    findings: tuple[Finding, ...]
    public: bool | None
    """Whether the public-access check failed; ``None`` when it did not answer."""
    blocking: tuple[Finding, ...]
    cause: str = ""
    """Why a check did not answer; empty when both did."""


def classify(
    policy: Mapping[str, Any],
    prefix: str,
    findings: Sequence[Mapping[str, Any]],
    public_check: Mapping[str, Any] | None,
    *,
    unavailable: str = "",
) -> Review:
    """Place ValidatePolicy ``findings`` and a CheckNoPublicAccess answer in ``policy``.

    ``unavailable`` is the cause when a check did not answer (its findings are then empty or
    its answer ``None``).
    """
    statements = keypolicy.statement_list(dict(policy))
    single = isinstance(policy.get("Statement"), Mapping)

    def place(index: int | None) -> tuple[str | None, bool]:
        if index is None or not 0 <= index < len(statements):
            return None, False
        statement = statements[index]
        sid = statement.get("Sid") if isinstance(statement, Mapping) else None
        return (sid if isinstance(sid, str) else None), keypolicy.owns(statement, prefix)

    placed: list[Finding] = []
    for raw in findings:
        indices = [
            _statement_index(location.get("path", []), single)
            for location in raw.get("locations", [])
        ]
        located = [(index, *place(index)) for index in indices if index is not None]
        # A finding spanning several statements is ours when any of them is.
        index, sid, ours = next(
            (spot for spot in located if spot[2]), located[0] if located else (None, None, False)
        )
        placed.append(
            Finding(
                finding_type=str(raw.get("findingType", "")),
                issue_code=str(raw.get("issueCode", "")),
                detail=str(raw.get("findingDetails", "")),
                statement_index=index,
                sid=sid,
                learn_more=raw.get("learnMoreLink"),
                ours=ours,
            )
        )
    public = None if public_check is None else public_check.get("result") == "FAIL"
    exposed: list[Finding] = []
    if public and public_check is not None:
        reasons = public_check.get("reasons") or [{"description": public_check.get("message", "")}]
        for reason in reasons:
            index = reason.get("statementIndex")
            sid, ours = place(index)
            exposed.append(
                Finding(
                    finding_type=PUBLIC_ACCESS,
                    issue_code="CheckNoPublicAccess",
                    detail=str(reason.get("description", "")),
                    statement_index=index,
                    sid=sid if sid is not None else reason.get("statementId"),
                    ours=ours,
                )
            )
    blocking = exposed + [f for f in placed if f.ours and f.finding_type in BLOCKING_TYPES]
    return Review(
        available=not unavailable,
        findings=tuple(exposed + placed),
        public=public,
        blocking=tuple(blocking),
        cause=unavailable,
    )


def _statement_index(path: Sequence[Mapping[str, Any]], single: bool) -> int | None:
    """The statement a location's path points into: ``[{"value": "Statement"}, {"index": N},
    ...]``, or any path under ``Statement`` when it is a single object."""
    if not path or path[0].get("value") != "Statement":
        return None
    if single:
        return 0
    index = path[1].get("index") if len(path) > 1 else None
    return index if isinstance(index, int) else None


def require_clean(review: Review, key_arn: str) -> None:
    """Raise :class:`AccessAnalyzerError` for the first blocking finding of ``review``."""
    if not review.blocking:
        return
    first = review.blocking[0]
    if first.sid:
        where = f"in statement {shown(first.sid, 48)}"
    elif first.statement_index is not None:
        where = f"in statement #{first.statement_index}"
    else:
        where = "in the policy"
    more = f" (+{len(review.blocking) - 1} more in the log)" if len(review.blocking) > 1 else ""
    detail = shown(first.detail, 120)
    if first.finding_type == PUBLIC_ACCESS:
        raise AccessAnalyzerError(
            f"{key_arn}: Access Analyzer finds public access {where}; "
            f"remove it from the key policy{more}: {detail}"
        )
    code = shown(first.issue_code, 48)
    raise AccessAnalyzerError(
        f"{key_arn}: Access Analyzer {first.finding_type} {code} {where}; "
        f"change the properties behind it{more}: {detail}"
    )


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(kind: str, region: str, cause: str) -> None:
    """Say once per process, region and kind that the review does not run, and why."""
    with _warned_lock:
        first = (kind, region) not in _warned
        _warned.add((kind, region))
    log = logger.warning if first else logger.debug
    log(
        "IAM Access Analyzer review skipped: %s; key policies are written after the "
        "project's own checks only",
        cause,
        extra={"region": region, "cause": cause},
    )


class AccessAnalyzer:
    """ValidatePolicy, CheckNoPublicAccess and CheckNoNewAccess in the key's region.

    An operation that was found unavailable in a region is not asked again by this instance
    (one per request), so a missing endpoint costs its timeouts once, not once per key.
    """

    def __init__(self, session: boto3.Session, *, pool: int) -> None:
        self._session = session
        self._pool = pool
        self._clients: dict[str, tuple[Any, Any]] = {}
        self._down: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def client(self, region: str) -> Any:
        return self._client_and_paginator(region)[0]

    def _client_and_paginator(self, region: str) -> tuple[Any, Any]:
        # Making clients and paginators is not thread-safe; using them afterwards is.
        with self._lock:
            if region not in self._clients:
                client = self._session.client(
                    "accessanalyzer",
                    region_name=region,
                    config=client_config("standard", attempts=3, pool=self._pool),
                )
                self._clients[region] = (client, client.get_paginator("validate_policy"))
            return self._clients[region]

    def review(self, key_arn: str, policy: Mapping[str, Any], prefix: str) -> Review:
        """Both checks on ``policy`` (the merged one, about to be written to ``key_arn``);
        every finding is logged, the blocking ones at error level."""
        region = key_arn.split(":")[3]
        document = keypolicy.serialize(dict(policy))
        pages, validate_cause = self._call(
            key_arn,
            region,
            "ValidatePolicy",
            lambda _, paginator: [
                finding
                for page in paginator.paginate(policyDocument=document, policyType=POLICY_TYPE)
                for finding in page.get("findings", [])
            ],
        )
        public, public_cause = self._call(
            key_arn,
            region,
            "CheckNoPublicAccess",
            lambda client, _: client.check_no_public_access(
                policyDocument=document, resourceType=RESOURCE_TYPE
            ),
        )
        causes = dict.fromkeys(cause for cause in (validate_cause, public_cause) if cause)
        review = classify(policy, prefix, pages or [], public, unavailable="; ".join(causes))
        for finding in review.findings:
            _log_finding(key_arn, finding, finding in review.blocking)
        return review

    def check_no_new_access(
        self, key_arn: str, new: Mapping[str, Any], existing: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """CheckNoNewAccess of ``new`` against ``existing`` (``result``, ``message``,
        ``reasons`` with statement indices into ``new``); ``None`` when it did not answer.

        The operation takes no resource type: a key policy is compared as a generic
        resource policy.
        """
        answer, _ = self._call(
            key_arn,
            key_arn.split(":")[3],
            "CheckNoNewAccess",
            lambda client, _: client.check_no_new_access(
                newPolicyDocument=keypolicy.serialize(dict(new)),
                existingPolicyDocument=keypolicy.serialize(dict(existing)),
                policyType=POLICY_TYPE,
            ),
        )
        if answer is None:
            return None
        return {name: value for name, value in answer.items() if name != "ResponseMetadata"}

    def _call(
        self, key_arn: str, region: str, operation: str, call: Callable[[Any, Any], T]
    ) -> tuple[T | None, str]:
        """``call``'s answer, or ``None`` and the cause when the service cannot give one."""
        with self._lock:
            known = self._down.get((region, operation)) or self._down.get((region, _ANY_OPERATION))
        if known:
            return None, known
        client, paginator = self._client_and_paginator(region)
        try:
            return call(client, paginator), ""
        except (BotoCoreError, ClientError) as error:
            unanswered = _unanswered(error, operation, region)
            if unanswered is None:
                raise
            if isinstance(error, ClientError) and unanswered.kind == _REFUSED:
                message = str(error.response.get("Error", {}).get("Message", ""))
                raise AccessAnalyzerError(
                    f"{key_arn}: Access Analyzer refused {operation} ({unanswered.cause}); retry, "
                    f"or turn the Access Analyzer review off: {shown(message, 100)}"
                ) from error
        if unanswered.scope:
            with self._lock:
                self._down[(region, unanswered.scope)] = unanswered.cause
        _warn_once(unanswered.kind, region, unanswered.cause)
        return None, unanswered.cause


@dataclass(frozen=True)
class _Unanswered:
    kind: str
    cause: str
    scope: str | None
    """What stays unasked in the region for the rest of the request: one operation, all of
    them (``*``), or nothing when the failure may pass (throttling, a server error)."""


def _unanswered(error: Exception, operation: str, region: str) -> _Unanswered | None:
    """Why ``error`` is no answer about the policy; ``None`` for an error that is a bug here."""
    where = f"{operation} in {region}"
    if isinstance(error, (BotoConnectionError, EndpointResolutionError)):
        cause = f"{where} could not be reached ({type(error).__name__})"
        return _Unanswered(_UNAVAILABLE, cause, _ANY_OPERATION)
    if isinstance(error, HTTPClientError):
        return _Unanswered(_FAILING, f"{where} failed ({type(error).__name__})", None)
    if not isinstance(error, ClientError):
        return None
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if status == 403:
        cause = (
            f"the role may not call access-analyzer:{where} ({code}); allow "
            "access-analyzer:ValidatePolicy and access-analyzer:CheckNoPublicAccess on '*', "
            "or lift the SCP or permissions boundary that denies them"
        )
        return _Unanswered(_NOT_PERMITTED, cause, operation)
    # An answer without an AWS error document (botocore then reports the HTTP status as the
    # code) comes from something that is not Access Analyzer: an emulator, a proxy.
    if (
        status in (404, 501)
        or code.isdigit()
        or code in _NOT_OFFERED_CODES
        or error.response.get("reason") in _NOT_OFFERED_REASONS
    ):
        cause = f"{where} is not offered there ({code}, HTTP {status})"
        return _Unanswered(_UNAVAILABLE, cause, _ANY_OPERATION)
    if status == 429 or status >= 500:
        return _Unanswered(_FAILING, f"{where} failed ({code}, HTTP {status})", None)
    return _Unanswered(_REFUSED, code, None)


def _log_finding(key_arn: str, finding: Finding, blocking: bool) -> None:
    if blocking:
        level = logging.ERROR
    elif finding.finding_type in BLOCKING_TYPES:
        level = logging.WARNING
    else:
        level = logging.INFO
    logger.log(
        level,
        "IAM Access Analyzer finding %s %s in statement %s (%s)",
        finding.finding_type,
        finding.issue_code,
        finding.sid if finding.sid is not None else finding.statement_index,
        "blocks the write" if blocking else "not blocking",
        extra={
            "key": key_arn,
            "finding_type": finding.finding_type,
            "issue_code": finding.issue_code,
            "statement_index": finding.statement_index,
            "sid": finding.sid,
            "ours": finding.ours,
            "blocking": blocking,
            "detail": finding.detail,
            "learn_more": finding.learn_more,
        },
    )


class Gate:
    """Access Analyzer's review as the last look before a key policy is written: a blocking
    finding stops the write (a ``planning.PolicyReview``). Each distinct policy of a key is reviewed
    once, so the check before the first write and the write itself cost one review."""

    def __init__(self, analyzer: AccessAnalyzer) -> None:
        self._analyzer = analyzer
        self._passed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, plan: KeyPlan, policy: keypolicy.Policy) -> None:
        seen = (plan.key.arn, keypolicy.serialize(policy))
        with self._lock:
            if seen in self._passed:
                return
        require_clean(self._analyzer.review(plan.key.arn, policy, plan.prefix), plan.key.arn)
        with self._lock:
            self._passed.add(seen)
