"""Re-sync end to end: records written by real Creates through the handler, the organization
and keys changed behind the provider's back, then ``resync.run`` (and the re-sync Lambda entry)
against moto behind the fault proxy, which counts every PutKeyPolicy.

Each consumer stack exists in moto's CloudFormation: a re-sync writes only the keys of
resources whose stack still exists.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

import app
from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.eventsource import SqsEventSource
from localaws.proxy import FaultProxy
from localaws.registry import REGISTRY_TABLE
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from orgkeypolicy import keypolicy, resync
from orgkeypolicy.drift import Report, Status
from orgkeypolicy.lifecycle import resource_lock
from orgkeypolicy.locks import Leases
from orgkeypolicy.registry import Registry
from orgkeypolicy.settings import Settings
from orgkeypolicy.statements import sid_prefix
from tests.policychecks import assert_policy_safe
from tests.test_faults import add_keys, delete_key_now, flaky
from tests.test_lifecycle import foreign, granted_accounts, names, ours, policy
from tests.test_template import TEMPLATE, _load

SAMPLES = Path(__file__).resolve().parent.parent / "events" / "resync"
BUS = "organizations"
STACK_TEMPLATE = json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}})
SETTINGS = replace(Settings.from_environment(), verify_delay=0.0)


@pytest.fixture(autouse=True)
def fast_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto is consistent at once; the read-back wait exists for KMS's eventual consistency.
    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))


@pytest.fixture(autouse=True)
def proxy(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """Every test runs behind the proxy, which sees (and checks) every policy written."""
    yield fault_proxy
    for call in fault_proxy.calls_for("kms:PutKeyPolicy", injected=False):
        assert_policy_safe(str(call.body.get("Policy", "")))


# --- Helpers ----------------------------------------------------------------------------------


def new_stack(aws: LocalAws, name: str = "consumer") -> str:
    """A stack that exists in the local CloudFormation; its ID."""
    created = aws.client("cloudformation").create_stack(StackName=name, TemplateBody=STACK_TEMPLATE)
    return str(created["StackId"])


def deploy(
    cfn: CloudFormation,
    stack_id: str,
    properties: dict[str, Any],
    logical_id: str = "SharedKeyPolicy",
    request_type: str = "Create",
    old_properties: dict[str, Any] | None = None,
) -> str:
    """A Create (or Update) through the handler, as CloudFormation sends it; the Sid prefix."""
    physical_id = None if request_type == "Create" else sid_prefix(stack_id, logical_id)
    event = cfn.event(
        request_type,
        properties,
        logical_id=logical_id,
        stack_id=stack_id,
        old_properties=old_properties,
        physical_id=physical_id,
    )
    app.lambda_handler(event, FakeLambdaContext())
    response = cfn.response(event)
    assert response.status == "SUCCESS", response.reason
    return str(response.data["StatementSid"])


def delete(cfn: CloudFormation, stack_id: str, prefix: str, properties: dict[str, Any]) -> None:
    event = cfn.event(
        "Delete", properties, logical_id="SharedKeyPolicy", stack_id=stack_id, physical_id=prefix
    )
    app.lambda_handler(event, FakeLambdaContext())
    assert cfn.response(event).status == "SUCCESS"


def move(aws: LocalAws, account: str, destination: str) -> None:
    org = aws.organizations()
    [parent] = org.list_parents(ChildId=account)["Parents"]
    org.move_account(
        AccountId=account, SourceParentId=parent["Id"], DestinationParentId=destination
    )


def resync_now(apply: bool = True, **kwargs: Any) -> Report:
    return resync.run(boto3.Session(), kwargs.pop("settings", SETTINGS), apply=apply, **kwargs)


def puts(proxy: FaultProxy) -> int:
    """PutKeyPolicy calls that reached KMS (the proxy's own injected answers left out)."""
    return proxy.count("kms:PutKeyPolicy", injected=False)


def only_resource(report: Report) -> Any:
    [resource] = report.resources
    return resource


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
    # A full bucket lets ``rate`` writes through at once; after that one every 1/rate s.
    for first, later in zip(started, started[int(rate) :], strict=False):
        assert later - first >= 1.0 - 0.05, started
    assert started[-1] - started[0] >= (len(started) - rate) / rate - 0.05


# --- The Lambda entry -------------------------------------------------------------------------


def emitted_metrics(printed: str) -> dict[str, float]:
    """The metric values of the Powertools EMF documents printed on stdout."""
    found: dict[str, float] = {}
    for line in printed.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            document = json.loads(line)
            for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = document[metric["Name"]]
                found[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return found


def test_a_direct_invocation_resyncs_the_named_resources_and_emits_the_metrics(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    stack = new_stack(aws)
    named = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    other = deploy(
        cfn,
        stack,
        {"KeyIds": [data], "OrganizationalUnitIds": [demo_org.ous["Prod"]]},
        logical_id="Other",
    )
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])
    move(aws, demo_org.accounts["prod-b"], demo_org.ous["Sandbox"])
    capsys.readouterr()

    summary = app.resync_handler({"resources": [named]}, FakeLambdaContext())

    assert summary == {
        "resources": 1,
        "keys_checked": 1,
        "keys_rewritten": 1,
        "accounts_added": 1,
        "accounts_removed": 1,
        "failures": [],
    }
    assert emitted_metrics(capsys.readouterr().out) == {
        "ResourcesChecked": 1,
        "KeysDrifted": 1,
        "KeysRewritten": 1,
        "AccountsAdded": 1,
        "AccountsRemoved": 1,
        "Failures": 0,
    }
    assert granted_accounts(policy(aws, logs), named) == names(
        demo_org, "prod-a", "crit-a", "sbx-a"
    )
    assert granted_accounts(policy(aws, data), other) == names(
        demo_org, "prod-a", "prod-b", "crit-a"
    )

    unknown = "OrgKeyPolicy0123456789abcdef"
    summary = app.resync_handler({"resources": [unknown]}, FakeLambdaContext())
    assert summary["resources"] == 1
    [failure] = summary["failures"]
    assert failure["sid_prefix"] == unknown and "No record" in str(failure["reason"])
    assert emitted_metrics(capsys.readouterr().out)["Failures"] == 1


@pytest.mark.parametrize(
    "event",
    [{"resources": []}, {"resources": "OrgKeyPolicy0123456789abcdef"}, {"resources": ["x"]}],
    ids=["empty", "not-a-list", "not-a-prefix"],
)
def test_a_malformed_direct_invocation_is_refused(aws: LocalAws, event: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="resources"):
        app.resync_handler(event, FakeLambdaContext())


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return loaded


def organizations_queue(aws: LocalAws) -> SqsEventSource:
    """The template's event path in the local AWS: a bus, the template's rule on it, and the
    re-sync queue as its target."""
    pattern = _load(TEMPLATE)["Resources"]["OrganizationsEventsRule"]["Properties"]["EventPattern"]
    events, sqs = aws.client("events"), aws.client("sqs")
    events.create_event_bus(Name=BUS)
    queue = SqsEventSource(aws.url, sqs.create_queue(QueueName="resync")["QueueUrl"])
    events.put_rule(Name="membership", EventBusName=BUS, EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule="membership", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": queue.queue_arn}]
    )
    return queue


def put_event(aws: LocalAws, event: dict[str, Any]) -> None:
    """``event`` as the forwarder delivers it to the provider's bus."""
    aws.client("events").put_events(
        Entries=[
            {
                "Source": event["source"],
                "DetailType": event["detail-type"],
                "Detail": json.dumps(event["detail"]),
                "EventBusName": BUS,
            }
        ]
    )


def test_the_rule_takes_the_membership_events_and_nothing_else(aws: LocalAws) -> None:
    queue = organizations_queue(aws)
    membership = [
        json.loads(record["body"]) for record in sample("organizations-events.json")["Records"]
    ]
    [move_event] = [e for e in membership if e["detail"]["eventName"] == "MoveAccount"]
    departed = {**move_event, "detail-type": "AWS Service Event via CloudTrail"}
    departed["detail"] = {**move_event["detail"], "eventName": "AccountDepartedOrganization"}
    failed = {**move_event, "detail": {**move_event["detail"], "errorCode": "AccessDenied"}}
    unrelated = {**move_event, "detail": {**move_event["detail"], "eventName": "CreatePolicy"}}
    for event in [*membership, departed, failed, unrelated]:
        put_event(aws, event)
    received: list[str] = []

    def handler(event: dict[str, Any]) -> None:
        received.extend(json.loads(r["body"])["detail"]["eventName"] for r in event["Records"])

    while queue.poll(handler):
        pass
    assert sorted(received) == sorted(
        [
            "MoveAccount",
            "CreateAccountResult",
            "AccountJoinedOrganization",
            "AccountDepartedOrganization",
        ]
    )


def test_the_sample_events_run_through_the_handler(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    prefix = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])

    assert app.resync_handler(sample("organizations-events.json"), FakeLambdaContext()) == {
        "batchItemFailures": []
    }
    assert demo_org.accounts["sbx-a"] in granted_accounts(policy(aws, logs), prefix)
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Sandbox"])
    scheduled = app.resync_handler(sample("scheduled.json"), FakeLambdaContext())
    assert scheduled["accounts_removed"] == 1
    direct = app.resync_handler(sample("direct.json"), FakeLambdaContext())
    assert [failure["sid_prefix"] for failure in direct["failures"]] == sample("direct.json")[
        "resources"
    ]


def test_a_burst_of_moves_through_the_queue_converges_on_the_last_membership(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    queue = organizations_queue(aws)
    [extra] = add_keys(aws, 1)
    stack = new_stack(aws)
    units = {name: demo_org.ous[name] for name in ("Prod", "Dev", "Sandbox")}
    keys = {"Prod": demo_org.keys["logs"], "Dev": demo_org.keys["data"], "Sandbox": extra}
    prefixes = {
        name: deploy(
            cfn, stack, {"KeyIds": [keys[name]], "OrganizationalUnitIds": [unit]}, f"{name}Share"
        )
        for name, unit in units.items()
    }
    [move_event] = [
        json.loads(record["body"])
        for record in sample("organizations-events.json")["Records"]
        if '"MoveAccount"' in record["body"]
    ]
    draw = random.Random(7)
    movable = [demo_org.accounts[name] for name in ("prod-a", "prod-b", "crit-a", "dev-a", "sbx-a")]
    where = {account: demo_org.parents[account] for account in movable}
    runs = delivered = 0

    def invoke(event: dict[str, Any]) -> Any:
        return app.resync_handler(event, FakeLambdaContext())

    proxy.reset_log()
    for moved in range(1, 51):
        account = draw.choice(movable)
        destination = draw.choice([ou for ou in demo_org.ous.values() if ou != where[account]])
        move(aws, account, destination)
        detail = {
            **move_event["detail"],
            "requestParameters": {
                "accountId": account,
                "sourceParentId": where[account],
                "destinationParentId": destination,
            },
        }
        where[account] = destination
        put_event(aws, {**move_event, "detail": detail})
        # Lambda's poller comes by now and then, with whatever has queued up since.
        if moved % 12 == 0:
            delivered += queue.poll(invoke)
            runs += 1
    while batch := queue.poll(invoke):
        delivered += batch
        runs += 1

    assert (runs, delivered) == (5, 50)
    assert proxy.count("dynamodb:Scan") == runs
    for name, unit in units.items():
        expected = active_under(aws, unit)
        document = policy(aws, keys[name])
        if expected:
            assert granted_accounts(document, prefixes[name]) == expected
        else:
            assert ours(document, prefixes[name]) == []


def active_under(aws: LocalAws, unit: str) -> set[str]:
    """The ACTIVE accounts in ``unit`` and below, as Organizations lists them."""
    org = aws.organizations()
    found = {
        account["Id"]
        for account in org.list_accounts_for_parent(ParentId=unit)["Accounts"]
        if account.get("State", account.get("Status")) == "ACTIVE"
    }
    for child in org.list_organizational_units_for_parent(ParentId=unit)["OrganizationalUnits"]:
        found |= active_under(aws, child["Id"])
    return found
