"""Independent checks on every key policy the tests write: parliament and policyuniverse."""

from __future__ import annotations

import json
from typing import Any

from parliament import analyze_policy_string
from policyuniverse.policy import Policy

# Key policies always say Resource "*" (meaning the key itself): parliament's one expected note.
ALLOWED_FINDINGS = {"RESOURCE_STAR"}


def assert_policy_safe(policy: dict[str, Any] | str) -> None:
    document = json.loads(policy) if isinstance(policy, str) else policy
    findings = analyze_policy_string(json.dumps(document)).findings
    unexpected = [(f.issue, f.detail) for f in findings if f.issue not in ALLOWED_FINDINGS]
    assert not unexpected, unexpected
    assert not Policy(document).is_internet_accessible(), document
