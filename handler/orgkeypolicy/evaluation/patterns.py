"""Policy strings: policy variables, ``*``/``?`` wildcards and ARN components.

A policy string is parsed once into tokens: plain text (where ``*`` and ``?`` are wildcards
for the operators that take them), ``Lit`` text that is always literal (``${*}``, ``${?}``,
``${$}`` and every substituted value), and ``Var`` references. Variables exist only under
policy Version 2012-10-17; otherwise ``${...}`` is plain text. A variable whose key is absent,
empty or multivalued (and has no default) leaves the string unresolved: it matches nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from orgkeypolicy.evaluation.kms import MULTIVALUED_KEYS
from orgkeypolicy.evaluation.model import Context, Truth, Unsupported


class PolicyError(ValueError):
    """A policy construct the evaluator does not implement; its text goes into ``unsupported``."""


class Lit(str):
    """Text that is literal even where wildcards apply."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Var:
    key: str
    default: str | None


Token = str | Var
Tokens = tuple[Token, ...]
Resolved = tuple[str, ...]

_SPECIAL = {"*": Lit("*"), "?": Lit("?"), "$": Lit("$")}
_KEY = re.compile(r"[A-Za-z0-9_.:/@+=,-]+", re.ASCII)


def parse(text: str, *, variables: bool) -> Tokens:
    """Tokens of a policy string; raise PolicyError for a malformed ``${...}``."""
    if not variables or "${" not in text:
        return (text,)
    tokens: list[Token] = []
    position = 0
    while (start := text.find("${", position)) >= 0:
        if start > position:
            tokens.append(text[position:start])
        token, position = _variable(text, start + 2)
        tokens.append(token)
    if position < len(text):
        tokens.append(text[position:])
    return tuple(tokens)


def _variable(text: str, position: int) -> tuple[Token, int]:
    end = len(text)
    stop = position
    while stop < end and text[stop] not in ",}":
        stop += 1
    if stop == end:
        raise PolicyError(f"policy variable in {text!r} is not closed with '}}'")
    name = text[position:stop].strip()
    if text[stop] == "}":
        if name in _SPECIAL:
            return _SPECIAL[name], stop + 1
        return Var(_key(name, text), None), stop + 1
    default, after = _default(text, stop + 1)
    return Var(_key(name, text), default), after


def _default(text: str, position: int) -> tuple[str, int]:
    """``'value'`` (with ``''`` for a quote) then ``}``, spaces allowed around it."""
    end = len(text)
    while position < end and text[position] == " ":
        position += 1
    if position == end or text[position] != "'":
        raise PolicyError(f"default value of a policy variable in {text!r} is not quoted")
    chars: list[str] = []
    position += 1
    while True:
        quote = text.find("'", position)
        if quote < 0:
            raise PolicyError(f"default value of a policy variable in {text!r} is not closed")
        chars.append(text[position:quote])
        if text.startswith("''", quote):
            chars.append("'")
            position = quote + 2
            continue
        position = quote + 1
        break
    while position < end and text[position] == " ":
        position += 1
    if position == end or text[position] != "}":
        raise PolicyError(f"policy variable in {text!r} is not closed with '}}'")
    return "".join(chars), position + 1


def _key(name: str, text: str) -> str:
    if not _KEY.fullmatch(name):
        raise PolicyError(f"policy variable ${{{name}}} in {text!r} names no condition key")
    return name.lower()


def literal(tokens: Tokens) -> Resolved | None:
    """The tokens of a string without variables; None when it has some."""
    texts = tuple(token for token in tokens if isinstance(token, str))
    return texts if len(texts) == len(tokens) else None


def variable_keys(tokens: Tokens) -> frozenset[str]:
    return frozenset(token.key for token in tokens if isinstance(token, Var))


def resolve(tokens: Tokens, context: Context) -> Resolved | Unsupported | None:
    """The tokens with every variable substituted (as literal text); None when one has no
    value and no default."""
    resolved: list[str] = []
    for token in tokens:
        if not isinstance(token, Var):
            resolved.append(token)
            continue
        values = context.get(token.key, ())
        if values is None:
            return Unsupported((f"policy variable ${{{token.key}}} has no known value",))
        if len(values) == 1 and token.key not in MULTIVALUED_KEYS:
            resolved.append(Lit(values[0]))
        elif token.default is not None:
            resolved.append(Lit(token.default))
        else:
            return None
    return tuple(resolved)


def has_wildcards(tokens: Resolved | Tokens) -> bool:
    return any(
        isinstance(token, str) and not isinstance(token, Lit) and ("*" in token or "?" in token)
        for token in tokens
    )


def text_of(tokens: Resolved) -> str:
    return "".join(tokens)


def _regex_source(tokens: Resolved) -> str:
    parts: list[str] = []
    for token in tokens:
        if isinstance(token, Lit):
            parts.append(re.escape(token))
            continue
        for char in token:
            parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return "".join(parts)


def wildcard_regex(tokens: Resolved) -> re.Pattern[str]:
    """The whole-string matcher of a ``*``/``?`` pattern."""
    # Keyed by the regex, not the tokens: Lit("*") == "*", yet one is literal.
    return _compile(_regex_source(tokens))


def any_wildcard_regex(patterns: list[Resolved]) -> re.Pattern[str]:
    """One matcher for several static patterns: ``fullmatch`` tries each alternative."""
    return _compile("|".join(f"(?:{_regex_source(p)})" for p in patterns))


@lru_cache(maxsize=8192)
def _compile(source: str) -> re.Pattern[str]:
    return re.compile(source, re.DOTALL)


class ArnPattern:
    """An ARN pattern matched component by component: a wildcard never spans a colon, except in
    the resource part, which takes everything after the fifth colon (IAM: ArnLike, and the
    Resource element)."""

    __slots__ = ("components", "references", "text")

    def __init__(self, tokens: Tokens, text: str, *, variables_in: range = range(6)) -> None:
        components = _split_arn(tokens)
        if components is None:
            raise PolicyError(f"{text!r} is not an ARN (arn:partition:service:region:account:…)")
        for index, component in enumerate(components):
            if index not in variables_in and variable_keys(component):
                raise PolicyError(f"{text!r} has a policy variable before the resource part")
        self.components = components
        self.references = frozenset().union(*map(variable_keys, components))
        self.text = text

    def matches(self, arn: str, context: Context) -> Truth:
        parts = arn.split(":", 5)
        if len(parts) != 6:
            return Unsupported((f"request value {arn!r} is not an ARN",))
        for component, part in zip(self.components, parts, strict=True):
            resolved = resolve(component, context)
            if resolved is None:
                return False
            if isinstance(resolved, Unsupported):
                return resolved
            if has_wildcards(resolved):
                if not wildcard_regex(resolved).fullmatch(part):
                    return False
            elif text_of(resolved) != part:
                return False
        return True


def _split_arn(tokens: Tokens) -> tuple[Tokens, ...] | None:
    components: list[list[Token]] = [[]]
    for token in tokens:
        if isinstance(token, Var | Lit) or len(components) == 6:
            components[-1].append(token)
            continue
        pieces = token.split(":", 6 - len(components))
        components[-1].append(pieces[0])
        components.extend([piece] for piece in pieces[1:])
    if len(components) != 6:
        return None
    return tuple(tuple(part for part in component if part != "") for component in components)
