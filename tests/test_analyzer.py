"""IAM Access Analyzer's review: the pure classification (property-tested), the adapter against
botocore's Stubber (which validates every response against the service model), and what the
local AWS answers for a service it does not implement."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from localaws.server import LocalAws
from orgkeypolicy import analyzer, aws, keypolicy
from orgkeypolicy.analyzer import (
    PUBLIC_ACCESS,
    AccessAnalyzer,
    AccessAnalyzerError,
    classify,
    require_clean,
)
from orgkeypolicy.errors import MAX_REASON, OrgKeyPolicyError
from tests.conftest import UNREACHABLE_ENDPOINT

PREFIX = "OrgKeyPolicy0123456789abcdef"
OTHER = "OrgKeyPolicyfedcba9876543210"
KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
REGION = "eu-west-1"
ORG = "o-exampleorgid"


def statement(sid: str | None, principal: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": principal or {"AWS": "*"},
        "Action": ["kms:Decrypt"],
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}},
    }
    return {"Sid": sid, **body} if sid is not None else body


POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        statement(f"{PREFIX}Use"),
        statement(f"{OTHER}Use"),
    ],
}
OURS, FOREIGN = 1, 2


def finding(
    finding_type: str, issue_code: str, *paths: list[dict[str, Any]], detail: str = "Details."
) -> dict[str, Any]:
    """A ValidatePolicy finding in the service's shape, one location per path."""
    position = {"line": 1, "column": 1, "offset": 0}
    return {
        "findingDetails": detail,
        "findingType": finding_type,
        "issueCode": issue_code,
        "learnMoreLink": "https://docs.aws.amazon.com/IAM/latest/UserGuide/"
        "access-analyzer-reference-policy-checks.html",
        "locations": [
            {"path": path, "span": {"start": position, "end": position}} for path in paths
        ],
    }


def at(index: int, *rest: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"value": "Statement"}, {"index": index}, *rest]


# ---------------------------------------------------------------------------------------------
# classify: pure


owners = st.sampled_from(["ours", "other", "default", "none"])


def sid_of(owner: str, n: int) -> str | None:
    return {
        "ours": f"{PREFIX}Use{n}",
        "other": f"{OTHER}Use{n}",
        "default": "Enable IAM User Permissions",
        "none": None,
    }[owner]


types = st.sampled_from(["ERROR", "SECURITY_WARNING", "SUGGESTION", "WARNING"])
# A location's statement index, or ``None`` for a path outside Statement; some fall past the end.
spots = st.one_of(st.none(), st.integers(min_value=0, max_value=9))


@settings(max_examples=150)
@given(
    st.lists(owners, min_size=1, max_size=8),
    st.lists(st.tuples(types, st.lists(spots, max_size=3)), max_size=8),
    st.booleans(),
)
def test_a_finding_blocks_exactly_when_it_is_in_our_statements_and_of_a_blocking_type(
    statement_owners: list[str],
    raw: list[tuple[str, list[int | None]]],
    single: bool,
) -> None:
    statements = [statement(sid_of(owner, n)) for n, owner in enumerate(statement_owners)]
    if single:
        statements = statements[:1]
    policy = {"Version": "2012-10-17", "Statement": statements[0] if single else statements}

    def path(index: int | None) -> list[dict[str, Any]]:
        if index is None:
            return [{"value": "Version"}]
        # Under a single-object Statement the path goes straight into the statement.
        return [{"value": "Statement"}, {"value": "Action"}] if single else at(index)

    findings = [
        finding(kind, f"CODE_{n}", *[path(index) for index in indices])
        for n, (kind, indices) in enumerate(raw)
    ]
    review = classify(policy, PREFIX, findings, {"result": "PASS"})

    def ours(index: int | None) -> bool:
        if index is None:
            return False
        if single:
            index = 0
        return index < len(statements) and keypolicy.owns(statements[index], PREFIX)

    expected = {
        f"CODE_{n}"
        for n, (kind, indices) in enumerate(raw)
        if kind in ("ERROR", "SECURITY_WARNING") and any(ours(i) for i in indices)
    }
    assert {f.issue_code for f in review.blocking} == expected
    assert len(review.blocking) == len(expected)
    assert len(review.findings) == len(raw)
    assert review.available and review.public is False
    for placed in review.findings:
        if placed.ours:
            assert placed.sid is not None and placed.sid.startswith(PREFIX)


@settings(max_examples=100)
@given(
    st.lists(owners, min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=7), max_size=3),
    st.sampled_from(["PASS", "FAIL"]),
)
def test_a_failed_public_access_check_blocks_wherever_it_points(
    statement_owners: list[str], indices: list[int], result: str
) -> None:
    statements = [statement(sid_of(owner, n)) for n, owner in enumerate(statement_owners)]
    policy = {"Version": "2012-10-17", "Statement": statements}
    reasons = [
        {"description": "Public.", "statementIndex": i, "statementId": f"given{i}"} for i in indices
    ]
    answer = {"result": result, "message": f"Result {result}.", "reasons": reasons}
    review = classify(policy, PREFIX, [], answer)

    assert review.public is (result == "FAIL")
    if result == "PASS":
        assert review.blocking == ()
        return
    assert len(review.blocking) == max(1, len(indices))
    assert all(f.finding_type == PUBLIC_ACCESS for f in review.blocking)
    if not indices:
        # A FAIL without reasons still blocks, with the check's message.
        assert review.blocking[0].detail == "Result FAIL."
    for index, placed in zip(indices, review.blocking, strict=bool(indices)):
        in_policy = index < len(statements)
        # The policy's own Sid when the index is in it; else the one the service gave.
        expected_sid = (statements[index].get("Sid") if in_policy else None) or f"given{index}"
        assert placed.statement_index == index
        assert placed.sid == expected_sid
        assert placed.ours == (in_policy and keypolicy.owns(statements[index], PREFIX))


def test_a_finding_over_several_statements_is_placed_in_ours_when_one_is() -> None:
    review = classify(
        POLICY, PREFIX, [finding("ERROR", "X", at(FOREIGN), at(OURS, {"value": "Action"}))], None
    )
    assert review.blocking[0].statement_index == OURS
    assert review.blocking[0].sid == f"{PREFIX}Use"


def test_an_unavailable_review_blocks_nothing_and_says_why() -> None:
    review = classify(POLICY, PREFIX, [], None, unavailable="no endpoint")
    assert review == analyzer.Review(False, (), None, (), "no endpoint")
    require_clean(review, KEY_ARN)


@settings(max_examples=100)
@given(
    st.one_of(st.none(), st.text(min_size=1, max_size=120)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
    st.text(max_size=300),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=45),
    st.booleans(),
)
def test_reasons_fit_cloudformation_and_lead_with_key_and_finding(
    sid: str | None, index: int | None, detail: str, code: str, public: bool
) -> None:
    kind = PUBLIC_ACCESS if public else "SECURITY_WARNING"
    blocking = analyzer.Finding(kind, code, detail, index, sid, ours=True)
    review = analyzer.Review(True, (blocking, blocking), public, (blocking, blocking))
    with pytest.raises(AccessAnalyzerError) as raised:
        require_clean(review, KEY_ARN)
    reason = str(raised.value)
    assert isinstance(raised.value, OrgKeyPolicyError)
    assert len(reason) <= MAX_REASON
    assert reason.isprintable()
    # Key, finding and place come first, where no cut reaches them.
    head = f"{KEY_ARN}: Access Analyzer " + (
        "finds public access " if public else f"SECURITY_WARNING '{code}' "
    )
    assert reason.startswith(head)
    where = reason[len(head) :]
    if sid:
        assert where.startswith("in statement '")
    elif index is not None:
        assert where.startswith(f"in statement #{index};")
    else:
        assert where.startswith("in the policy;")


# ---------------------------------------------------------------------------------------------
# The adapter, against the Stubber


@pytest.fixture
def log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.LogCaptureFixture]:
    """This module's log records, each once. Whether the package logger propagates to the root
    logger depends on whether the Lambda entry point was imported (it hands the package the
    service logger's handler), so caplog's handler is attached to the module's logger, which
    stops propagating for the test. The once-per-process memory starts empty."""
    module_logger = logging.getLogger(analyzer.__name__)
    caplog.set_level(logging.DEBUG, logger=analyzer.__name__)
    monkeypatch.setattr(module_logger, "propagate", False)
    monkeypatch.setattr(analyzer, "_warned", set())
    module_logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        module_logger.removeHandler(caplog.handler)


def session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")


@pytest.fixture
def stubbed() -> Iterator[tuple[AccessAnalyzer, Stubber]]:
    service = AccessAnalyzer(session(), pool=2)
    with Stubber(service.client(REGION)) as stub:
        yield service, stub
        stub.assert_no_pending_responses()


def document(policy: dict[str, Any] = POLICY) -> str:
    return keypolicy.serialize(policy)


def expect_validate(
    stub: Stubber, findings: list[dict[str, Any]], token: str | None = None
) -> None:
    params: dict[str, Any] = {"policyDocument": document(), "policyType": "RESOURCE_POLICY"}
    if token:
        params["nextToken"] = token
    stub.add_response("validate_policy", {"findings": findings}, params)


def expect_public(stub: Stubber, result: str = "PASS", reasons: Any = None) -> None:
    answer: dict[str, Any] = {"result": result, "message": f"Result {result}."}
    if reasons is not None:
        answer["reasons"] = reasons
    stub.add_response(
        "check_no_public_access",
        answer,
        {"policyDocument": document(), "resourceType": "AWS::KMS::Key"},
    )


def test_a_security_warning_in_our_statement_blocks_with_key_sid_and_code(
    stubbed: tuple[AccessAnalyzer, Stubber], log: pytest.LogCaptureFixture
) -> None:
    service, stub = stubbed
    expect_validate(stub, [finding("SECURITY_WARNING", "MISSING_CONDITION", at(OURS))])
    expect_public(stub)

    review = service.review(KEY_ARN, POLICY, PREFIX)

    assert review.available and review.public is False
    with pytest.raises(AccessAnalyzerError) as raised:
        require_clean(review, KEY_ARN)
    reason = str(raised.value)
    assert reason.startswith(KEY_ARN)
    assert "SECURITY_WARNING 'MISSING_CONDITION'" in reason
    assert f"'{PREFIX}Use'" in reason
    assert len(reason) <= MAX_REASON
    [logged] = [r for r in log.records if r.levelno == logging.ERROR]
    assert logged.__dict__["issue_code"] == "MISSING_CONDITION"
    assert logged.__dict__["learn_more"].startswith("https://")


def test_findings_in_foreign_statements_are_logged_not_blocking(
    stubbed: tuple[AccessAnalyzer, Stubber], log: pytest.LogCaptureFixture
) -> None:
    service, stub = stubbed
    expect_validate(
        stub,
        [
            finding("SECURITY_WARNING", "FOREIGN_WARNING", at(FOREIGN)),
            finding("ERROR", "DEFAULT_ERROR", at(0, {"value": "Action"})),
            finding("ERROR", "NOWHERE", [{"value": "Version"}]),
        ],
    )
    expect_public(stub)

    review = service.review(KEY_ARN, POLICY, PREFIX)

    require_clean(review, KEY_ARN)
    assert review.blocking == ()
    warnings = {r.__dict__["issue_code"]: r for r in log.records if r.levelno == logging.WARNING}
    assert set(warnings) == {"FOREIGN_WARNING", "DEFAULT_ERROR", "NOWHERE"}
    assert warnings["FOREIGN_WARNING"].__dict__["sid"] == f"{OTHER}Use"
    assert warnings["FOREIGN_WARNING"].__dict__["blocking"] is False
    assert warnings["NOWHERE"].__dict__["statement_index"] is None


def test_a_suggestion_in_our_statement_does_not_block(
    stubbed: tuple[AccessAnalyzer, Stubber], log: pytest.LogCaptureFixture
) -> None:
    service, stub = stubbed
    expect_validate(
        stub,
        [
            finding("SUGGESTION", "EMPTY_ARRAY_ACTION", at(OURS)),
            finding("WARNING", "MISSING_VERSION", at(OURS, {"value": "Condition"})),
        ],
    )
    expect_public(stub)

    review = service.review(KEY_ARN, POLICY, PREFIX)

    require_clean(review, KEY_ARN)
    assert [f.ours for f in review.findings] == [True, True]
    assert {r.__dict__["issue_code"] for r in log.records if r.levelno == logging.INFO} == {
        "EMPTY_ARRAY_ACTION",
        "MISSING_VERSION",
    }


def test_a_failed_public_access_check_blocks(stubbed: tuple[AccessAnalyzer, Stubber]) -> None:
    service, stub = stubbed
    expect_validate(stub, [])
    reasons = [{"description": "Grants public access.", "statementIndex": FOREIGN}]
    expect_public(stub, "FAIL", reasons)

    review = service.review(KEY_ARN, POLICY, PREFIX)

    assert review.public is True
    with pytest.raises(AccessAnalyzerError) as raised:
        require_clean(review, KEY_ARN)
    assert str(raised.value).startswith(
        f"{KEY_ARN}: Access Analyzer finds public access in statement '{OTHER}Use'"
    )


def test_validate_policy_pages_are_all_read(stubbed: tuple[AccessAnalyzer, Stubber]) -> None:
    service, stub = stubbed
    stub.add_response(
        "validate_policy",
        {"findings": [finding("SUGGESTION", "PAGE_ONE", at(OURS))], "nextToken": "page-2"},
        {"policyDocument": document(), "policyType": "RESOURCE_POLICY"},
    )
    expect_validate(stub, [finding("ERROR", "PAGE_TWO", at(OURS))], token="page-2")
    expect_public(stub)

    review = service.review(KEY_ARN, POLICY, PREFIX)

    assert [f.issue_code for f in review.findings] == ["PAGE_ONE", "PAGE_TWO"]
    assert [f.issue_code for f in review.blocking] == ["PAGE_TWO"]


def test_a_single_statement_object_is_reviewed(stubbed: tuple[AccessAnalyzer, Stubber]) -> None:
    service, stub = stubbed
    policy = {"Version": "2012-10-17", "Statement": statement(f"{PREFIX}Use")}
    stub.add_response(
        "validate_policy",
        {"findings": [finding("ERROR", "INVALID_ACTION", [{"value": "Statement"}])]},
        {"policyDocument": document(policy), "policyType": "RESOURCE_POLICY"},
    )
    stub.add_response(
        "check_no_public_access",
        {"result": "PASS"},
        {"policyDocument": document(policy), "resourceType": "AWS::KMS::Key"},
    )

    review = service.review(KEY_ARN, policy, PREFIX)

    assert [(f.sid, f.statement_index) for f in review.blocking] == [(f"{PREFIX}Use", 0)]


# What moto's server answers for a service it lacks: HTTP 500 with an HTML page, no error code.
MOTO_ANSWER: dict[str, Any] = {
    "service_error_code": "500",
    "service_message": "<!doctype html>\n<title>500 Internal Server Error</title>",
    "http_status_code": 500,
}


def test_an_emulator_without_the_service_makes_the_review_unavailable_once(
    log: pytest.LogCaptureFixture,
) -> None:
    for _ in range(2):
        service = AccessAnalyzer(session(), pool=2)
        with Stubber(service.client(REGION)) as stub:
            stub.add_client_error("validate_policy", **MOTO_ANSWER)
            # Nothing queued for CheckNoPublicAccess: the region is known down after the first.
            first = service.review(KEY_ARN, POLICY, PREFIX)
            again = service.review(KEY_ARN, POLICY, PREFIX)
            stub.assert_no_pending_responses()
        for review in (first, again):
            assert not review.available and review.public is None and review.blocking == ()
            assert "HTTP 500" in review.cause
            require_clean(review, KEY_ARN)
    [warning] = [r for r in log.records if r.levelno == logging.WARNING]
    assert "IAM Access Analyzer review skipped" in warning.getMessage()
    assert "ValidatePolicy in eu-west-1" in warning.getMessage()


@pytest.mark.parametrize(
    ("code", "status", "fields", "passes"),
    [
        # Not offered: the region is not asked again, CheckNoPublicAccess included.
        ("UnknownOperationException", 404, None, False),
        ("ValidationException", 400, {"message": "m", "reason": "notSupported"}, False),
        # Failing now (once botocore's retries are spent): the next check is asked all the same.
        ("ThrottlingException", 429, None, True),
        ("InternalServerException", 500, None, True),
    ],
)
def test_not_offered_or_failing_is_unavailable(
    stubbed: tuple[AccessAnalyzer, Stubber],
    log: pytest.LogCaptureFixture,
    code: str,
    status: int,
    fields: dict[str, Any] | None,
    passes: bool,
) -> None:
    service, stub = stubbed
    stub.add_client_error(
        "validate_policy", code, "m", http_status_code=status, modeled_fields=fields
    )
    if passes:
        expect_public(stub)

    review = service.review(KEY_ARN, POLICY, PREFIX)

    assert not review.available and code in review.cause
    assert review.public is (False if passes else None)
    assert len([r for r in log.records if r.levelno == logging.WARNING]) == 1


@pytest.fixture
def one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients that try once: what a real endpoint answers does not change on a retry, and
    botocore's backoff between attempts would only slow the test."""
    config = aws.client_config
    monkeypatch.setattr(
        analyzer,
        "client_config",
        lambda mode, *, attempts, pool: config(mode, attempts=1, pool=pool),
    )


def test_access_denied_is_unavailable_names_the_permission_and_warns_once(
    stubbed: tuple[AccessAnalyzer, Stubber], log: pytest.LogCaptureFixture
) -> None:
    service, stub = stubbed
    for method in ("validate_policy", "check_no_public_access"):
        stub.add_client_error(
            method, "AccessDeniedException", "explicit deny in an SCP", http_status_code=403
        )

    review = service.review(KEY_ARN, POLICY, PREFIX)

    assert not review.available and review.blocking == ()
    assert "access-analyzer:ValidatePolicy" in review.cause
    assert "access-analyzer:CheckNoPublicAccess in" in review.cause
    [warning] = [r for r in log.records if r.levelno == logging.WARNING]
    assert "AccessDeniedException" in warning.getMessage()
    assert "allow access-analyzer:ValidatePolicy" in warning.getMessage()


def test_a_refusal_to_check_the_policy_blocks(stubbed: tuple[AccessAnalyzer, Stubber]) -> None:
    service, stub = stubbed
    stub.add_client_error(
        "validate_policy",
        "ValidationException",
        "Policy document could not be parsed",
        modeled_fields={"message": "m", "reason": "cannotParse"},
    )
    with pytest.raises(AccessAnalyzerError) as raised:
        service.review(KEY_ARN, POLICY, PREFIX)
    reason = str(raised.value)
    assert reason.startswith(
        f"{KEY_ARN}: Access Analyzer refused ValidatePolicy (ValidationException)"
    )
    assert len(reason) <= MAX_REASON


@pytest.mark.usefixtures("one_attempt")
def test_an_unreachable_endpoint_is_unavailable(log: pytest.LogCaptureFixture) -> None:
    # Outside the ``aws`` fixture every client points at the discard port, where nothing listens.
    assert os.environ["AWS_ENDPOINT_URL"] == UNREACHABLE_ENDPOINT
    review = AccessAnalyzer(session(), pool=2).review(KEY_ARN, POLICY, PREFIX)

    assert not review.available and review.public is None
    assert (
        review.cause == "ValidatePolicy in eu-west-1 could not be reached (EndpointConnectionError)"
    )
    assert len([r for r in log.records if r.levelno == logging.WARNING]) == 1


def test_check_no_new_access_compares_as_a_resource_policy(
    stubbed: tuple[AccessAnalyzer, Stubber],
) -> None:
    service, stub = stubbed
    existing = {"Version": "2012-10-17", "Statement": POLICY["Statement"][:1]}
    reasons = [{"description": "New access.", "statementIndex": OURS, "statementId": "x"}]
    stub.add_response(
        "check_no_new_access",
        {"result": "FAIL", "message": "New access.", "reasons": reasons},
        {
            "newPolicyDocument": document(),
            "existingPolicyDocument": document(existing),
            "policyType": "RESOURCE_POLICY",
        },
    )
    answer = service.check_no_new_access(KEY_ARN, POLICY, existing)
    assert answer == {"result": "FAIL", "message": "New access.", "reasons": reasons}

    stub.add_client_error("check_no_new_access", "AccessDeniedException", http_status_code=403)
    assert service.check_no_new_access(KEY_ARN, POLICY, existing) is None


def test_one_client_per_region_under_parallel_use() -> None:
    service = AccessAnalyzer(session(), pool=2)
    regions = ["eu-west-1", "us-east-1"] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(service.client, regions))
    assert len({id(c) for c in clients}) == 2
    assert {c.meta.region_name for c in clients} == {"eu-west-1", "us-east-1"}
    assert clients[0].meta.config.retries["mode"] == "standard"


# ---------------------------------------------------------------------------------------------
# The local AWS


@pytest.mark.usefixtures("one_attempt")
def test_the_local_aws_has_no_access_analyzer(aws: LocalAws, log: pytest.LogCaptureFixture) -> None:
    service = AccessAnalyzer(boto3.Session(), pool=2)
    key_arn = f"arn:aws:kms:us-east-1:123456789012:key/{'0' * 8}-0000-0000-0000-{'0' * 12}"

    first = service.review(key_arn, POLICY, PREFIX)
    second = AccessAnalyzer(boto3.Session(), pool=2).review(key_arn, POLICY, PREFIX)
    new_access = AccessAnalyzer(boto3.Session(), pool=2).check_no_new_access(
        key_arn, POLICY, POLICY
    )

    for review in (first, second):
        assert not review.available and review.public is None and review.blocking == ()
    assert new_access is None
    [warning] = [r for r in log.records if r.levelno == logging.WARNING]
    # What moto answers: an HTML error page with HTTP 500, which botocore reports as code "500".
    assert "ValidatePolicy in us-east-1 is not offered there (500, HTTP 500)" in (
        warning.getMessage()
    )
