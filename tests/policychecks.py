"""Independent checks on every key policy the tests write: parliament and policyuniverse."""

from __future__ import annotations

import json
from typing import Any

from parliament import analyze_policy_string
from policyuniverse.policy import Policy

from orgkeypolicy.statements import SID_PREFIX_BASE

# Key policies always say Resource "*" (meaning the key itself): parliament's one expected note.
ALLOWED_FINDINGS = {"RESOURCE_STAR"}


def assert_policy_safe(policy: dict[str, Any] | str) -> None:
    """No parliament finding on the statements this project writes, and the key policy as a
    whole is not reachable from outside the organization.

    parliament reads IAM rules, under which the Sid of KMS's own default statement
    ("Enable IAM User Permissions") is invalid; so it judges only the managed statements.
    """
    document = json.loads(policy) if isinstance(policy, str) else policy
    statements = document["Statement"]
    managed = [
        s
        for s in ([statements] if isinstance(statements, dict) else statements)
        if str(s.get("Sid", "")).startswith(SID_PREFIX_BASE)
    ]
    if managed:
        text = json.dumps({"Version": "2012-10-17", "Statement": managed})
        findings = analyze_policy_string(text).findings
        unexpected = [(f.issue, f.detail) for f in findings if f.issue not in ALLOWED_FINDINGS]
        assert not unexpected, unexpected
    assert not Policy(document).is_internet_accessible(), document
