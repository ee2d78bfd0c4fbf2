"""``orgkeypolicy verify`` and ``resync`` end to end against the local AWS: records made by real
Creates through the handler, the organization and keys changed behind the provider's back, the
command run in process (and once as the installed console script) behind the fault proxy,
which counts every PutKeyPolicy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from localaws.cfn import CloudFormation
from localaws.proxy import FaultProxy
from localaws.registry import REGISTRY_TABLE
from localaws.seed import SeededOrg
from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy.cli.main import cli
from orgkeypolicy.cli.output import ExitCode
from orgkeypolicy.statements import sid_prefix
from tests.endtoend import granted, names
from tests.endtoend import read_policy as policy
from tests.resyncing import deploy, move, new_stack, puts

# Every test runs behind the fault proxy, which sees (and checks) every policy written.
pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("orgkeypolicy")
ANSI = "\x1b["
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# The document SPEC'd for verify and resync, and the fields added (documented in docs/cli.md).
RESOURCE = {"stack_id", "logical_id", "sid_prefix", "keys"}
RESOURCE_EXTRA = {"status", "reason"}
KEY = {"key_arn", "status", "accounts_to_add", "accounts_to_remove", "statements_missing"}
KEY_EXTRA = {"statements_edited", "rewritten", "reason"}


@pytest.fixture(autouse=True)
def no_read_back_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's settings come from the environment: there, the read-back waits no time
    (moto is consistent at once)."""
    monkeypatch.setenv("VERIFY_DELAY_SECONDS", "0")


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner(mix_stderr=False).invoke(
        cli, list(args), prog_name="orgkeypolicy", env=env, catch_exceptions=False
    )


def as_json(*args: str) -> tuple[int, dict[str, Any]]:
    """The command with --json: its exit code and its document, whose shape is checked."""
    result = invoke(*args, "--json")
    assert result.exit_code in (ExitCode.OK, ExitCode.CHANGED), result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"resources"}
    for resource in document["resources"]:
        assert set(resource) == RESOURCE | RESOURCE_EXTRA
        for key in resource["keys"]:
            assert set(key) == KEY | KEY_EXTRA
            assert isinstance(key["statements_missing"], bool)
    return result.exit_code, document


def only_key(document: dict[str, Any]) -> dict[str, Any]:
    [resource] = document["resources"]
    [key] = resource["keys"]
    return dict(key)


def one_line_error(result: Result) -> str:
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("orgkeypolicy: error: "), line
    return line


# --- In sync, drift, re-sync ------------------------------------------------------------------


def test_in_sync_exits_0_and_dry_run_records_are_in_order(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    prefix = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Dev"]]})
    dry = deploy(
        cfn,
        stack,
        {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]], "DryRun": "true"},
        logical_id="Trial",
    )
    proxy.reset_log()

    code, document = as_json("verify", "--all")

    assert code == ExitCode.OK
    by_prefix = {resource["sid_prefix"]: resource for resource in document["resources"]}
    assert set(by_prefix) == {prefix, dry}
    assert by_prefix[dry]["status"] == "dry-run" and by_prefix[dry]["keys"] == []
    assert by_prefix[prefix] == {
        "stack_id": stack,
        "logical_id": "SharedKeyPolicy",
        "sid_prefix": prefix,
        "status": "in-sync",
        "reason": None,
        "keys": [
            {
                "key_arn": logs,
                "status": "in-sync",
                "accounts_to_add": [],
                "accounts_to_remove": [],
                "statements_missing": False,
                "statements_edited": False,
                "rewritten": False,
                "reason": None,
            }
        ],
    }
    assert puts(proxy) == 0


def test_an_account_moved_in_is_drift_until_resync_apply(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    prefix = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    sandbox = demo_org.accounts["sbx-a"]
    move(aws, sandbox, demo_org.ous["Prod"])
    before = policy(aws, logs)
    proxy.reset_log()

    verified = as_json("verify", "--all")
    checked = as_json("resync", "--all")

    assert verified[0] == ExitCode.CHANGED
    key = only_key(verified[1])
    assert (key["key_arn"], key["status"]) == (logs, "drift")
    assert (key["accounts_to_add"], key["accounts_to_remove"]) == ([sandbox], [])
    assert key["statements_missing"] is False and key["rewritten"] is False
    assert checked == verified
    assert puts(proxy) == 0
    assert policy(aws, logs) == before

    code, applied = as_json("resync", "--all", "--apply")

    assert code == ExitCode.OK
    key = only_key(applied)
    assert (key["status"], key["rewritten"], key["accounts_to_add"]) == ("drift", True, [sandbox])
    assert puts(proxy) == 1
    in_prod = names(demo_org, "prod-a", "prod-b", "crit-a", "sbx-a")
    assert granted(policy(aws, logs), prefix) == in_prod
    code, again = as_json("verify", "--all")
    assert code == ExitCode.OK
    assert only_key(again)["status"] == "in-sync"
    assert puts(proxy) == 1


def test_a_policy_overwritten_by_hand_has_statements_missing(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    data = demo_org.keys["data"]
    stack = new_stack(aws)
    deploy(cfn, stack, {"KeyIds": [data], "OrganizationalUnitIds": [demo_org.ous["Dev"]]})
    original = json.dumps(demo_org.original_policies[data])
    aws.kms().put_key_policy(KeyId=data, PolicyName="default", Policy=original)
    proxy.reset_log()

    code, document = as_json("verify", "--all")

    assert code == ExitCode.CHANGED
    key = only_key(document)
    assert key["status"] == "drift" and key["statements_missing"] is True
    assert key["accounts_to_add"] == [demo_org.accounts["dev-a"]]
    assert puts(proxy) == 0


def test_a_deleted_stack_is_stack_gone_and_never_written(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    aws.client("cloudformation").delete_stack(StackName=stack)
    move(aws, demo_org.accounts["prod-a"], demo_org.ous["Sandbox"])
    proxy.reset_log()

    for command in (["verify"], ["resync", "--apply"]):
        code, document = as_json(*command, "--all")
        assert code == ExitCode.CHANGED
        [resource] = document["resources"]
        assert resource["status"] == "stack-gone" and stack in resource["reason"]
        assert [(k["key_arn"], k["status"]) for k in resource["keys"]] == [(logs, "stack-gone")]
    assert puts(proxy) == 0


def test_one_resource_by_stack_id_and_logical_id(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    stack = new_stack(aws)
    dev = [demo_org.ous["Dev"]]
    first = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": dev}, logical_id="A")
    second = deploy(cfn, stack, {"KeyIds": [data], "OrganizationalUnitIds": dev}, logical_id="B")
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Dev"])
    proxy.reset_log()
    chosen = ("--stack-id", stack, "--logical-id", "B")

    code, document = as_json("resync", *chosen, "--apply")

    assert code == ExitCode.OK
    [resource] = document["resources"]
    assert (resource["sid_prefix"], resource["logical_id"]) == (sid_prefix(stack, "B"), "B")
    assert resource["sid_prefix"] == second
    assert [key["key_arn"] for key in resource["keys"]] == [data]
    assert puts(proxy) == 1
    assert granted(policy(aws, data), second) == names(demo_org, "dev-a", "sbx-a")
    assert granted(policy(aws, logs), first) == names(demo_org, "dev-a")
    assert as_json("verify", "--stack-id", stack, "--logical-id", "A")[0] == ExitCode.CHANGED


# --- Errors -----------------------------------------------------------------------------------


def test_a_resource_without_a_record_is_one_line(aws: LocalAws) -> None:
    stack = new_stack(aws)
    prefix = sid_prefix(stack, "Nope")
    line = one_line_error(invoke("verify", "--stack-id", stack, "--logical-id", "Nope"))
    assert line == (
        f"orgkeypolicy: error: no record of the resource with Sid prefix {prefix} in registry "
        f"table {REGISTRY_TABLE}; check --stack-id, --logical-id and --table"
    )
    empty = invoke("verify", "--all")
    assert (empty.exit_code, empty.stdout) == (ExitCode.OK, "")
    assert empty.stderr == f"No resource is recorded in registry table {REGISTRY_TABLE}.\n"


def test_no_table_says_where_to_find_it(aws: LocalAws) -> None:
    del aws
    line = one_line_error(invoke("verify", "--all", env={"REGISTRY_TABLE": None}))
    assert "give --table NAME or set REGISTRY_TABLE" in line
    assert "--logical-resource-id RegistryTable" in line
    line = one_line_error(invoke("resync", "--all", "--apply", "--table", "no-such-table"))
    assert line.startswith(
        "orgkeypolicy: error: --table no-such-table: no such DynamoDB table in us-east-1; "
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --stack-id ARN with --logical-id ID, or --all"),
        (["--stack-id", "arn:aws:cloudformation:x"], "give --stack-id ARN with --logical-id ID"),
        (["--all", "--logical-id", "A"], "--all checks every resource"),
        (["--stack-id", "consumer", "--logical-id", "A"], "give the stack's ID"),
    ],
)
def test_a_selection_is_required_and_checked(args: list[str], message: str) -> None:
    for command in ("verify", "resync"):
        assert message in one_line_error(invoke(command, *args))


def test_a_check_that_fails_is_reported_then_exits_1(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs = demo_org.keys["logs"]
    deploy(cfn, new_stack(aws), {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Dev"]]})
    proxy.add_rule("kms:GetKeyPolicy", error_code="AccessDeniedException")

    result = invoke("verify", "--all", "--json")

    assert result.exit_code == ExitCode.ERROR
    [resource] = json.loads(result.stdout)["resources"]
    assert resource["status"] == "error" and "AccessDenied" in resource["reason"]
    error = result.stderr.splitlines()[-1]
    assert error.startswith("orgkeypolicy: error: could not check or re-sync ")
    assert resource["sid_prefix"] in error


def test_a_write_that_fails_is_an_error_and_the_other_keys_are_written(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, proxy: FaultProxy
) -> None:
    logs, data = demo_org.keys["logs"], demo_org.keys["data"]
    stack = new_stack(aws)
    props = {"KeyIds": [logs, data], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    prefix = deploy(cfn, stack, props)
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Dev"])
    before = policy(aws, logs)
    proxy.add_rule(
        "kms:PutKeyPolicy", error_code="AccessDeniedException", when=lambda b: b["KeyId"] == logs
    )

    result = invoke("resync", "--all", "--apply", "--json")

    assert result.exit_code == ExitCode.ERROR
    [resource] = json.loads(result.stdout)["resources"]
    keys = {key["key_arn"]: key for key in resource["keys"]}
    assert (keys[logs]["status"], keys[logs]["rewritten"]) == ("error", False)
    assert (keys[data]["status"], keys[data]["rewritten"]) == ("drift", True)
    assert policy(aws, logs) == before
    assert granted(policy(aws, data), prefix) == names(demo_org, "dev-a", "sbx-a")
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"orgkeypolicy: error: could not check or re-sync {prefix}, {logs}: ")
    assert "AccessDenied" in error


# --- Human output -----------------------------------------------------------------------------


def test_human_output_is_a_table_plain_when_piped_or_no_color(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    prefix = deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    moved = [demo_org.accounts[name] for name in ("sbx-a", "dev-a")]
    for account in moved:
        move(aws, account, demo_org.ous["Prod"])

    piped = invoke("verify", "--all")

    assert piped.exit_code == ExitCode.CHANGED
    assert ANSI not in piped.stdout + piped.stderr
    assert piped.stdout.startswith(
        f"SharedKeyPolicy in stack consumer ({MOTO_ACCOUNT_ID}, {DEFAULT_REGION}), "
        f"Sid prefix {prefix}: drift\n"
    )
    key_id = logs.rsplit("/", 1)[1]
    [row] = [line.split() for line in piped.stdout.splitlines() if key_id in line]
    assert row == [key_id, "drift", "2:", f"{min(moved)},", max(moved), "-", "-"]
    assert piped.stderr == (
        "1 resource(s): 1 drift; 1 key(s): 1 drift; `orgkeypolicy resync --apply` with the "
        "same selection rewrites the drifted keys.\n"
    )
    coloured = invoke("verify", "--all", env={"FORCE_COLOR": "1"})
    assert ANSI in coloured.stdout
    plain = invoke("verify", "--all", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert ANSI not in plain.stdout
    # On a terminal, a progress bar on stderr (resources done of all), in no colour.
    assert "Checking resources" in plain.stderr and " 1/1 " in plain.stderr
    assert not COLOUR.search(plain.stderr)

    applied = invoke("resync", "--all", "--apply")
    assert applied.exit_code == ExitCode.OK
    assert "drift → re-synced" in applied.stdout
    assert applied.stderr.endswith("1 re-synced.\n")


# --- The installed command --------------------------------------------------------------------


def test_the_installed_command(aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg) -> None:
    logs = demo_org.keys["logs"]
    stack = new_stack(aws)
    deploy(cfn, stack, {"KeyIds": [logs], "OrganizationalUnitIds": [demo_org.ous["Prod"]]})
    move(aws, demo_org.accounts["sbx-a"], demo_org.ous["Prod"])
    env = {**os.environ, "PYTHONPATH": str(REPO / "handler")}
    args = ["verify", "--stack-id", stack, "--logical-id", "SharedKeyPolicy", "--json"]

    completed = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )

    assert completed.returncode == ExitCode.CHANGED, completed.stderr
    document = json.loads(completed.stdout)
    assert document == as_json(*args[:-1])[1]
    assert only_key(document)["accounts_to_add"] == [demo_org.accounts["sbx-a"]]
    assert completed.stderr == "1 resource(s): 1 drift; 1 key(s): 1 drift; " + (
        "`orgkeypolicy resync --apply` with the same selection rewrites the drifted keys.\n"
    )


def test_the_documented_document_has_the_fields_of_the_real_one() -> None:
    page = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    section = page.split("## verify and resync", 1)[1].split("\n## ", 1)[0]
    example = section.split("```json\n", 1)[1].split("```", 1)[0]
    [resource] = json.loads(example)["resources"]
    assert set(resource) == RESOURCE | RESOURCE_EXTRA
    assert {field for key in resource["keys"] for field in key} == KEY | KEY_EXTRA
    for field in RESOURCE_EXTRA | KEY_EXTRA:
        assert f"`{field}`" in section
