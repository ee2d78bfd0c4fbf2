"""The re-sync function's Lambda entry end to end: direct invocations, scheduled events and
queue batches of Organizations events, the template's event rule in the local AWS, the sample
events, and the metrics."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

import app
from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.proxy import FaultProxy
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from tests.endtoend import add_keys, names, ours
from tests.endtoend import granted as granted_accounts
from tests.endtoend import read_policy as policy
from tests.resyncing import (
    active_under,
    deploy,
    move,
    new_stack,
    organizations_queue,
    put_event,
    sample,
)

# Every test runs behind the fault proxy, which sees (and checks) every policy written.
pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")


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
