"""Re-sync end to end: records written by real Creates through the handler, the organization
and keys changed behind the provider's back, then ``resync.run`` against moto behind the fault
proxy, which counts every PutKeyPolicy.

Each consumer stack exists in moto's CloudFormation: a re-sync writes only the keys of
resources whose stack still exists. The Lambda entry and the event path are in
``test_resync_handler.py``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import boto3
import pytest

from localaws.cfn import CloudFormation
from localaws.proxy import FaultProxy
from localaws.registry import REGISTRY_TABLE
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from orgkeypolicy import keypolicy
from orgkeypolicy.drift import Report, Status
from orgkeypolicy.lifecycle import resource_lock
from orgkeypolicy.locks import Leases
from orgkeypolicy.registry import Registry
from tests.endtoend import add_keys, delete_key_now, flaky, foreign, names, ours
from tests.endtoend import granted as granted_accounts
from tests.endtoend import read_policy as policy
from tests.resyncing import (
    SETTINGS,
    delete,
    deploy,
    move,
    new_stack,
    only_resource,
    puts,
    resync_now,
)

# Every test runs behind the fault proxy, which sees (and checks) every policy written.
pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")


# --- Membership -------------------------------------------------------------------------------


def test_an_account_moved_into_an_ou_is_granted(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    prefix = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])
    proxy.reset_log()

    verified = resync_now(apply=False)

    assert puts(proxy) == 0
    assert verified.drifted
    [key] = only_resource(verified).keys
    assert (key.key_arn, key.status) == (logs, Status.DRIFT)
    assert key.difference.accounts_to_add == (demo_org.accounts["sbx-a"],)
    assert key.difference.accounts_to_remove == ()
    assert not key.difference.statements_missing and not key.difference.statements_edited
    in_prod = names(demo_org, "prod-a", "prod-b", "crit-a")
    assert granted_accounts(policy(aws, logs), prefix) == in_prod

    synced = resync_now()

    assert puts(proxy) == 1
    assert granted_accounts(policy(aws, logs), prefix) == in_prod | names(demo_org, "sbx-a")
    assert foreign(policy(aws, logs), prefix) == demo_org.original_policies[logs]["Statement"]
    assert synced.summary() == {
        "resources": 1,
        "keys_checked": 1,
        "keys_rewritten": 1,
        "accounts_added": 1,
        "accounts_removed": 0,
        "failures": [],
    }
    record = Registry(boto3.Session(), REGISTRY_TABLE).get(prefix)
    assert record is not None and record.synced_at

    proxy.reset_log()
    again = resync_now()
    assert puts(proxy) == 0
    assert not again.drifted
    assert again.summary()["keys_rewritten"] == 0


def test_accounts_moved_out_removed_or_closed_lose_the_grant(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    data = demo_org.keys["data"]
    stack = new_stack(aws)
    props = {"KeyIds": [data], "OrganizationalUnitIds": [demo_org.ous["Workloads"]]}
    prefix = deploy(cfn, stack, {**props, "AllowGrants": "true"})
    assert granted_accounts(policy(aws, data), prefix) == names(
        demo_org, "prod-a", "prod-b", "crit-a", "dev-a"
    )
    org = aws.organizations()
    move(aws, demo_org.accounts["prod-a"], demo_org.ous["Sandbox"])
    org.remove_account_from_organization(AccountId=demo_org.accounts["dev-a"])
    org.close_account(AccountId=demo_org.accounts["crit-a"])

    report = resync_now()

    gone = names(demo_org, "prod-a", "dev-a", "crit-a")
    for suffix in ("Use", "Grants"):
        assert granted_accounts(policy(aws, data), prefix, suffix) == names(demo_org, "prod-b")
    [key] = only_resource(report).keys
    assert set(key.difference.accounts_to_remove) == gone
    assert report.summary()["accounts_removed"] == 3
    assert report.summary()["accounts_added"] == 0


# --- Someone else's writes --------------------------------------------------------------------


def test_an_overwritten_policy_gets_our_statements_back_and_keeps_their_change(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    stack = new_stack(aws)
    prefix = deploy(
        cfn, stack, {"KeyIds": [logs, data], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    )
    wanted = {key: ours(policy(aws, key), prefix) for key in (logs, data)}
    theirs = {
        "Sid": "AddedByHand",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:role/ops"},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }
    kms = aws.client("kms")
    # Someone replaces the logs key's policy with the original one and their own statement.
    replaced = dict(demo_org.original_policies[logs])
    replaced["Statement"] = [*replaced["Statement"], theirs]
    kms.put_key_policy(KeyId=logs, PolicyName="default", Policy=json.dumps(replaced))
    # And widens our statement on the data key by hand.
    edited = policy(aws, data)
    for statement in ours(edited, prefix):
        statement["Action"] = ["kms:Decrypt", "kms:Encrypt", "kms:ReEncrypt*"]
    kms.put_key_policy(KeyId=data, PolicyName="default", Policy=keypolicy.serialize(edited))
    proxy.reset_log()

    report = resync_now()

    keys = {key.key_arn: key for key in only_resource(report).keys}
    assert keys[logs].status is Status.DRIFT and keys[logs].difference.statements_missing
    assert keys[data].status is Status.DRIFT and keys[data].difference.statements_edited
    assert not keys[data].difference.statements_missing
    assert keys[logs].difference.accounts_to_add == tuple(sorted(names(demo_org, "dev-a")))
    assert puts(proxy) == 2
    for key in (logs, data):
        assert ours(policy(aws, key), prefix) == wanted[key]
    assert foreign(policy(aws, logs), prefix) == replaced["Statement"]
    assert foreign(policy(aws, data), prefix) == demo_org.original_policies[data]["Statement"]


def test_nothing_changed_means_no_put_key_policy(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    stack = new_stack(aws)
    first = deploy(
        cfn,
        stack,
        {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Prod"]]},
    )
    second = deploy(
        cfn,
        stack,
        {
            "KeyIds": ["alias/demo-logs", "alias/data-lake"],
            "OrganizationalUnitIds": [demo_org.root_id],
            "PrincipalMode": "OrgPaths",
            "AllowGrants": "true",
        },
        logical_id="Everyone",
    )
    before = {key: policy(aws, key) for key in demo_org.keys.values()}
    proxy.reset_log()

    report = resync_now()

    assert puts(proxy) == 0
    assert {key: policy(aws, key) for key in demo_org.keys.values()} == before
    assert {resource.sid_prefix for resource in report.resources} == {first, second}
    assert all(r.status is Status.IN_SYNC for r in report.resources)
    assert report.summary()["keys_checked"] == 3
    assert not report.drifted


# --- Resources and keys that are gone ---------------------------------------------------------


def test_a_deleted_key_is_reported_while_the_other_keys_and_resources_are_fixed(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    [doomed] = add_keys(aws, 1)
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    stack = new_stack(aws)
    props = {"KeyIds": [logs, doomed], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    first = deploy(cfn, stack, props)
    second = deploy(
        cfn,
        stack,
        {"KeyIds": [data], "OrganizationalUnitIds": [demo_org.ous["Dev"]]},
        logical_id="Other",
    )
    delete_key_now(aws, doomed)
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Dev"])

    report = resync_now()

    now_in_dev = names(demo_org, "dev-a", "sbx-a")
    assert granted_accounts(policy(aws, logs), first) == now_in_dev
    assert granted_accounts(policy(aws, data), second) == now_in_dev
    by_prefix = {resource.sid_prefix: resource for resource in report.resources}
    statuses = {key.key_arn: key.status for key in by_prefix[first].keys}
    assert statuses == {logs: Status.DRIFT, doomed: Status.KEY_GONE}
    assert by_prefix[first].status is Status.KEY_GONE
    assert [key.rewritten for key in by_prefix[first].keys] == [True, False]
    [failure] = report.summary()["failures"]
    assert failure["sid_prefix"] == first and failure["key_arn"] == doomed
    assert "no longer" in str(failure["reason"])
    assert report.summary()["keys_rewritten"] == 2


def test_a_deleted_resource_is_forgotten_and_its_keys_left_alone(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    props = {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]}
    prefix = deploy(cfn, stack, props)
    delete(cfn, stack, prefix, props)
    assert Registry(boto3.Session(), REGISTRY_TABLE).get(prefix) is None
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])
    proxy.reset_log()

    report = resync_now()

    assert report.resources == []
    assert puts(proxy) == 0
    assert policy(aws, logs) == demo_org.original_policies[logs]


def test_a_gone_stack_is_reported_and_its_keys_never_written(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    prefix = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    # The stack went without its resource's Delete reaching the provider.
    aws.client("cloudformation").delete_stack(StackName=stack)
    move(aws, demo_org.accounts["prod-a"], demo_org.ous["Sandbox"])
    before = policy(aws, logs)
    proxy.reset_log()

    report = resync_now()

    assert puts(proxy) == 0
    assert policy(aws, logs) == before
    resource = only_resource(report)
    assert resource.status is Status.STACK_GONE
    assert [(key.key_arn, key.status) for key in resource.keys] == [(logs, Status.STACK_GONE)]
    [failure] = report.summary()["failures"]
    assert failure["sid_prefix"] == prefix and failure["key_arn"] is None
    assert stack in str(failure["reason"])
    assert report.drifted


def test_dry_run_records_are_reported_and_never_written(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    deploy(
        cfn,
        stack,
        {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]], "DryRun": "true"},
    )
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])
    proxy.reset_log()

    report = resync_now()

    assert puts(proxy) == 0
    assert policy(aws, logs) == demo_org.original_policies[logs]
    resource = only_resource(report)
    assert resource.status is Status.DRY_RUN and resource.keys == []
    assert report.summary()["failures"] == []
    assert not report.drifted


# --- Faults and races -------------------------------------------------------------------------


def test_thirty_percent_throttling_still_converges(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    [extra] = add_keys(aws, 1)
    stack = new_stack(aws)
    shares = {
        "DevShare": {
            "KeyIds": [demo_org.keys["logs"], extra],
            "OrganizationalUnitIds": [demo_org.ous["Dev"]],
        },
        "SandboxShare": {
            "KeyIds": [extra, demo_org.keys["data"]],
            "OrganizationalUnitIds": [demo_org.ous["Sandbox"]],
        },
    }
    prefixes = {name: deploy(cfn, stack, props, logical_id=name) for name, props in shares.items()}
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Dev"])
    move(aws, demo_org.accounts["prod-a"], demo_org.ous["Sandbox"])
    proxy.add_rule(
        "organizations:*", error_code="TooManyRequestsException", when=flaky(0.3, seed=1)
    )
    proxy.add_rule("kms:*", error_code="ThrottlingException", when=flaky(0.3, seed=3))
    proxy.add_rule("dynamodb:*", error_code="ThrottlingException", when=flaky(0.3, seed=5))

    report = resync_now()

    assert report.summary()["failures"] == []
    assert report.summary()["keys_rewritten"] == 4
    injected = {call.service for call in proxy.calls if call.injected}
    assert injected == {"organizations", "kms", "dynamodb"}
    assert granted_accounts(policy(aws, extra), prefixes["DevShare"]) == names(
        demo_org, "dev-a", "sbx-a"
    )
    assert granted_accounts(policy(aws, extra), prefixes["SandboxShare"]) == names(
        demo_org, "prod-a"
    )
    proxy.clear_rules()
    assert not resync_now(apply=False).drifted


def test_a_resync_racing_a_deploy_never_reverts_the_deploys_grant(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    stack = new_stack(aws)
    shares = {
        "First": {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]},
        "Raced": {"KeyIds": [data], "OrganizationalUnitIds": [demo_org.ous["Prod"]]},
    }
    prefixes = {name: deploy(cfn, stack, props, logical_id=name) for name, props in shares.items()}
    raced = prefixes["Raced"]
    registry = Registry(boto3.Session(), REGISTRY_TABLE)
    record = registry.get(raced)
    assert record is not None
    # Least recently synced first: "First" fills the run's cache of the Prod OU, then the run
    # waits for "Raced", whose deploy is under way.
    registry.mark_synced(record, "2999-01-01T00:00:00+00:00")
    deploying = Leases(
        boto3.Session(), REGISTRY_TABLE, family=f"{raced}/", run_id="update", holder="Update"
    )
    deploying.acquire(resource_lock(raced), 5)
    reports: list[Report] = []
    run = threading.Thread(
        target=lambda: reports.append(resync_now(settings=replace(SETTINGS, resource_workers=1)))
    )
    run.start()
    waited = time.monotonic() + 30
    while not any(
        call.body["Item"]["id"]["S"] == f"lock/{resource_lock(raced)}" and call.status != 200
        for call in proxy.calls_for("dynamodb:PutItem")
    ):
        assert time.monotonic() < waited, "the run never reached the raced resource"
        time.sleep(0.05)
    # The organization changes after the run read it, and the deploy (an Update that re-enters
    # the lock its request family holds) grants the moved account.
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])
    deploy(
        cfn, stack, shares["Raced"], "Raced", request_type="Update", old_properties=shares["Raced"]
    )
    run.join(60)

    now_in_prod = names(demo_org, "prod-a", "prod-b", "crit-a", "sbx-a")
    assert granted_accounts(policy(aws, data), raced) == now_in_prod
    [report] = reports
    by_prefix = {resource.sid_prefix: resource for resource in report.resources}
    assert by_prefix[raced].status is Status.IN_SYNC
    # The resource the run reached before the move catches up on the next run.
    assert granted_accounts(policy(aws, logs), prefixes["First"]) == now_in_prod - names(
        demo_org, "sbx-a"
    )
    resync_now()
    assert granted_accounts(policy(aws, logs), prefixes["First"]) == now_in_prod


def test_put_key_policy_is_paced_at_the_write_rate(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    keys = list(add_keys(aws, 6))
    stack = new_stack(aws)
    deploy(cfn, stack, {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Dev"]]})
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Dev"])
    proxy.reset_log()
    rate = 5.0

    report = resync_now(settings=replace(SETTINGS, write_rate=rate))

    assert report.summary()["keys_rewritten"] == 6
    started = sorted(call.started for call in proxy.calls_for("kms:PutKeyPolicy"))
    assert len(started) == 6
    # Never more than ``rate`` within one second (the proxy's clock, give or take its jitter).
    for first, later in zip(started, started[int(rate) :], strict=False):
        assert later - first >= 1.0 - 0.05, started
