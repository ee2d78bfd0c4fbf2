"""The re-sync function's part of template.yaml, and the management account's forwarder.

The IAM checks run on the template as SAM translates it (``tests/test_template.py`` has the
readers); the event path's settings are checked against the function's own settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_template import (
    FUNCTION,
    FUNCTION_ROLE,
    NO_VALUE,
    ORGANIZATIONS_READ,
    REPO,
    RESYNC_ROLE,
    Statement,
    _attached,
    _cfn_lint,
    _condition_is_not_empty,
    _load,
    _output,
    _role_statements,
    _statements,
    _translate,
)

FORWARDER_TEMPLATE = REPO / "templates" / "organizations-events-forwarder.yaml"
RESYNC = "ResyncFunction"
QUEUE = "ResyncQueue"
DEAD_LETTERS = "ResyncDeadLetterQueue"
BUS = "OrganizationsEventBus"
RULE = "OrganizationsEventsRule"
SCHEDULE = "ResyncScheduleRule"
MEMBERSHIP_EVENTS = {
    "AccountJoinedOrganization",
    "AccountDepartedOrganization",
    "MoveAccount",
    "RemoveAccountFromOrganization",
    "CloseAccount",
    "AcceptHandshake",
    "CreateAccountResult",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return _load(REPO / "template.yaml")


@pytest.fixture(scope="module")
def deployed(template: dict[str, Any]) -> dict[str, Any]:
    return _translate(template)


@pytest.fixture(scope="module")
def forwarder() -> dict[str, Any]:
    return _load(FORWARDER_TEMPLATE)


def _by_service(statements: list[Statement]) -> dict[str, list[Statement]]:
    found: dict[str, list[Statement]] = {}
    for statement in statements:
        services = {action.split(":")[0] for action in statement.actions}
        assert len(services) == 1, f"one service per statement: {statement}"
        found.setdefault(services.pop(), []).append(statement)
    return found


def _bodies(statements: list[Statement]) -> list[tuple[Any, ...]]:
    return sorted((repr(s.body), s.choices) for s in statements)


# --- The function ---------------------------------------------------------------------------


def test_function_shares_the_providers_code_runtime_layer_and_settings(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    resync = template["Resources"][RESYNC]["Properties"]
    assert resync["Handler"] == "app.resync_handler"
    assert resync["Role"] == {"Fn::GetAtt": [RESYNC_ROLE, "Arn"]}
    assert "Policies" not in resync
    assert resync["Timeout"] == 900
    # One run at a time: the coalescing of queued events relies on it.
    assert resync["ReservedConcurrentExecutions"] == 1
    # The code, runtime, layer, tracing, memory and settings come from the template's
    # Globals: the same for both functions as deployed.
    functions = {
        name: resource["Properties"]
        for name, resource in deployed["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    provider, mine = functions[FUNCTION], functions[RESYNC]
    for name in ("Code", "Runtime", "Architectures", "Layers", "TracingConfig", "MemorySize"):
        assert mine[name] == provider[name], name
    assert mine["Environment"] == provider["Environment"]
    variables = mine["Environment"]["Variables"]
    assert variables["REGISTRY_TABLE"] == {"Ref": "RegistryTable"}
    assert variables["ORGANIZATIONS_ROLE_ARN"] == {"Ref": "OrganizationsRoleArn"}


def test_role_is_its_own_and_trusts_only_lambda(deployed: dict[str, Any]) -> None:
    resources = deployed["Resources"]
    assert resources[RESYNC]["Properties"]["Role"] == {"Fn::GetAtt": [RESYNC_ROLE, "Arn"]}
    (trust,) = [s for s in _role_statements(deployed, RESYNC_ROLE) if s.trust]
    assert trust.body["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust.actions == ["sts:AssumeRole"]
    assert "Condition" not in trust.body


def test_role_grants_the_providers_key_and_organization_access_and_no_more(
    deployed: dict[str, Any],
) -> None:
    mine = _by_service([s for s in _role_statements(deployed, RESYNC_ROLE) if not s.trust])
    providers = _by_service([s for s in _role_statements(deployed, FUNCTION_ROLE) if not s.trust])
    assert set(mine) == {
        "logs",
        "xray",
        "organizations",
        "sts",
        "kms",
        "access-analyzer",
        "dynamodb",
        "cloudformation",
        "sqs",
    }
    # The same managed policies as the provider's role: the same statements, conditions
    # included, by construction.
    shared = {"KeyPolicyAccessPolicy", "OrganizationAccessPolicy"}
    assert _attached(deployed, RESYNC_ROLE) == _attached(deployed, FUNCTION_ROLE) == shared
    for service in ("kms", "organizations", "sts", "xray", "access-analyzer"):
        assert _bodies(mine[service]) == _bodies(providers[service]), service
    assert {a for s in mine["organizations"] for a in s.actions} == ORGANIZATIONS_READ

    [registry] = mine["dynamodb"]
    assert set(registry.actions) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "dynamodb:Scan",
    }
    assert registry.resources == ["${RegistryTable.Arn}"]
    [stacks] = mine["cloudformation"]
    assert stacks.actions == ["cloudformation:DescribeStacks"]
    assert stacks.resources == [
        "arn:${AWS::Partition}:cloudformation:*:${AWS::AccountId}:stack/*/*"
    ]
    [queue] = mine["sqs"]
    assert set(queue.actions) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    assert queue.resources == [f"${{{QUEUE}.Arn}}"]
    [logs] = mine["logs"]
    assert set(logs.actions) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert logs.resources == ["${ResyncFunctionLogGroup.Arn}"]
    log_group = deployed["Resources"]["ResyncFunctionLogGroup"]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{RESYNC}}}"}


def test_reader_role_can_trust_the_resync_role(template: dict[str, Any]) -> None:
    output = template["Outputs"]["ResyncFunctionRoleArn"]
    assert output["Value"] == {"Fn::GetAtt": [RESYNC_ROLE, "Arn"]}
    assert "ResyncRoleArn" in output["Description"]


# --- The event path -------------------------------------------------------------------------


def test_queue_feeds_the_function_with_a_window_and_a_dead_letter_queue(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    resources = template["Resources"]
    [mapping] = [
        r["Properties"]
        for r in deployed["Resources"].values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
    ]
    assert mapping["FunctionName"] == {"Ref": RESYNC}
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [QUEUE, "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    window = mapping["MaximumBatchingWindowInSeconds"]
    assert 0 < window <= 300 and mapping["BatchSize"] > 10

    queue = resources[QUEUE]["Properties"]
    timeout = resources[RESYNC]["Properties"]["Timeout"]
    # Lambda's advice with reserved concurrency: six times the timeout plus the window.
    assert queue["VisibilityTimeout"] >= 6 * timeout + window
    assert queue["VisibilityTimeout"] <= 43200
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [DEAD_LETTERS, "Arn"]}
    assert redrive["maxReceiveCount"] >= 5
    dead = resources[DEAD_LETTERS]["Properties"]
    assert dead["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] and dead["SqsManagedSseEnabled"]


def test_only_the_two_rules_may_send_to_the_queue(template: dict[str, Any]) -> None:
    policy = template["Resources"]["ResyncQueuePolicy"]
    assert policy["Condition"] == "HasResyncTrigger"
    assert template["Conditions"]["HasResyncTrigger"] == {
        "Fn::Or": [{"Condition": "HasResyncSchedule"}, {"Condition": "HasOrganizationId"}]
    }
    assert policy["Properties"]["Queues"] == [{"Ref": QUEUE}]
    senders = {}
    for entry in policy["Properties"]["PolicyDocument"]["Statement"]:
        condition, statement, otherwise = entry["Fn::If"]
        assert otherwise == NO_VALUE
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        assert statement["Action"] == "sqs:SendMessage"
        assert statement["Resource"] == {"Fn::GetAtt": [QUEUE, "Arn"]}
        [source] = statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][:1]
        senders[condition] = source
    assert senders == {"HasResyncSchedule": SCHEDULE, "HasOrganizationId": RULE}


def test_schedule_parameter_has_a_default_and_empty_disables_it(
    template: dict[str, Any],
) -> None:
    parameter = template["Parameters"]["ResyncSchedule"]
    assert parameter["Default"] == "rate(1 hour)"
    pattern = re.compile(parameter["AllowedPattern"])
    for good in ("", "rate(1 hour)", "rate(30 minutes)", "cron(0 */6 * * ? *)"):
        assert pattern.fullmatch(good), good
    for bad in ("hourly", "rate 1 hour", " rate(1 hour)"):
        assert not pattern.fullmatch(bad), bad
    rule = template["Resources"][SCHEDULE]
    assert rule["Condition"] == "HasResyncSchedule"
    _condition_is_not_empty(template, "HasResyncSchedule", "ResyncSchedule")
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "ResyncSchedule"}
    assert rule["Properties"]["Targets"] == [{"Id": QUEUE, "Arn": {"Fn::GetAtt": [QUEUE, "Arn"]}}]


def test_bus_accepts_events_from_the_organization_only(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["OrganizationId"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("") and pattern.fullmatch("o-a1b2c3d4e5")
    for bad in ("o-short", "r-a1b2", "*", "o-A1B2C3D4E5"):
        assert not pattern.fullmatch(bad), bad
    _condition_is_not_empty(template, "HasOrganizationId", "OrganizationId")
    bus = template["Resources"][BUS]
    assert bus["Condition"] == "HasOrganizationId"
    [statement] = bus["Properties"]["Policy"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "events:PutEvents"
    assert statement["Principal"] == "*"
    assert statement["Condition"] == {
        "StringEquals": {"aws:PrincipalOrgID": {"Ref": "OrganizationId"}}
    }
    assert statement["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/"
        "${AWS::StackName}-organizations"
    }
    assert bus["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-organizations"}
    output = template["Outputs"]["OrganizationsEventBusArn"]
    assert output["Condition"] == "HasOrganizationId"
    assert output["Value"] == {"Fn::GetAtt": [BUS, "Arn"]}


def _check_membership_pattern(pattern: dict[str, Any]) -> None:
    assert pattern["source"] == ["aws.organizations"]
    assert set(pattern["detail-type"]) == {
        "AWS API Call via CloudTrail",
        "AWS Service Event via CloudTrail",
    }
    assert pattern["detail"]["eventSource"] == ["organizations.amazonaws.com"]
    assert set(pattern["detail"]["eventName"]) == MEMBERSHIP_EVENTS
    assert pattern["detail"]["errorCode"] == [{"exists": False}]


def test_rule_on_the_bus_matches_the_membership_events_and_feeds_the_queue(
    template: dict[str, Any],
) -> None:
    rule = template["Resources"][RULE]
    assert rule["Condition"] == "HasOrganizationId"
    assert rule["Properties"]["EventBusName"] == {"Ref": BUS}
    _check_membership_pattern(rule["Properties"]["EventPattern"])
    assert rule["Properties"]["Targets"] == [{"Id": QUEUE, "Arn": {"Fn::GetAtt": [QUEUE, "Arn"]}}]


# --- The forwarder --------------------------------------------------------------------------


def test_forwarder_passes_cfn_lint(tmp_path: Path) -> None:
    proc = _cfn_lint(FORWARDER_TEMPLATE, tmp_path)
    assert proc.returncode == 0, _output(proc)
    assert proc.stdout.strip() == "", _output(proc)


def test_forwarder_sends_the_same_events_to_the_providers_bus_only(
    forwarder: dict[str, Any], template: dict[str, Any]
) -> None:
    rule = forwarder["Resources"]["MembershipEventsRule"]["Properties"]
    assert "EventBusName" not in rule, "the management account's default bus"
    assert rule["EventPattern"] == template["Resources"][RULE]["Properties"]["EventPattern"]
    _check_membership_pattern(rule["EventPattern"])
    [target] = rule["Targets"]
    assert target["Arn"] == {"Ref": "TargetEventBusArn"}
    assert target["RoleArn"] == {"Fn::GetAtt": ["ForwarderRole", "Arn"]}

    statements = _statements(forwarder)
    (trust,) = [s for s in statements if s.trust]
    assert trust.body["Principal"] == {"Service": "events.amazonaws.com"}
    assert trust.body["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    }
    (permission,) = [s for s in statements if not s.trust]
    assert permission.actions == ["events:PutEvents"]
    assert permission.resources == ["${TargetEventBusArn}"]

    parameter = forwarder["Parameters"]["TargetEventBusArn"]
    assert "Default" not in parameter
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch(
        "arn:aws:events:eu-west-1:111111111111:event-bus/org-key-policy-organizations"
    )
    for bad in ("*", "arn:aws:events:eu-west-1:111111111111:rule/x", "default"):
        assert not pattern.fullmatch(bad), bad
