"""Create, Update and Delete end to end: the real handler, moto server over HTTP, and the
response CloudFormation receives on a local HTTPS endpoint."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from typing import Any

import pytest

import app
from localaws.cfn import CfnResponse, CloudFormation, FakeLambdaContext
from localaws.seed import CONSENT_TAGS, SeededOrg
from localaws.server import LocalAws
from orgkeypolicy import keypolicy
from orgkeypolicy.statements import sid_prefix
from tests.padding import padded
from tests.policychecks import assert_policy_safe

ACCOUNT = "123456789012"


@pytest.fixture(autouse=True)
def fast_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto is consistent at once; the read-back wait exists for KMS's eventual consistency.
    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))


def run(cfn: CloudFormation, event: dict[str, Any], timeout: float = 300) -> CfnResponse:
    app.lambda_handler(event, FakeLambdaContext(timeout_seconds=timeout))
    response = cfn.response(event)
    assert response.size <= 4096
    assert response.physical_id
    assert len(response.reason or "") < 256
    return response


def policy(aws: LocalAws, key_arn: str) -> dict[str, Any]:
    region = key_arn.split(":")[3]
    document: dict[str, Any] = json.loads(
        aws.client("kms", region).get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    )
    assert_policy_safe(document)
    return document


def ours(document: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if str(s.get("Sid", "")).startswith(prefix)]


def foreign(document: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if not str(s.get("Sid", "")).startswith(prefix)]


def granted_accounts(document: dict[str, Any], prefix: str, sid_suffix: str = "Use") -> set[str]:
    [statement] = [s for s in ours(document, prefix) if s["Sid"] == prefix + sid_suffix]
    principals = statement["Principal"]["AWS"]
    return {
        arn.split(":")[4] for arn in ([principals] if isinstance(principals, str) else principals)
    }


def names(org: SeededOrg, *account_names: str) -> set[str]:
    return {org.accounts[name] for name in account_names}


def test_create_update_delete_round_trip(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    props = {
        "KeyIds": ["alias/demo-logs", data],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "AllowGrants": "true",
    }
    created = run(cfn, cfn.event("Create", props))
    prefix = sid_prefix(cfn.stack_id, "SharedKeyPolicy")
    assert created.status == "SUCCESS", created.reason
    assert created.physical_id == prefix
    workloads_active = names(demo_org, "prod-a", "prod-b", "crit-a", "dev-a")
    assert created.data["AccountIds"] == ",".join(sorted(workloads_active))
    assert created.data["AccountCount"] == "4"
    assert created.data["OrganizationId"] == demo_org.org_id
    assert created.data["KeyArns"] == f"{logs},{data}"
    assert created.data["StatementSid"] == prefix
    for key in (logs, data):
        document = policy(aws, key)
        assert foreign(document, prefix) == demo_org.original_policies[key]["Statement"]
        assert granted_accounts(document, prefix) == workloads_active
        assert granted_accounts(document, prefix, "Grants") == workloads_active
        for statement in ours(document, prefix):
            assert statement["Condition"]["StringEquals"]["aws:PrincipalOrgID"] == demo_org.org_id

    new_props = {
        "KeyIds": [logs],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"], demo_org.ous["Sandbox"]],
        "ExcludeAccountIds": [demo_org.accounts["prod-b"]],
    }
    updated = run(cfn, cfn.event("Update", new_props, old_properties=props, physical_id=prefix))
    assert updated.status == "SUCCESS", updated.reason
    assert updated.physical_id == prefix
    assert updated.data["PolicyDigest"] != created.data["PolicyDigest"]
    document = policy(aws, logs)
    assert granted_accounts(document, prefix) == names(
        demo_org, "prod-a", "crit-a", "dev-a", "sbx-a"
    )
    assert [s["Sid"] for s in ours(document, prefix)] == [f"{prefix}Use"]
    assert foreign(document, prefix) == demo_org.original_policies[logs]["Statement"]
    # The key dropped from KeyIds is back to exactly what it was.
    assert policy(aws, data) == demo_org.original_policies[data]

    deleted = run(cfn, cfn.event("Delete", new_props, physical_id=prefix))
    assert deleted.status == "SUCCESS", deleted.reason
    assert deleted.physical_id == prefix
    assert policy(aws, logs) == demo_org.original_policies[logs]
    assert policy(aws, data) == demo_org.original_policies[data]


def test_without_nesting_only_the_named_ous_own_accounts(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {
        "KeyIds": ["alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Prod"]],
        "IncludeNestedOUs": "false",
    }
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "SUCCESS", response.reason
    prefix = response.data["StatementSid"]
    assert granted_accounts(policy(aws, demo_org.keys["data"]), prefix) == names(
        demo_org, "prod-a", "prod-b"
    )


def test_root_and_explicit_accounts(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {
        "KeyIds": ["alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
        "AccountIds": [demo_org.accounts["sbx-a"], demo_org.management_account_id],
    }
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "SUCCESS", response.reason
    expected = names(demo_org, "dev-a", "sbx-a") | {demo_org.management_account_id}
    assert (
        granted_accounts(policy(aws, demo_org.keys["data"]), response.data["StatementSid"])
        == expected
    )

    whole = run(
        cfn,
        cfn.event(
            "Create",
            {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.root_id]},
            logical_id="Everyone",
        ),
    )
    assert whole.status == "SUCCESS", whole.reason
    assert set(whole.data["AccountIds"].split(",")) == demo_org.accounts_under("Root")


def test_org_paths_mode_names_the_ou_path(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {
        "KeyIds": ["alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Prod"]],
        "AccountIds": [demo_org.accounts["sbx-a"]],
        "PrincipalMode": "OrgPaths",
        "RoleNames": ["app"],
    }
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "SUCCESS", response.reason
    prefix = response.data["StatementSid"]
    assert response.data["PrincipalModes"] == "OrgPaths"
    document = policy(aws, demo_org.keys["data"])
    [paths] = [s for s in ours(document, prefix) if s["Sid"] == f"{prefix}UsePaths"]
    assert paths["Principal"] == {"AWS": "*"}
    assert paths["Condition"]["ForAnyValue:StringLike"] == {
        "aws:PrincipalOrgPaths": [demo_org.ou_path("Prod") + "*"]
    }
    assert paths["Condition"]["StringEquals"] == {"aws:PrincipalOrgID": demo_org.org_id}
    assert paths["Condition"]["ArnLike"] == {
        "aws:PrincipalArn": "arn:aws:iam::${aws:PrincipalAccount}:role/app"
    }
    # The account outside Prod is granted by an explicit statement.
    assert granted_accounts(document, prefix) == names(demo_org, "sbx-a")


def crowd(aws: LocalAws, demo_org: SeededOrg, key: str, size: int) -> None:
    """Give the key a foreign statement that brings its policy to ``size`` bytes."""
    document = padded(demo_org.original_policies[key], size)
    aws.client("kms").put_key_policy(
        KeyId=key, PolicyName="default", Policy=keypolicy.serialize(document)
    )


def add_accounts(aws: LocalAws, demo_org: SeededOrg, count: int) -> set[str]:
    org = aws.client("organizations")
    added = set()
    for i in range(count):
        account = org.create_account(Email=f"extra{i}@example.com", AccountName=f"extra{i}")[
            "CreateAccountStatus"
        ]["AccountId"]
        org.move_account(
            AccountId=account,
            SourceParentId=demo_org.root_id,
            DestinationParentId=demo_org.ous["Sandbox"],
        )
        added.add(account)
    return added


def test_auto_mode_falls_back_to_org_paths_only_for_the_key_that_is_full(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    add_accounts(aws, demo_org, 30)
    full, roomy = demo_org.keys["data"], demo_org.keys["logs"]
    # Room for the one paths statement (a few hundred bytes), not for 36 account principals.
    crowd(aws, demo_org, full, keypolicy.MAX_POLICY_BYTES - 600)
    props = {
        "KeyIds": [full, roomy],
        "OrganizationalUnitIds": [demo_org.root_id],
        "PrincipalMode": "Auto",
    }
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "SUCCESS", response.reason
    assert response.data["PrincipalModes"] == "OrgPaths,Accounts"
    prefix = response.data["StatementSid"]
    assert [s["Sid"] for s in ours(policy(aws, full), prefix)] == [f"{prefix}UsePaths"]
    assert [s["Sid"] for s in ours(policy(aws, roomy), prefix)] == [f"{prefix}Use"]
    assert keypolicy.size(policy(aws, full)) <= keypolicy.MAX_POLICY_BYTES


def test_a_policy_that_would_not_fit_fails_before_any_write(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    full = demo_org.keys["data"]
    crowd(aws, demo_org, full, keypolicy.MAX_POLICY_BYTES - 200)
    before = {key: policy(aws, key) for key in demo_org.keys.values()}
    props = {"KeyIds": ["alias/demo-logs", full], "OrganizationalUnitIds": [demo_org.root_id]}
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "FAILED"
    assert full in str(response.reason)
    assert "accounts" in str(response.reason) and "PrincipalMode" in str(response.reason)
    assert {key: policy(aws, key) for key in demo_org.keys.values()} == before


def test_dry_run_reports_and_writes_nothing(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "DryRun": "true",
    }
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "SUCCESS", response.reason
    assert response.data["AccountCount"] == "4"
    assert response.data["DryRun"] == "true"
    for key in demo_org.keys.values():
        assert policy(aws, key) == demo_org.original_policies[key]


def test_every_key_reference_form_resolves_to_one_key(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    arn = demo_org.keys["logs"]
    key_id = arn.split("/")[-1]
    alias_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/demo-logs"
    west = aws.client("kms", "us-west-2").create_key(
        Description="replica-region key", Tags=CONSENT_TAGS
    )["KeyMetadata"]["Arn"]
    props = {
        "KeyIds": [key_id, arn, "alias/demo-logs", alias_arn, west],
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
    }
    response = run(cfn, cfn.event("Create", props))
    assert response.status == "SUCCESS", response.reason
    assert response.data["KeyArns"] == f"{arn},{west}"
    prefix = response.data["StatementSid"]
    assert granted_accounts(policy(aws, west), prefix) == names(demo_org, "dev-a")
    assert len(ours(policy(aws, arn), prefix)) == 1


def test_two_resources_share_a_key_and_keep_their_own_grants(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    key = demo_org.keys["data"]
    first = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    second = {"KeyIds": [key], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    other_stack = CloudFormation.start()
    try:
        a = run(cfn, cfn.event("Create", first, logical_id="Same"))
        # The same logical ID in another stack is another resource.
        b_event = cfn.event("Create", second, logical_id="Same", stack_id=other_stack.stack_id)
        b = run(cfn, b_event)
    finally:
        other_stack.stop()
    assert a.status == b.status == "SUCCESS"
    assert a.physical_id != b.physical_id
    document = policy(aws, key)
    assert granted_accounts(document, str(a.physical_id)) == names(demo_org, "dev-a")
    assert granted_accounts(document, str(b.physical_id)) == names(demo_org, "sbx-a")
    gone = run(cfn, cfn.event("Delete", first, logical_id="Same", physical_id=a.physical_id))
    assert gone.status == "SUCCESS"
    document = policy(aws, key)
    assert ours(document, str(a.physical_id)) == []
    assert granted_accounts(document, str(b.physical_id)) == names(demo_org, "sbx-a")


def test_the_same_create_twice_changes_nothing_more(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {
        "KeyIds": ["alias/demo-logs"],
        "OrganizationalUnitIds": [demo_org.ous["Workloads"]],
        "AllowGrants": "true",
    }
    event = cfn.event("Create", props)
    first = run(cfn, event)
    after_first = policy(aws, demo_org.keys["logs"])
    app.lambda_handler(event, FakeLambdaContext())
    again = cfn.responses(event)
    assert [r.status for r in again] == ["SUCCESS", "SUCCESS"]
    assert again[1].data == first.data
    assert policy(aws, demo_org.keys["logs"]) == after_first


def test_delete_after_a_failed_create_succeeds_and_touches_nothing(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": ["ou-zzzz-zzzzzzzz"]}
    failed = run(cfn, cfn.event("Create", props))
    assert failed.status == "FAILED"
    assert "OrganizationalUnitIds" in str(failed.reason) and "ou-zzzz-zzzzzzzz" in str(
        failed.reason
    )
    deleted = run(cfn, cfn.event("Delete", props, physical_id=failed.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason
    for key in demo_org.keys.values():
        assert policy(aws, key) == demo_org.original_policies[key]


def test_delete_of_a_key_that_is_gone_or_going_succeeds(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {
        "KeyIds": ["alias/demo-logs", "alias/data-lake"],
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
    }
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS"
    kms = aws.client("kms")
    # moto resolves ScheduleKeyDeletion by key ID only.
    kms.schedule_key_deletion(KeyId=demo_org.keys["data"].split("/")[-1], PendingWindowInDays=7)
    kms.delete_alias(AliasName="alias/demo-logs")
    deleted = run(cfn, cfn.event("Delete", props, physical_id=created.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason


def test_a_delete_for_another_physical_id_removes_nothing(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    stale = run(cfn, cfn.event("Delete", props, physical_id="OrgKeyPolicy-replaced-resource"))
    assert stale.status == "SUCCESS"
    assert granted_accounts(policy(aws, demo_org.keys["logs"]), str(created.physical_id)) == names(
        demo_org, "dev-a"
    )


def test_fifty_keys_answer_within_the_response_limit(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    kms = aws.client("kms")
    keys = [kms.create_key(Tags=CONSENT_TAGS)["KeyMetadata"]["Arn"] for _ in range(50)]
    response = run(
        cfn, cfn.event("Create", {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.root_id]})
    )
    assert response.status == "SUCCESS", response.reason
    assert response.size <= 4096
    # Emptied rather than removed, so that Fn::GetAtt still resolves.
    assert "KeyArns" in response.data and "AccountIds" in response.data
    assert response.data["AccountCount"] == str(len(demo_org.accounts_under("Root")))
    prefix = response.data["StatementSid"]
    assert all(
        granted_accounts(policy(aws, key), prefix) == demo_org.accounts_under("Root")
        for key in keys[::10]
    )


@pytest.mark.parametrize("then", ["Update", "Delete"])
def test_an_alias_re_pointed_between_deploys_leaves_nothing_on_its_old_key(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, then: str
) -> None:
    old_key, new_key = demo_org.keys["logs"], demo_org.keys["data"]
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    prefix = str(created.physical_id)
    aws.client("kms").update_alias(AliasName="alias/demo-logs", TargetKeyId=new_key)
    if then == "Update":
        new_props = {**props, "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
        event = cfn.event("Update", new_props, old_properties=props, physical_id=prefix)
    else:
        event = cfn.event("Delete", props, physical_id=prefix)
    response = run(cfn, event)
    assert response.status == "SUCCESS", response.reason
    assert policy(aws, old_key) == demo_org.original_policies[old_key]
    if then == "Update":
        assert granted_accounts(policy(aws, new_key), prefix) == names(demo_org, "sbx-a")
    else:
        assert policy(aws, new_key) == demo_org.original_policies[new_key]


def test_every_log_line_names_the_stack_the_resource_and_the_request_type(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Prod"]]}
    event = cfn.event("Create", props, logical_id="Logged")
    handler = app.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        run(cfn, event)
    finally:
        handler.setStream(previous)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    # This project's own modules log through Powertools' handler too.
    assert any(line["message"].startswith("Access summary") for line in lines), lines
    assert any(line["message"] == "Answering CloudFormation" for line in lines), lines
    for line in lines:
        assert line["stack_id"] == cfn.stack_id
        assert line["logical_resource_id"] == "Logged"
        assert line["request_type"] == "Create"
        assert line["service"] == "OrgKeyPolicy"
