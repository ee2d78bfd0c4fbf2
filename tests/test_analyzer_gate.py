"""Access Analyzer in the custom resource: a blocking finding stops the write before any key
changes, an unavailable service is said once and the project's own checks go on, and the
provider's setting turns the review off. The review itself is tested in test_analyzer.py."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

import app
from localaws.cfn import CloudFormation
from localaws.proxy import FaultProxy
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from orgkeypolicy import analyzer
from orgkeypolicy.analyzer import AccessAnalyzer, Review, classify
from tests.endtoend import key_id, policies, run

pytestmark = pytest.mark.usefixtures("fast_verify", "checked_writes")


@pytest.fixture(autouse=True)
def review_on(fast_verify: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's default, which the rest of the suite turns off (moto lacks the service)."""
    monkeypatch.setattr(app, "settings", replace(app.settings, access_analyzer=True))


def finding_in_ours(policy: Any, prefix: str) -> Review:
    ours = next(i for i, s in enumerate(policy["Statement"]) if s["Sid"].startswith(prefix))
    finding = {
        "findingDetails": "The principal is too broad.",
        "findingType": "SECURITY_WARNING",
        "issueCode": "EXTERNAL_PRINCIPAL",
        "learnMoreLink": "https://docs.aws.amazon.com/",
        "locations": [{"path": [{"value": "Statement"}, {"index": ours}], "span": {}}],
    }
    return classify(policy, prefix, [finding], {"result": "PASS"})


def test_a_blocking_finding_stops_the_create_before_any_write(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reviewed: list[str] = []

    def review(self: AccessAnalyzer, key_arn: str, policy: Any, prefix: str) -> Review:
        reviewed.append(key_arn)
        return finding_in_ours(policy, prefix)

    monkeypatch.setattr(AccessAnalyzer, "review", review)
    keys = list(demo_org.keys.values())
    before = policies(aws, keys)
    props = {"KeyIds": keys, "OrganizationalUnitIds": [demo_org.ous["Dev"]]}

    failed = run(cfn, cfn.event("Create", props))

    assert failed.status == "FAILED"
    reason = str(failed.reason)
    assert "Access Analyzer SECURITY_WARNING" in reason and "EXTERNAL_PRINCIPAL" in reason
    assert any(key_id(key) in reason for key in keys)
    # Reviewed before any write; the first blocking finding stops the rest.
    assert reviewed and set(reviewed) <= set(keys)
    assert fault_proxy.count("kms:PutKeyPolicy") == 0
    assert policies(aws, keys) == before


def test_without_the_service_the_create_goes_on_and_says_so_once(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, caplog: pytest.LogCaptureFixture
) -> None:
    props = {"KeyIds": list(demo_org.keys.values()), "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    analyzer._warned.clear()
    with caplog.at_level(logging.WARNING, logger="orgkeypolicy.analyzer"):
        created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    skipped = [r for r in caplog.records if "review skipped" in r.getMessage()]
    # Once per kind of cause and region for the whole process, not once per key.
    assert 1 <= len(skipped) <= 2, [r.getMessage() for r in skipped]


def test_the_provider_setting_turns_the_review_off(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    def review(self: AccessAnalyzer, key_arn: str, policy: Any, prefix: str) -> Review:
        raise AssertionError("reviewed with the review turned off")

    monkeypatch.setattr(AccessAnalyzer, "review", review)
    monkeypatch.setattr(app, "settings", replace(app.settings, access_analyzer=False))
    props = {"KeyIds": [demo_org.keys["data"]], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason


def test_a_delete_and_a_put_back_are_never_reviewed(
    aws: LocalAws,
    cfn: CloudFormation,
    demo_org: SeededOrg,
    fault_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    props = {"KeyIds": [demo_org.keys["data"]], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    created = run(cfn, cfn.event("Create", props))
    assert created.status == "SUCCESS", created.reason
    monkeypatch.setattr(AccessAnalyzer, "review", lambda *args: finding_in_ours(*args[2:]))
    deleted = run(cfn, cfn.event("Delete", props, physical_id=created.physical_id))
    assert deleted.status == "SUCCESS", deleted.reason
    assert policies(aws, [demo_org.keys["data"]]) == {
        demo_org.keys["data"]: demo_org.original_policies[demo_org.keys["data"]]
    }
