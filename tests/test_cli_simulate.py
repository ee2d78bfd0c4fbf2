"""``orgkeypolicy simulate``: every principal source, the JSON document, the grouped matrix,
exit codes, errors, and the installed command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from localaws.seed import SeededOrg
from localaws.server import MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy.cli.main import cli
from orgkeypolicy.cli.output import ExitCode
from orgkeypolicy.evaluation import KMS_ACTIONS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("orgkeypolicy")
ANSI = "\x1b["
ORG = "o-abcdefghij"
PROD = f"{ORG}/r-ab12/ou-ab12-11111111/"
KEY = f"arn:aws:kms:us-east-1:{MOTO_ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ADMIN = f"arn:aws:iam::{MOTO_ACCOUNT_ID}:root"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": ADMIN},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "ProdUse",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": f"{PROD}*"}},
        },
        {
            "Sid": "ViaS3",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::444455556666:root"},
            "Action": "kms:Encrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}},
        },
        {
            "Sid": "NoDeletion",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "kms:ScheduleKeyDeletion",
            "Resource": "*",
            "Condition": {"StringNotEquals": {"aws:PrincipalAccount": MOTO_ACCOUNT_ID}},
        },
    ],
}
DECISION_KEYS = {"principal", "action", "decision", "statements", "delegated"}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(mix_stderr=False).invoke(
        cli, list(args), prog_name="orgkeypolicy", env=env, catch_exceptions=False
    )


def write(tmp_path: Path, name: str, document: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def decisions(result: Result) -> dict[tuple[str, str], dict[str, Any]]:
    document = json.loads(result.stdout)
    assert set(document) == {"key_arn", "decisions", "unsupported"}
    for decision in document["decisions"]:
        assert set(decision) == DECISION_KEYS
        assert isinstance(decision["statements"], list)
        assert isinstance(decision["delegated"], bool)
    return {(d["principal"], d["action"]): d for d in document["decisions"]}


def test_principals_file_json(tmp_path: Path) -> None:
    principals = [
        {"arn": "arn:aws:iam::111122223333:role/app", "org_id": ORG, "org_paths": [PROD]},
        {
            "arn": "arn:aws:iam::444455556666:root",
            "context": {"kms:ViaService": "s3.us-east-1.amazonaws.com"},
        },
        {"arn": ADMIN},
    ]
    result = invoke(
        "simulate",
        "--policy",
        write(tmp_path, "policy.json", POLICY),
        "--principals",
        write(tmp_path, "principals.json", principals),
        "--action",
        "kms:decrypt",
        "--action",
        "kms:Encrypt",
        "--action",
        "kms:ScheduleKeyDeletion",
        "--json",
    )
    assert result.exit_code == ExitCode.OK, result.stderr
    found = decisions(result)
    assert json.loads(result.stdout)["key_arn"] is None
    assert json.loads(result.stdout)["unsupported"] == []
    assert len(found) == 9
    # One decision per line, each as json.dumps writes it.
    rows = [line.strip().rstrip(",") for line in result.stdout.splitlines()[3:12]]
    assert rows == [json.dumps(decision) for decision in found.values()]
    app = "arn:aws:iam::111122223333:role/app"
    assert found[(app, "kms:Decrypt")] == {
        "principal": app,
        "action": "kms:Decrypt",
        "decision": "Allow",
        "statements": ["ProdUse"],
        "delegated": False,
    }
    assert found[(app, "kms:Encrypt")]["decision"] == "ImplicitDeny"
    assert found[(app, "kms:ScheduleKeyDeletion")]["decision"] == "ExplicitDeny"
    assert found[(app, "kms:ScheduleKeyDeletion")]["statements"] == ["NoDeletion"]
    via = found[("arn:aws:iam::444455556666:root", "kms:Encrypt")]
    assert (via["decision"], via["delegated"], via["statements"]) == ("Allow", True, ["ViaS3"])
    admin = found[(ADMIN, "kms:ScheduleKeyDeletion")]
    assert (admin["decision"], admin["delegated"]) == ("Allow", True)


def test_one_principal_context_and_every_action_by_default(tmp_path: Path) -> None:
    policy = write(tmp_path, "policy.json", POLICY)
    principal = ["--principal", "arn:aws:iam::444455556666:root"]
    without = decisions(invoke("simulate", "--policy", policy, *principal, "--json"))
    assert [action for _, action in without] == list(KMS_ACTIONS)
    assert without[(principal[1], "kms:Encrypt")]["decision"] == "ImplicitDeny"
    with_context = decisions(
        invoke(
            "simulate",
            "--policy",
            policy,
            *principal,
            "--context",
            "kms:ViaService=s3.us-east-1.amazonaws.com",
            "--json",
        )
    )
    assert with_context[(principal[1], "kms:Encrypt")]["decision"] == "Allow"
    in_prod = decisions(
        invoke(
            "simulate",
            "--policy",
            policy,
            "--principal",
            "arn:aws:sts::111122223333:assumed-role/app/s1",
            "--org-id",
            ORG,
            "--org-path",
            f"{PROD}ou-ab12-22222222/",
            "--action",
            "kms:GenerateDataKeyPair",
            "--json",
        )
    )
    assert [d["decision"] for d in in_prod.values()] == ["Allow"]


def test_unknown_answers_exit_2_and_are_listed(tmp_path: Path) -> None:
    policy = json.loads(json.dumps(POLICY))
    policy["Statement"][1]["Condition"]["StringEquals"] = {"aws:userid": "AROAEXAMPLE:s1"}
    args = ["simulate", "--policy", write(tmp_path, "policy.json", policy)]
    args += ["--principal", "arn:aws:iam::111122223333:role/app", "--org-id", ORG]
    args += ["--org-path", PROD, "--action", "kms:Decrypt", "--action", "kms:Encrypt"]
    result = invoke(*args, "--json")
    assert result.exit_code == ExitCode.CHANGED
    document = json.loads(result.stdout)
    assert [d["decision"] for d in document["decisions"]] == ["Unknown", "ImplicitDeny"]
    assert document["decisions"][0]["statements"] == ["ProdUse"]
    assert document["unsupported"] and all(isinstance(u, str) for u in document["unsupported"])
    human = invoke(*args)
    assert human.exit_code == ExitCode.CHANGED
    assert "Unknown answers come from" in human.stdout


def test_the_organization_and_a_key(demo_org: SeededOrg, aws: LocalAws) -> None:
    key = demo_org.key_arn("logs")
    org_paths = demo_org.ou_path("Prod")
    policy = json.loads(json.dumps(POLICY).replace(PROD, org_paths).replace(ORG, demo_org.org_id))
    aws.kms().put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    result = invoke(
        "simulate", "--key", "alias/demo-logs", "--org", "--action", "kms:Decrypt", "--json"
    )
    assert result.exit_code == ExitCode.OK, result.stderr
    assert json.loads(result.stdout)["key_arn"] == key
    found = decisions(result)
    active = demo_org.accounts_under("Root")
    assert {principal.split(":")[4] for principal, _ in found} == active
    allowed = {p.split(":")[4] for (p, _), d in found.items() if d["decision"] == "Allow"}
    assert allowed == demo_org.accounts_under("Prod") | {demo_org.management_account_id}
    roles = decisions(
        invoke(
            "simulate",
            "--key",
            key,
            "--org",
            "--role",
            "app",
            "--role",
            "ops/admin",
            "--action",
            "kms:Decrypt",
            "--json",
        )
    )
    assert len(roles) == 2 * len(active)
    crit = demo_org.accounts["crit-a"]
    assert roles[(f"arn:aws:iam::{crit}:role/ops/admin", "kms:Decrypt")]["decision"] == "Allow"
    sbx = demo_org.accounts["sbx-a"]
    assert roles[(f"arn:aws:iam::{sbx}:role/app", "kms:Decrypt")]["decision"] == "ImplicitDeny"
    human = invoke("simulate", "--key", key, "--org", "--action", "kms:Decrypt")
    assert human.exit_code == ExitCode.OK
    # The management account's root holds kms:* by the key's default statement (delegated);
    # Prod's accounts by the organization-path grant; the others nothing.
    assert "6 principals x 1 actions, 3 groups" in human.stdout
    assert "Allow*: delegated" in human.stdout
    (row,) = [line.split() for line in human.stdout.splitlines() if "kms:Decrypt  " in line]
    assert sorted(row[1:]) == ["Allow", "Allow*", "ImplicitDeny"]
    assert "principals of the organization's ACTIVE accounts" in human.stderr


def test_the_matrix_groups_alike_principals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    principals = [
        {"arn": f"arn:aws:iam::{200000000000 + n}:root", "org_id": ORG, "org_paths": [PROD]}
        for n in range(300)
    ] + [{"arn": f"arn:aws:iam::{300000000000 + n}:root"} for n in range(200)]
    args = ["simulate", "--policy", write(tmp_path, "policy.json", POLICY)]
    args += ["--principals", write(tmp_path, "principals.json", principals)]
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    result = invoke(*args, "--action", "kms:Decrypt", "--action", "kms:Encrypt")
    assert result.exit_code == ExitCode.OK
    lines = result.stdout.splitlines()
    assert "500 principals x 2 actions, 2 groups" in lines[0]
    assert any("A (300)" in line and "B (200)" in line for line in lines)
    (decrypt,) = [line.split() for line in lines if line.strip().startswith("kms:Decrypt")]
    assert decrypt == ["kms:Decrypt", "Allow", "ImplicitDeny"]
    # Encrypt: nobody shown may use it, so it is summed up below the matrix instead.
    assert not any(line.strip().startswith("kms:Encrypt") for line in lines)
    assert "ImplicitDeny for every group shown: 1 actions (kms:Encrypt)" in result.stdout
    assert "+297 more" in result.stdout and "+197 more" in result.stdout
    assert len(lines) < 30
    assert ANSI not in result.stdout + result.stderr
    # On a terminal the decisions are coloured, unless NO_COLOR says otherwise.
    coloured = invoke(*args, env={"FORCE_COLOR": "1"})
    assert ANSI in coloured.stdout
    plain = invoke(*args, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert ANSI not in plain.stdout + plain.stderr
    assert "ExplicitDeny" in plain.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the policy: --policy FILE or --key KEY_REF"),
        (["--policy", "P", "--key", "k"], "give the policy"),
        (["--policy", "P"], "give the principals: --principals FILE, --principal ARN or --org"),
        (["--policy", "P", "--org", "--principal", ADMIN], "give the principals"),
        (["--policy", "P", "--principal", ADMIN, "--role", "x"], "--role goes with --org"),
        (["--policy", "P", "--org", "--org-id", ORG], "--org-id and --org-path describe a"),
        (
            ["--policy", "P", "--principal", ADMIN, "--action", "kms:Re*"],
            "a request has no wildcards",
        ),
        (
            ["--policy", "P", "--principal", ADMIN, "--action", "kms:Decrpyt"],
            "is not a KMS action; did you mean kms:Decrypt?",
        ),
        (["--policy", "P", "--principal", "111122223333"], "is not an IAM principal ARN"),
        (["--policy", "P", "--principal", ADMIN, "--context", "novalue"], "is not KEY=VALUE"),
    ],
)
def test_errors_are_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    policy = write(tmp_path, "policy.json", POLICY)
    result = invoke("simulate", *[policy if arg == "P" else arg for arg in args])
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("orgkeypolicy: error: ") and message in line, line


def test_a_key_that_does_not_exist(aws: LocalAws) -> None:
    del aws
    result = invoke("simulate", "--key", "alias/nope", "--principal", ADMIN)
    assert result.exit_code == ExitCode.ERROR
    assert result.stderr == "orgkeypolicy: error: --key alias/nope: no such key or alias\n"


def test_the_installed_command(demo_org: SeededOrg, tmp_path: Path) -> None:
    del demo_org
    env = {**os.environ, "PYTHONPATH": str(REPO / "handler")}
    completed = subprocess.run(
        [str(SCRIPT), "simulate", "--key", "alias/data-lake", "--org", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert completed.returncode == ExitCode.OK, completed.stderr
    document = json.loads(completed.stdout)
    assert set(document) == {"key_arn", "decisions", "unsupported"}
    analytics = [d for d in document["decisions"] if d["decision"] == "Allow"]
    # Only the key's own account holds kms:* there (the analytics role is not in the org walk).
    assert {d["principal"] for d in analytics} == {ADMIN}
    assert len(document["decisions"]) == len(KMS_ACTIONS) * 6
    assert "6 principals" in completed.stderr
