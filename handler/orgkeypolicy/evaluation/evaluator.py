"""Compile a policy once; decide requests against it, one at a time or as a matrix.

For a principal, what can depend on it (its Principal match, the conditions, a Resource with
variables) is computed once per statement; what depends only on the action (Action matching)
once per policy and action. The per-action answers for one set of per-statement results are
cached, so the thousands of principals of an organization that a policy treats alike cost
one decision each, not one per action. Conditions are re-evaluated per action only when the
context holds keys a KMS request carries for some actions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from orgkeypolicy.evaluation.conditions import Condition, compile_block
from orgkeypolicy.evaluation.elements import ActionMatcher, PrincipalMatcher, ResourceMatcher
from orgkeypolicy.evaluation.kms import SCOPE_DESCRIBED_ACTIONS, action_scope
from orgkeypolicy.evaluation.model import (
    Answer,
    Context,
    Decision,
    Identity,
    Principal,
    Truth,
    Unsupported,
    all_of,
    normalise_context,
)
from orgkeypolicy.evaluation.patterns import PolicyError

_VERSIONS = {"2012-10-17": True, "2008-10-17": False}
_ELEMENTS = frozenset(
    {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction"}
    | {"Resource", "NotResource", "Condition"}
)


@dataclass(frozen=True, slots=True)
class _Statement:
    label: str
    allow: bool
    principal: PrincipalMatcher | None
    action: ActionMatcher | None
    resource: ResourceMatcher | None
    conditions: tuple[Condition, ...]
    problems: tuple[str, ...]
    """Why an element could not be compiled; the statement is then undecidable."""
    references: frozenset[str]
    """The context keys its conditions and Resource read."""


@dataclass
class CompiledPolicy:
    """A policy ready for evaluation: a key policy, or with ``identity`` an IAM identity policy
    (no Principal element; the principal is whoever it is attached to)."""

    statements: tuple[_Statement, ...]
    identity: bool
    problems: tuple[str, ...]
    _actions: dict[str, tuple[Truth, ...]] = field(default_factory=dict, repr=False)

    def action_truths(self, action: str) -> tuple[Truth, ...]:
        """Per statement: does its Action/NotAction cover ``action`` (lower case)?"""
        cached = self._actions.get(action)
        if cached is None:
            cached = tuple(
                Unsupported(s.problems) if s.action is None else s.action.match(action)
                for s in self.statements
            )
            self._actions[action] = cached
        return cached


def compile_policy(policy: Mapping[str, Any], *, identity: bool = False) -> CompiledPolicy:
    """Compile a policy document. Constructs the evaluator does not implement are kept, per
    statement, as reasons: only answers they could change become Unknown."""
    problems: list[str] = []
    version = policy.get("Version")
    variables = _VERSIONS.get(version, False) if version is not None else False
    if version is not None and version not in _VERSIONS:
        problems.append(f"Version {version!r} is not 2012-10-17 or 2008-10-17")
    raw = policy.get("Statement")
    raw_statements = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(raw_statements, list):
        problems.append("Statement is not a statement or a list of statements")
        raw_statements = []
    statements = tuple(
        _compile_statement(index, statement, identity=identity, variables=variables)
        for index, statement in enumerate(raw_statements)
    )
    return CompiledPolicy(statements, identity, tuple(problems))


def _compile_statement(index: int, raw: object, *, identity: bool, variables: bool) -> _Statement:
    if not isinstance(raw, Mapping):
        return _Statement(f"#{index}", False, None, None, None, (), ("is not a map",), frozenset())
    sid = raw.get("Sid")
    label = sid if isinstance(sid, str) and sid else f"#{index}"
    problems: list[str] = []

    def element(build: Any, *names: str, required: bool = True) -> Any:
        present = [name for name in names if name in raw]
        if len(present) > 1 or (required and not present):
            problems.append(f"needs exactly one of {' or '.join(names)}")
            return None
        if not present:
            return None
        try:
            return build(present[0], raw[present[0]])
        except PolicyError as error:
            problems.append(str(error))
            return None

    unknown = sorted(str(name) for name in raw if name not in _ELEMENTS)
    if unknown:
        problems.append(f"has unknown elements {unknown}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        problems.append(f"Effect {effect!r} is not Allow or Deny")
    if identity:
        if "Principal" in raw or "NotPrincipal" in raw:
            problems.append("an identity policy has no Principal element")
        principal = None
    else:
        principal = element(PrincipalMatcher, "Principal", "NotPrincipal")
    action = element(ActionMatcher, "Action", "NotAction")
    resource = element(
        lambda name, value: ResourceMatcher(name, value, variables=variables),
        "Resource",
        "NotResource",
    )
    conditions = element(
        lambda _, value: compile_block(value, variables=variables), "Condition", required=False
    )
    conditions = conditions or ()
    references = frozenset().union(
        *(condition.references for condition in conditions),
        resource.references if resource is not None else (),
    )
    return _Statement(
        label,
        effect == "Allow",
        principal,
        action,
        resource,
        conditions,
        tuple(problems),
        references,
    )


# Per statement: does it apply to this principal in this context (action aside), and does it
# apply through a level below the account?
_State = tuple[Truth, Truth]
_NOT_APPLICABLE: _State = (False, False)
_Outcome = tuple[Decision, tuple[str, ...], bool, tuple[str, ...]]


def evaluate(
    compiled: CompiledPolicy,
    principal: Principal,
    action: str,
    resource: str | None,
    context: Mapping[str, Sequence[str] | str] | None = None,
) -> Answer:
    """What the policy decides for ``principal`` doing ``action`` on ``resource`` (the key ARN;
    None when not known), with extra request-context keys."""
    return evaluate_matrix(compiled, [principal], [action], resource, context)[0]


def evaluate_identity_policy(
    policy: Mapping[str, Any],
    principal: Principal,
    action: str,
    resource: str,
    context: Mapping[str, Sequence[str] | str] | None = None,
) -> Answer:
    """What an IAM identity policy attached to ``principal`` decides for the request; put
    resource tags in ``context`` as ``aws:ResourceTag/<key>``."""
    return evaluate(compile_policy(policy, identity=True), principal, action, resource, context)


def evaluate_matrix(
    compiled: CompiledPolicy,
    principals: Iterable[Principal],
    actions: Sequence[str],
    resource: str | None,
    context: Mapping[str, Sequence[str] | str] | None = None,
) -> list[Answer]:
    """Answers for every principal and action, principal by principal, actions in order."""
    if resource is not None and len(resource.split(":", 5)) != 6:
        raise ValueError(f"resource {resource!r} is not an ARN; give the key ARN or None")
    extra = normalise_context(context or {}, "request context")
    lowered = [action.lower() for action in actions]
    truths = [compiled.action_truths(action) for action in lowered]
    resources = _static_resources(compiled, resource)
    outcomes: dict[tuple[object, ...], list[_Outcome]] = {}
    answers: list[Answer] = []
    for principal in principals:
        request = {**principal.request_context, **extra}
        row: dict[int, Answer] = {}
        states: list[_State] = []
        for group, indices in _action_groups(request, lowered):
            # Only statements that read a key some actions do not carry differ between groups.
            shown = {key for key, _ in group}
            view = _view(request, group)
            states = [
                _state(s, principal.identity, resource, view, static)
                if not states or s.references & shown
                else states[index]
                for index, (s, static) in enumerate(
                    zip(compiled.statements, resources, strict=True)
                )
            ]
            key = (group, tuple(states))
            decided = outcomes.get(key)
            if decided is None:
                decided = [_decide(compiled, key[1], truths[i]) for i in indices]
                outcomes[key] = decided
            for index, outcome in zip(indices, decided, strict=True):
                row[index] = Answer(principal.arn, actions[index], *outcome)
        answers.extend(row[index] for index in range(len(actions)))
    return answers


def _static_resources(compiled: CompiledPolicy, resource: str | None) -> list[Truth | None]:
    """Per statement, its Resource result when no policy variable makes it depend on the
    principal; None where it must be computed per principal."""
    empty: Context = {}
    return [
        None
        if s.resource is not None and s.resource.references
        else Unsupported(s.problems)
        if s.resource is None
        else s.resource.match(resource, empty)
        for s in compiled.statements
    ]


_Group = tuple[tuple[str, str], ...]


def _action_groups(request: Context, actions: list[str]) -> list[tuple[_Group, list[int]]]:
    """Actions grouped by which action-scoped keys of ``request`` their requests carry."""
    scoped = [key for key in request if _scope(key) is not None]
    if not scoped:
        return [((), list(range(len(actions))))]
    groups: dict[_Group, list[int]] = {}
    for index, action in enumerate(actions):
        group = tuple((key, _visibility(key, action)) for key in scoped)
        groups.setdefault(group, []).append(index)
    return list(groups.items())


@lru_cache(maxsize=1024)
def _scope(key: str) -> frozenset[str] | None:
    return action_scope(key)


def _visibility(key: str, action: str) -> str:
    if not action.startswith("kms:"):
        return "present"
    if action not in SCOPE_DESCRIBED_ACTIONS:
        return "unknown"
    scope = _scope(key)
    return "present" if scope is None or action in scope else "absent"


def _view(request: Context, group: _Group) -> Context:
    if not group:
        return request
    view = dict(request)
    for key, visibility in group:
        if visibility == "absent":
            del view[key]
        elif visibility == "unknown":
            view[key] = None
    return view


def _state(
    statement: _Statement,
    identity: Identity,
    resource: str | None,
    context: Context,
    static_resource: Truth | None,
) -> _State:
    if statement.principal is None:
        matched: Truth = True
        direct: Truth = True
    else:
        matched, direct = statement.principal.match(identity)
    if matched is False:
        return _NOT_APPLICABLE
    parts: list[Truth] = [matched]
    if statement.problems:
        parts.append(Unsupported(statement.problems))
    found = static_resource
    if found is None and statement.resource is not None:
        found = statement.resource.match(resource, context)
    if found is False:
        return _NOT_APPLICABLE
    parts.append(True if found is None else found)
    for condition in statement.conditions:
        result = condition.evaluate(context)
        if result is False:
            return _NOT_APPLICABLE
        parts.append(result)
    return all_of(parts), direct


def _decide(
    compiled: CompiledPolicy, states: tuple[_State, ...], actions: tuple[Truth, ...]
) -> _Outcome:
    if compiled.problems:
        return Decision.UNKNOWN, (), False, compiled.problems
    allows: list[tuple[str, Truth]] = []
    unknown_allows: list[tuple[str, Truth, Unsupported]] = []
    denies: list[str] = []
    unknown_denies: list[tuple[str, Unsupported]] = []
    for statement, (state, direct), action in zip(
        compiled.statements, states, actions, strict=True
    ):
        if state is False or action is False:
            continue
        result = all_of((state, action))
        if statement.allow and result is True:
            allows.append((statement.label, direct))
        elif statement.allow and isinstance(result, Unsupported):
            unknown_allows.append((statement.label, direct, result))
        elif result is True:
            denies.append(statement.label)
        elif isinstance(result, Unsupported):
            unknown_denies.append((statement.label, result))
    if denies:
        return Decision.EXPLICIT_DENY, tuple(denies), False, ()
    if unknown_denies:
        return _unknown(unknown_denies)
    if not allows:
        if unknown_allows:
            return _unknown([(label, result) for label, _, result in unknown_allows])
        return Decision.IMPLICIT_DENY, (), False, ()
    labels = tuple(label for label, _ in allows)
    if compiled.identity or any(direct is True for _, direct in allows):
        return Decision.ALLOW, labels, False, ()
    # Every certain Allow is through the account: delegated, unless an undecidable statement,
    # or an undecidable entry of an allowing one, might grant the principal directly.
    undecided = [(label, direct) for label, direct in allows if isinstance(direct, Unsupported)] + [
        (label, result) for label, direct, result in unknown_allows if direct is not False
    ]
    if undecided:
        return _unknown(undecided)
    return Decision.ALLOW, labels, True, ()


def _unknown(statements: list[tuple[str, Unsupported]]) -> _Outcome:
    reasons = dict.fromkeys(
        f"{label}: {reason}" for label, result in statements for reason in result.reasons
    )
    return Decision.UNKNOWN, tuple(label for label, _ in statements), False, tuple(reasons)
