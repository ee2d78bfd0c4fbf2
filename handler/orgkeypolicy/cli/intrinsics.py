"""CloudFormation's intrinsic functions, evaluated over a loaded template (plain data).

Pure: what only AWS knows — the account and region, the deployed stack's resources and
parameters, the region's exports — comes through an ``Environment``, which answers ``None``
when it cannot know (no stack given). Every error names where in the template it arose, the
reference, and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from orgkeypolicy.cli.errors import CommandError

CUSTOM_TYPES = ("Custom::OrgKeyPolicy", "AWS::CloudFormation::CustomResource")
PSEUDO_PARAMETERS = (
    "AWS::AccountId",
    "AWS::Region",
    "AWS::Partition",
    "AWS::StackName",
    "AWS::StackId",
    "AWS::URLSuffix",
)
NO_VALUE_REF = "AWS::NoValue"
_STACK_FIX = "give --stack NAME or --stack-id ARN to read it from the deployed stack"
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class _NoValue:
    """``AWS::NoValue``: the map key or list item holding it disappears."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


class Environment(Protocol):
    """What AWS knows about a template's references; ``None``: cannot know without a stack."""

    def pseudo_parameter(self, name: str) -> str | None: ...

    def deployed_parameter(self, name: str) -> str | None:
        """The deployed stack's value of a template parameter (resolved, for SSM types)."""
        ...

    def physical_id(self, logical_id: str) -> str | None: ...

    def attribute(self, logical_id: str, resource_type: str, attribute: str) -> str | None: ...

    def export(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class Template:
    """The sections of a template that intrinsic functions read."""

    resources: Mapping[str, Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    mappings: Mapping[str, Any] = field(default_factory=dict)
    conditions: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: object, origin: str) -> Template:
        if not isinstance(document, Mapping) or not isinstance(document.get("Resources"), Mapping):
            raise CommandError(f"{origin}: is not a CloudFormation template (no Resources map)")
        sections = {}
        for name in ("Parameters", "Mappings", "Conditions"):
            section = document.get(name, {})
            if not isinstance(section, Mapping):
                raise CommandError(f"{origin}: its {name} section is not a map")
            sections[name.lower()] = section
        return cls(resources=document["Resources"], **sections)

    def custom_resources(self) -> list[str]:
        return [
            logical_id
            for logical_id, resource in self.resources.items()
            if isinstance(resource, Mapping) and resource.get("Type") in CUSTOM_TYPES
        ]


def text(value: object) -> str:
    """A scalar as CloudFormation passes it on: ``true``, ``20``, ``2012-10-17``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str | int | float):
        return str(value)
    raise CommandError(f"{value!r} is not a value CloudFormation passes on; write a string")


def delivered(value: object) -> Any:
    """Resolved properties as a custom resource receives them: every scalar a string."""
    if isinstance(value, Mapping):
        return {str(key): delivered(item) for key, item in value.items()}
    if isinstance(value, list):
        return [delivered(item) for item in value]
    return None if value is None else text(value)


class Resolver:
    """Evaluates intrinsic functions of one template under given parameter values."""

    def __init__(self, template: Template, given: Mapping[str, str], env: Environment) -> None:
        unknown = sorted(set(given) - set(template.parameters))
        if unknown:
            declared = ", ".join(template.parameters) or "none"
            raise CommandError(
                f"--parameter {unknown[0]}: the template has no such parameter "
                f"(its parameters: {declared})"
            )
        self._template = template
        self._given = given
        self._env = env
        self._parameters: dict[str, str | list[str]] = {}
        self._conditions: dict[str, bool] = {}
        self._evaluating: list[str] = []

    def resolve(self, value: object, where: str) -> Any:
        """``value`` with every intrinsic function evaluated; may be ``NO_VALUE``."""
        if isinstance(value, Mapping):
            if len(value) == 1:
                name, argument = next(iter(value.items()))
                if name == "Ref" or (isinstance(name, str) and name.startswith("Fn::")):
                    return self._function(name, argument, where)
            resolved = {key: self.resolve(item, f"{where}.{key}") for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not NO_VALUE}
        if isinstance(value, list):
            items = [self.resolve(item, f"{where}[{i}]") for i, item in enumerate(value)]
            return [item for item in items if item is not NO_VALUE]
        return value

    def condition(self, name: object, where: str) -> bool:
        """The value of a condition of the template's ``Conditions`` section."""
        if not isinstance(name, str) or name not in self._template.conditions:
            declared = ", ".join(self._template.conditions) or "none"
            raise CommandError(f"{where}: no condition {name!r} in Conditions ({declared})")
        if name not in self._conditions:
            if name in self._evaluating:
                cycle = " -> ".join([*self._evaluating, name])
                raise CommandError(f"Conditions.{name}: refers to itself ({cycle})")
            self._evaluating.append(name)
            try:
                self._conditions[name] = self._truth(
                    self._template.conditions[name], f"Conditions.{name}"
                )
            finally:
                self._evaluating.pop()
        return self._conditions[name]

    def parameter(self, name: str, where: str) -> str | list[str]:
        """A parameter's value: given, else the deployed stack's, else its ``Default``."""
        if name not in self._parameters:
            self._parameters[name] = self._parameter(name, where)
        return self._parameters[name]

    def _parameter(self, name: str, where: str) -> str | list[str]:
        declaration = self._template.parameters[name]
        if not isinstance(declaration, Mapping):
            raise CommandError(f"Parameters.{name}: is not a map")
        kind = str(declaration.get("Type", "String"))
        deployed = None if name in self._given else self._env.deployed_parameter(name)
        if kind.startswith("AWS::SSM::Parameter::Value<") and deployed is None:
            raise CommandError(
                f"{where}: parameter {name} is read from SSM Parameter Store at deploy time; "
                f"{_STACK_FIX}"
            )
        if name in self._given:
            raw = self._given[name]
        elif deployed is not None:
            raw = deployed
        elif "Default" in declaration:
            raw = text(declaration["Default"])
        else:
            raise CommandError(
                f"{where}: parameter {name} has no value and no Default; "
                f"give --parameter {name}=VALUE"
            )
        is_list = kind == "CommaDelimitedList" or kind.startswith("List<")
        values = [item.strip() for item in raw.split(",")] if is_list else [raw]
        allowed = declaration.get("AllowedValues")
        pattern = declaration.get("AllowedPattern")
        choices = [text(value) for value in allowed] if isinstance(allowed, list) else None
        for item in values:
            if choices is not None and item not in choices:
                raise CommandError(
                    f"parameter {name}: {item!r} is not one of its AllowedValues "
                    f"({', '.join(choices)})"
                )
            if isinstance(pattern, str) and not re.fullmatch(pattern, item):
                raise CommandError(f"parameter {name}: {item!r} does not match {pattern!r}")
        return values if is_list else raw

    def _function(self, name: str, argument: object, where: str) -> Any:
        where = f"{where}.{name}"
        if name == "Ref":
            return self._ref(argument, where)
        handlers = {
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._sub,
            "Fn::Join": self._join,
            "Fn::Select": self._select,
            "Fn::Split": self._split,
            "Fn::If": self._if,
            "Fn::FindInMap": self._find_in_map,
            "Fn::ImportValue": self._import_value,
        }
        handler = handlers.get(name)
        if handler is None:
            raise CommandError(f"{where}: {name} is not evaluated here; write its value instead")
        return handler(argument, where)

    def _ref(self, name: object, where: str) -> Any:
        if not isinstance(name, str):
            raise CommandError(f"{where}: Ref takes a name, not {name!r}")
        if name == NO_VALUE_REF:
            return NO_VALUE
        if name.startswith("AWS::"):
            if name not in PSEUDO_PARAMETERS:
                raise CommandError(f"{where}: {name} is not a pseudo parameter known here")
            value = self._env.pseudo_parameter(name)
            if value is None:
                raise CommandError(f"{where}: {name} is known only for a stack; {_STACK_FIX}")
            return value
        if name in self._template.parameters:
            return self.parameter(name, where)
        resource_type = self._resource_type(name, f"Ref {name}", where)
        physical_id = self._env.physical_id(name)
        if physical_id is None:
            raise CommandError(
                f"{where}: Ref {name} names a resource of the template ({resource_type}); "
                f"{_STACK_FIX}"
            )
        return physical_id

    def _resource_type(self, logical_id: str, reference: str, where: str) -> str:
        resource = self._template.resources.get(logical_id)
        if not isinstance(resource, Mapping):
            raise CommandError(f"{where}: {reference}: no parameter or resource {logical_id}")
        return str(resource.get("Type", "?"))

    def _get_att(self, argument: object, where: str) -> Any:
        if isinstance(argument, str) and "." in argument:
            argument = argument.split(".", 1)
        if not (isinstance(argument, list) and len(argument) == 2):
            raise CommandError(f"{where}: write Fn::GetAtt as [LogicalId, Attribute]")
        logical_id, attribute = argument[0], self._string(argument[1], where)
        reference = f"Fn::GetAtt {logical_id}.{attribute}"
        resource_type = self._resource_type(str(logical_id), reference, where)
        value = self._env.attribute(str(logical_id), resource_type, attribute)
        if value is None:
            raise CommandError(
                f"{where}: {reference} is an attribute of a resource ({resource_type}); "
                f"{_STACK_FIX}"
            )
        return value

    def _sub(self, argument: object, where: str) -> str:
        variables: Mapping[str, Any] = {}
        if isinstance(argument, list) and len(argument) == 2:
            argument, declared = argument
            if not isinstance(declared, Mapping):
                raise CommandError(f"{where}: its variables are not a map")
            variables = declared
        if not isinstance(argument, str):
            raise CommandError(f"{where}: write Fn::Sub as a string or [string, {{variables}}]")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return self._string(variables[name], f"{where}.{name}")
            if "." in name:
                return self._string(self._get_att(name, where), where)
            return self._string(self._ref(name, where), where)

        return _SUB_VARIABLE.sub(substitute, argument)

    def _join(self, argument: object, where: str) -> str:
        if not (isinstance(argument, list) and len(argument) == 2):
            raise CommandError(f"{where}: write Fn::Join as [delimiter, [values]]")
        delimiter = self._string(argument[0], where)
        items = self._list(argument[1], where)
        return delimiter.join(self._string(item, where) for item in items)

    def _select(self, argument: object, where: str) -> Any:
        if not (isinstance(argument, list) and len(argument) == 2):
            raise CommandError(f"{where}: write Fn::Select as [index, [values]]")
        index_text = self._string(argument[0], where)
        items = self._list(argument[1], where)
        if not index_text.isdigit() or int(index_text) >= len(items):
            raise CommandError(f"{where}: index {index_text} is not in a list of {len(items)}")
        return items[int(index_text)]

    def _split(self, argument: object, where: str) -> list[str]:
        if not (isinstance(argument, list) and len(argument) == 2):
            raise CommandError(f"{where}: write Fn::Split as [delimiter, string]")
        delimiter = self._string(argument[0], where)
        if not delimiter:
            raise CommandError(f"{where}: the delimiter is empty")
        return self._string(argument[1], where).split(delimiter)

    def _if(self, argument: object, where: str) -> Any:
        if not (isinstance(argument, list) and len(argument) == 3):
            raise CommandError(f"{where}: write Fn::If as [condition, if true, if false]")
        chosen = argument[1] if self.condition(argument[0], where) else argument[2]
        return self.resolve(chosen, where)

    def _find_in_map(self, argument: object, where: str) -> Any:
        if not (isinstance(argument, list) and len(argument) in (3, 4)):
            raise CommandError(f"{where}: write Fn::FindInMap as [map, key, key]")
        names = [self._string(item, where) for item in argument[:3]]
        value: Any = self._template.mappings
        for name in names:
            value = value.get(name) if isinstance(value, Mapping) else None
        if value is None:
            default = argument[3] if len(argument) == 4 else None
            if isinstance(default, Mapping) and "DefaultValue" in default:
                return self.resolve(default["DefaultValue"], where)
            raise CommandError(f"{where}: Mappings has no {'.'.join(names)}")
        return value

    def _import_value(self, argument: object, where: str) -> str:
        name = self._string(argument, where)
        value = self._env.export(name)
        if value is None:
            raise CommandError(f"{where}: Fn::ImportValue {name} is an export; {_STACK_FIX}")
        return value

    def _truth(self, value: object, where: str) -> bool:
        """A condition function (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)."""
        if not (isinstance(value, Mapping) and len(value) == 1):
            raise CommandError(f"{where}: is not a condition function")
        name, argument = next(iter(value.items()))
        where = f"{where}.{name}"
        if name == "Condition":
            return self.condition(argument, where)
        if not isinstance(argument, list):
            raise CommandError(f"{where}: takes a list")
        if name == "Fn::Equals" and len(argument) == 2:
            left, right = (self._comparable(self.resolve(item, where)) for item in argument)
            return left == right
        if name == "Fn::Not" and len(argument) == 1:
            return not self._truth(argument[0], where)
        if name == "Fn::And" and 2 <= len(argument) <= 10:
            return all(self._truth(item, f"{where}[{i}]") for i, item in enumerate(argument))
        if name == "Fn::Or" and 2 <= len(argument) <= 10:
            return any(self._truth(item, f"{where}[{i}]") for i, item in enumerate(argument))
        raise CommandError(f"{where}: is not a condition function with the right arguments")

    def _comparable(self, value: object) -> object:
        if isinstance(value, list):
            return [self._comparable(item) for item in value]
        return value if isinstance(value, Mapping) else text(value)

    def _string(self, value: object, where: str) -> str:
        resolved = self.resolve(value, where)
        if isinstance(resolved, Mapping | list) or resolved is NO_VALUE or resolved is None:
            raise CommandError(f"{where}: expected a string, got {resolved!r}")
        return text(resolved)

    def _list(self, value: object, where: str) -> list[Any]:
        resolved = self.resolve(value, where)
        if not isinstance(resolved, list):
            raise CommandError(f"{where}: expected a list, got {resolved!r}")
        return resolved
