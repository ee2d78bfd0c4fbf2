"""The evaluator's data: principals and what their requests carry, answers, and the third truth
value, ``Unsupported``, that every check may return instead of guessing.

Condition-key names are case-insensitive, so every context here is keyed in lower case. A
context value is a tuple of strings, or ``None`` for a key that a real request certainly
carries but whose value cannot be derived from the principal (``aws:userid`` of a role): a
condition on it is undecidable rather than false.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

ContextValues = tuple[str, ...] | None
Context = dict[str, ContextValues]


class Decision(Enum):
    ALLOW = "Allow"
    EXPLICIT_DENY = "ExplicitDeny"
    IMPLICIT_DENY = "ImplicitDeny"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A check the evaluator cannot decide, with the constructs that made it so."""

    reasons: tuple[str, ...]


Truth = bool | Unsupported


def all_of(results: Iterable[Truth]) -> Truth:
    """Kleene AND: false wins over undecidable, which wins over true."""
    unknown: list[str] = []
    for result in results:
        if result is False:
            return False
        if isinstance(result, Unsupported):
            unknown += result.reasons
    return Unsupported(tuple(dict.fromkeys(unknown))) if unknown else True


def any_of(results: Iterable[Truth]) -> Truth:
    """Kleene OR: true wins over undecidable, which wins over false."""
    unknown: list[str] = []
    for result in results:
        if result is True:
            return True
        if isinstance(result, Unsupported):
            unknown += result.reasons
    return Unsupported(tuple(dict.fromkeys(unknown))) if unknown else False


def negate(result: Truth) -> Truth:
    return result if isinstance(result, Unsupported) else not result


@dataclass(frozen=True, slots=True)
class Answer:
    """What a policy decides for one principal and action.

    ``statements`` are the decisive statements (Sid, or ``#index``): every allowing one for
    Allow, the denying ones for ExplicitDeny, the undecidable ones for Unknown. ``delegated``
    is true when the Allow comes only through account principals, so the member account's IAM
    must grant it too. ``unsupported`` names the constructs that made the answer Unknown.
    """

    principal: str
    action: str
    decision: Decision
    statements: tuple[str, ...]
    delegated: bool
    unsupported: tuple[str, ...]


class Kind(Enum):
    ACCOUNT = "account root"
    USER = "IAM user"
    ROLE = "IAM role"
    SESSION = "assumed-role session"
    FEDERATED_USER = "federated user"
    SERVICE = "service principal"


# aws:PrincipalType; a role stands for its sessions, the only way a role makes a request.
_PRINCIPAL_TYPE = {
    Kind.ACCOUNT: "Account",
    Kind.USER: "User",
    Kind.ROLE: "AssumedRole",
    Kind.SESSION: "AssumedRole",
    Kind.FEDERATED_USER: "FederatedUser",
}


_IAM_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):(?P<service>iam|sts)::(?P<account>[0-9]{12}):"
    r"(?P<resource>.+)",
    re.ASCII,
)
_SERVICE = re.compile(r"[a-z0-9][a-z0-9.-]*\.amazonaws\.com(?:\.cn)?", re.ASCII)
# Each level a principal can be named at in a Principal element, from the account down.
Level = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """A principal ARN, parsed: its kind, the levels it can be named at, and the request-context
    keys that follow from it."""

    kind: Kind
    levels: tuple[Level, ...]
    derived: Mapping[str, ContextValues]


def account_level(partition: str | None, account: str) -> Level:
    return ("account", partition or "", account)


def parse_identity(arn: str) -> Identity:
    """Raise ValueError naming the forms accepted when ``arn`` is none of them."""
    if _SERVICE.fullmatch(arn):
        return Identity(
            Kind.SERVICE,
            (("service", arn),),
            {
                "aws:principalisawsservice": ("true",),
                "aws:principalservicename": (arn,),
                # Carried by a service principal's request, but not derivable from its name.
                "aws:principalservicenameslist": None,
                "aws:principalaccount": None,
                "kms:calleraccount": None,
                "aws:principaltype": None,
                "aws:principalarn": None,
            },
        )
    match = _IAM_ARN.fullmatch(arn)
    parsed = _iam_identity(match) if match else None
    if parsed is None or match is None:
        raise ValueError(
            f"principal {arn!r} is not an account root, IAM user, IAM role, assumed-role "
            "session or federated-user ARN, nor a service principal: use "
            "arn:aws:iam::ID:root, arn:aws:iam::ID:role/NAME, "
            "arn:aws:sts::ID:assumed-role/NAME/SESSION or SERVICE.amazonaws.com"
        )
    kind, levels, derived = parsed
    account = match["account"]
    base: dict[str, ContextValues] = {
        "aws:principalaccount": (account,),
        "kms:calleraccount": (account,),
        "aws:principalisawsservice": ("false",),
        "aws:principaltype": (_PRINCIPAL_TYPE[kind],),
    }
    return Identity(
        kind, (account_level(match["partition"], account), *levels), {**base, **derived}
    )


def _iam_identity(
    match: re.Match[str],
) -> tuple[Kind, tuple[Level, ...], dict[str, ContextValues]] | None:
    partition, service, account, resource = match.group(
        "partition", "service", "account", "resource"
    )
    arn = match.string
    head, _, rest = resource.partition("/")
    if service == "iam" and resource == "root":
        return Kind.ACCOUNT, (), {"aws:principalarn": (arn,), "aws:userid": (account,)}
    name = rest.rpartition("/")[2]
    if service == "iam" and head in ("user", "role") and name:
        kind = Kind.USER if head == "user" else Kind.ROLE
        derived: dict[str, ContextValues] = {"aws:principalarn": (arn,), "aws:userid": None}
        if kind is Kind.USER:
            derived["aws:username"] = (name,)
        return kind, ((head, partition, account, name),), derived
    parts = rest.split("/")
    if service == "sts" and head == "assumed-role" and len(parts) == 2 and all(parts):
        role, session = parts
        return (
            Kind.SESSION,
            (("role", partition, account, role), ("session", partition, account, role, session)),
            # The role's ARN carries its path, which the session ARN does not show.
            {"aws:principalarn": None, "aws:userid": None},
        )
    if service == "sts" and head == "federated-user" and rest and "/" not in rest:
        return (
            Kind.FEDERATED_USER,
            (("federated-user", partition, account, rest),),
            {"aws:principalarn": (arn,), "aws:userid": (f"{account}:{rest}",)},
        )
    return None


def normalise_context(context: Mapping[str, object], where: str) -> Context:
    """Lower-case keys, tuple values; refuse values that are not strings and keys given twice."""
    result: Context = {}
    for key, raw in context.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{where}: context key {key!r} is not a condition-key name")
        values = (raw,) if isinstance(raw, str) else raw
        if not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
            raise TypeError(
                f"{where}: context value of {key!r} is {raw!r}; give a string or a tuple of strings"
            )
        lowered = key.lower()
        if lowered in result:
            raise ValueError(
                f"{where}: context key {key!r} is given twice (key names are case-insensitive)"
            )
        result[lowered] = tuple(values)
    return result


@dataclass(frozen=True)
class Principal:
    """Who makes the request: an account root, IAM user, IAM role (standing for its sessions),
    assumed-role session, federated user or service principal (``SERVICE.amazonaws.com``),
    with its organization and any extra context keys (``aws:PrincipalTag/...``, say) its
    requests carry. Keys derived from the ARN (``aws:PrincipalArn``, ``aws:PrincipalAccount``,
    ``kms:CallerAccount``, ``aws:PrincipalType``, ``aws:userid``, ``aws:username``) come first;
    ``context`` overrides them, for a session's role ARN with its path, say. ``unknown`` names
    keys the request carries whose values are not known here (the OU path of an account whose
    organization cannot be read): conditions on them are undecidable, not false."""

    arn: str
    org_id: str | None = None
    org_paths: tuple[str, ...] = ()
    context: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()
    identity: Identity = field(init=False, repr=False, compare=False)
    request_context: Mapping[str, ContextValues] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        identity = parse_identity(self.arn)
        if identity.kind is Kind.SERVICE and (self.org_id or self.org_paths):
            raise ValueError(f"principal {self.arn}: a service principal has no organization")
        if isinstance(self.org_paths, str):
            raise TypeError(f"principal {self.arn}: org_paths is a tuple of paths, not a string")
        derived = dict(identity.derived)
        if self.org_id:
            derived["aws:principalorgid"] = (self.org_id,)
        if self.org_paths:
            derived["aws:principalorgpaths"] = tuple(self.org_paths)
        if isinstance(self.unknown, str):
            raise TypeError(f"principal {self.arn}: unknown is a tuple of keys, not a string")
        derived.update(dict.fromkeys((key.lower() for key in self.unknown), None))
        derived.update(normalise_context(self.context, f"principal {self.arn}"))
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "request_context", derived)
