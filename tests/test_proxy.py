"""The fault proxy's lost answers, unreachable regions and request naming, end to end through
real boto3 clients against the local AWS."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from localaws.protocol import identify
from localaws.proxy import Call, FaultProxy, LoseAnswer
from localaws.seed import DEFAULT_STATEMENT, read_key_policy
from localaws.server import LocalAws, fake_client

READ_TIMEOUT = 1.0
# Longer than READ_TIMEOUT, so the client gives up before the proxy closes the connection.
HOLD = 1.5
RETRY_ONCE = Config(
    retries={"mode": "standard", "total_max_attempts": 2}, read_timeout=READ_TIMEOUT
)
NO_RETRIES = Config(retries={"total_max_attempts": 1}, read_timeout=READ_TIMEOUT)
KINDS: list[LoseAnswer] = ["reset", "500", "timeout"]
# What the client sees of a lost answer: the HTTP status (0 for none) ...
STATUS_SEEN = {"reset": 0, "500": 500, "timeout": 0}
# ... and what botocore raises once it stops retrying.
RAISED: dict[str, type[Exception]] = {
    "reset": ConnectionClosedError,
    "500": ClientError,
    "timeout": ReadTimeoutError,
}


def lose(proxy: FaultProxy, operation: str, kind: LoseAnswer) -> None:
    """Lose the answer of the next call of ``operation``; the retry is answered normally."""
    proxy.add_rule(operation, lose_answer=kind, times=1, delay=HOLD if kind == "timeout" else 0)


def outcome(call: Call) -> tuple[bool, bool, bool, int | None, int]:
    return (call.forwarded, call.answer_lost, call.injected, call.upstream_status, call.status)


@pytest.mark.parametrize("kind", KINDS)
def test_lost_create_alias_lands_and_the_retry_finds_the_alias(
    aws: LocalAws, fault_proxy: FaultProxy, kind: LoseAnswer
) -> None:
    key = aws.kms().create_key()["KeyMetadata"]["Arn"]
    lose(fault_proxy, "kms:CreateAlias", kind)
    kms = fake_client("kms", fault_proxy.url, config=RETRY_ONCE)
    with pytest.raises(ClientError) as raised:
        kms.create_alias(AliasName="alias/shared", TargetKeyId=key)
    # The caller never saw its own call succeed; the retry meets the alias it created.
    assert raised.value.response["Error"]["Code"] == "AlreadyExistsException"
    aliases = aws.kms().list_aliases(KeyId=key)["Aliases"]
    assert [alias["AliasName"] for alias in aliases] == ["alias/shared"]
    calls = fault_proxy.calls_for("kms:CreateAlias")
    assert [outcome(call) for call in calls] == [
        (True, True, True, 200, STATUS_SEEN[kind]),
        (True, False, False, 400, 400),
    ]
    assert fault_proxy.count("kms:CreateAlias", forwarded=True) == 2
    assert fault_proxy.count("kms:CreateAlias", answer_lost=True) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_lost_put_key_policy_changes_the_policy(
    aws: LocalAws, fault_proxy: FaultProxy, kind: LoseAnswer
) -> None:
    key = aws.kms().create_key()["KeyMetadata"]["Arn"]
    before = read_key_policy(aws.url, key)
    policy = {"Version": "2012-10-17", "Statement": [DEFAULT_STATEMENT]}
    assert before != policy
    lose(fault_proxy, "kms:PutKeyPolicy", kind)
    kms = fake_client("kms", fault_proxy.url, config=NO_RETRIES)
    with pytest.raises(RAISED[kind]) as raised:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    if isinstance(raised.value, ClientError):
        error = raised.value.response["Error"]
        assert (error["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
            "InternalFailure",
            500,
        )
    assert read_key_policy(aws.url, key) == policy
    [call] = fault_proxy.calls
    assert outcome(call) == (True, True, True, 200, STATUS_SEEN[kind])
    assert call.error_code == ("InternalFailure" if kind == "500" else None)


@pytest.mark.parametrize("kind", KINDS)
def test_lost_conditional_put_item_lands_and_the_retry_fails_its_condition(
    aws: LocalAws, fault_proxy: FaultProxy, kind: LoseAnswer
) -> None:
    aws.client("dynamodb").create_table(
        TableName="locks",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    lose(fault_proxy, "dynamodb:PutItem", kind)
    dynamodb = fake_client("dynamodb", fault_proxy.url, config=RETRY_ONCE)
    with pytest.raises(ClientError) as raised:
        dynamodb.put_item(
            TableName="locks",
            Item={"pk": {"S": "key-1"}, "owner": {"S": "first"}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    stored = aws.client("dynamodb").get_item(TableName="locks", Key={"pk": {"S": "key-1"}})
    assert stored["Item"]["owner"] == {"S": "first"}
    first, retry = fault_proxy.calls_for("dynamodb:PutItem")
    assert outcome(first) == (True, True, True, 200, STATUS_SEEN[kind])
    assert first.error_code == ("InternalServerError" if kind == "500" else None)
    assert outcome(retry) == (True, False, False, 400, 400)


def test_a_timeout_is_retried_until_the_attempts_run_out(
    aws: LocalAws, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add_rule("kms:ListKeys", lose_answer="timeout", delay=HOLD)
    kms = fake_client("kms", fault_proxy.url, config=RETRY_ONCE)
    with pytest.raises(ReadTimeoutError):
        kms.list_keys()
    calls = fault_proxy.calls_for("kms:ListKeys")
    assert [outcome(call) for call in calls] == [(True, True, True, 200, 0)] * 2
    assert all(call.duration < READ_TIMEOUT for call in calls)


def test_unreachable_region_closes_connections_there_only(
    aws: LocalAws, fault_proxy: FaultProxy
) -> None:
    rule = fault_proxy.unreachable_region("ap-east-1")
    far = fake_client("kms", fault_proxy.url, region="ap-east-1", config=RETRY_ONCE)
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        far.create_key()
    near = fake_client("kms", fault_proxy.url, config=RETRY_ONCE)
    near.create_key()
    assert aws.kms("ap-east-1").list_keys()["Keys"] == []
    assert len(aws.kms().list_keys()["Keys"]) == 1
    assert [
        (call.region, call.status, call.injected, call.forwarded) for call in fault_proxy.calls
    ] == [
        ("ap-east-1", 0, True, False),
        ("ap-east-1", 0, True, False),
        ("us-east-1", 200, False, True),
    ]
    assert (rule.seen, rule.fired) == (2, 2)


def test_opt_in_region_not_enabled_refuses_the_token(
    aws: LocalAws, fault_proxy: FaultProxy
) -> None:
    fault_proxy.unreachable_region("me-south-1", answer="UnrecognizedClientException")
    kms = fake_client("kms", fault_proxy.url, region="me-south-1", config=RETRY_ONCE)
    with pytest.raises(ClientError) as raised:
        kms.list_keys()
    error = raised.value.response["Error"]
    assert error == {
        "Code": "UnrecognizedClientException",
        "Message": "The security token included in the request is invalid.",
    }
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Not a transient error: botocore does not retry it.
    [call] = fault_proxy.calls
    assert (call.region, call.forwarded, call.error_code) == (
        "me-south-1",
        False,
        "UnrecognizedClientException",
    )
    assert fake_client("kms", fault_proxy.url, region="eu-west-1").list_keys()["Keys"] == []


def test_region_filter_combines_with_operation_and_error_code(
    aws: LocalAws, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add_rule("kms:ListKeys", region="eu-west-1", error_code="AccessDeniedException")
    for region in ("us-east-1", "eu-west-1"):
        kms = fake_client("kms", fault_proxy.url, region=region, config=NO_RETRIES)
        kms.list_aliases()
        with contextlib.suppress(ClientError):
            kms.list_keys()
    assert [(call.name, call.region, call.injected) for call in fault_proxy.calls] == [
        ("kms:ListAliases", "us-east-1", False),
        ("kms:ListKeys", "us-east-1", False),
        ("kms:ListAliases", "eu-west-1", False),
        ("kms:ListKeys", "eu-west-1", True),
    ]


CLIENT_CALLS: list[tuple[str, Any, str]] = [
    ("dynamodb", lambda client: client.list_tables(), "dynamodb:ListTables"),
    (
        "events",
        lambda client: client.put_events(
            Entries=[{"Source": "test", "DetailType": "probe", "Detail": "{}"}]
        ),
        "events:PutEvents",
    ),
    ("cloudtrail", lambda client: client.describe_trails(), "cloudtrail:DescribeTrails"),
    ("sqs", lambda client: client.list_queues(), "sqs:ListQueues"),
    ("cloudformation", lambda client: client.describe_stacks(), "cloudformation:DescribeStacks"),
    ("accessanalyzer", lambda client: client.list_analyzers(), "access-analyzer:unknown"),
]


@pytest.mark.parametrize(
    ("service", "invoke", "name"), CLIENT_CALLS, ids=[c[0] for c in CLIENT_CALLS]
)
def test_real_clients_calls_are_named(
    aws: LocalAws, fault_proxy: FaultProxy, service: str, invoke: Any, name: str
) -> None:
    # No short read timeout: moto's first call to a service loads its backend.
    config = Config(retries={"total_max_attempts": 1})
    client = fake_client(service, fault_proxy.url, region="eu-west-2", config=config)
    # moto does not serve Access Analyzer; only the name matters here.
    with contextlib.suppress(ClientError):
        invoke(client)
    [call] = fault_proxy.calls
    assert (call.name, call.region, call.forwarded) == (name, "eu-west-2", True)


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("DynamoDB_20120810.PutItem", "dynamodb:PutItem"),
        ("AWSEvents.PutEvents", "events:PutEvents"),
        (
            "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents",
            "cloudtrail:LookupEvents",
        ),
        ("AmazonSQS.SendMessage", "sqs:SendMessage"),
        ("TrentService.CreateAlias", "kms:CreateAlias"),
        ("AWSOrganizationsV20161128.ListRoots", "organizations:ListRoots"),
    ],
)
def test_unsigned_json_requests_are_named_by_their_target(target: str, name: str) -> None:
    request = identify({"X-Amz-Target": target}, "/", b'{"A": 1}')
    assert (f"{request.service}:{request.operation}", request.region) == (name, "")
    assert (request.protocol, request.params) == ("json", {"A": 1})


def test_rule_options_are_checked() -> None:
    proxy = FaultProxy("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="error_code and lose_answer"):
        proxy.add_rule("*", error_code="X", lose_answer="500")
    with pytest.raises(ValueError, match="lose_answer and drop"):
        proxy.add_rule("*", lose_answer="reset", drop=True)
    with pytest.raises(ValueError, match="needs delay"):
        proxy.add_rule("*", lose_answer="timeout")
    with pytest.raises(ValueError, match="'hang' is not one of reset, 500, timeout"):
        proxy.add_rule("*", lose_answer="hang")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'refuse' is not one of"):
        proxy.unreachable_region("ap-east-1", answer="refuse")  # type: ignore[arg-type]
    assert proxy.rules == []
