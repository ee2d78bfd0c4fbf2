"""Where ``plan`` gets its Properties: a properties file, or a resource of a template.

Files are JSON or YAML; cfn-flip's loader reads CloudFormation's short tags (``!Ref``,
``!Sub``, …) as their long form, so a template is plain data for ``intrinsics``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import yaml
from cfn_tools import load_json, load_yaml

from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.intrinsics import CUSTOM_TYPES, Environment, Resolver, Template, delivered


class Assignment(click.ParamType):
    """``KEY=VALUE`` (the value may hold ``=`` and be empty)."""

    name = "KEY=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, equals, rest = str(value).partition("=")
        if not equals or not key.strip():
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key.strip(), rest


ASSIGNMENT = Assignment()


def load_document(path: Path) -> Any:
    """A JSON or YAML file; errors name the file and the line."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"{path}: cannot be read ({error})") from error
    try:
        if content.lstrip().startswith(("{", "[")):
            document = load_json(content)
        else:
            document = load_yaml(content)
    except json.JSONDecodeError as error:
        raise CommandError(f"{path}: line {error.lineno}: {error.msg}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise CommandError(f"{path}: {line}{problem}") from error
    if document is None:
        raise CommandError(f"{path}: is empty")
    return _plain(document)


def _plain(value: Any) -> Any:
    """cfn-flip's ordered maps as plain dicts (which keep their order too)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def properties_from_file(path: Path) -> dict[str, Any]:
    """The Properties map held by ``path``, as CloudFormation would deliver it."""
    document = load_document(path)
    if isinstance(document, Mapping) and (
        "Resources" in document or "AWSTemplateFormatVersion" in document
    ):
        raise CommandError(
            f"{path}: is a whole template, not a Properties map; "
            f"use --template {path} --logical-id ID"
        )
    if isinstance(document, Mapping) and "Type" in document and "Properties" in document:
        raise CommandError(f"{path}: is a resource; keep only its Properties map")
    if not isinstance(document, Mapping):
        raise CommandError(f"{path}: does not hold a map of properties")
    _refuse_functions(document, path, "Properties")
    return dict(delivered({key: value for key, value in document.items() if key != "ServiceToken"}))


def _refuse_functions(value: object, path: Path, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "Ref" or str(key).startswith("Fn::"):
                raise CommandError(
                    f"{path}: {where} holds {key}; a properties file holds plain values: "
                    f"use --template FILE --logical-id ID to resolve references"
                )
            _refuse_functions(item, path, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_functions(item, path, f"{where}[{index}]")


def properties_from_template(
    path: Path,
    logical_id: str | None,
    parameters: Sequence[tuple[str, str]],
    env: Environment,
) -> dict[str, Any]:
    """The resolved Properties of resource ``logical_id`` of the template at ``path``."""
    template = Template.from_document(load_document(path), str(path))
    if logical_id is None:
        found = ", ".join(template.custom_resources()) or "none"
        raise CommandError(
            f"--logical-id is required with --template (OrgKeyPolicy resources in {path}: {found})"
        )
    return resource_properties(template, logical_id, parameter_values(parameters), env)


def parameter_values(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``--parameter`` values by name; a name given twice is a mistake."""
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in values and values[key] != value:
            raise CommandError(f"--parameter {key}: given twice ({values[key]!r}, {value!r})")
        values[key] = value
    return values


def resource_properties(
    template: Template, logical_id: str, given: Mapping[str, str], env: Environment
) -> dict[str, Any]:
    """The resolved Properties of ``logical_id``, as CloudFormation would deliver them.

    ``ServiceToken`` is left out: it only routes the request (often an ``Fn::ImportValue``)
    and says nothing about the grant.
    """
    resource = template.resources.get(logical_id)
    where = f"Resources.{logical_id}"
    if not isinstance(resource, Mapping):
        found = ", ".join(template.custom_resources()) or "none"
        raise CommandError(
            f"--logical-id {logical_id}: no such resource (OrgKeyPolicy resources: {found})"
        )
    if resource.get("Type") not in CUSTOM_TYPES:
        raise CommandError(
            f"{where}: is a {resource.get('Type')}, not a {CUSTOM_TYPES[0]} resource"
        )
    resolver = Resolver(template, given, env)
    condition = resource.get("Condition")
    if condition is not None and not resolver.condition(condition, f"{where}.Condition"):
        raise CommandError(
            f"{where}: is not created with these parameters (its Condition {condition} is false)"
        )
    properties = resource.get("Properties", {})
    if not isinstance(properties, Mapping):
        raise CommandError(f"{where}.Properties: is not a map")
    kept = {key: value for key, value in properties.items() if key != "ServiceToken"}
    resolved = resolver.resolve(kept, f"{where}.Properties")
    return dict(delivered(resolved))
