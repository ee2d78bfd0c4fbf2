"""A template's parameters, conditions and intrinsic functions resolved as CloudFormation would
for one stack: enough to read the IAM policies a stack of the template gets."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

ACCOUNT = "111111111111"
REGION = "eu-west-1"


class Stack:
    """A template's parameters and conditions, resolved as CloudFormation would for one stack."""

    def __init__(self, template: Mapping[str, Any], **parameters: str | list[str]) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        assert not unknown, f"not parameters of the template: {unknown}"
        self.values: dict[str, Any] = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": "org-key-policy",
        }
        for name, spec in declared.items():
            value = parameters.get(name, spec.get("Default"))
            assert value is not None, f"{name} has no default"
            if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
                value = value.split(",")
            self.values[name] = value
        self.conditions: dict[str, bool] = {}
        for name in template.get("Conditions", {}):
            self.condition(name)

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self.conditions[name]

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((fn, arg),) = node.items()
            if fn == "Ref":
                if arg == "AWS::NoValue":
                    return _NO_VALUE
                # A resource stands for itself: only parameters matter to these checks.
                return self.values.get(arg, f"<{arg}>")
            if fn == "Fn::GetAtt":
                return f"<{'.'.join(arg) if isinstance(arg, list) else arg}>"
            if fn == "Fn::If":
                name, if_true, if_false = arg
                return self.resolve(if_true if self.condition(name) else if_false)
            if fn == "Fn::Sub":
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.values[m[1]]), arg)
            if fn == "Fn::Join":
                separator, items = arg
                return separator.join(self.resolve(items))
            if fn == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if fn == "Fn::Not":
                return not self.resolve(arg[0])
            if fn == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if fn == "Condition":
                return self.condition(arg)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}

    def policy(self, document: Any) -> dict[str, Any]:
        resolved = self.resolve(document)
        parsed: dict[str, Any] = json.loads(resolved) if isinstance(resolved, str) else resolved
        return parsed

    def role_policy(self, role: str) -> dict[str, Any]:
        """Every permission of ``role`` (inline and attached policies) as one document."""
        resources = self.template["Resources"]
        props = self.resolve(resources[role]["Properties"])
        documents = [self.policy(p["PolicyDocument"]) for p in props.get("Policies", [])]
        for arn in resources[role]["Properties"].get("ManagedPolicyArns", []):
            attached = resources[arn["Ref"]]["Properties"]["PolicyDocument"]
            documents.append(self.policy(attached))
        statements = [s for document in documents for s in _listed(document["Statement"])]
        return {"Version": "2012-10-17", "Statement": statements}


_NO_VALUE = object()


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
