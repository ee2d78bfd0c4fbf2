"""The Principal, Action and Resource elements (and their Not- forms) of a statement.

Principals are matched by level: an account principal (``arn:…:root`` or the bare ID) names
every identity in the account; a role names the role and its sessions (by name: role names
are unique in an account, and a session ARN does not show the role's path); a session, user or
federated user names only itself; ``"*"`` and ``{"AWS": "*"}`` name everyone. A unique ID
(``AROA…``) is what IAM shows for a principal that was deleted, so it names no one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from orgkeypolicy.evaluation.model import (
    Context,
    Identity,
    Kind,
    Level,
    Truth,
    Unsupported,
    account_level,
    any_of,
    negate,
    parse_identity,
)
from orgkeypolicy.evaluation.patterns import (
    ArnPattern,
    PolicyError,
    any_wildcard_regex,
    parse,
)

_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)
_UNIQUE_ID = re.compile(r"A(?:ROA|IDA)[A-Z0-9]{12,}", re.ASCII)


def strings(element: str, value: object) -> list[str]:
    """A policy element's value as a non-empty list of strings."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) for item in items):
        raise PolicyError(f"{element} is {value!r}, not a string or a list of strings")
    return items  # type: ignore[return-value]


class PrincipalMatcher:
    """A Principal or NotPrincipal element."""

    __slots__ = ("everyone", "listed", "negated", "problems")

    def __init__(self, element: str, value: object) -> None:
        self.negated = element == "NotPrincipal"
        self.everyone = value == "*"
        self.listed: set[Level] = set()
        self.problems: list[str] = []
        if self.everyone:
            return
        if not isinstance(value, dict) or not value:
            raise PolicyError(f'{element} is {value!r}, not "*" or a map of principals')
        for kind, entries in value.items():
            for entry in strings(f"{element}.{kind}", entries):
                self._add(element, kind, entry)

    def _add(self, element: str, kind: str, entry: str) -> None:
        if kind == "AWS" and entry == "*":
            self.everyone = True
        elif kind == "AWS" and _ACCOUNT.fullmatch(entry):
            self.listed.add(account_level(None, entry))
        elif kind == "AWS" and _UNIQUE_ID.fullmatch(entry):
            return
        elif kind in ("AWS", "Service") and "*" not in entry and "?" not in entry:
            level = _named_level(entry, service=kind == "Service")
            if level is None:
                self.problems.append(f"{element} {kind} {entry!r} is no principal of that kind")
            else:
                self.listed.add(level)
        else:
            self.problems.append(f"{element} {kind} {entry!r}")

    def _names(self, level: Level) -> bool:
        return level in self.listed or (
            level[0] == "account" and account_level(None, level[2]) in self.listed
        )

    def match(self, identity: Identity) -> tuple[Truth, Truth]:
        """Whether the statement applies to the principal, and whether it applies "directly":
        through ``*`` or a level below the account, not only through the account."""
        if self.negated:
            return self._excluded(identity)
        if self.everyone:
            return True, True
        named = [level for level in identity.levels if self._names(level)]
        if any(level[0] != "account" for level in named):
            return True, True
        unknown = Unsupported(tuple(self.problems)) if self.problems else None
        if named:
            # An entry the evaluator cannot read might name the principal directly too.
            return True, unknown or False
        return (unknown, True) if unknown else (False, False)

    def _excluded(self, identity: Identity) -> tuple[Truth, Truth]:
        """NotPrincipal: IAM's examples deny every principal whose own ARN is not listed (a
        session even when its role is), and say IAM "might" also check the account and the
        role above it, so an unlisted level above a listed principal is undecidable."""
        if self.everyone:
            return False, False
        *above, own = identity.levels
        if identity.kind is Kind.ROLE:
            # A role acts through sessions whose names are not known here.
            above, own = [*above, own], ("session", *own[1:])
            if any(level[:4] == own for level in self.listed if level[0] == "session"):
                return Unsupported(("NotPrincipal names some sessions of the role",)), True
        if not self._names(own):
            if self.problems:
                return Unsupported(tuple(self.problems)), True
            return True, True
        if all(self._names(level) for level in above):
            return False, False
        return Unsupported(("NotPrincipal names the principal but not its account or role",)), True


def _named_level(entry: str, *, service: bool) -> Level | None:
    """The level a Principal entry names: the narrowest of its identity's levels."""
    try:
        identity = parse_identity(entry)
    except ValueError:
        return None
    return identity.levels[-1] if (identity.kind is Kind.SERVICE) is service else None


class ActionMatcher:
    """An Action or NotAction element: ``*`` and ``?`` wildcards, case-insensitive."""

    __slots__ = ("negated", "regex")

    def __init__(self, element: str, value: object) -> None:
        patterns = strings(element, value)
        for pattern in patterns:
            if pattern != "*" and ":" not in pattern:
                raise PolicyError(f"{element} {pattern!r} is not service:action")
        self.negated = element == "NotAction"
        self.regex = any_wildcard_regex([(p.lower(),) for p in patterns])

    def match(self, action: str) -> bool:
        """``action`` in lower case."""
        return (self.regex.fullmatch(action) is None) is self.negated


class ResourceMatcher:
    """A Resource or NotResource element; in a key policy ``"*"`` is the key itself."""

    __slots__ = ("any", "negated", "patterns", "references")

    def __init__(self, element: str, value: object, *, variables: bool) -> None:
        texts = strings(element, value)
        self.negated = element == "NotResource"
        self.any = "*" in texts
        self.patterns: Sequence[ArnPattern] = [
            ArnPattern(parse(text, variables=variables), text, variables_in=range(5, 6))
            for text in texts
            if text != "*"
        ]
        self.references = frozenset().union(*(p.references for p in self.patterns))

    def match(self, resource: str | None, context: Context) -> Truth:
        """``resource`` None: a key whose ARN is not known."""
        if self.any:
            result: Truth = True
        elif resource is None:
            result = Unsupported(
                tuple(f"Resource {p.text!r} needs the key ARN" for p in self.patterns)
            )
        else:
            result = any_of(pattern.matches(resource, context) for pattern in self.patterns)
        return negate(result) if self.negated else result
