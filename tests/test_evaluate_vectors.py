"""The evaluator against data-driven vectors taken from AWS's documentation.

Each file in ``tests/vectors/evaluation/`` covers one topic: ``{"description", "policies":
{name: policy}, "vectors": [...]}``. A vector is ``{"name", "source", "policy" | "condition",
"request", "expected"}``:

- ``policy`` is a policy document or the name of one in ``policies``; ``condition`` is short
  for one statement ``{"Sid": "Tested", "Principal": "*", "Action": "kms:*", "Resource": "*"}``
  with that Condition, its ``effect`` (default Allow; a Deny comes after an ``AllowAll``
  statement so that its effect shows) under ``version`` (default 2012-10-17, null for none);
- ``request``: ``principal`` (an ARN or ``{"arn", "org_id", "org_paths", "context"}``; default
  a role in the key's account), ``action`` (default ``kms:Decrypt``), ``resource`` (default the
  key's ARN, null for unknown), ``context``, and ``mode`` ``identity`` for an IAM identity
  policy;
- ``expected``: ``decision``, and where meaningful ``statements``, ``delegated`` and
  ``unsupported`` (fragments each found in some unsupported entry; an Unknown always names
  at least one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orgkeypolicy.evaluation import (
    Decision,
    Principal,
    compile_policy,
    evaluate,
    evaluate_identity_policy,
)

VECTORS = Path(__file__).parent / "vectors" / "evaluation"
KEY_ARN = "arn:aws:kms:us-east-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DEFAULT_PRINCIPAL = "arn:aws:iam::111122223333:role/Tester"
ALLOW_ALL = {"Sid": "AllowAll", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}
SOURCES = ("https://docs.aws.amazon.com/",)


def _vectors() -> list[Any]:
    params = []
    for path in sorted(VECTORS.glob("*.json")):
        document = json.loads(path.read_text())
        for vector in document["vectors"]:
            params.append(
                pytest.param(
                    document.get("policies", {}), vector, id=f"{path.stem}:{vector['name']}"
                )
            )
    return params


def _policy(policies: dict[str, Any], vector: dict[str, Any]) -> dict[str, Any]:
    policy = vector.get("policy")
    if isinstance(policy, str):
        return policies[policy]  # type: ignore[no-any-return]
    if policy is not None:
        return policy  # type: ignore[no-any-return]
    effect = vector.get("effect", "Allow")
    tested = {
        "Sid": "Tested",
        "Effect": effect,
        "Principal": "*",
        "Action": "kms:*",
        "Resource": "*",
        "Condition": vector["condition"],
    }
    document: dict[str, Any] = {"Statement": [ALLOW_ALL, tested] if effect == "Deny" else [tested]}
    version = vector.get("version", "2012-10-17")
    if version is not None:
        document["Version"] = version
    return document


def _principal(raw: str | dict[str, Any]) -> Principal:
    if isinstance(raw, str):
        return Principal(raw)
    return Principal(
        raw["arn"],
        org_id=raw.get("org_id"),
        org_paths=tuple(raw.get("org_paths", ())),
        context={
            key: tuple(v) if isinstance(v, list) else v for key, v in raw.get("context", {}).items()
        },
    )


def test_there_are_enough_vectors_and_each_names_its_source() -> None:
    vectors = [param.values[1] for param in _vectors()]
    assert len(vectors) > 100
    names = [param.id for param in _vectors()]
    assert len(names) == len(set(names))
    for vector in vectors:
        assert vector["source"].startswith(SOURCES), vector["name"]
        assert Decision(vector["expected"]["decision"])


@pytest.mark.parametrize(("policies", "vector"), _vectors())
def test_vector(policies: dict[str, Any], vector: dict[str, Any]) -> None:
    request = vector.get("request", {})
    principal = _principal(request.get("principal", DEFAULT_PRINCIPAL))
    action = request.get("action", "kms:Decrypt")
    resource = request.get("resource", KEY_ARN)
    context = {
        k: tuple(v) if isinstance(v, list) else v for k, v in request.get("context", {}).items()
    }
    policy = _policy(policies, vector)
    if request.get("mode") == "identity":
        answer = evaluate_identity_policy(policy, principal, action, resource, context)
    else:
        answer = evaluate(compile_policy(policy), principal, action, resource, context)

    expected = vector["expected"]
    assert answer.decision is Decision(expected["decision"]), answer
    if "statements" in expected:
        assert list(answer.statements) == expected["statements"], answer
    if "delegated" in expected:
        assert answer.delegated is expected["delegated"], answer
    if answer.decision is Decision.UNKNOWN:
        assert answer.unsupported, answer
    for fragment in expected.get("unsupported", []):
        assert any(fragment in entry for entry in answer.unsupported), (fragment, answer)
    if answer.decision is not Decision.UNKNOWN:
        assert answer.unsupported == (), answer
    assert answer.delegated is False or answer.decision is Decision.ALLOW
