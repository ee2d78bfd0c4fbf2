"""Every sample request in events/ runs end to end against the local AWS.

The samples are what users pass to ``sam local invoke -e``, which acts on the real account of
the caller's credentials: so every sample is DryRun, and each one runs here twice, as shipped
(it reports what it would do and writes nothing) and with ``DryRun`` taken out (it does it).
Their example IDs are bound to a seeded organization and their ResponseURL to the local
CloudFormation stand-in.
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
def test_every_sample_is_real_shaped_and_dry(name: str) -> None:
    event = json.loads((EVENTS / name).read_text())
    assert event.keys() >= REQUIRED
    assert event["ResourceType"] == "Custom::OrgKeyPolicy"
    assert event["ResponseURL"].startswith("https://")
    assert event["ResourceProperties"]["ServiceToken"] == event["ServiceToken"]
    # The provider's ServiceToken is its alias, not the bare function.
    assert event["ServiceToken"].endswith(":live")
    assert ("OldResourceProperties" in event) == (event["RequestType"] == "Update")
    assert ("PhysicalResourceId" in event) == (event["RequestType"] != "Create")
    for properties in ("ResourceProperties", "OldResourceProperties"):
        if properties in event:
            assert event[properties]["DryRun"] == "true", properties


def holding(aws: LocalAws, org: SeededOrg, prefix: str) -> list[str]:
    """The demo keys that hold statements of the resource with this Sid prefix."""
    return [
        key
        for key, doc in policies(aws, org).items()
        if any(str(s.get("Sid", "")).startswith(prefix) for s in doc["Statement"])
    ]


@pytest.mark.parametrize("dry_run", [True, False], ids=["as-shipped", "without-DryRun"])
def test_create_update_delete_samples_in_order(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, dry_run: bool
) -> None:
    created, updated, deleted = responses = [
        send(cfn, load_event(name, demo_org, cfn, dry_run=dry_run)) for name in LIFECYCLE
    ]
    assert [r.status for r in responses] == ["SUCCESS"] * 3, [r.reason for r in responses]
    assert len({r.physical_id for r in responses}) == 1
    prefix = str(created.physical_id)
    # Either way, each step reports the grant it makes (or would make).
    assert set(created.data["AccountIds"].split(",")) == demo_org.accounts_under("Workloads")
    assert set(updated.data["AccountIds"].split(",")) == (
        demo_org.accounts_under("Workloads") | demo_org.accounts_under("Sandbox")
    ) - {demo_org.accounts["prod-b"]}
    assert created.data["DryRun"] == updated.data["DryRun"] == str(dry_run).lower()
    assert deleted.data["StatementSid"] == prefix
    assert policies(aws, demo_org) == demo_org.original_policies


def test_the_lifecycle_samples_write_only_without_dry_run(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    steps = {}
    for dry_run in (True, False):
        for name in LIFECYCLE:
            response = send(cfn, load_event(name, demo_org, cfn, dry_run=dry_run))
            assert response.status == "SUCCESS", response.reason
            steps[name, dry_run] = holding(aws, demo_org, str(response.physical_id))
    assert steps["create.json", True] == steps["update.json", True] == []
    assert sorted(steps["create.json", False]) == sorted([logs, data])
    # The update drops alias/data-lake, and Delete takes the rest back.
    assert steps["update.json", False] == [logs]
    assert steps["delete.json", True] == steps["delete.json", False] == []


@pytest.mark.parametrize("dry_run", [True, False], ids=["as-shipped", "without-DryRun"])
@pytest.mark.parametrize("name", STANDALONE)
def test_each_standalone_sample_then_its_delete(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, name: str, dry_run: bool
) -> None:
    event = load_event(name, demo_org, cfn, dry_run=dry_run)
    response = send(cfn, event)
    expected = "FAILED" if "invalid" in name else "SUCCESS"
    assert response.status == expected, response.reason
    prefix = str(response.physical_id)
    written = holding(aws, demo_org, prefix)
    assert (written == []) == (expected == "FAILED" or dry_run), written
    if expected == "SUCCESS":
        assert response.data["DryRun"] == str(dry_run).lower()
        assert response.data["AccountCount"] != "0"
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
