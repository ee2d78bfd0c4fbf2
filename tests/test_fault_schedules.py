"""The lifecycle's invariants under generated fault schedules.

Hypothesis draws a Create -> Update -> Delete sequence and a schedule of faults for one of its
steps: throttling, server errors, refusals, connections closed before an answer, and calls that
take effect while their answer is lost, each on the n-th call of an operation. After every step:

- SUCCESS means every key holds exactly the grant asked for, next to its foreign statements;
- FAILED means no key is half-changed: each key is as it was before the step, except keys the
  reason names as NOT restored;
- once the faults stop, the Delete or rollback Update that CloudFormation sends next answers
  SUCCESS, and leaves the keys as that request asks;
- no lock is left behind.

Each example uses its own keys and stack, so the examples share one seeded organization.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from localaws.cfn import CfnResponse, CloudFormation
from localaws.proxy import FaultProxy
from localaws.registry import REGISTRY_TABLE
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from orgkeypolicy.locks import LOCK_ID_PREFIX
from tests.endtoend import Policy, add_keys, foreign, granted, key_id, names, ours, policies, run

pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")

OPERATIONS = (
    "sts:GetCallerIdentity",
    "organizations:ListAccountsForParent",
    "organizations:ListOrganizationalUnitsForParent",
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteItem",
)
THROTTLING = {
    "sts": "Throttling",
    "organizations": "TooManyRequestsException",
    "kms": "ThrottlingException",
    "dynamodb": "ThrottlingException",
}
KINDS = ("throttled", "server error", "refused", "dropped", "lost: reset", "lost: 500")


@dataclass(frozen=True)
class Fault:
    operation: str
    kind: str
    first: int
    times: int

    def install(self, proxy: FaultProxy) -> None:
        nth = set(range(self.first, self.first + self.times))
        service = self.operation.split(":")[0]
        if self.kind == "throttled":
            proxy.add_rule(self.operation, error_code=THROTTLING[service], nth=nth)
        elif self.kind == "server error":
            proxy.add_rule(self.operation, error_code="InternalFailure", status=500, nth=nth)
        elif self.kind == "refused":
            proxy.add_rule(self.operation, error_code="AccessDeniedException", nth=nth)
        elif self.kind == "dropped":
            proxy.add_rule(self.operation, drop=True, nth=nth)
        else:
            proxy.add_rule(self.operation, lose_answer=self.kind.split(": ")[1], nth=nth)  # type: ignore[arg-type]


faults = st.builds(
    Fault,
    operation=st.sampled_from(OPERATIONS),
    kind=st.sampled_from(KINDS),
    first=st.integers(1, 4),
    times=st.integers(1, 2),
)


def lock_items(aws: LocalAws, prefix: str, keys: list[str]) -> list[str]:
    """The locks of this example's resource and keys still in the registry table."""
    mine = {f"{LOCK_ID_PREFIX}resource/{prefix}", *(f"{LOCK_ID_PREFIX}key/{key}" for key in keys)}
    items = aws.client("dynamodb").scan(TableName=REGISTRY_TABLE)["Items"]
    return [item["id"]["S"] for item in items if item["id"]["S"] in mine]


def holds_exactly(
    document: Policy, prefix: str, original: Policy, accounts: set[str], grants: bool
) -> None:
    assert foreign(document, prefix) == original["Statement"]
    suffixes = ["Use", "Grants"] if grants else ["Use"]
    assert [s["Sid"] for s in ours(document, prefix)] == [prefix + s for s in suffixes]
    for suffix in suffixes:
        assert granted(document, prefix, suffix) == accounts


def unchanged_unless_named(
    after: dict[str, Policy], before: dict[str, Policy], response: CfnResponse
) -> None:
    reason = str(response.reason)
    for key, document in after.items():
        if key_id(key) not in reason.split(";", maxsplit=1)[0] or not reason.startswith(
            "NOT restored"
        ):
            assert document == before[key], f"{key} half-changed; reason: {reason}"


@settings(
    max_examples=10,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    # Each example is a few real requests: a failure is reported as drawn, not shrunk.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    step=st.sampled_from(["Create", "Update", "Delete"]),
    # A fault is transient: it hits at most two calls of an operation in a row.
    schedule=st.lists(faults, max_size=3, unique_by=lambda fault: fault.operation),
)
def test_the_lifecycle_invariants_hold_under_any_fault_schedule(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    step: str,
    schedule: list[Fault],
) -> None:
    originals = add_keys(aws, 2, tag=f"schedule{uuid.uuid4().hex[:6]}")
    keys = list(originals)
    stack_id = cfn.stack_id.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    old: dict[str, Any] = {
        "KeyIds": keys,
        "OrganizationalUnitIds": [demo_org.ous["Dev"]],
        "AllowGrants": "true",
    }
    new: dict[str, Any] = {"KeyIds": keys[1:], "OrganizationalUnitIds": [demo_org.ous["Sandbox"]]}
    dev, sandbox = names(demo_org, "dev-a"), names(demo_org, "sbx-a")

    def send(request_type: str, props: Any, faulted: bool, **extra: Any) -> CfnResponse:
        before = policies(aws, keys)
        for fault in schedule if faulted else ():
            fault.install(fault_proxy)
        try:
            response = run(cfn, cfn.event(request_type, props, stack_id=stack_id, **extra))
        finally:
            fault_proxy.clear_rules()
        if response.status != "SUCCESS":
            unchanged_unless_named(policies(aws, keys), before, response)
        return response

    created = send("Create", old, step == "Create")
    prefix = str(created.physical_id)
    if created.status != "SUCCESS":
        cleanup = send("Delete", old, False, physical_id=prefix)
        assert cleanup.status == "SUCCESS", cleanup.reason
        assert policies(aws, keys) == originals
        assert lock_items(aws, prefix, keys) == []
        return
    for key in keys:
        holds_exactly(policies(aws, [key])[key], prefix, originals[key], dev, grants=True)

    updated = send("Update", new, step == "Update", old_properties=old, physical_id=prefix)
    if updated.status == "SUCCESS":
        assert policies(aws, keys[:1]) == {keys[0]: originals[keys[0]]}
        holds_exactly(policies(aws, keys[1:])[keys[1]], prefix, originals[keys[1]], sandbox, False)
        current = new
    else:
        rollback = send("Update", old, False, old_properties=new, physical_id=prefix)
        assert rollback.status == "SUCCESS", rollback.reason
        for key in keys:
            holds_exactly(policies(aws, [key])[key], prefix, originals[key], dev, grants=True)
        current = old

    deleted = send("Delete", current, step == "Delete", physical_id=prefix)
    if deleted.status != "SUCCESS":
        again = send("Delete", current, False, physical_id=prefix)
        assert again.status == "SUCCESS", again.reason
    assert policies(aws, keys) == originals
    assert lock_items(aws, prefix, keys) == []
