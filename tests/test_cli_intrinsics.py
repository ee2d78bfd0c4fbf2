"""CloudFormation intrinsic functions evaluated over plain data, with a fake environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.intrinsics import NO_VALUE, Resolver, Template, delivered
from orgkeypolicy.cli.lookups import key_arn

KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
PSEUDO = {
    "AWS::AccountId": "111122223333",
    "AWS::Region": "eu-west-1",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


@dataclass
class FakeEnvironment:
    """The account alone (``deployed=False``), or a deployed stack too."""

    deployed: bool = False
    resources: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)

    def pseudo_parameter(self, name: str) -> str | None:
        stack = {"AWS::StackName": "consumer", "AWS::StackId": "arn:stack"} if self.deployed else {}
        return {**PSEUDO, **stack}.get(name)

    def deployed_parameter(self, name: str) -> str | None:
        return self.parameters.get(name)

    def physical_id(self, logical_id: str) -> str | None:
        return self.resources[logical_id] if self.deployed else None

    def attribute(self, logical_id: str, resource_type: str, attribute: str) -> str | None:
        if not self.deployed:
            return None
        assert (resource_type, attribute) == ("AWS::KMS::Key", "Arn")
        return key_arn("aws", "eu-west-1", "111122223333", self.resources[logical_id])

    def export(self, name: str) -> str | None:
        return self.exports[name] if self.deployed else None


OFFLINE = FakeEnvironment()
STACK = FakeEnvironment(
    deployed=True,
    resources={"LogsKey": KEY_ID},
    exports={"reader-role": "arn:aws:iam::111122223333:role/reader"},
)


def resolve(value: object, env: FakeEnvironment = OFFLINE, **template: Any) -> Any:
    resources = template.pop("resources", {"Key": {"Type": "AWS::KMS::Key"}})
    resolver = Resolver(Template(resources=resources, **template), {}, env)
    return resolver.resolve(value, "Properties")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Ref": "Key"}, "Properties.Ref: Ref Key names a resource of the template"),
        ({"Fn::ImportValue": "token"}, "Fn::ImportValue token is an export; give --stack"),
        ({"Ref": "AWS::StackName"}, "AWS::StackName is known only for a stack; give --stack"),
        ({"Fn::GetAZs": ""}, "Fn::GetAZs is not evaluated here; write its value instead"),
        ({"Ref": "Missing"}, "Ref Missing: no parameter or resource Missing"),
        ({"Fn::Select": ["3", ["a"]]}, "index 3 is not in a list of 1"),
        ({"Fn::FindInMap": ["M", "a", "b"]}, "Mappings has no M.a.b"),
        ({"Fn::If": ["Nope", "a", "b"]}, "no condition 'Nope' in Conditions"),
        ({"Fn::Join": [",", "a"]}, "expected a list"),
    ],
)
def test_unresolvable_references_are_refused(value: object, message: str) -> None:
    with pytest.raises(CommandError) as raised:
        resolve(value)
    assert message in str(raised.value)


def test_references_through_a_stack() -> None:
    stack = FakeEnvironment(deployed=True, resources={"Key": KEY_ID}, exports={"token": "arn:x"})
    assert resolve({"Ref": "Key"}, stack) == KEY_ID
    assert resolve({"Fn::ImportValue": "token"}, stack) == "arn:x"
    assert resolve({"Fn::Sub": "${AWS::StackName}/${Key.Arn}"}, stack) == (
        f"consumer/arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}"
    )


def test_no_value_removes_the_key_or_item() -> None:
    no_value = {"Ref": "AWS::NoValue"}
    assert resolve({"A": no_value, "B": ["x", no_value, "y"]}) == {"B": ["x", "y"]}
    assert resolve(no_value) is NO_VALUE


def test_sub_forms_and_literals() -> None:
    assert (
        resolve({"Fn::Sub": ["${a}-${b}", {"a": "1", "b": {"Ref": "AWS::Region"}}]})
        == "1-eu-west-1"
    )
    assert resolve({"Fn::Sub": "${!Literal}:${AWS::AccountId}"}) == "${Literal}:111122223333"


def test_find_in_map_default_value() -> None:
    mappings = {"M": {"a": {"b": "found"}}}
    assert resolve({"Fn::FindInMap": ["M", "a", "b"]}, mappings=mappings) == "found"
    assert (
        resolve({"Fn::FindInMap": ["M", "x", "b", {"DefaultValue": "d"}]}, mappings=mappings) == "d"
    )


def test_conditions_that_refer_to_themselves_are_refused() -> None:
    conditions = {"A": {"Condition": "B"}, "B": {"Fn::Not": [{"Condition": "A"}]}}
    with pytest.raises(CommandError, match="refers to itself"):
        resolve({"Fn::If": ["A", "x", "y"]}, conditions=conditions)


# A condition tree over parameters P0..P3 (each "yes" or "no"): leaves compare one with "yes".
conditions_trees = st.recursive(
    st.integers(min_value=0, max_value=3).map(lambda i: ("leaf", i)),
    lambda inner: st.one_of(
        inner.map(lambda child: ("not", child)),
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)


def _condition_function(tree: Any) -> Any:
    kind = tree[0]
    if kind == "leaf":
        return {"Fn::Equals": [{"Ref": f"P{tree[1]}"}, "yes"]}
    if kind == "not":
        return {"Fn::Not": [_condition_function(tree[1])]}
    return {f"Fn::{kind.title()}": [_condition_function(child) for child in tree[1]]}


def _truth(tree: Any, values: list[bool]) -> bool:
    kind = tree[0]
    if kind == "leaf":
        return bool(values[tree[1]])
    if kind == "not":
        return not _truth(tree[1], values)
    results = [_truth(child, values) for child in tree[1]]
    return all(results) if kind == "and" else any(results)


@settings(max_examples=80, deadline=None)
@given(conditions_trees, st.lists(st.booleans(), min_size=4, max_size=4))
def test_conditions_evaluate_like_boolean_logic(tree: Any, values: list[bool]) -> None:
    parameters = {
        f"P{i}": {"Type": "String", "Default": "yes" if v else "no"} for i, v in enumerate(values)
    }
    conditions = {"Tree": _condition_function(tree), "Named": {"Condition": "Tree"}}
    chosen = resolve(
        {"Fn::If": ["Named", "then", "else"]}, parameters=parameters, conditions=conditions
    )
    assert chosen == ("then" if _truth(tree, values) else "else")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30), st.sampled_from([",", "|", "::", " "]))
def test_join_undoes_split(value: str, delimiter: str) -> None:
    split = {"Fn::Split": [delimiter, value]}
    assert resolve({"Fn::Join": [delimiter, split]}) == value
    assert resolve(split) == value.split(delimiter)


names = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True)
literals = st.text(alphabet=st.characters(blacklist_characters="$"), max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(literals, names, literals), min_size=1, max_size=4), st.data())
def test_sub_replaces_each_variable(parts: list[tuple[str, str, str]], data: st.DataObject) -> None:
    variables = {name: data.draw(literals) for _, name, _ in parts}
    template = "".join(f"{before}${{{name}}}{after}" for before, name, after in parts)
    expected = "".join(f"{before}{variables[name]}{after}" for before, name, after in parts)
    assert resolve({"Fn::Sub": [template, variables]}) == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=5), min_size=1, max_size=6), st.data())
def test_select_picks_the_index(items: list[str], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(items) - 1))
    assert resolve({"Fn::Select": [str(index), items]}) == items[index]


def test_delivered_turns_scalars_into_strings() -> None:
    value = {"A": True, "B": [1, 2.5, False], "C": {"D": "x"}, "E": None}
    assert delivered(value) == {"A": "true", "B": ["1", "2.5", "false"], "C": {"D": "x"}, "E": None}
