"""The local AWS and CloudFormation stand-ins, exercised over real HTTP(S) with boto3."""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localaws.cfn import MAX_RESPONSE_BYTES, CloudFormation, FakeLambdaContext, stringify
from localaws.proxy import FaultProxy, operation_matches
from localaws.seed import (
    DEFAULT_STATEMENT,
    SUSPENDED,
    SeededOrg,
    read_key_policy,
    seed_large_org,
)
from localaws.server import (
    MOTO_ACCOUNT_ID,
    LocalAws,
    aws_environment,
    fake_client,
    patched_environment,
)

NO_RETRIES = Config(retries={"total_max_attempts": 1})


def children_names(org: Any, parent_id: str) -> set[str]:
    units = org.list_organizational_units_for_parent(ParentId=parent_id)["OrganizationalUnits"]
    return {unit["Name"] for unit in units}


# -- seeding -------------------------------------------------------------------------------


def test_demo_org_has_the_nested_ous(aws: LocalAws, demo_org: SeededOrg) -> None:
    org = aws.organizations()
    description = org.describe_organization()["Organization"]
    assert description["Id"] == demo_org.org_id
    assert description["FeatureSet"] == "ALL"
    assert description["MasterAccountId"] == demo_org.management_account_id == MOTO_ACCOUNT_ID
    assert org.list_roots()["Roots"][0]["Id"] == demo_org.root_id

    ous = demo_org.ous
    assert children_names(org, demo_org.root_id) == {"Workloads", "Sandbox"}
    assert children_names(org, ous["Workloads"]) == {"Prod", "Dev"}
    assert children_names(org, ous["Prod"]) == {"Critical"}
    assert children_names(org, ous["Critical"]) == set()

    path = demo_org.ou_path("Critical")
    assert path == (
        f"{demo_org.org_id}/{demo_org.root_id}/{ous['Workloads']}/{ous['Prod']}/{ous['Critical']}/"
    )
    assert demo_org.ou_path("Root") == f"{demo_org.org_id}/{demo_org.root_id}/"


def test_demo_org_accounts_and_suspended_state(aws: LocalAws, demo_org: SeededOrg) -> None:
    org = aws.organizations()
    in_prod = org.list_accounts_for_parent(ParentId=demo_org.ous["Prod"])["Accounts"]
    by_name = {account["Name"]: account for account in in_prod}
    assert set(by_name) == {"prod-a", "prod-b", "prod-closed"}
    assert by_name["prod-closed"]["State"] == SUSPENDED
    assert by_name["prod-closed"]["Status"] == SUSPENDED
    assert by_name["prod-a"]["State"] == "ACTIVE"
    assert demo_org.suspended == {demo_org.accounts["prod-closed"]}

    for name, ou_name in [("crit-a", "Critical"), ("dev-a", "Dev"), ("sbx-a", "Sandbox")]:
        parents = org.list_parents(ChildId=demo_org.accounts[name])["Parents"]
        assert parents == [{"Id": demo_org.ous[ou_name], "Type": "ORGANIZATIONAL_UNIT"}]

    active_under_workloads = {
        demo_org.accounts[name] for name in ("prod-a", "prod-b", "crit-a", "dev-a")
    }
    assert demo_org.accounts_under("Workloads") == active_under_workloads
    assert demo_org.accounts["prod-closed"] in demo_org.accounts_under(
        "Prod", include_suspended=True
    )
    assert MOTO_ACCOUNT_ID in demo_org.accounts_under("Root")


def test_demo_keys_have_their_aliases_and_policies(aws: LocalAws, demo_org: SeededOrg) -> None:
    kms = aws.kms()
    assert set(demo_org.keys) == {"logs", "data"}
    for name, alias in [("logs", "alias/demo-logs"), ("data", "alias/data-lake")]:
        arn = demo_org.keys[name]
        assert demo_org.aliases[name] == alias
        assert kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"] == arn
        policy = read_key_policy(aws.url, arn)
        assert policy == demo_org.original_policies[arn]
        sids = [statement["Sid"] for statement in policy["Statement"]]
        assert sids[0] == "Enable IAM User Permissions"
        assert len(sids) == 2
    logs_policy = demo_org.original_policies[demo_org.keys["logs"]]
    assert logs_policy["Statement"][1]["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
    assert "Condition" in logs_policy["Statement"][1]


def test_reset_empties_moto(aws: LocalAws, demo_org: SeededOrg) -> None:
    aws.reset()
    with pytest.raises(ClientError) as raised:
        aws.organizations().describe_organization()
    assert raised.value.response["Error"]["Code"] == "AWSOrganizationsNotInUseException"
    assert aws.kms().list_keys()["Keys"] == []


def test_large_org_matches_what_moto_lists(aws: LocalAws) -> None:
    started = time.perf_counter()
    large = seed_large_org(aws.url, accounts=600, ous=60, depth=4, seed=7)
    assert time.perf_counter() - started < 5
    assert len(large.ou_ids) == 60
    assert large.account_count == 601  # and the management account
    assert max(large.depth.values()) == 4
    assert sum(state == SUSPENDED for state in large.states.values()) == 18

    org = aws.organizations()
    busiest = large.busiest_ou()
    assert len(large.accounts[busiest]) > 20
    pages = list(org.get_paginator("list_accounts_for_parent").paginate(ParentId=busiest))
    assert [len(page["Accounts"]) for page in pages[:-1]] == [20] * (len(pages) - 1)
    listed = [account["Id"] for page in pages for account in page["Accounts"]]
    assert listed == large.accounts[busiest]
    states = {account["Id"]: account["State"] for page in pages for account in page["Accounts"]}
    assert states == {account: large.states[account] for account in large.accounts[busiest]}

    units = org.list_organizational_units_for_parent(ParentId=large.root_id)
    assert [unit["Id"] for unit in units["OrganizationalUnits"]] == large.children[large.root_id][
        :20
    ]
    deepest = large.deepest_ou()
    assert large.ou_path(deepest).count("/ou-") == 4
    calls = large.list_calls(large.root_id)
    assert calls["ListAccountsForParent"] >= len(large.subtree(large.root_id))
    assert large.min_list_calls(deepest) == 2 + max(0, len(large.accounts[deepest]) - 1) // 20


def test_same_seed_same_shape(aws: LocalAws) -> None:
    first = seed_large_org(aws.url, accounts=200, ous=20, seed=3)
    aws.reset()
    second = seed_large_org(aws.url, accounts=200, ous=20, seed=3)
    assert [len(first.children[ou]) for ou in first.ou_ids] == [
        len(second.children[ou]) for ou in second.ou_ids
    ]
    assert sorted(first.states.items()) == sorted(second.states.items())


def test_moto_behaviour_the_harness_relies_on(aws: LocalAws, demo_org: SeededOrg) -> None:
    kms = aws.kms()
    arn = demo_org.keys["logs"]
    # moto requires PolicyName (AWS defaults it to "default") and stores any string.
    kms.put_key_policy(KeyId=arn, PolicyName="default", Policy="not json")
    assert kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"] == "not json"
    with pytest.raises(ClientError) as raised:
        kms.put_key_policy(KeyId=arn, Policy="{}")
    assert raised.value.response["Error"]["Code"] == "NotFoundException"
    # Key policies are read and written by key id or ARN, not alias (as in AWS).
    with pytest.raises(ClientError):
        kms.get_key_policy(KeyId="alias/demo-logs", PolicyName="default")
    assert aws.sts().get_caller_identity()["Account"] == MOTO_ACCOUNT_ID


# -- fault proxy ---------------------------------------------------------------------------

KMS_ERRORS = [
    "ThrottlingException",
    "AccessDeniedException",
    "KMSInvalidStateException",
    "NotFoundException",
    "LimitExceededException",
]
ORGANIZATIONS_ERRORS = ["TooManyRequestsException", "AccessDeniedException"]


@dataclass(frozen=True)
class SmallOrg:
    org_id: str
    root_id: str
    ou_id: str
    account_id: str
    keys: list[str]


@pytest.fixture
def small_org(aws: LocalAws) -> SmallOrg:
    """One OU with one account, and two keys: cheaper than the demo organization."""
    org = aws.organizations()
    org_id = org.create_organization(FeatureSet="ALL")["Organization"]["Id"]
    root_id = org.list_roots()["Roots"][0]["Id"]
    ou_id = org.create_organizational_unit(ParentId=root_id, Name="Dev")["OrganizationalUnit"]["Id"]
    status = org.create_account(AccountName="dev-a", Email="dev-a@example.com")
    account_id = status["CreateAccountStatus"]["AccountId"]
    org.move_account(AccountId=account_id, SourceParentId=root_id, DestinationParentId=ou_id)
    kms = aws.kms()
    keys = [kms.create_key()["KeyMetadata"]["Arn"] for _ in range(2)]
    return SmallOrg(org_id, root_id, ou_id, account_id, keys)


def proxied(proxy: FaultProxy, service: str, config: Config | None = None) -> Any:
    return fake_client(service, proxy.url, config=config or NO_RETRIES)


@pytest.mark.parametrize("code", KMS_ERRORS)
def test_injected_kms_errors_parse_as_client_errors(
    fault_proxy: FaultProxy, small_org: SmallOrg, code: str
) -> None:
    fault_proxy.add_rule("kms:PutKeyPolicy", error_code=code, message="nope")
    kms = proxied(fault_proxy, "kms")
    key = small_org.keys[0]
    before = read_key_policy(fault_proxy.target, key)
    with pytest.raises(ClientError) as raised:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy="{}")
    error = raised.value.response["Error"]
    assert (error["Code"], error["Message"]) == (code, "nope")
    assert raised.value.operation_name == "PutKeyPolicy"
    assert fault_proxy.count("kms:PutKeyPolicy", injected=True) == 1
    # The call never reached moto.
    assert read_key_policy(fault_proxy.target, key) == before


@pytest.mark.parametrize("code", ORGANIZATIONS_ERRORS)
def test_injected_organizations_errors_parse_as_client_errors(
    fault_proxy: FaultProxy, small_org: SmallOrg, code: str
) -> None:
    fault_proxy.add_rule("organizations:ListAccountsForParent", error_code=code)
    org = proxied(fault_proxy, "organizations")
    with pytest.raises(ClientError) as raised:
        org.list_accounts_for_parent(ParentId=small_org.ou_id)
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Other operations pass.
    assert org.list_roots()["Roots"][0]["Id"] == small_org.root_id
    [call] = fault_proxy.calls_for("organizations:ListAccountsForParent")
    assert call.injected
    assert call.body == {"ParentId": small_org.ou_id}


def test_injected_query_protocol_error(fault_proxy: FaultProxy) -> None:
    fault_proxy.add_rule("sts:GetCallerIdentity", error_code="ExpiredToken", status=403)
    sts = proxied(fault_proxy, "sts")
    with pytest.raises(ClientError) as raised:
        sts.get_caller_identity()
    assert raised.value.response["Error"]["Code"] == "ExpiredToken"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    fault_proxy.clear_rules()
    assert sts.get_caller_identity()["Account"] == MOTO_ACCOUNT_ID
    assert [call.name for call in fault_proxy.calls] == ["sts:GetCallerIdentity"] * 2


def test_standard_retry_mode_retries_kms_throttling(
    fault_proxy: FaultProxy, small_org: SmallOrg
) -> None:
    fault_proxy.add_rule("kms:PutKeyPolicy", error_code="ThrottlingException", times=1)
    kms = proxied(fault_proxy, "kms", Config(retries={"mode": "standard", "max_attempts": 3}))
    policy = json.dumps({"Version": "2012-10-17", "Statement": [DEFAULT_STATEMENT]})
    key = small_org.keys[0]
    response = kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    calls = fault_proxy.calls_for("kms:PutKeyPolicy")
    assert [(call.status, call.injected) for call in calls] == [(400, True), (200, False)]
    assert read_key_policy(fault_proxy.target, key) == json.loads(policy)


@pytest.mark.parametrize("mode", ["standard", "legacy"])
def test_retry_modes_retry_organizations_throttling(
    fault_proxy: FaultProxy, small_org: SmallOrg, mode: str
) -> None:
    fault_proxy.add_rule(
        "organizations:ListAccountsForParent", error_code="TooManyRequestsException", times=1
    )
    retries: Any = {"mode": mode, "max_attempts": 2}
    org = proxied(fault_proxy, "organizations", Config(retries=retries))
    accounts = org.list_accounts_for_parent(ParentId=small_org.ou_id)["Accounts"]
    assert [account["Id"] for account in accounts] == [small_org.account_id]
    assert fault_proxy.count("ListAccountsForParent") == 2
    assert fault_proxy.count("ListAccountsForParent", injected=True) == 1


def test_non_retryable_error_is_not_retried(fault_proxy: FaultProxy, small_org: SmallOrg) -> None:
    fault_proxy.add_rule("kms:PutKeyPolicy", error_code="AccessDeniedException")
    kms = proxied(fault_proxy, "kms", Config(retries={"mode": "standard", "max_attempts": 5}))
    with pytest.raises(ClientError):
        kms.put_key_policy(KeyId=small_org.keys[0], PolicyName="default", Policy="{}")
    assert fault_proxy.count("kms:PutKeyPolicy") == 1


def test_latency_is_added_and_concurrent_calls_overlap(fault_proxy: FaultProxy) -> None:
    fault_proxy.latency = 0.2
    sts = proxied(fault_proxy, "sts")
    started = time.perf_counter()
    sts.get_caller_identity()
    assert time.perf_counter() - started >= 0.2

    fault_proxy.reset_log()
    clients = [proxied(fault_proxy, "sts") for _ in range(4)]
    threads = [threading.Thread(target=client.get_caller_identity) for client in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert fault_proxy.count("sts:GetCallerIdentity") == 4
    assert elapsed < 0.7
    assert fault_proxy.max_concurrency("sts:*") >= 2
    assert all(call.duration >= 0.2 for call in fault_proxy.calls)


def test_nth_fails_only_the_chosen_calls(fault_proxy: FaultProxy, small_org: SmallOrg) -> None:
    fault_proxy.add_rule("organizations:DescribeOrganization", error_code="AccessDenied", nth={2})
    org = proxied(fault_proxy, "organizations")
    org.describe_organization()
    with pytest.raises(ClientError):
        org.describe_organization()
    org.describe_organization()
    assert [call.injected for call in fault_proxy.calls] == [False, True, False]


def outcomes(client: Any, calls: int) -> list[bool]:
    results = []
    for _ in range(calls):
        try:
            client.list_keys()
            results.append(True)
        except ClientError:
            results.append(False)
    return results


def test_times_caps_failures_and_probability_is_seeded(fault_proxy: FaultProxy) -> None:
    rule = fault_proxy.add_rule("kms:*", error_code="ThrottlingException", probability=0.5, times=3)
    first = outcomes(proxied(fault_proxy, "kms"), 10)
    assert first.count(False) == 3 == rule.fired
    assert rule.seen == 10

    with FaultProxy(fault_proxy.target, seed=0) as again:
        again.add_rule("kms:*", error_code="ThrottlingException", probability=0.5, times=3)
        assert outcomes(proxied(again, "kms"), 10) == first


def test_when_selects_calls_by_request_body(fault_proxy: FaultProxy, small_org: SmallOrg) -> None:
    left, right = small_org.keys
    fault_proxy.add_rule(
        "kms:PutKeyPolicy",
        error_code="KMSInvalidStateException",
        when=lambda body: body["KeyId"] == right,
    )
    kms = proxied(fault_proxy, "kms")
    kms.put_key_policy(KeyId=left, PolicyName="default", Policy=json.dumps({"Statement": []}))
    with pytest.raises(ClientError) as raised:
        kms.put_key_policy(KeyId=right, PolicyName="default", Policy="{}")
    assert raised.value.response["Error"]["Code"] == "KMSInvalidStateException"
    # A predicate that does not fit another operation's body just does not match.
    kms.list_keys()
    assert fault_proxy.count(injected=True) == 1


def test_delay_only_rule_forwards_late(fault_proxy: FaultProxy) -> None:
    fault_proxy.add_rule("sts:GetCallerIdentity", delay=0.2, times=1)
    sts = proxied(fault_proxy, "sts")
    started = time.perf_counter()
    assert sts.get_caller_identity()["Account"] == MOTO_ACCOUNT_ID
    assert time.perf_counter() - started >= 0.2
    [call] = fault_proxy.calls
    assert (call.status, call.injected, call.duration >= 0.2) == (200, False, True)


def test_fault_proxy_fixture_points_default_clients_at_the_proxy(
    fault_proxy: FaultProxy, small_org: SmallOrg
) -> None:
    org = boto3.client("organizations")
    assert org.describe_organization()["Organization"]["Id"] == small_org.org_id
    assert fault_proxy.count("organizations:DescribeOrganization") == 1


def test_rule_validation() -> None:
    proxy = FaultProxy("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="error_code"):
        proxy.add_rule("*")
    with pytest.raises(ValueError, match="probability"):
        proxy.add_rule("*", error_code="X", probability=2)
    assert operation_matches("*", "kms", "PutKeyPolicy")
    assert operation_matches("kms:*", "kms", "PutKeyPolicy")
    assert operation_matches("PutKeyPolicy", "kms", "PutKeyPolicy")
    assert not operation_matches("organizations:PutKeyPolicy", "kms", "PutKeyPolicy")


# -- environment ---------------------------------------------------------------------------


def test_patched_environment_sets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", "http://elsewhere")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    env = aws_environment("http://127.0.0.1:1234", region="us-west-2")
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert "AWS_SESSION_TOKEN" not in env
    import os

    with patched_environment(env):
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1234"
        assert os.environ["AWS_REGION"] == os.environ["AWS_DEFAULT_REGION"] == "us-west-2"
        assert "AWS_SESSION_TOKEN" not in os.environ
        assert "AWS_ENDPOINT_URL_KMS" not in os.environ
    assert os.environ["AWS_SESSION_TOKEN"] == "real-token"
    assert os.environ["AWS_ENDPOINT_URL_KMS"] == "http://elsewhere"
    assert os.environ["AWS_REGION"] == "eu-west-1"


# -- CloudFormation --------------------------------------------------------------------------


def put(url: str, body: bytes, context: ssl.SSLContext | None = None) -> int:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection(
        parts.netloc, context=context or ssl.create_default_context(), timeout=5
    )
    try:
        connection.request(
            "PUT",
            f"{parts.path}?{parts.query}",
            body=body,
            headers={"content-type": "", "content-length": str(len(body))},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def success_body(event: dict[str, Any], **data: Any) -> bytes:
    return json.dumps(
        {
            "Status": "SUCCESS",
            "PhysicalResourceId": "policy-1",
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Reason": "",
            "Data": data,
        }
    ).encode()


def test_receiver_trusted_by_the_default_ssl_context(cfn: CloudFormation) -> None:
    event = cfn.event("Create", {"KeyArns": ["k"]})
    assert put(event["ResponseURL"], success_body(event, Principals="3")) == 200
    response = cfn.response(event)
    assert (response.status, response.physical_id) == ("SUCCESS", "policy-1")
    assert response.data == {"Principals": "3"}
    assert response.size == len(response.raw) < MAX_RESPONSE_BYTES
    assert response.count == 1
    assert response.headers["content-type"] == ""
    assert cfn.response(event["RequestId"]).raw == response.raw


def test_receiver_is_not_trusted_without_ssl_cert_file(
    cfn: CloudFormation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    event = cfn.event("Create", {})
    with pytest.raises(ssl.SSLCertVerificationError):
        put(event["ResponseURL"], b"{}")
    assert cfn.responses(event) == []


def test_fail_next_answers_errors_then_accepts(cfn: CloudFormation) -> None:
    event = cfn.event("Create", {})
    cfn.fail_next(500, count=2)
    cfn.fail_next(403)
    statuses = [put(event["ResponseURL"], success_body(event)) for _ in range(4)]
    assert statuses == [500, 500, 403, 200]
    all_puts = cfn.responses(event)
    assert [put.http_status for put in all_puts] == [500, 500, 403, 200]
    assert not all_puts[0].accepted
    response = cfn.response(event, timeout=1)
    assert response.accepted
    assert response.count == 4


def test_response_times_out_without_accepted_put(cfn: CloudFormation) -> None:
    event = cfn.event("Delete", {}, physical_id="policy-1")
    cfn.fail_next(403)
    assert put(event["ResponseURL"], b"{}") == 403
    with pytest.raises(TimeoutError, match="1 rejected"):
        cfn.response(event, timeout=0.2)


def test_hang_delays_the_answer(cfn: CloudFormation) -> None:
    event = cfn.event("Create", {})
    cfn.hang(0.3, count=1)
    started = time.perf_counter()
    assert put(event["ResponseURL"], b"{}") == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    assert put(event["ResponseURL"], b"{}") == 200
    assert time.perf_counter() - started < 0.3


def test_bad_signature_is_refused(cfn: CloudFormation) -> None:
    event = cfn.event("Create", {})
    tampered = event["ResponseURL"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert put(tampered, b"{}") == 403
    assert cfn.responses(event) == []


def test_events_are_shaped_like_cloudformation(cfn: CloudFormation) -> None:
    props = stringify({"KeyArns": ["a"], "IncludeSuspended": False, "MaxAccounts": 20})
    assert props == {"KeyArns": ["a"], "IncludeSuspended": "false", "MaxAccounts": "20"}
    create = cfn.event("Create", props)
    assert create["ResourceType"] == "Custom::OrgKeyPolicy"
    assert create["LogicalResourceId"] == "SharedKeyPolicy"
    assert create["ResourceProperties"]["ServiceToken"] == create["ServiceToken"]
    assert create["ResourceProperties"]["MaxAccounts"] == "20"
    assert "PhysicalResourceId" not in create
    assert "OldResourceProperties" not in create
    assert create["StackId"].startswith("arn:aws:cloudformation:us-east-1:123456789012:stack/")
    assert cfn.request_id_of(create) == create["RequestId"]

    update = cfn.event("Update", props, old_properties={"KeyArns": []}, physical_id="p-1")
    assert update["PhysicalResourceId"] == "p-1"
    assert update["OldResourceProperties"]["KeyArns"] == []
    assert update["StackId"] == create["StackId"]
    assert update["RequestId"] != create["RequestId"]

    delete = cfn.event("Delete", props, physical_id="p-1", stack_id="arn:other")
    assert (delete["StackId"], delete["PhysicalResourceId"]) == ("arn:other", "p-1")
    with pytest.raises(ValueError, match="physical_id"):
        cfn.event("Delete", props)
    with pytest.raises(ValueError, match="old_properties"):
        cfn.event("Update", props, physical_id="p-1")
    with pytest.raises(ValueError, match="RequestType"):
        cfn.event("Upsert", props)


def test_fake_lambda_context_counts_down() -> None:
    context = FakeLambdaContext(timeout_seconds=2)
    assert context.invoked_function_arn == (
        "arn:aws:lambda:us-east-1:123456789012:function:org-key-policy"
    )
    assert context.function_name == "org-key-policy"
    first = context.get_remaining_time_in_millis()
    assert 1500 < first <= 2000
    time.sleep(0.05)
    assert context.get_remaining_time_in_millis() < first
    assert FakeLambdaContext(timeout_seconds=0).get_remaining_time_in_millis() == 0
    assert FakeLambdaContext().aws_request_id != context.aws_request_id


@pytest.fixture
def restore_logging() -> Iterator[None]:
    # crhelper sets the root and boto loggers' levels process-wide.
    names = ["", "boto", "boto3", "botocore", "urllib3"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_crhelper_reaches_the_receiver(
    aws: LocalAws, cfn: CloudFormation, restore_logging: None
) -> None:
    from crhelper import CfnResource

    helper = CfnResource(log_level="WARNING", boto_level="WARNING", sleep_on_delete=0)

    @helper.create
    def create(event: dict[str, Any], context: Any) -> str:
        helper.Data["Seen"] = event["ResourceProperties"]["Flag"]
        return "phys-1"

    event = cfn.event("Create", stringify({"Flag": True}))
    helper(event, FakeLambdaContext(timeout_seconds=30))
    response = cfn.response(event, timeout=5)
    assert (response.status, response.physical_id) == ("SUCCESS", "phys-1")
    assert response.data == {"Seen": "true"}
    assert response.body["RequestId"] == event["RequestId"]
