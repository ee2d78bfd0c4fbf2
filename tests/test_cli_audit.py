"""``orgkeypolicy audit``: CloudTrail events of KMS calls summarised per account and held
against the key policy; LookupEvents paginated, paced and retried.

moto answers LookupEvents with HTTP 500 (not implemented), so CloudTrail is botocore's
Stubber here, its responses checked against the service model and their ``CloudTrailEvent``
strings shaped like the events KMS records; KMS and Organizations are the local AWS.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.stub import ANY, Stubber
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from localaws.proxy import FaultProxy
from localaws.seed import DEFAULT_STATEMENT, SeededOrg
from localaws.server import LocalAws
from orgkeypolicy.cli import usage
from orgkeypolicy.cli.main import State, cli
from orgkeypolicy.cli.output import ExitCode
from orgkeypolicy.cli.principals import PrincipalRecord
from orgkeypolicy.cli.trail import Trail
from orgkeypolicy.cli.usage import KeyCall, Principals
from orgkeypolicy.evaluation import compile_policy

ANSI = "\x1b["
KEY = "alias/data-lake"
NOW = datetime.now(UTC).replace(microsecond=0)
USE = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]


def kms_event(
    key_arn: str,
    name: str,
    *,
    account: str,
    principal: str | None = "role/App",
    hours_ago: float = 1,
    error: str | None = None,
    service: str | None = None,
    context: dict[str, str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``LookupEvents`` event wrapping a ``CloudTrailEvent`` like those KMS records in the
    key's account: ``userIdentity`` is the caller (its account for cross-account calls),
    ``recipientAccountId`` the key's account."""
    key_account = key_arn.split(":")[4]
    when = NOW - timedelta(hours=hours_ago)
    if service:
        identity: dict[str, Any] = {"type": "AWSService", "invokedBy": service}
    elif principal == "root":
        identity = {
            "type": "Root",
            "principalId": account,
            "arn": f"arn:aws:iam::{account}:root",
            "accountId": account,
        }
    else:
        role = str(principal).removeprefix("role/")
        identity = {
            "type": "AssumedRole",
            "principalId": f"AROAEXAMPLE:{role}",
            "arn": f"arn:aws:sts::{account}:assumed-role/{role}/session",
            "accountId": account,
            "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "arn": f"arn:aws:iam::{account}:role/{role}",
                    "accountId": account,
                    "userName": role,
                }
            },
        }
    request: dict[str, Any] = {"keyId": key_arn, **(parameters or {})}
    if context:
        request["encryptionContext"] = context
    event_id = str(uuid.uuid4())
    payload: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": identity,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "kms.amazonaws.com",
        "eventName": name,
        "awsRegion": key_arn.split(":")[3],
        "sourceIPAddress": service or "192.0.2.0",
        "userAgent": service or "aws-cli/2.15",
        "requestParameters": request,
        "responseElements": None,
        "requestID": str(uuid.uuid4()),
        "eventID": event_id,
        "readOnly": True,
        "resources": [{"accountId": key_account, "type": "AWS::KMS::Key", "ARN": key_arn}],
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": key_account,
        "eventCategory": "Management",
    }
    if error:
        payload["errorCode"] = error
        payload["errorMessage"] = f"User is not authorized to perform: kms:{name}"
    if account != key_account and not service:
        payload["sharedEventID"] = str(uuid.uuid4())
    return {
        "EventId": event_id,
        "EventName": name,
        "ReadOnly": "true",
        "EventTime": when,
        "EventSource": "kms.amazonaws.com",
        "Resources": [{"ResourceType": "AWS::KMS::Key", "ResourceName": key_arn}],
        "CloudTrailEvent": json.dumps(payload),
    }


class TrailSession(boto3.Session):
    """The test's session: the local AWS for everything but CloudTrail, whose client answers
    ``pages`` (LookupEvents responses, or error codes) through botocore's Stubber."""

    def __init__(self, pages: Sequence[dict[str, Any] | str], key_arn: str) -> None:
        super().__init__()
        self.pages, self.key_arn = pages, key_arn
        self.stubbers: list[Stubber] = []
        self.requests: list[dict[str, Any]] = []

    def client(self, service_name: Any, *args: Any, **kwargs: Any) -> Any:
        session: Any = super()
        client = session.client(service_name, *args, **kwargs)
        if service_name != "cloudtrail":
            return client
        client.meta.events.register(
            "before-parameter-build.cloudtrail.LookupEvents",
            lambda params, **_: self.requests.append(dict(params)),
        )
        stubber = Stubber(client)
        for index, page in enumerate(self.pages):
            if isinstance(page, str):
                stubber.add_client_error("lookup_events", page, http_status_code=400)
                continue
            expected: dict[str, Any] = {
                "LookupAttributes": [
                    {"AttributeKey": "ResourceName", "AttributeValue": self.key_arn}
                ],
                "StartTime": ANY,
                "EndTime": ANY,
            }
            if index:
                expected["NextToken"] = ANY
            stubber.add_response("lookup_events", page, expected)
        stubber.activate()
        self.stubbers.append(stubber)
        return client


def pages_of(events: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    chunks = [events[at : at + size] for at in range(0, len(events), size)] or [[]]
    return [
        {"Events": chunk, **({"NextToken": f"page-{n + 1}"} if n < len(chunks) - 1 else {})}
        for n, chunk in enumerate(chunks)
    ]


def run(session: TrailSession, *args: str) -> Result:
    return CliRunner(mix_stderr=False).invoke(
        cli, ["audit", "--key", KEY, *args], prog_name="orgkeypolicy", obj=State(_session=session)
    )


def set_policy(aws: LocalAws, org: SeededOrg, *statements: dict[str, Any]) -> str:
    arn = org.key_arn(KEY)
    policy = {"Version": "2012-10-17", "Statement": [DEFAULT_STATEMENT, *statements]}
    aws.kms().put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(policy))
    return arn


def grant_accounts(org: SeededOrg, *names: str) -> dict[str, Any]:
    """A statement like the ones the provider writes in Accounts mode."""
    return {
        "Sid": "OrgKeyPolicy0123456789abcdefUse",
        "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam::{org.accounts[name]}:root" for name in names]},
        "Action": USE,
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:PrincipalOrgID": org.org_id}},
    }


def document(result: Result) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(result.stdout)
    assert set(doc) == {"key_arn", "days", "accounts", "blind_spots"}
    for row in doc["accounts"]:
        assert set(row) == {"account", "granted", "calls", "denied", "first_seen", "last_seen"}
    assert doc["blind_spots"] and all(isinstance(spot, str) for spot in doc["blind_spots"])
    return doc


def stamp(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_calls_are_summarised_per_account_and_held_against_the_grants_of_now(
    aws: LocalAws, demo_org: SeededOrg
) -> None:
    accounts = demo_org.accounts
    management = demo_org.management_account_id
    trail = f"arn:aws:cloudtrail:us-east-1:{management}:trail/org-trail"
    key_arn = set_policy(
        aws,
        demo_org,
        grant_accounts(demo_org, "prod-a", "prod-b"),
        {
            "Sid": "CloudTrail",
            "Effect": "Allow",
            "Principal": {"Service": "cloudtrail.amazonaws.com"},
            "Action": "kms:GenerateDataKey*",
            "Resource": "*",
            "Condition": {
                "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": trail},
                "StringEquals": {"aws:SourceArn": trail},
            },
        },
    )
    events = [
        *(
            kms_event(key_arn, "Decrypt", account=accounts["prod-a"], hours_ago=hours)
            for hours in (30, 5, 2)
        ),
        kms_event(key_arn, "GenerateDataKey", account=accounts["prod-a"], hours_ago=3),
        # Not granted now (never was, or was removed since): flagged.
        kms_event(key_arn, "Decrypt", account=accounts["dev-a"], hours_ago=10),
        # The key's own account: its admin, and a user its IAM refused.
        kms_event(key_arn, "PutKeyPolicy", account=management, principal="root", hours_ago=40),
        kms_event(key_arn, "Decrypt", account=management, error="AccessDenied", hours_ago=4),
        # A service calling for itself, under a grant that depends on its source ARN.
        kms_event(
            key_arn,
            "GenerateDataKey",
            account=management,
            service="cloudtrail.amazonaws.com",
            context={"aws:cloudtrail:arn": trail},
            hours_ago=1,
        ),
    ]
    session = TrailSession(pages_of(events, 3), key_arn)
    result = run(session, "--json")
    assert result.exit_code == ExitCode.CHANGED, result.stderr
    doc = document(result)
    assert (doc["key_arn"], doc["days"]) == (key_arn, 7)
    rows = {row["account"]: row for row in doc["accounts"]}
    assert rows[accounts["prod-a"]] == {
        "account": accounts["prod-a"],
        "granted": True,
        "calls": {"kms:Decrypt": 3, "kms:GenerateDataKey": 1},
        "denied": 0,
        "first_seen": stamp(30),
        "last_seen": stamp(2),
    }
    assert rows[accounts["dev-a"]]["granted"] is False
    assert rows[accounts["dev-a"]]["calls"] == {"kms:Decrypt": 1}
    assert rows[management] == {
        "account": management,
        "granted": True,
        "calls": {"kms:PutKeyPolicy": 1},
        "denied": 1,
        "first_seen": stamp(40),
        "last_seen": stamp(4),
    }
    # Granted, never used.
    assert rows[accounts["prod-b"]] == {
        "account": accounts["prod-b"],
        "granted": True,
        "calls": {},
        "denied": 0,
        "first_seen": None,
        "last_seen": None,
    }
    # Its grant depends on aws:SourceArn, which CloudTrail does not record: not flagged.
    assert rows["cloudtrail.amazonaws.com"]["calls"] == {"kms:GenerateDataKey": 1}
    assert rows["cloudtrail.amazonaws.com"]["granted"] is False
    # Neither granted nor used: not listed.
    assert set(rows) == {
        accounts["prod-a"],
        accounts["prod-b"],
        accounts["dev-a"],
        management,
        "cloudtrail.amazonaws.com",
    }
    assert [row["account"] for row in doc["accounts"]] == sorted(rows)
    assert any("recorded only in the calling account" in spot for spot in doc["blind_spots"])
    assert "1 of 5 accounts used or tried it without a grant now; 1 granted and unused" in (
        result.stderr
    )
    assert len(session.requests) == 3
    for stubber in session.stubbers:
        stubber.assert_no_pending_responses()


def test_all_in_order_exits_0_and_reads_as_a_plain_table_when_piped(
    aws: LocalAws, demo_org: SeededOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "300")
    key_arn = set_policy(aws, demo_org, grant_accounts(demo_org, "prod-a", "prod-b"))
    events = [kms_event(key_arn, "Encrypt", account=demo_org.accounts["prod-a"])]
    result = run(TrailSession(pages_of(events, 50), key_arn), "--days", "30")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert ANSI not in result.stdout + result.stderr
    assert f"Use of {key_arn} in the last 30 days" in result.stdout
    line = next(line for line in result.stdout.splitlines() if demo_org.accounts["prod-a"] in line)
    assert "yes" in line
    assert "Encrypt 1" in line
    unused = next(
        line for line in result.stdout.splitlines() if demo_org.accounts["prod-b"] in line
    )
    assert "granted, not used in 30 days" in unused
    assert "What this audit cannot see:" in result.stdout


def test_the_window_is_the_days_asked_for(aws: LocalAws, demo_org: SeededOrg) -> None:
    key_arn = demo_org.key_arn(KEY)
    session = TrailSession(pages_of([], 50), key_arn)
    assert run(session, "--days", "90", "--json").exit_code == ExitCode.OK
    (request,) = session.requests
    assert request["EndTime"] - request["StartTime"] == timedelta(days=90)
    assert abs(request["EndTime"] - datetime.now(UTC)) < timedelta(minutes=1)
    for days in ("0", "91"):
        refused = run(TrailSession([], key_arn), "--days", days)
        assert refused.exit_code == ExitCode.ERROR
        assert "--days" in refused.stderr


def test_throttling_is_retried_by_botocore(aws: LocalAws, demo_org: SeededOrg) -> None:
    key_arn = set_policy(aws, demo_org, grant_accounts(demo_org, "prod-a"))
    event = kms_event(key_arn, "Decrypt", account=demo_org.accounts["prod-a"])
    answers = [
        (400, {"__type": "ThrottlingException", "message": "Rate exceeded"}),
        (200, {"Events": [{**event, "EventTime": event["EventTime"].timestamp()}]}),
    ]
    sent: list[int] = []

    class HttpTrail(TrailSession):
        """CloudTrail answered over "HTTP", so that botocore's retry handling runs."""

        def client(self, service_name: Any, *args: Any, **kwargs: Any) -> Any:
            session: Any = super(TrailSession, self)
            client = session.client(service_name, *args, **kwargs)
            if service_name == "cloudtrail":
                client.meta.events.register("before-send.cloudtrail.LookupEvents", answer)
            return client

    def answer(request: Any, **_: Any) -> AWSResponse:
        status, body = answers[len(sent)]
        sent.append(status)
        headers = HTTPHeaders()
        headers["x-amzn-RequestId"] = "r"
        return AWSResponse(request.url, status, headers, _Raw(json.dumps(body).encode()))

    result = run(HttpTrail([], key_arn), "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert sent == [400, 200]
    (row,) = (r for r in document(result)["accounts"] if r["account"] == event_account(event))
    assert row["calls"] == {"kms:Decrypt": 1}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


def event_account(event: dict[str, Any]) -> str:
    return str(json.loads(event["CloudTrailEvent"])["userIdentity"]["accountId"])


def test_a_refused_lookup_is_one_line_naming_the_permission(
    aws: LocalAws, demo_org: SeededOrg
) -> None:
    result = run(TrailSession(["AccessDeniedException"], demo_org.key_arn(KEY)))
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "orgkeypolicy: error: CloudTrail LookupEvents in us-east-1 failed "
        "(AccessDeniedException); run audit with credentials of the key's account that allow "
        "cloudtrail:LookupEvents"
    ]


def test_without_the_organization_org_conditioned_grants_are_undecided_not_flagged(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add_rule("organizations:ListRoots", error_code="AccessDeniedException")
    key_arn = set_policy(aws, demo_org, grant_accounts(demo_org, "prod-a", "prod-b"))
    events = [kms_event(key_arn, "Decrypt", account=demo_org.accounts["prod-a"])]
    result = run(TrailSession(pages_of(events, 50), key_arn), "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    doc = document(result)
    rows = {row["account"]: row for row in doc["accounts"]}
    # prod-a's grant depends on its org ID, unknown here: not granted, not flagged either.
    assert rows[demo_org.accounts["prod-a"]]["granted"] is False
    assert demo_org.accounts["prod-b"] not in rows
    assert any(
        "could not be read (Organizations answered AccessDeniedException)" in spot
        for spot in doc["blind_spots"]
    )


def test_lookups_are_paced_to_cloudtrails_quota() -> None:
    session = boto3.Session(
        region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    trail = Trail(session, "us-east-1", rate=4.0)
    key_arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with Stubber(trail.client) as stubber:
        for page in pages_of([kms_event(key_arn, "Decrypt", account="444455556666")] * 5, 1):
            stubber.add_response("lookup_events", page)
        started = time.monotonic()
        events = trail.key_events(key_arn, NOW - timedelta(days=1), NOW)
        elapsed = time.monotonic() - started
    assert len(events) == 5
    # Five calls at 4 a second: the last leaves at least a second after the first.
    assert elapsed >= 0.95


# -- the summary and the judgement, as plain data ---------------------------------------

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ORG = "o-abcdefghij"


def parsed(event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(event["CloudTrailEvent"])
    return result


def test_an_event_names_its_caller_action_and_context() -> None:
    cross = usage.key_call(
        parsed(kms_event(KEY_ARN, "Decrypt", account="444455556666", context={"app": "x"})),
        KEY_ARN,
    )
    assert cross is not None
    assert (cross.caller, cross.principal, cross.action, cross.denied) == (
        "444455556666",
        "arn:aws:sts::444455556666:assumed-role/App/session",
        "kms:Decrypt",
        False,
    )
    assert dict(cross.context) == {
        "kms:EncryptionContext:app": ("x",),
        "kms:EncryptionContextKeys": ("app",),
    }
    service = usage.key_call(
        parsed(kms_event(KEY_ARN, "GenerateDataKey", account="x", service="s3.amazonaws.com")),
        KEY_ARN,
    )
    assert service is not None
    assert (service.caller, service.principal) == ("s3.amazonaws.com", "s3.amazonaws.com")
    denied = usage.key_call(
        parsed(kms_event(KEY_ARN, "Encrypt", account="111122223333", error="AccessDenied")),
        KEY_ARN,
    )
    assert denied is not None and denied.denied
    to_key = {
        "sourceKeyId": "arn:aws:kms:us-east-1:111122223333:key/other",
        "destinationKeyId": KEY_ARN,
    }
    from_key = {"sourceKeyId": KEY_ARN, "destinationKeyId": "alias/other"}
    for parameters, action in ((to_key, "kms:ReEncryptTo"), (from_key, "kms:ReEncryptFrom")):
        call = usage.key_call(
            parsed(kms_event(KEY_ARN, "ReEncrypt", account="1", parameters=parameters)), KEY_ARN
        )
        assert call is not None and call.action == action
    other = {
        **parsed(kms_event(KEY_ARN, "CreateTrail", account="1")),
        "eventSource": "cloudtrail.amazonaws.com",
    }
    assert usage.key_call(other, KEY_ARN) is None


def test_account_principals_of_a_policy() -> None:
    policy = {
        "Statement": [
            {"Principal": {"AWS": ["arn:aws:iam::111122223333:root", "444455556666"]}},
            {"Principal": {"AWS": "arn:aws:sts::777788889999:assumed-role/R/s"}},
            {"Principal": {"Service": "logs.amazonaws.com"}},
            {"Principal": "*"},
            "not a statement",
        ]
    }
    assert usage.account_principals(policy) == {"111122223333", "444455556666", "777788889999"}


POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Use",
            "Effect": "Allow",
            "Principal": {"AWS": ["arn:aws:iam::444455556666:root"]},
            "Action": ["kms:Decrypt", "kms:Encrypt"],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}},
        },
        {
            "Sid": "ViaS3",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::777788889999:root"},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}},
        },
    ],
}
CALLERS = ["444455556666", "555566667777", "777788889999"]


@st.composite
def key_calls(draw: st.DrawFn) -> KeyCall:
    caller = draw(st.sampled_from(CALLERS))
    return KeyCall(
        caller=caller,
        principal=f"arn:aws:sts::{caller}:assumed-role/App/s",
        action=draw(st.sampled_from(["kms:Decrypt", "kms:Encrypt", "kms:PutKeyPolicy"])),
        time=NOW - timedelta(minutes=draw(st.integers(0, 10_000))),
        denied=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(key_calls(), max_size=30))
def test_every_call_is_counted_once_and_judged_with_its_principal(calls: list[KeyCall]) -> None:
    records = {
        account: PrincipalRecord(f"arn:aws:iam::{account}:root", ORG, (f"{ORG}/r-ab12/",))
        for account in CALLERS
    }
    rows = usage.audit(
        usage.summarise(calls),
        CALLERS,
        Principals("aws", records),
        compile_policy(POLICY),
        KEY_ARN,
    )
    by_account = {row.account: row for row in rows}
    for account in CALLERS:
        mine = [call for call in calls if call.caller == account]
        row = by_account.get(account)
        if not mine:
            # Listed only when granted, and then as unused.
            assert row is None or (row.unused and account == "444455556666")
            continue
        assert row is not None
        assert sum(row.calls.values()) + row.denied == len(mine)
        assert row.denied == sum(call.denied for call in mine)
        assert row.first_seen == min(call.time for call in mine)
        assert row.last_seen == max(call.time for call in mine)
        actions = {call.action for call in mine}
        if account == "444455556666":
            assert set(row.ungranted) == actions & {"kms:PutKeyPolicy"}
            assert row.granted
        elif account == "555566667777":
            assert set(row.ungranted) == actions and not row.granted
        else:
            # A grant through kms:ViaService, which CloudTrail does not record: undecided.
            assert set(row.undecided) == actions & {"kms:Decrypt"}
            assert set(row.ungranted) == actions - {"kms:Decrypt"}
        assert row.flagged is bool(row.ungranted)


def test_principals_of_services_and_unreadable_organizations() -> None:
    unreadable = Principals("aws", None)
    root = unreadable.root("444455556666")
    assert root.request_context["aws:principalorgid"] is None
    assert unreadable.of("AWS Internal", "AWS Internal") is None
    service = Principals("aws", {}).of("cloudtrail.amazonaws.com", "cloudtrail.amazonaws.com")
    assert service is not None and service.request_context["aws:sourcearn"] is None
