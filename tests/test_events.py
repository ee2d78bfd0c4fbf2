"""Every sample request in events/ runs end to end against the local AWS.

The samples are what users pass to ``sam local invoke -e``; here their example IDs are bound
to a seeded organization and their ResponseURL to the local CloudFormation stand-in.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

import app
from localaws.cfn import CfnResponse, CloudFormation, FakeLambdaContext
from localaws.samples import EVENTS, load_event, sample_names
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from tests.policychecks import assert_policy_safe

REQUIRED = {
    "RequestType",
    "ServiceToken",
    "ResponseURL",
    "StackId",
    "RequestId",
    "LogicalResourceId",
    "ResourceType",
    "ResourceProperties",
}
LIFECYCLE = ["create.json", "update.json", "delete.json"]
STANDALONE = [name for name in sample_names() if name not in LIFECYCLE]


@pytest.fixture(autouse=True)
def fast_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))


def send(cfn: CloudFormation, event: dict[str, Any]) -> CfnResponse:
    app.lambda_handler(event, FakeLambdaContext())
    response = cfn.response(event)
    assert response.size <= 4096
    assert response.physical_id
    assert response.body["RequestId"] == event["RequestId"]
    assert response.body["StackId"] == event["StackId"]
    assert response.body["LogicalResourceId"] == event["LogicalResourceId"]
    return response


def policies(aws: LocalAws, org: SeededOrg) -> dict[str, dict[str, Any]]:
    kms = aws.client("kms")
    found = {
        key: json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
        for key in org.keys.values()
    }
    for document in found.values():
        assert_policy_safe(document)
    return found


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_is_real_shaped(name: str) -> None:
    event = json.loads((EVENTS / name).read_text())
    assert event.keys() >= REQUIRED
    assert event["ResourceType"] == "Custom::OrgKeyPolicy"
    assert event["ResponseURL"].startswith("https://")
    assert event["ResourceProperties"]["ServiceToken"] == event["ServiceToken"]
    assert ("OldResourceProperties" in event) == (event["RequestType"] == "Update")
    assert ("PhysicalResourceId" in event) == (event["RequestType"] != "Create")


def test_create_update_delete_samples_in_order(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    responses = [send(cfn, load_event(name, demo_org, cfn)) for name in LIFECYCLE]
    assert [r.status for r in responses] == ["SUCCESS"] * 3, [r.reason for r in responses]
    assert len({r.physical_id for r in responses}) == 1
    created, updated, _ = responses
    assert set(created.data["AccountIds"].split(",")) == demo_org.accounts_under("Workloads")
    assert set(updated.data["AccountIds"].split(",")) == (
        demo_org.accounts_under("Workloads") | demo_org.accounts_under("Sandbox")
    ) - {demo_org.accounts["prod-b"]}
    assert policies(aws, demo_org) == demo_org.original_policies


@pytest.mark.parametrize("name", STANDALONE)
def test_each_standalone_sample_then_its_delete(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, name: str
) -> None:
    event = load_event(name, demo_org, cfn)
    response = send(cfn, event)
    expected = "FAILED" if "invalid" in name else "SUCCESS"
    assert response.status == expected, response.reason
    written = policies(aws, demo_org)
    prefix = str(response.physical_id)
    dry_or_failed = expected == "FAILED" or event["ResourceProperties"].get("DryRun") == "true"
    holding = [
        key
        for key, doc in written.items()
        if any(str(s.get("Sid", "")).startswith(prefix) for s in doc["Statement"])
    ]
    assert (holding == []) == dry_or_failed, holding
    delete = cfn.event(
        "Delete",
        event["ResourceProperties"],
        logical_id=event["LogicalResourceId"],
        stack_id=event["StackId"],
        physical_id=prefix,
    )
    assert send(cfn, delete).status == "SUCCESS"
    assert policies(aws, demo_org) == demo_org.original_policies


def test_local_invocation_prints_the_response_instead_of_uploading(
    aws: LocalAws,
    demo_org: SeededOrg,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As under `sam local invoke`: the sample's real-looking ResponseURL must not be contacted.
    monkeypatch.setenv("AWS_SAM_LOCAL", "true")
    event = load_event("create.json", demo_org)
    app.lambda_handler(event, FakeLambdaContext())
    printed = capsys.readouterr().out
    start = printed.index('{\n  "Status"')
    body = json.loads(printed[start : printed.index("\n}", start) + 2])
    assert body["Status"] == "SUCCESS", body["Reason"]
    assert body["PhysicalResourceId"].startswith("OrgKeyPolicy")
    assert "X-Amz-Signature" not in printed
