"""``orgkeypolicy probe``: roles assumed, calls made and counted at the fault proxy, the report
and exit codes against the local AWS; refusals injected with botocore's Stubber; the
comparison itself property-tested.

moto enforces no key policy: every call it serves is allowed. That makes it the observation
"KMS allowed it" everywhere, against which grants that are narrower than the organization
disagree, and refusals come from the Stubber or from the fault proxy.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.kms.models import kms_backends
from moto.kms.responses import KmsResponse

from localaws.proxy import FaultProxy
from localaws.seed import DEFAULT_STATEMENT, SeededOrg
from localaws.server import LocalAws
from orgkeypolicy.cli import accounts
from orgkeypolicy.cli.accounts import key_calls
from orgkeypolicy.cli.main import cli
from orgkeypolicy.cli.output import ExitCode
from orgkeypolicy.cli.probing import (
    ACTIONS,
    ALLOWED,
    NOT_TESTED,
    REFUSALS,
    ROLE_NOT_ASSUMED,
    compare,
)
from orgkeypolicy.evaluation import Answer, Decision

ANSI = "\x1b["
ROLE = "OrganizationAccountAccessRole"
USE = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]
KEY = "alias/data-lake"


@pytest.fixture
def kms_by_key_arn(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto serves KMS per calling account; real KMS serves a key named by its ARN to any
    account. Here a key ARN finds the key in its owner's account, as in AWS."""

    def backend(self: KmsResponse) -> Any:
        key_id = self._get_param("KeyId") or ""
        account = key_id.split(":")[4] if key_id.startswith("arn:") else self.current_account
        return kms_backends[account][self.region]

    monkeypatch.setattr(KmsResponse, "kms_backend", property(backend))


pytestmark = pytest.mark.usefixtures("kms_by_key_arn")


def invoke(*args: str) -> Result:
    return CliRunner(mix_stderr=False).invoke(cli, list(args), prog_name="orgkeypolicy")


def set_policy(aws: LocalAws, org: SeededOrg, *statements: dict[str, Any]) -> str:
    arn = org.key_arn(KEY)
    policy = {"Version": "2012-10-17", "Statement": [DEFAULT_STATEMENT, *statements]}
    aws.kms().put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(policy))
    return arn


def grant(
    condition: dict[str, Any], principal: Any = "*", actions: list[str] = USE
) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions}
    return (
        {**statement, "Resource": "*", "Condition": condition}
        if condition
        else {
            **statement,
            "Resource": "*",
        }
    )


def whole_org(org: SeededOrg) -> dict[str, Any]:
    return grant({"StringEquals": {"aws:PrincipalOrgID": org.org_id}})


def role_arn(account: str) -> str:
    return f"arn:aws:iam::{account}:role/{ROLE}"


def rows(result: Result) -> list[dict[str, Any]]:
    document = json.loads(result.stdout)
    assert set(document) == {"key_arn", "results"}
    for row in document["results"]:
        assert set(row) == {"account", "action", "expected", "observed", "agrees"}
    results: list[dict[str, Any]] = document["results"]
    return results


def by_account(result: Result) -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows(result):
        table.setdefault(row["account"], {})[row["action"]] = row
    return table


def test_every_account_of_the_organization_agrees_with_an_organization_wide_grant(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    key_arn = set_policy(aws, demo_org, whole_org(demo_org))
    result = invoke("probe", "--key", KEY, "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    active = demo_org.accounts_under("Root")
    assert json.loads(result.stdout)["key_arn"] == key_arn
    table = by_account(result)
    assert set(table) == active
    for account, actions in table.items():
        assert list(actions) == list(ACTIONS), account
        for row in actions.values():
            assert (row["expected"], row["observed"], row["agrees"]) == ("Allow", "Allow", True)

    assumed = fault_proxy.calls_for("sts:AssumeRole")
    assert sorted(call.body["RoleArn"] for call in assumed) == sorted(map(role_arn, active))
    assert {call.body["DurationSeconds"] for call in assumed} == {"900"}
    for action in USE:
        calls = fault_proxy.calls_for(action, forwarded=True)
        assert len(calls) == len(active), action
        assert {call.body["KeyId"] for call in calls} == {key_arn}
        assert {call.region for call in calls} == {demo_org.region}
    assert "6 accounts: 18 agree, 0 disagree." in result.stderr


def test_a_grant_narrower_than_what_kms_allows_disagrees(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    # The demo key grants its own account only; moto lets every account use it.
    result = invoke("probe", "--key", KEY, "--json")
    assert result.exit_code == ExitCode.CHANGED
    table = by_account(result)
    management = demo_org.management_account_id
    assert all(row["agrees"] and row["expected"] == "Allow" for row in table[management].values())
    members = set(table) - {management}
    assert members == demo_org.accounts_under("Root") - {management}
    for account in members:
        for row in table[account].values():
            assert (row["expected"], row["observed"], row["agrees"]) == (
                "ImplicitDeny",
                "Allow",
                False,
            )


def test_human_output_is_a_plain_table_with_findings_when_piped(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    result = invoke("probe", "--key", KEY, "--accounts", demo_org.accounts["prod-a"])
    assert result.exit_code == ExitCode.CHANGED
    assert ANSI not in result.stdout + result.stderr
    assert f"Probe of {demo_org.key_arn(KEY)}" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "kms:Encrypt" in line)
    assert demo_org.accounts["prod-a"] in line
    assert "ImplicitDeny" in line
    assert " NO " in line
    assert "a grant on the key allows it" in result.stdout
    assert "1 account: 0 agree, 3 disagree." in result.stderr


def test_a_role_that_cannot_be_assumed_is_reported_and_the_rest_go_on(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    set_policy(aws, demo_org, whole_org(demo_org))
    refused = demo_org.accounts["prod-a"]
    fault_proxy.add_rule(
        "sts:AssumeRole",
        error_code="AccessDenied",
        status=403,
        when=lambda body: body["RoleArn"] == role_arn(refused),
    )
    result = invoke("probe", "--key", KEY, "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    table = by_account(result)
    active = demo_org.accounts_under("Root")
    assert set(table) == active
    for row in table[refused].values():
        assert (row["observed"], row["agrees"]) == (ROLE_NOT_ASSUMED, True)
    for account in active - {refused}:
        assert all(row["observed"] == ALLOWED for row in table[account].values())
    assert fault_proxy.count("kms:Encrypt", forwarded=True) == len(active) - 1
    assert "The role could not be assumed in 1 of them." in result.stderr

    human = invoke("probe", "--key", KEY, "--accounts", refused)
    assert human.exit_code == ExitCode.OK
    assert f"{role_arn(refused)} could not be assumed (AccessDenied" in human.stdout


def test_given_accounts_are_placed_in_their_units_without_walking_the_organization(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    prod = demo_org.ou_path("Prod")
    set_policy(
        aws,
        demo_org,
        grant(
            {
                "StringEquals": {"aws:PrincipalOrgID": demo_org.org_id},
                "ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": f"{prod}*"},
            }
        ),
    )
    chosen = [demo_org.accounts[name] for name in ("prod-a", "crit-a", "dev-a")]
    result = invoke(
        "probe",
        "--key",
        KEY,
        "--accounts",
        f"{chosen[0]},{chosen[1]}",
        "--accounts",
        chosen[2],
        "--json",
    )
    assert result.exit_code == ExitCode.CHANGED
    table = by_account(result)
    assert list(table) == chosen
    for account in chosen[:2]:
        assert all(row["expected"] == "Allow" and row["agrees"] for row in table[account].values())
    assert all(row["expected"] == "ImplicitDeny" for row in table[chosen[2]].values())
    assert fault_proxy.count("organizations:ListParents") >= len(chosen)
    assert fault_proxy.count("organizations:ListAccountsForParent") == 0
    assert sorted(
        call.body["RoleArn"] for call in fault_proxy.calls_for("sts:AssumeRole")
    ) == sorted(map(role_arn, chosen))


def test_an_unreadable_organization_leaves_what_depends_on_it_unpredicted(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    set_policy(
        aws,
        demo_org,
        grant({"StringEquals": {"aws:PrincipalOrgID": demo_org.org_id}}, actions=["kms:Encrypt"]),
        grant(
            {"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": f"{demo_org.org_id}/*"}},
            actions=["kms:Decrypt", "kms:GenerateDataKey"],
        ),
    )
    fault_proxy.add_rule("organizations:ListParents", error_code="AccessDeniedException")
    account = demo_org.accounts["dev-a"]
    result = invoke("probe", "--key", KEY, "--accounts", account, "--json")
    assert result.exit_code == ExitCode.OK, result.stderr
    table = by_account(result)[account]
    # The org ID comes from the account itself: the Encrypt grant is predicted.
    assert (table["kms:Encrypt"]["expected"], table["kms:Encrypt"]["agrees"]) == ("Allow", True)
    for action in ("kms:Decrypt", "kms:GenerateDataKey"):
        assert (table[action]["expected"], table[action]["agrees"]) == ("Unknown", True)
    assert "cannot be read (Organizations answered AccessDeniedException)" in result.stderr
    assert fault_proxy.count("organizations:DescribeOrganization") >= 2

    fault_proxy.add_rule("organizations:ListRoots", error_code="AccessDeniedException")
    whole = invoke("probe", "--key", KEY, "--org")
    assert whole.exit_code == ExitCode.ERROR
    assert whole.stderr.startswith("orgkeypolicy: error: --org: the organization cannot be read")


@pytest.fixture
def refused_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Accounts whose KMS calls botocore's Stubber refuses (AccessDeniedException) without
    reaching the local AWS; other accounts' calls go through."""
    refused: set[str] = set()
    stubbers: list[Stubber] = []

    class MemberSession(boto3.Session):
        def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:
            # boto3's stubs overload client() per service name; any name will do here.
            session: Any = super()
            client = session.client(service_name, *args, **kwargs)
            if service_name != "kms":
                return client
            account = session.client("sts").get_caller_identity()["Account"]
            if account in refused:
                stubber = Stubber(client)
                for operation in ("encrypt", "generate_data_key"):
                    stubber.add_client_error(
                        operation,
                        "AccessDeniedException",
                        f"User: arn:aws:sts::{account}:assumed-role/{ROLE}/orgkeypolicy-probe "
                        f"is not authorized to perform: kms:{operation}",
                    )
                stubber.activate()
                stubbers.append(stubber)
            return client

    monkeypatch.setattr(accounts, "boto3", SimpleNamespace(Session=MemberSession))
    yield refused
    for stubber in stubbers:
        stubber.assert_no_pending_responses()


def test_refusals_of_a_delegated_grant_point_at_the_member_accounts_iam(
    aws: LocalAws,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    refused_in: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # findings unwrapped
    prod_a, prod_b, dev_a = (demo_org.accounts[name] for name in ("prod-a", "prod-b", "dev-a"))
    set_policy(aws, demo_org, grant({}, principal=[f"arn:aws:iam::{prod_a}:root", prod_b]))
    refused_in.update({prod_a, dev_a})
    result = invoke("probe", "--key", KEY, "--accounts", prod_a, prod_b, dev_a, "--json")
    assert result.exit_code == ExitCode.CHANGED
    table = by_account(result)
    assert table[prod_a]["kms:Encrypt"] == {
        "account": prod_a,
        "action": "kms:Encrypt",
        "expected": "Allow",
        "observed": "AccessDeniedException",
        "agrees": False,
    }
    assert table[prod_a]["kms:GenerateDataKey"]["agrees"] is False
    # No ciphertext to decrypt: not tested, not a disagreement.
    assert (table[prod_a]["kms:Decrypt"]["observed"], table[prod_a]["kms:Decrypt"]["agrees"]) == (
        NOT_TESTED,
        True,
    )
    assert all(row["observed"] == ALLOWED and row["agrees"] for row in table[prod_b].values())
    dev = table[dev_a]
    assert (dev["kms:Encrypt"]["expected"], dev["kms:Encrypt"]["agrees"]) == ("ImplicitDeny", True)

    human = invoke("probe", "--key", KEY, "--accounts", prod_a)
    assert human.exit_code == ExitCode.CHANGED
    assert f"to account {prod_a} as a whole (delegated)" in human.stdout
    assert "the role lacks an IAM policy allowing kms:Encrypt on the key" in human.stdout
    assert "not tested: neither Encrypt nor GenerateDataKey gave a ciphertext" in human.stdout


def test_the_probe_never_shows_its_plaintext_or_data_keys(
    aws: LocalAws, demo_org: SeededOrg, fault_proxy: FaultProxy
) -> None:
    set_policy(aws, demo_org, whole_org(demo_org))
    account = demo_org.accounts["prod-a"]
    shown = [
        invoke("--debug", "probe", "--key", KEY, "--accounts", account, *extra)
        for extra in ([], ["--json"])
    ]
    sent = {call.body["Plaintext"] for call in fault_proxy.calls_for("kms:Encrypt")}
    assert len(sent) == 1
    plaintext = base64.b64decode(sent.pop())
    for result in shown:
        everything = result.stdout + result.stderr
        assert plaintext.decode() not in everything
        assert base64.b64encode(plaintext).decode() not in everything
        assert "Plaintext" not in everything


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--accounts", "12345"], "--accounts '12345': is not an account ID (12 digits)"),
        (["--accounts", "111122223333", "--org"], "--accounts and --org: give one of them"),
        (["--role", "Admin*"], "--role 'Admin*': is not a role name"),
        ([], "Missing option '--key'"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: list[str], message: str) -> None:
    key = [] if not args else ["--key", "alias/x"]
    result = invoke("probe", *key, *args)
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


class Kms:
    """A KMS client for ``key_calls``, with Stubber's answers checked against the model."""

    ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

    def __init__(self) -> None:
        self.client = boto3.client("kms", region_name="us-east-1")
        self.stubber = Stubber(self.client)

    def allow(self, operation: str, ciphertext: bytes | None = None, **expected: Any) -> None:
        response: dict[str, Any] = {"KeyId": self.ARN}
        if operation == "decrypt":
            response["Plaintext"] = b"secret"
        else:
            response["CiphertextBlob"] = ciphertext
        if operation == "generate_data_key":
            response["Plaintext"] = b"k" * 32
        self.stubber.add_response(operation, response, {"KeyId": self.ARN, **expected})

    def refuse(self, operation: str) -> None:
        self.stubber.add_client_error(operation, "AccessDeniedException")

    def calls(self) -> dict[str, str]:
        with self.stubber:
            outcomes = key_calls(self.client, self.ARN)
            self.stubber.assert_no_pending_responses()
        return outcomes


def test_decrypt_uses_the_ciphertext_of_encrypt() -> None:
    kms = Kms()
    kms.allow("encrypt", b"from-encrypt", Plaintext=b"orgkeypolicy probe")
    kms.allow("generate_data_key", b"from-data-key", KeySpec="AES_256")
    kms.allow("decrypt", CiphertextBlob=b"from-encrypt")
    assert kms.calls() == dict.fromkeys(ACTIONS, ALLOWED)


def test_decrypt_uses_the_data_keys_ciphertext_when_encrypt_is_refused() -> None:
    kms = Kms()
    kms.refuse("encrypt")
    kms.allow("generate_data_key", b"from-data-key", KeySpec="AES_256")
    kms.allow("decrypt", CiphertextBlob=b"from-data-key")
    assert kms.calls() == {
        "kms:Encrypt": "AccessDeniedException",
        "kms:Decrypt": ALLOWED,
        "kms:GenerateDataKey": ALLOWED,
    }


def test_decrypt_is_not_tested_without_a_ciphertext() -> None:
    kms = Kms()
    kms.refuse("encrypt")
    kms.stubber.add_client_error("generate_data_key", "DisabledException")
    assert kms.calls() == {
        "kms:Encrypt": "AccessDeniedException",
        "kms:Decrypt": NOT_TESTED,
        "kms:GenerateDataKey": "DisabledException",
    }


OBSERVATIONS = st.sampled_from(
    [ALLOWED, NOT_TESTED, *sorted(REFUSALS), "DisabledException", "ThrottlingException", "X"]
)


@settings(max_examples=200, deadline=None)
@given(
    decision=st.sampled_from(list(Decision)),
    observed=OBSERVATIONS,
    delegated=st.booleans(),
    cross_account=st.booleans(),
)
def test_a_row_disagrees_exactly_when_the_observation_contradicts_the_prediction(
    decision: Decision, observed: str, delegated: bool, cross_account: bool
) -> None:
    answer = Answer(
        "arn:aws:iam::111122223333:role/R",
        "kms:Encrypt",
        decision,
        ("S",),
        delegated and decision is Decision.ALLOW,
        ("a construct",) if decision is Decision.UNKNOWN else (),
    )
    row = compare("111122223333", answer, observed, cross_account=cross_account)
    observed_something = observed != NOT_TESTED
    predicted = decision is not Decision.UNKNOWN
    as_predicted = (decision is Decision.ALLOW and observed == ALLOWED) or (
        decision in (Decision.IMPLICIT_DENY, Decision.EXPLICIT_DENY) and observed in REFUSALS
    )
    assert row.agrees is (not (observed_something and predicted) or as_predicted)
    assert row.counted is (observed_something and predicted)
    assert (row.finding == "") is (row.agrees and row.counted)
    assert (row.expected, row.observed) == (decision.value, observed)
    if not row.agrees and decision is Decision.ALLOW and observed in REFUSALS:
        assert "IAM policy" in row.finding or "SCP" in row.finding
        assert ("delegated" in row.finding) is answer.delegated
    if observed not in (ALLOWED, NOT_TESTED) and observed not in REFUSALS and predicted:
        assert f"failed with {observed}" in row.finding
