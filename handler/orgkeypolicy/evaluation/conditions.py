"""Condition operators, compiled once per policy and evaluated against a request context.

IAM's rules (user guide, "Condition operators" and "Multivalued context keys"): values OR
within a key, keys and operators AND; a negated operator holds when the request value matches
none of the values; a missing key makes a condition false, except negated operators (true),
``...IfExists`` (true) and ``Null``; ``ForAllValues`` is true and ``ForAnyValue`` false when
the key is missing or its values are a null data set (none, or an empty string). Policy
variables work in String and ARN operators only. Whatever the guide leaves undefined (a plain
operator on a multivalued key, a malformed number or date, variables in Bool, which two pages
of the guide describe differently) is ``Unsupported``, never guessed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from orgkeypolicy.evaluation.kms import MULTIVALUED_KEYS
from orgkeypolicy.evaluation.model import Context, Truth, Unsupported, all_of, any_of, negate
from orgkeypolicy.evaluation.patterns import (
    ArnPattern,
    PolicyError,
    Tokens,
    any_wildcard_regex,
    has_wildcards,
    literal,
    parse,
    resolve,
    text_of,
    variable_keys,
    wildcard_regex,
)

ValueTest = Callable[[str, Context], Truth]
"""Does one request value match at least one of the policy's values?"""

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "LessThanEquals": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanEquals": operator.ge,
}
_COMPARISONS = (*_COMPARE, "NotEquals")
# Base operator -> (family, comparison); a negated operator compares like its positive twin.
_OPERATORS: dict[str, tuple[str, str]] = {
    **{
        f"String{name}": ("String", name.replace("Not", ""))
        for name in ("Equals", "NotEquals", "EqualsIgnoreCase", "NotEqualsIgnoreCase")
    },
    "StringLike": ("String", "Like"),
    "StringNotLike": ("String", "Like"),
    **{f"Numeric{name}": ("Numeric", name.replace("Not", "")) for name in _COMPARISONS},
    **{f"Date{name}": ("Date", name.replace("Not", "")) for name in _COMPARISONS},
    "Bool": ("Bool", ""),
    "BinaryEquals": ("Binary", ""),
    "IpAddress": ("Ip", ""),
    "NotIpAddress": ("Ip", ""),
    **{f"Arn{name}": ("Arn", "") for name in ("Equals", "Like", "NotEquals", "NotLike")},
}
_NEGATED = frozenset(
    {
        "StringNotEquals",
        "StringNotEqualsIgnoreCase",
        "StringNotLike",
        "NumericNotEquals",
        "DateNotEquals",
        "NotIpAddress",
        "ArnNotEquals",
        "ArnNotLike",
    }
)
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
# W3C's ISO 8601 profile with a time and a zone; a bare date or year has no zone to read.
_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_EPOCH = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Condition:
    """One key under one operator, as in ``{"StringLike": {"aws:PrincipalArn": [...]}}``."""

    key: str
    """In lower case; ``name`` is the policy's spelling."""
    name: str
    problem: str | None = None
    """Why the evaluator cannot decide it, whatever the request."""
    references: frozenset[str] = frozenset()
    set_operator: str | None = None
    if_exists: bool = False
    negated: bool = False
    test: ValueTest | None = None
    """None for ``Null``, whose policy values are in ``null_values``."""
    null_values: frozenset[bool] = frozenset()

    def evaluate(self, context: Context) -> Truth:
        if self.problem is not None:
            return Unsupported((self.problem,))
        values = context.get(self.key, _MISSING)
        if values is _MISSING:
            return self._when_missing()
        if self.test is None:
            if values is None or (values and values != ("",)):
                return False in self.null_values
            return Unsupported((f"Null on {self.name}, whose value is empty",))
        if values is None:
            return Unsupported((f"the request's {self.name} is not known",))
        if not values or (self.set_operator and values == ("",)):
            if self.set_operator and not self.if_exists:
                return self.set_operator == "ForAllValues"
            return Unsupported((f"{self.name} is present with no value",))
        if self.set_operator is None:
            if len(values) > 1 or self.key in MULTIVALUED_KEYS:
                return Unsupported(
                    (f"{self.name} is multivalued; a plain operator on it has no defined meaning",)
                )
            result = self.test(values[0], context)
            return negate(result) if self.negated else result
        results = (
            negate(self.test(value, context)) if self.negated else self.test(value, context)
            for value in values
        )
        return any_of(results) if self.set_operator == "ForAnyValue" else all_of(results)

    def _when_missing(self) -> Truth:
        if self.test is None:
            return True in self.null_values
        if self.if_exists or self.set_operator == "ForAllValues":
            return True
        if self.set_operator == "ForAnyValue":
            return False
        return self.negated


_MISSING: tuple[str, ...] = ("\0missing",)


def compile_block(block: object, *, variables: bool) -> tuple[Condition, ...]:
    """Every condition of a statement's Condition element; raise PolicyError for a block that is
    not a map of maps."""
    if not isinstance(block, Mapping):
        raise PolicyError(f"Condition is {type(block).__name__}, not a map")
    compiled: list[Condition] = []
    for op_name, entries in block.items():
        if not isinstance(entries, Mapping) or not entries:
            raise PolicyError(f"Condition operator {op_name} holds no map of keys")
        seen: dict[str, list[str]] = {}
        for key in entries:
            seen.setdefault(str(key).lower(), []).append(str(key))
        for key, raw in entries.items():
            spellings = seen[str(key).lower()]
            if len(spellings) > 1:
                problem = (
                    f"{op_name} names one key as {' and '.join(spellings)}: IAM's grammar "
                    "allows a key once and key names ignore case"
                )
                compiled.append(_unsupported(str(key), problem))
                continue
            try:
                compiled.append(_compile(str(op_name), str(key), raw, variables=variables))
            except PolicyError as error:
                compiled.append(_unsupported(str(key), str(error)))
    return tuple(compiled)


def _unsupported(key: str, problem: str) -> Condition:
    return Condition(key.lower(), key, problem)


def _compile(op_name: str, key: str, raw: object, *, variables: bool) -> Condition:
    set_operator, _, base = op_name.rpartition(":")
    if set_operator not in ("", "ForAnyValue", "ForAllValues"):
        raise PolicyError(f"condition operator {op_name} is not an IAM operator")
    if_exists = base.endswith("IfExists") and base != "IfExists"
    base = base.removesuffix("IfExists") if if_exists else base
    values = _policy_values(op_name, raw)
    lowered = key.lower()
    if base == "Null":
        if set_operator or if_exists:
            raise PolicyError(f"condition operator {op_name}: Null takes no qualifier")
        if any(value not in ("true", "false") for value in values):
            raise PolicyError(f"Null on {key} takes true or false, not {values}")
        return Condition(
            lowered,
            key,
            references=frozenset({lowered}),
            null_values=frozenset(value == "true" for value in values),
        )
    test, references = _value_test(op_name, base, values, variables=variables)
    return Condition(
        lowered,
        key,
        references=frozenset({lowered}) | references,
        set_operator=set_operator or None,
        if_exists=if_exists,
        negated=base in _NEGATED,
        test=test,
    )


def _policy_values(op_name: str, raw: object) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise PolicyError(f"{op_name} lists no values")
    values = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, int | float | str):
            values.append(str(item))
        else:
            raise PolicyError(f"{op_name} value {item!r} is not a string, number or boolean")
    return values


def _value_test(
    op_name: str, base: str, values: list[str], *, variables: bool
) -> tuple[ValueTest, frozenset[str]]:
    if base not in _OPERATORS:
        raise PolicyError(f"condition operator {op_name} is not an IAM operator")
    family, comparison = _OPERATORS[base]
    if family == "String":
        tokens = [parse(value, variables=variables) for value in values]
        refs = frozenset().union(*map(variable_keys, tokens))
        if comparison == "Like":
            return _like_test(tokens), refs
        return _equals_test(tokens, fold=comparison == "EqualsIgnoreCase"), refs
    if family == "Arn":
        patterns = [ArnPattern(parse(v, variables=variables), v) for v in values]
        refs = frozenset().union(*(p.references for p in patterns))
        return _arn_test(patterns), refs
    if family == "Numeric":
        return _ordered_test(values, _COMPARE[comparison], _number, "a number"), frozenset()
    if family == "Date":
        return _ordered_test(values, _COMPARE[comparison], _date, "a date"), frozenset()
    if family == "Bool":
        return _bool_test(values, variables=variables), frozenset()
    if family == "Binary":
        return _binary_test(values), frozenset()
    return _ip_test(values), frozenset()


def _equals_test(tokens: list[Tokens], *, fold: bool) -> ValueTest:
    static = frozenset(_fold(text_of(t), fold) for t in map(literal, tokens) if t is not None)
    dynamic = tuple(t for t in tokens if literal(t) is None)

    def test(value: str, context: Context) -> Truth:
        value = _fold(value, fold)
        if value in static:
            return True
        unknown: list[Truth] = []
        for pattern in dynamic:
            resolved = resolve(pattern, context)
            if isinstance(resolved, Unsupported):
                unknown.append(resolved)
            elif resolved is not None and _fold(text_of(resolved), fold) == value:
                return True
        return any_of(unknown)

    return test


def _fold(text: str, fold: bool) -> str:
    return text.lower() if fold else text


def _like_test(tokens: list[Tokens]) -> ValueTest:
    static = [t for t in map(literal, tokens) if t is not None]
    exact = frozenset(text_of(t) for t in static if not has_wildcards(t))
    wild = [t for t in static if has_wildcards(t)]
    regex = any_wildcard_regex(wild) if wild else None
    dynamic = tuple(t for t in tokens if literal(t) is None)

    def test(value: str, context: Context) -> Truth:
        if value in exact or (regex is not None and regex.fullmatch(value)):
            return True
        unknown: list[Truth] = []
        for pattern in dynamic:
            resolved = resolve(pattern, context)
            if isinstance(resolved, Unsupported):
                unknown.append(resolved)
            elif resolved is None:
                continue
            elif has_wildcards(resolved):
                if wildcard_regex(resolved).fullmatch(value):
                    return True
            elif text_of(resolved) == value:
                return True
        return any_of(unknown)

    return test


def _arn_test(patterns: list[ArnPattern]) -> ValueTest:
    def test(value: str, context: Context) -> Truth:
        return any_of(pattern.matches(value, context) for pattern in patterns)

    return test


def _number(text: str) -> Decimal | None:
    return Decimal(text) if _NUMBER.fullmatch(text) else None


def _date(text: str) -> datetime | None:
    if _DATE.fullmatch(text):
        return datetime.fromisoformat(text)
    # Four digits read as a year (ISO 8601) or as seconds (epoch) alike.
    if _EPOCH.fullmatch(text) and len(text) != 4:
        try:
            return datetime.fromtimestamp(int(text), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _ordered_test(
    values: list[str],
    compare: Callable[[object, object], bool],
    convert: Callable[[str], object | None],
    what: str,
) -> ValueTest:
    bounds = []
    for value in values:
        bound = convert(value)
        if bound is None:
            raise PolicyError(f"condition value {value!r} is not {what} the evaluator reads")
        bounds.append(bound)

    def test(value: str, context: Context) -> Truth:
        request = convert(value)
        if request is None:
            return Unsupported((f"request value {value!r} is not {what} the evaluator reads",))
        return any(compare(request, bound) for bound in bounds)

    return test


def _bool_test(values: list[str], *, variables: bool) -> ValueTest:
    if variables and any("${" in value for value in values):
        raise PolicyError("a policy variable in Bool (the IAM guide contradicts itself on it)")
    wanted = frozenset(values)
    if not wanted <= {"true", "false"}:
        raise PolicyError(f"Bool takes true or false, not {values}")

    def test(value: str, context: Context) -> Truth:
        if value not in ("true", "false"):
            return Unsupported((f"request value {value!r} is not true or false",))
        return value in wanted

    return test


def _binary_test(values: list[str]) -> ValueTest:
    wanted = frozenset(_base64(value) for value in values)
    if None in wanted:
        raise PolicyError(f"BinaryEquals takes base-64 values, not {values}")

    def test(value: str, context: Context) -> Truth:
        decoded = _base64(value)
        if decoded is None:
            return Unsupported((f"request value {value!r} is not base-64",))
        return decoded in wanted

    return test


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _ip_test(values: list[str]) -> ValueTest:
    try:
        # A bare address is its own /32 or /128; host bits past the prefix are ignored.
        networks = [ipaddress.ip_network(value, strict=False) for value in values]
    except ValueError as error:
        raise PolicyError(f"IP address condition value: {error}") from None

    def test(value: str, context: Context) -> Truth:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return Unsupported((f"request value {value!r} is not an IP address",))
        return any(address in network for network in networks)

    return test
