"""What the re-sync tests share: consumer stacks in the local CloudFormation, deploys through
the handler, account moves, runs, and the event path of template.yaml in the local AWS."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3

import app
from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.eventsource import SqsEventSource
from localaws.proxy import FaultProxy
from localaws.server import LocalAws
from orgkeypolicy import resync
from orgkeypolicy.drift import Report
from orgkeypolicy.settings import Settings
from orgkeypolicy.statements import sid_prefix
from tests.test_template import TEMPLATE, _load

SAMPLES = Path(__file__).resolve().parent.parent / "events" / "resync"
BUS = "organizations"
STACK_TEMPLATE = json.dumps({"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}})
SETTINGS = replace(Settings.from_environment(), verify_delay=0.0)


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
