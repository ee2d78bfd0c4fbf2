"""Never strand a stack or a key: calls whose answer is lost, regions that cannot be reached,
keys scheduled for deletion after a deploy, condition keys in any spelling, policy variables
under an old policy Version, stale locks, and the log lines of crhelper itself.

End to end: the real handler against moto behind the fault proxy, with CloudFormation's
responses received over HTTPS; what is left on the keys is read back from moto.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, get_args

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError

import app
from localaws.cfn import CloudFormation
from localaws.proxy import FaultProxy, LoseAnswer
from localaws.registry import REGISTRY_TABLE
from localaws.seed import SeededOrg
from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy import aws, lifecycle
from orgkeypolicy.errors import LockBusyError, OrganizationsError, OrgKeyPolicyError
from orgkeypolicy.locks import LOCK_ID_PREFIX, Leases
from orgkeypolicy.settings import Deadline
from orgkeypolicy.writing import key_lock
from tests.endtoend import (
    add_keys,
    granted,
    key_id,
    lifecycle_request,
    names,
    on_key,
    policies,
    read_policy,
    run,
)

pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")

# Kinds of lost answer botocore retries by itself (the read-timeout kind takes the client's
# whole read timeout, 10-20 s, and is covered by the proxy's own tests).
RETRIED_LOSSES = [kind for kind in get_args(LoseAnswer) if kind != "timeout"]


def lock_items(aws: LocalAws) -> list[dict[str, Any]]:
    items = aws.client("dynamodb").scan(TableName=REGISTRY_TABLE)["Items"]
    return [item for item in items if item["id"]["S"].startswith(LOCK_ID_PREFIX)]


def is_lock(prefix: str) -> Any:
    return lambda body: str(body["Item"]["id"]["S"]).startswith(LOCK_ID_PREFIX + prefix)


# --- 1. Calls that take effect while their answer is lost -------------------------------------


@pytest.mark.parametrize("loss", RETRIED_LOSSES)
@pytest.mark.parametrize("lock", ["resource/", "key/"])
def test_a_lock_whose_answer_was_lost_is_still_the_writers_own(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    loss: LoseAnswer,
    lock: str,
) -> None:
    fault_proxy.add_rule("dynamodb:PutItem", lose_answer=loss, times=1, when=is_lock(lock))
    props = {"KeyIds": [demo_org.keys["data"]], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    started = time.monotonic()
    created = run(cfn, cfn.event("Create", props))

    assert created.status == "SUCCESS", created.reason
    # The retry found the writer's own lock and went on: no waiting on itself.
    assert time.monotonic() - started < 10
    assert fault_proxy.count("dynamodb:PutItem", answer_lost=True) == 1
    assert granted(read_policy(aws, demo_org.keys["data"]), str(created.physical_id)) == names(
        demo_org, "dev-a"
    )
    assert lock_items(aws) == []


@pytest.mark.parametrize("loss", RETRIED_LOSSES)
def test_a_release_whose_answer_was_lost_strands_nothing(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    loss: LoseAnswer,
) -> None:
    key = demo_org.keys["data"]
    # The key's lock and then the resource's: each release lands and loses its answer.
    fault_proxy.add_rule("dynamodb:DeleteItem", lose_answer=loss, times=2)
    first = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", first))
    assert created.status == "SUCCESS", created.reason
    assert fault_proxy.count("dynamodb:DeleteItem", answer_lost=True) == 2
    assert lock_items(aws) == []

    # Another resource writes the same key at once: nothing was left locked.
    second = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    started = time.monotonic()
    other = run(cfn, cfn.event("Create", second, logical_id="Other"))
    assert other.status == "SUCCESS", other.reason
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("loss", RETRIED_LOSSES)
def test_a_write_whose_answer_was_lost_is_put_back_when_another_key_fails(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    loss: LoseAnswer,
) -> None:
    keys = list(add_keys(aws, 3))
    before = policies(aws, keys)
    # Every attempt of the first key's write lands and loses its answer (botocore's retries
    # included); the put-back that follows is answered.
    fault_proxy.add_rule("kms:PutKeyPolicy", lose_answer=loss, times=3, when=on_key(keys[0]))
    fault_proxy.add_rule(
        "kms:PutKeyPolicy", error_code="AccessDeniedException", when=on_key(keys[2])
    )
    props = {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    failed = run(cfn, cfn.event("Create", props))

    assert failed.status == "FAILED"
    assert fault_proxy.count("kms:PutKeyPolicy", answer_lost=True) == 3
    assert policies(aws, keys) == before
    reason = str(failed.reason)
    assert keys[2] in reason and "NOT restored" not in reason
    assert " 0 changed keys" not in reason


# --- 2. CloudFormation must always be able to roll back and delete ---------------------------

TYPO_REGION = "us-esat-1"
OPT_IN_REGION = "ap-east-1"


def key_in(region: str) -> str:
    return f"arn:aws:kms:{region}:{MOTO_ACCOUNT_ID}:key/{uuid.uuid4()}"


@pytest.mark.parametrize(
    ("region", "answer"),
    [(TYPO_REGION, "reset"), (OPT_IN_REGION, "UnrecognizedClientException")],
)
def test_a_key_in_a_region_that_cannot_be_reached(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    region: str,
    answer: Any,
) -> None:
    fault_proxy.unreachable_region(region, answer=answer)
    good = demo_org.keys["data"]
    before = read_policy(aws, good)
    props = {"KeyIds": [good, key_in(region)], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    failed = run(cfn, cfn.event("Create", props))

    # The reason names the service, the key's region and the fix; never "Internal error".
    reason = str(failed.reason)
    assert failed.status == "FAILED"
    assert f"KMS in {region} could not be reached" in reason and "region" in reason, reason
    assert "Internal error" not in reason
    assert read_policy(aws, good) == before
    # A key that could not be reached was never written: the Delete after it succeeds.
    deleted = run(cfn, cfn.event("Delete", props, physical_id=failed.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason
    assert read_policy(aws, good) == before


def test_the_rollback_of_an_update_naming_an_unreachable_region_succeeds(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    fault_proxy.unreachable_region(TYPO_REGION)
    keys = [demo_org.keys["logs"], demo_org.keys["data"]]
    old = {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", old))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    at_create = policies(aws, keys)
    new = {**old, "KeyIds": [*keys, key_in(TYPO_REGION)]}

    failed = run(cfn, cfn.event("Update", new, old_properties=old, physical_id=prefix))
    assert failed.status == "FAILED"
    assert TYPO_REGION in str(failed.reason)
    rollback = run(cfn, cfn.event("Update", old, old_properties=new, physical_id=prefix))

    assert rollback.status == "SUCCESS", rollback.reason
    assert policies(aws, keys) == at_create


@pytest.mark.parametrize("where", ["named", "named before an alias moved"])
def test_a_delete_that_cannot_read_a_key_fails_naming_it(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    where: str,
) -> None:
    first, second = demo_org.keys["logs"], demo_org.keys["data"]
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    if where != "named":
        aws.client("kms").update_alias(AliasName="alias/demo-logs", TargetKeyId=key_id(second))
    fault_proxy.add_rule("kms:GetKeyPolicy", error_code="AccessDeniedException", when=on_key(first))

    refused = run(cfn, cfn.event("Delete", props, physical_id=prefix))

    # Answering SUCCESS would leave the grant behind with the stack gone.
    assert refused.status == "FAILED"
    assert key_id(first) in str(refused.reason) and "kms:GetKeyPolicy" in str(refused.reason)
    assert granted(read_policy(aws, first), prefix) == names(demo_org, "dev-a")
    fault_proxy.clear_rules()
    deleted = run(cfn, cfn.event("Delete", props, physical_id=prefix))
    assert deleted.status == "SUCCESS", deleted.reason
    assert read_policy(aws, first) == demo_org.original_policies[first]
    assert read_policy(aws, second) == demo_org.original_policies[second]


# --- 3 and 4. Condition key spellings, policy variables ---------------------------------------


def test_the_grant_restriction_cannot_be_overridden_in_another_spelling(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    props = {
        "KeyIds": [demo_org.keys["data"]],
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
        "AllowGrants": "true",
        "Conditions": {"Bool": {"kms:grantisforawsresource": "false"}},
    }
    failed = run(cfn, cfn.event("Create", props))
    assert failed.status == "FAILED"
    assert "Conditions.Bool" in str(failed.reason) and "AllowGrants" in str(failed.reason)
    assert fault_proxy.count("kms:PutKeyPolicy") == 0


@pytest.mark.parametrize("version", ["2008-10-17", None])
def test_role_names_are_refused_on_a_key_whose_policy_version_ignores_variables(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    version: str | None,
) -> None:
    key = demo_org.keys["data"]
    document = read_policy(aws, key)
    document.pop("Version", None)
    if version:
        document["Version"] = version
    aws.client("kms").put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(document))
    props = {
        "KeyIds": [key],
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
        "RoleNames": ["app"],
    }
    writes = fault_proxy.count("kms:PutKeyPolicy")

    failed = run(cfn, cfn.event("Create", props))

    assert failed.status == "FAILED"
    assert key_id(key) in str(failed.reason) and "2012-10-17" in str(failed.reason)
    assert fault_proxy.count("kms:PutKeyPolicy") == writes
    assert read_policy(aws, key) == document
    # The same grant without a variable is written as usual.
    plain = run(cfn, cfn.event("Create", {**props, "RoleNames": []}, logical_id="Plain"))
    assert plain.status == "SUCCESS", plain.reason


# --- 5. Stale locks ---------------------------------------------------------------------------


def stale_lock(aws: LocalAws, name: str, owner: str = "gone/writer", age: int = 3600) -> None:
    aws.client("dynamodb").put_item(
        TableName=REGISTRY_TABLE,
        Item={
            "id": {"S": LOCK_ID_PREFIX + name},
            "owner": {"S": owner},
            "holder": {"S": "a writer that died"},
            "expires": {"N": str(int(time.time()) - age)},
        },
    )


def test_a_lock_left_by_a_writer_that_died_is_taken_over(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = demo_org.keys["data"]
    stale_lock(aws, key_lock(key))
    props = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    with caplog.at_level(logging.WARNING, logger="orgkeypolicy.locks"):
        created = run(cfn, cfn.event("Create", props))

    assert created.status == "SUCCESS", created.reason
    assert any("lease had run out" in r.getMessage() for r in caplog.records)
    assert lock_items(aws) == []


def test_a_live_lock_of_another_writer_makes_the_request_fail_naming_it(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    key = demo_org.keys["data"]
    stale_lock(aws, key_lock(key), owner="resync/run-1/x", age=-600)
    request = lifecycle_request(
        "Create",
        {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]},
        stack_id=cfn.stack_id,
        logical_id="Blocked",
    )
    with pytest.raises(OrgKeyPolicyError) as busy:
        lifecycle.apply(request, boto3.Session(), app.settings, Deadline(1.0))
    assert isinstance(busy.value.__cause__, LockBusyError)
    reason = str(busy.value)
    assert reason.startswith(f"Lock lock/key/{key} in table {REGISTRY_TABLE} is held by")
    assert "a writer that died until" in reason and "delete that item" in reason
    assert read_policy(aws, key) == demo_org.original_policies[key]


@pytest.mark.parametrize("round_", range(5))
def test_of_two_writers_breaking_one_stale_lock_exactly_one_gets_it(
    aws: LocalAws, round_: int
) -> None:
    stale_lock(aws, "key/shared")
    session = boto3.Session()
    writers = [
        Leases(session, REGISTRY_TABLE, family=f"writer-{n}/", run_id="1", holder=f"writer {n}")
        for n in range(2)
    ]
    barrier = threading.Barrier(len(writers))
    outcomes: dict[int, str] = {}

    def take(n: int) -> None:
        barrier.wait(timeout=10)
        try:
            writers[n].acquire("key/shared", wait=0.5)
        except LockBusyError:
            outcomes[n] = "busy"
        else:
            outcomes[n] = "held"

    threads = [threading.Thread(target=take, args=(n,)) for n in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes.values()) == ["busy", "held"]
    [winner] = [n for n, outcome in outcomes.items() if outcome == "held"]
    [item] = lock_items(aws)
    assert item["owner"]["S"] == writers[winner].owner
    writers[winner].release("key/shared")
    assert lock_items(aws) == []


# --- 8 and 9. Reasons and log lines -----------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "operation", "said"),
    [
        ("kms", "kms:DescribeKey", f"KMS in {DEFAULT_REGION} could not be reached"),
        ("dynamodb", "dynamodb:PutItem", "Registry table"),
    ],
)
def test_failures_that_are_not_aws_errors_name_the_service_and_the_fix(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    service: str,
    operation: str,
    said: str,
) -> None:
    fault_proxy.add_rule(operation, drop=True)
    props = {"KeyIds": [demo_org.keys["data"]], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    failed = run(cfn, cfn.event("Create", props))

    reason = str(failed.reason)
    assert failed.status == "FAILED"
    assert said in reason and "ConnectionClosedError" in reason, reason
    assert "Internal error" not in reason
    assert (
        read_policy(aws, demo_org.keys["data"]) == demo_org.original_policies[demo_org.keys["data"]]
    )


class Unreachable:
    """A boto3 client whose every call fails as a broken connection does, at once (the real
    clients' retries of STS and Organizations take tens of seconds to give up)."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: object, **kwargs: object) -> None:
            raise ConnectionClosedError(endpoint_url=f"https://{name}.example")

        return call

    def get_paginator(self, name: str) -> Any:
        return self


def test_sts_and_organizations_that_cannot_be_reached_are_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = boto3.Session(region_name=DEFAULT_REGION)
    monkeypatch.setattr(session, "client", lambda *args, **kwargs: Unreachable())
    with pytest.raises(OrgKeyPolicyError, match="STS GetCallerIdentity failed") as sts:
        aws.identity(session)
    assert "ConnectionClosedError" in str(sts.value) and "network access" in str(sts.value)
    directory = aws.OrganizationsDirectory(session, "aws", pool=2)
    with pytest.raises(OrganizationsError) as organizations:
        directory.accounts("ou-ab12-11111111")
    reason = str(organizations.value)
    assert "ListAccountsForParent ou-ab12-11111111 could not be reached" in reason
    assert "ConnectionClosedError" in reason and "retry" in reason


@pytest.fixture
def lambda_root_logger() -> Iterator[io.StringIO]:
    """What the Lambda runtime prints through its handler on the root logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.root.addHandler(handler)
    try:
        yield stream
    finally:
        logging.root.removeHandler(handler)


def test_crhelpers_log_lines_go_through_the_json_logger_with_the_resource(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, lambda_root_logger: io.StringIO
) -> None:
    handler = app.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    powertools = io.StringIO()
    previous = handler.setStream(powertools)
    try:
        # A Create that fails: crhelper logs the failure itself.
        failed = run(cfn, cfn.event("Create", {"KeyIds": ["alias/nope"]}, logical_id="Loud"))
    finally:
        handler.setStream(previous)
    assert failed.status == "FAILED"
    lines = [json.loads(line) for line in powertools.getvalue().splitlines()]
    from_crhelper = [line for line in lines if line["location"].startswith("_wrap_function")]
    assert from_crhelper, lines
    for line in from_crhelper:
        assert line["logical_resource_id"] == "Loud"
        assert line["stack_id"] == cfn.stack_id
    # Nothing reaches the runtime's plain-text handler on the root logger.
    assert lambda_root_logger.getvalue() == ""
