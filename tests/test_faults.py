"""Faults end to end: the real handler against moto behind the fault proxy, with
CloudFormation's responses received over HTTPS. Time limits and the response upload are in
``test_response.py``.

Every test asserts what is left on the keys, read back from moto, and what CloudFormation
was told. Every policy the code under test writes passes through the proxy, and each one is
checked by ``assert_policy_safe`` when the test ends.

Where two invocations must run at the same moment, the lifecycle functions run from threads,
each on its own boto3 session: the handler module holds one crhelper object per process, as
Lambda runs one invocation per execution environment at a time, and two invocations sharing
it in one process interfere (one of them is never answered).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

import app
from localaws.cfn import CloudFormation
from localaws.proxy import FaultProxy
from localaws.seed import SeededOrg
from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy import keypolicy, lifecycle
from orgkeypolicy.statements import sid_prefix
from tests.endtoend import (
    Policy,
    add_keys,
    concurrently,
    delete_key_now,
    flaky,
    foreign,
    forwarded,
    granted,
    key_id,
    lifecycle_request,
    names,
    on_key,
    other_stack_id,
    ours,
    policies,
    racing,
    read_policy,
    refused_locks,
    run,
    schedule_deletion,
)
from tests.padding import padded
from tests.policychecks import assert_policy_safe

# What KMS answers for a PutKeyPolicy the caller's role may not make (cut to 80 characters by
# the adapter, so a realistic length matters for the reason's budget of 255).
ACCESS_DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/org-key-policy-FunctionRole-1Q2W3E4R5T6Y/"
    "org-key-policy is not authorized to perform: kms:PutKeyPolicy on this resource because "
    "no resource-based policy allows the kms:PutKeyPolicy action"
)


pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")


# --- 1. Throttling ----------------------------------------------------------------------------


def test_throttled_calls_are_retried_to_exactly_the_unthrottled_result(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    extra = add_keys(aws, 2)
    keys = [*demo_org.keys.values(), *extra]
    props = {
        "KeyIds": ["alias/demo-logs", demo_org.keys["data"], *extra],
        "OrganizationalUnitIds": [demo_org.ous["Dev"], demo_org.ous["Sandbox"]],
        "AccountIds": [demo_org.management_account_id],
        "AllowGrants": "true",
    }
    before = policies(aws, keys)
    clean = run(cfn, cfn.event("Create", props))
    assert clean.status == "SUCCESS", clean.reason
    expected = policies(aws, keys)
    baseline = forwarded(fault_proxy)
    gone = run(cfn, cfn.event("Delete", props, physical_id=clean.physical_id))
    assert gone.status == "SUCCESS", gone.reason
    assert policies(aws, keys) == before

    fault_proxy.reset_log()
    # Seeds whose first draw throttles: each service is throttled at least once.
    fault_proxy.add_rule(
        "organizations:*", error_code="TooManyRequestsException", when=flaky(0.3, seed=1)
    )
    fault_proxy.add_rule("kms:*", error_code="ThrottlingException", when=flaky(0.3, seed=3))
    throttled = run(cfn, cfn.event("Create", props))

    assert throttled.status == "SUCCESS", throttled.reason
    assert throttled.data == clean.data
    assert policies(aws, keys) == expected
    injected = Counter(call.service for call in fault_proxy.calls if call.injected)
    assert injected["organizations"] > 0 and injected["kms"] > 0
    # Each call succeeded once: retries repeated calls, never the work around them.
    assert forwarded(fault_proxy) == baseline
    assert fault_proxy.count() <= 3 * sum(baseline.values())


# --- 2. A failure midway through many keys ----------------------------------------------------


@pytest.mark.parametrize("code", ["AccessDeniedException", "KMSInvalidStateException"])
def test_a_write_failing_midway_puts_every_key_back_and_the_delete_succeeds(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy, code: str
) -> None:
    keys = list(add_keys(aws, 5))
    before = policies(aws, keys)
    fault_proxy.add_rule("kms:PutKeyPolicy", error_code=code, when=on_key(keys[2]))
    props = {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Workloads"]]}

    failed = run(cfn, cfn.event("Create", props))

    assert failed.status == "FAILED"
    assert keys[2] in str(failed.reason) and code in str(failed.reason)
    assert policies(aws, keys) == before
    # The other four were written in parallel before the failure was known.
    assert fault_proxy.count("kms:PutKeyPolicy", injected=False) >= 2

    deleted = run(cfn, cfn.event("Delete", props, physical_id=failed.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason
    assert policies(aws, keys) == before


def test_an_update_failing_midway_goes_back_to_the_old_properties_and_rolls_back(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    keys = list(add_keys(aws, 6))
    old = {"KeyIds": keys[:5], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", old))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    after_create = policies(aws, keys)
    assert granted(after_create[keys[4]], prefix) == names(demo_org, "dev-a")

    # Drops the fifth key, adds the sixth and changes the grant on the first four.
    new = {
        "KeyIds": [*keys[:4], keys[5]],
        "OrganizationalUnitIds": [demo_org.ous["Sandbox"]],
        "AllowGrants": "true",
    }
    fault_proxy.add_rule(
        "kms:PutKeyPolicy", error_code="AccessDeniedException", when=on_key(keys[2])
    )
    failed = run(cfn, cfn.event("Update", new, old_properties=old, physical_id=prefix))

    assert failed.status == "FAILED"
    assert keys[2] in str(failed.reason)
    assert failed.physical_id == prefix
    assert policies(aws, keys) == after_create

    # CloudFormation's rollback: the old properties as new, the failed ones as old.
    rollback = run(cfn, cfn.event("Update", old, old_properties=new, physical_id=prefix))
    assert rollback.status == "SUCCESS", rollback.reason
    assert policies(aws, keys) == after_create


def test_a_key_that_cannot_be_put_back_is_named_and_cleaned_by_the_delete(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    keys = list(add_keys(aws, 5))
    before = policies(aws, keys)
    fault_proxy.add_rule(
        "kms:PutKeyPolicy",
        error_code="AccessDeniedException",
        message=ACCESS_DENIED,
        when=on_key(keys[2]),
    )
    # The first key takes the grant, then refuses to give it back.
    fault_proxy.add_rule(
        "kms:PutKeyPolicy",
        error_code="AccessDeniedException",
        message=ACCESS_DENIED,
        nth={2},
        when=on_key(keys[0]),
    )
    props = {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    failed = run(cfn, cfn.event("Create", props))
    assert failed.status == "FAILED"
    prefix = str(failed.physical_id)
    assert granted(read_policy(aws, keys[0]), prefix) == names(demo_org, "dev-a")

    fault_proxy.clear_rules()
    deleted = run(cfn, cfn.event("Delete", props, physical_id=prefix))
    assert deleted.status == "SUCCESS", deleted.reason
    assert policies(aws, keys) == before
    # Whoever reads the failure must learn which key still holds the grant.
    assert keys[2] in str(failed.reason)
    # Keys left changed come first, by key ID, so that the reason's length limit spares them.
    assert str(failed.reason).startswith(f"NOT restored: {key_id(keys[0])};")


# --- 3. Two writers on one key at the same moment ---------------------------------------------

RACES = {
    # name: (stack, logical ID, OU) of each writer; "other" is a second stack.
    "same-stack": [("this", "First", "Dev"), ("this", "Second", "Sandbox")],
    "other-stack": [("this", "First", "Dev"), ("other", "First", "Sandbox")],
    "three": [
        ("this", "First", "Dev"),
        ("this", "Second", "Sandbox"),
        ("other", "First", "Critical"),
    ],
}


@pytest.mark.parametrize("attempt", [1, 2])
@pytest.mark.parametrize("race", list(RACES))
def test_writers_racing_on_one_key_all_keep_their_grants(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    race: str,
    attempt: int,
) -> None:
    key = demo_org.keys["data"]
    stacks = {"this": cfn.stack_id, "other": other_stack_id(cfn)}
    settings = replace(app.settings, verify_delay=0.3)
    # Every read happens before any write lands: each writer merges into the same policy, and
    # all but the last write are lost until the read-back notices.
    fault_proxy.add_rule("kms:PutKeyPolicy", delay=0.25)
    writers = [
        lifecycle_request(
            "Create",
            {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous[ou]]},
            stack_id=stacks[stack],
            logical_id=logical_id,
        )
        for stack, logical_id, ou in RACES[race]
    ]

    concurrently(*(racing(settings, request) for request in writers))

    document = read_policy(aws, key)
    assert_policy_safe(document)
    expected = {"Dev": {"dev-a"}, "Sandbox": {"sbx-a"}, "Critical": {"crit-a"}}
    for request, (_, _, ou) in zip(writers, RACES[race], strict=True):
        assert [s["Sid"] for s in ours(document, request.sid_prefix)] == [
            f"{request.sid_prefix}Use"
        ]
        assert granted(document, request.sid_prefix) == names(demo_org, *expected[ou])
    prefixes = tuple(request.sid_prefix for request in writers)
    assert [
        s for s in document["Statement"] if not str(s.get("Sid", "")).startswith(prefixes)
    ] == demo_org.original_policies[key]["Statement"]
    # The race did happen, and the writers took turns: some found the key's write lock taken,
    # and no write had to be repeated because another had erased it.
    assert refused_locks(fault_proxy, key) > 0
    assert fault_proxy.count("kms:PutKeyPolicy") == len(writers)


def test_a_delete_racing_a_create_on_one_key(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    key = demo_org.keys["data"]
    first = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    second = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    leaving = lifecycle_request("Create", first, stack_id=cfn.stack_id, logical_id="Leaving")
    staying = lifecycle_request("Create", second, stack_id=cfn.stack_id, logical_id="Staying")
    for request in (leaving, staying):
        racing(app.settings, request)()
    settings = replace(app.settings, verify_delay=0.3)
    fault_proxy.add_rule("kms:PutKeyPolicy", delay=0.25)
    fault_proxy.reset_log()

    arriving = lifecycle_request(
        "Create", first, stack_id=other_stack_id(cfn), logical_id="Arriving"
    )
    delete = replace(leaving, request_type="Delete", physical_id=leaving.sid_prefix)
    concurrently(racing(settings, delete), racing(settings, arriving))

    document = read_policy(aws, key)
    assert ours(document, leaving.sid_prefix) == []
    assert granted(document, staying.sid_prefix) == names(demo_org, "sbx-a")
    assert granted(document, arriving.sid_prefix) == names(demo_org, "dev-a")
    assert [
        s
        for s in document["Statement"]
        if not str(s.get("Sid", "")).startswith((staying.sid_prefix, arriving.sid_prefix))
    ] == demo_org.original_policies[key]["Statement"]
    assert refused_locks(fault_proxy, key) > 0
    assert fault_proxy.count("kms:PutKeyPolicy") == 2


def test_a_slow_write_does_not_erase_the_other_writers_grant(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    key = demo_org.keys["data"]
    settings = replace(app.settings, verify_delay=0.2)
    fast = lifecycle_request(
        "Create",
        {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]},
        stack_id=cfn.stack_id,
        logical_id="Fast",
    )
    slow = lifecycle_request(
        "Create",
        {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]},
        stack_id=cfn.stack_id,
        logical_id="Slow",
    )
    # As a write slowed by throttling and botocore's backoff would: it was merged into the
    # policy read before the fast writer's write landed, and lands after its read-back.
    fault_proxy.add_rule(
        "kms:PutKeyPolicy",
        delay=0.3,
        times=1,
        when=lambda body: fast.sid_prefix in str(body.get("Policy", "")),
    )
    fault_proxy.add_rule(
        "kms:PutKeyPolicy",
        delay=1.0,
        times=1,
        when=lambda body: slow.sid_prefix in str(body.get("Policy", "")),
    )

    concurrently(racing(settings, fast), racing(settings, slow))

    writes = [str(call.body["Policy"]) for call in fault_proxy.calls_for("kms:PutKeyPolicy")]
    assert len(writes) == 2
    # The write lock made the writers take turns: the second merged into the first's result.
    assert fast.sid_prefix in writes[1] and slow.sid_prefix in writes[1]
    document = read_policy(aws, key)
    assert granted(document, slow.sid_prefix) == names(demo_org, "sbx-a")
    assert granted(document, fast.sid_prefix) == names(demo_org, "dev-a")


def test_a_writer_that_takes_no_lock_is_repaired_by_the_read_back(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    """People and other tools take no write lock: a policy they write between our write and
    our read-back erases our statements, and the read-back must merge them again."""
    key = demo_org.keys["data"]
    request = lifecycle_request(
        "Create",
        {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]},
        stack_id=cfn.stack_id,
        logical_id="Locked",
    )
    admin = {
        "Sid": "AdminAddedMeanwhile",
        "Effect": "Allow",
        "Action": "kms:DescribeKey",
        "Principal": {"AWS": f"arn:aws:iam::{demo_org.management_account_id}:root"},
        "Resource": "*",
    }
    overwritten = threading.Event()

    def foreign_writer() -> None:
        # Straight to the local AWS, as someone in the console would, once our write landed.
        while not fault_proxy.count("kms:PutKeyPolicy"):
            time.sleep(0.01)
        original = demo_org.original_policies[key]
        policy = {**original, "Statement": [*original["Statement"], admin]}
        aws.client("kms").put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
        overwritten.set()

    writer = threading.Thread(target=foreign_writer, daemon=True)
    writer.start()
    racing(replace(app.settings, verify_delay=0.5), request)()
    writer.join(5)

    assert overwritten.is_set()
    document = read_policy(aws, key)
    assert granted(document, request.sid_prefix) == names(demo_org, "dev-a")
    assert admin in document["Statement"]
    assert fault_proxy.count("kms:PutKeyPolicy") == 2


# --- 4. Retried and duplicated requests -------------------------------------------------------


def test_the_same_create_delivered_twice_at_once_and_again_later(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    keys = list(demo_org.keys.values())
    props = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "AllowGrants": "true",
    }
    fault_proxy.add_rule("kms:PutKeyPolicy", delay=0.25)
    request = lifecycle_request("Create", props, stack_id=cfn.stack_id, logical_id="Shared")
    settings = replace(app.settings, verify_delay=0.3)
    first, second = concurrently(racing(settings, request), racing(settings, request))
    assert isinstance(first, lifecycle.Outcome) and isinstance(second, lifecycle.Outcome)
    assert first.physical_id == second.physical_id == request.sid_prefix
    assert first.data == second.data
    once = policies(aws, keys)
    for key in keys:
        assert [s["Sid"] for s in ours(once[key], request.sid_prefix)] == [
            f"{request.sid_prefix}Use",
            f"{request.sid_prefix}Grants",
        ]
        assert (
            foreign(once[key], request.sid_prefix) == demo_org.original_policies[key]["Statement"]
        )

    # CloudFormation delivers it once more, through the handler, after both have finished.
    fault_proxy.clear_rules()
    writes = fault_proxy.count("kms:PutKeyPolicy")
    event = cfn.event("Create", props, logical_id="Shared")
    again = run(cfn, event)
    assert again.status == "SUCCESS", again.reason
    assert again.physical_id == request.sid_prefix
    assert again.data == first.data
    assert policies(aws, keys) == once
    assert fault_proxy.count("kms:PutKeyPolicy") == writes


def test_an_update_rolled_back_restores_the_old_grant_exactly(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    [third] = add_keys(aws, 1)
    keys = [logs, data, third]
    old = {
        "KeyIds": [logs, data],
        "OrganizationalUnitIds": [demo_org.ous["Prod"]],
        "AllowGrants": "true",
    }
    new = {"KeyIds": [data, third], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    created = run(cfn, cfn.event("Create", old))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    at_old = policies(aws, keys)

    updated = run(cfn, cfn.event("Update", new, old_properties=old, physical_id=prefix))
    assert updated.status == "SUCCESS", updated.reason
    assert read_policy(aws, logs) == demo_org.original_policies[logs]
    assert granted(read_policy(aws, third), prefix) == names(demo_org, "sbx-a")

    # Another resource of the stack failed: CloudFormation swaps the properties.
    rolled = run(cfn, cfn.event("Update", old, old_properties=new, physical_id=prefix))
    assert rolled.status == "SUCCESS", rolled.reason
    assert rolled.data["PolicyDigest"] == created.data["PolicyDigest"]
    assert policies(aws, keys) == at_old
    # Delivered twice, the rollback changes nothing more.
    again = run(cfn, cfn.event("Update", old, old_properties=new, physical_id=prefix))
    assert again.status == "SUCCESS", again.reason
    assert policies(aws, keys) == at_old


def test_a_late_delete_for_another_physical_id_after_an_update_removes_nothing(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    old = {"KeyIds": [logs, data], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    new = {"KeyIds": [data], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    created = run(cfn, cfn.event("Create", old))
    prefix = str(created.physical_id)
    updated = run(cfn, cfn.event("Update", new, old_properties=old, physical_id=prefix))
    assert updated.status == "SUCCESS", updated.reason
    assert updated.physical_id == prefix
    settled = policies(aws, [logs, data])
    writes = fault_proxy.count("kms:PutKeyPolicy")

    stale_ids = [
        # Another resource's: the same logical ID in a stack of the same name, deleted since.
        sid_prefix(other_stack_id(cfn), "SharedKeyPolicy"),
        # crhelper's own format, from before this resource chose its physical IDs.
        "consumer_SharedKeyPolicy_ABCD1234",
    ]
    for stale in stale_ids:
        for props in (old, new):
            late = run(cfn, cfn.event("Delete", props, physical_id=stale))
            assert late.status == "SUCCESS", late.reason
            assert late.physical_id == stale
    assert policies(aws, [logs, data]) == settled
    assert fault_proxy.count("kms:PutKeyPolicy") == writes
    assert granted(settled[data], prefix) == names(demo_org, "sbx-a")
    assert len(ours(settled[data], prefix)) == 1
    assert settled[logs] == demo_org.original_policies[logs]


# --- 5. Keys that change under us -------------------------------------------------------------


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_a_deleted_key_fails_create_and_update_naming_it(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    request_type: str,
) -> None:
    [doomed] = add_keys(aws, 1)
    logs = demo_org.keys["logs"]
    props = {"KeyIds": [logs, doomed], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    if request_type == "Create":
        delete_key_now(aws, doomed)
        event = cfn.event("Create", props)
    else:
        created = run(cfn, cfn.event("Create", props))
        assert created.status == "SUCCESS", created.reason
        delete_key_now(aws, doomed)
        new = {**props, "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
        event = cfn.event("Update", new, old_properties=props, physical_id=created.physical_id)
    before = read_policy(aws, logs)
    writes = fault_proxy.count("kms:PutKeyPolicy")

    failed = run(cfn, event)

    assert failed.status == "FAILED"
    # The reason may shorten the ARN (see the test after this one), never drop it.
    assert doomed[:45] in str(failed.reason) and "does not exist" in str(failed.reason)
    assert fault_proxy.count("kms:PutKeyPolicy") == writes
    assert read_policy(aws, logs) == before

    if request_type == "Update":
        # Taking the key out of KeyIds is the way forward, and works.
        prefix = str(failed.physical_id)
        fixed = {**props, "KeyIds": [logs]}
        updated = run(cfn, cfn.event("Update", fixed, old_properties=props, physical_id=prefix))
        assert updated.status == "SUCCESS", updated.reason
        assert granted(read_policy(aws, logs), prefix) == names(demo_org, "dev-a")


def test_the_reason_names_a_missing_key_in_full(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    missing = f"arn:aws:kms:{DEFAULT_REGION}:{MOTO_ACCOUNT_ID}:key/{uuid.uuid4()}"
    props = {"KeyIds": [missing], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    failed = run(cfn, cfn.event("Create", props))
    assert failed.status == "FAILED"
    # Keys of one account and region share the first 45 characters of their ARN.
    assert key_id(missing) in str(failed.reason)


def test_delete_succeeds_whatever_became_of_the_keys(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    kept, pending, deleted, disabled = keys = list(add_keys(aws, 4))
    originals = policies(aws, keys)
    props = {
        "KeyIds": [kept, "alias/pending", deleted, disabled],
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
    }
    aws.client("kms").create_alias(AliasName="alias/pending", TargetKeyId=key_id(pending))
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    schedule_deletion(aws, fault_proxy, pending)
    delete_key_now(aws, deleted)
    aws.client("kms").disable_key(KeyId=key_id(disabled))

    gone = run(cfn, cfn.event("Delete", props, physical_id=prefix))

    assert gone.status == "SUCCESS", gone.reason
    assert read_policy(aws, kept) == originals[kept]
    assert read_policy(aws, disabled) == originals[disabled]
    # KMS would not take its policy; the key goes away with its statements.
    assert granted(read_policy(aws, pending), prefix) == names(demo_org, "dev-a")


def test_a_disabled_key_is_granted_and_released(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    [disabled] = add_keys(aws, 1)
    original = read_policy(aws, disabled)
    aws.client("kms").disable_key(KeyId=key_id(disabled))
    props = {"KeyIds": [disabled], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    assert granted(read_policy(aws, disabled), str(created.physical_id)) == names(demo_org, "dev-a")
    gone = run(cfn, cfn.event("Delete", props, physical_id=created.physical_id))
    assert gone.status == "SUCCESS", gone.reason
    assert read_policy(aws, disabled) == original


def test_a_create_naming_a_key_pending_deletion_fails_before_any_write(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    keys = list(add_keys(aws, 2))
    pending = keys[1]
    before = policies(aws, keys)
    schedule_deletion(aws, fault_proxy, pending)
    props = {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    failed = run(cfn, cfn.event("Create", props))

    assert failed.status == "FAILED"
    assert pending in str(failed.reason)
    assert policies(aws, keys) == before
    assert fault_proxy.count("kms:PutKeyPolicy") == 0, "a write before all checks passed"
    assert "pending deletion" in str(failed.reason).lower()


@pytest.mark.parametrize("doomed_key", ["dropped", "kept"])
def test_a_deployed_key_scheduled_for_deletion_never_blocks_an_update_or_its_rollback(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    doomed_key: str,
) -> None:
    healthy, doomed = list(add_keys(aws, 2))
    old = {"KeyIds": [healthy, doomed], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", old))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    schedule_deletion(aws, fault_proxy, doomed)
    doomed_policy = read_policy(aws, doomed)
    kept = [doomed] if doomed_key == "kept" else []
    new = {"KeyIds": [healthy, *kept], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    writes = fault_proxy.count("kms:PutKeyPolicy", forwarded=True)

    updated = run(cfn, cfn.event("Update", new, old_properties=old, physical_id=prefix))

    assert updated.status == "SUCCESS", updated.reason
    assert granted(read_policy(aws, healthy), prefix) == names(demo_org, "sbx-a")
    # KMS refuses its new policy; a kept key is not even tried: it is left as it was.
    assert read_policy(aws, doomed) == doomed_policy
    if doomed_key == "kept":
        assert fault_proxy.count("kms:PutKeyPolicy", forwarded=True) == writes + 1
    # CloudFormation's rollback: the old properties as new, the failed ones as old.
    rollback = run(cfn, cfn.event("Update", old, old_properties=new, physical_id=prefix))
    assert rollback.status == "SUCCESS", rollback.reason
    assert granted(read_policy(aws, healthy), prefix) == names(demo_org, "dev-a")

    # A key newly named while pending deletion is still refused before any write.
    another = run(cfn, cfn.event("Create", old, logical_id="Newcomer"))
    assert another.status == "FAILED"
    assert "pending deletion" in str(another.reason) and key_id(doomed) in str(another.reason)


@pytest.mark.parametrize("then", ["Update", "Delete", "Delete after the alias is deleted"])
def test_a_re_pointed_alias_leaves_nothing_on_the_key_it_named_before(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, then: str
) -> None:
    first, second = demo_org.keys["logs"], demo_org.keys["data"]
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    kms = aws.client("kms")
    if then == "Delete after the alias is deleted":
        kms.delete_alias(AliasName="alias/demo-logs")
    else:
        kms.update_alias(AliasName="alias/demo-logs", TargetKeyId=key_id(second))

    if then == "Update":
        new = {**props, "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
        response = run(cfn, cfn.event("Update", new, old_properties=props, physical_id=prefix))
    else:
        response = run(cfn, cfn.event("Delete", props, physical_id=prefix))

    assert response.status == "SUCCESS", response.reason
    assert read_policy(aws, first) == demo_org.original_policies[first]
    if then == "Update":
        assert granted(read_policy(aws, second), prefix) == names(demo_org, "sbx-a")
    else:
        assert read_policy(aws, second) == demo_org.original_policies[second]


ADMIN_STATEMENT: dict[str, Any] = {
    "Sid": "AdminAddedBreakGlass",
    "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/break-glass"},
    "Action": "kms:Decrypt",
    "Resource": "*",
}


def rewrite(document: Policy, prefix: str, how: str) -> Policy:
    """What a key administrator's edit between two deploys leaves on the key."""
    statements = list(document["Statement"])
    if how == "rewrites their own":
        statements = [s for s in statements if s["Sid"] != "Allow use by analytics role"]
        statements.insert(1, ADMIN_STATEMENT)
    elif how == "deletes ours":
        statements = [*foreign(document, prefix), ADMIN_STATEMENT]
    elif how == "edits ours":
        for statement in ours(document, prefix):
            statement["Principal"] = {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:root"}
    return {**document, "Id": f"edited-{how}", "Statement": statements}


@pytest.mark.parametrize("how", ["rewrites their own", "deletes ours", "edits ours"])
def test_an_administrators_rewrite_is_kept_and_ours_merged_again(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, how: str
) -> None:
    key = demo_org.keys["data"]
    props = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    prefix = str(created.physical_id)
    edited = rewrite(read_policy(aws, key), prefix, how)
    aws.client("kms").put_key_policy(
        KeyId=key, PolicyName="default", Policy=json.dumps(edited, indent=2)
    )
    theirs = foreign(edited, prefix)

    new = {**props, "OrganizationalUnitIds": [demo_org.ous["Dev"], demo_org.ous["Sandbox"]]}
    updated = run(cfn, cfn.event("Update", new, old_properties=props, physical_id=prefix))

    assert updated.status == "SUCCESS", updated.reason
    document = read_policy(aws, key)
    assert foreign(document, prefix) == theirs
    assert [s["Sid"] for s in ours(document, prefix)] == [f"{prefix}Use"]
    assert granted(document, prefix) == names(demo_org, "dev-a", "sbx-a")

    gone = run(cfn, cfn.event("Delete", new, physical_id=prefix))
    assert gone.status == "SUCCESS", gone.reason
    document = read_policy(aws, key)
    assert document["Statement"] == theirs
    assert {k: v for k, v in document.items() if k != "Statement"} == {
        k: v for k, v in edited.items() if k != "Statement"
    }


# --- 7. Size ---------------------------------------------------------------------------------


def crowd(aws: LocalAws, key: str, prefix: str, room: int) -> None:
    """Give the key a foreign statement that leaves ``room`` bytes for this resource's."""
    document = read_policy(aws, key)
    ours_bytes = keypolicy.size(document) - keypolicy.size(keypolicy.strip(document, prefix))
    document = padded(document, keypolicy.MAX_POLICY_BYTES - room + ours_bytes)
    aws.client("kms").put_key_policy(
        KeyId=key, PolicyName="default", Policy=keypolicy.serialize(document)
    )


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_a_grant_that_would_overflow_a_key_policy_fails_before_any_write(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    request_type: str,
) -> None:
    full, roomy = demo_org.keys["data"], demo_org.keys["logs"]
    old = {"KeyIds": [roomy, full], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    prefix = sid_prefix(cfn.stack_id, "SharedKeyPolicy")
    if request_type == "Update":
        created = run(cfn, cfn.event("Create", old))
        assert created.status == "SUCCESS", created.reason
    # Room for a grant to one account (about 300 bytes), not for the whole organization's.
    crowd(aws, full, prefix, 400)
    before = policies(aws, [full, roomy])
    writes = fault_proxy.count("kms:PutKeyPolicy")
    new = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.root_id],
    }
    event = (
        cfn.event("Create", new)
        if request_type == "Create"
        else cfn.event("Update", new, old_properties=old, physical_id=prefix)
    )

    failed = run(cfn, event)

    assert failed.status == "FAILED"
    reason = str(failed.reason)
    assert full in reason
    assert f"{len(demo_org.accounts_under('Root'))} accounts" in reason
    assert "Auto" in reason and "OrgPaths" in reason
    assert fault_proxy.count("kms:PutKeyPolicy") == writes
    assert policies(aws, [full, roomy]) == before
    if request_type == "Update":
        return
    # The same grant by OU path fits.
    paths = run(cfn, cfn.event("Create", {**new, "PrincipalMode": "Auto"}, logical_id="Paths"))
    assert paths.status == "SUCCESS", paths.reason
    assert paths.data["PrincipalModes"] == "Accounts,OrgPaths"
    assert keypolicy.size(read_policy(aws, full)) <= keypolicy.MAX_POLICY_BYTES
