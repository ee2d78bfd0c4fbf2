"""``ResourceProperties`` to a validated, typed ``Spec``, with errors naming property and fix.

CloudFormation delivers every scalar as a string ("true", "20"), so booleans accept both their
JSON and string forms. Unknown property names are refused: a typo such as ``KeyID`` must never
turn into a resource that silently grants nothing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orgkeypolicy.errors import InvalidPropertyError
from orgkeypolicy.identifiers import (
    ACCOUNT_ID,
    OU_ID,
    ROLE_ARN,
    ROLE_NAME,
    ROOT_ID,
    KeyRef,
    parse_key_ref,
)


class PrincipalMode(Enum):
    ACCOUNTS = "Accounts"
    ORG_PATHS = "OrgPaths"
    AUTO = "Auto"


DEFAULT_ACTIONS = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:DescribeKey",
)
GRANT_ACTIONS = ("kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant")
# Cryptographic use only: nothing here can change the key, its policy or its grants.
USE_ACTIONS = frozenset(
    {
        "kms:Decrypt",
        "kms:DeriveSharedSecret",
        "kms:DescribeKey",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKey*",
        "kms:GenerateDataKeyPair",
        "kms:GenerateDataKeyPairWithoutPlaintext",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateMac",
        "kms:GetPublicKey",
        "kms:ReEncrypt*",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:Sign",
        "kms:Verify",
        "kms:VerifyMac",
    }
)
_CANONICAL_ACTIONS = {action.lower(): action for action in USE_ACTIONS}

# Condition keys that carry the grant itself; letting Conditions replace them would widen it.
# Lower case: IAM matches condition key names case-insensitively, and so does the check.
RESERVED_CONDITION_KEYS = frozenset(
    {"aws:principalorgid", "aws:principalorgpaths", "aws:principalaccount", "aws:principalarn"}
)
# Set by AllowGrants on the grants statement; on the use statement it would match nothing.
GRANT_CONDITION_KEY = "kms:grantisforawsresource"
_OPERATORS = (
    "StringEquals|StringNotEquals|StringEqualsIgnoreCase|StringNotEqualsIgnoreCase|StringLike|"
    "StringNotLike|NumericEquals|NumericNotEquals|NumericLessThan|NumericLessThanEquals|"
    "NumericGreaterThan|NumericGreaterThanEquals|DateEquals|DateNotEquals|DateLessThan|"
    "DateLessThanEquals|DateGreaterThan|DateGreaterThanEquals|Bool|BinaryEquals|IpAddress|"
    "NotIpAddress|ArnEquals|ArnLike|ArnNotEquals|ArnNotLike"
)
CONDITION_OPERATOR = re.compile(
    rf"(?:ForAnyValue:|ForAllValues:)?(?:{_OPERATORS})(?:IfExists)?|Null"
)
# ASCII: with IGNORECASE alone, look-alikes such as the dotless i would match [a-z].
CONDITION_KEY = re.compile(
    r"[a-z0-9-]{2,32}:[A-Za-z0-9_.:/@+=, -]{1,128}", re.IGNORECASE | re.ASCII
)
MAX_CONDITION_KEYS = 20
MAX_CONDITION_VALUES = 50
MAX_CONDITION_VALUE_LENGTH = 1024

MAX_KEYS = 50
MAX_OUS = 100
MAX_ACCOUNTS = 1000
MAX_ROLE_NAMES = 20
MAX_ROLE_PATH = 512
# Raw spellings allowed before case-folding; the canonical actions are fewer.
MAX_ACTION_SPELLINGS = 100

KEY_IDS = "KeyIds"
OU_IDS = "OrganizationalUnitIds"
ACCOUNT_IDS = "AccountIds"
EXCLUDE_ACCOUNT_IDS = "ExcludeAccountIds"
INCLUDE_NESTED_OUS = "IncludeNestedOUs"
ACTIONS = "Actions"
ALLOW_GRANTS = "AllowGrants"
PRINCIPAL_MODE = "PrincipalMode"
ROLE_NAMES = "RoleNames"
CONDITIONS = "Conditions"
ORGANIZATIONS_ROLE_ARN = "OrganizationsRoleArn"
DRY_RUN = "DryRun"
KNOWN = (
    KEY_IDS,
    OU_IDS,
    ACCOUNT_IDS,
    EXCLUDE_ACCOUNT_IDS,
    INCLUDE_NESTED_OUS,
    ACTIONS,
    ALLOW_GRANTS,
    PRINCIPAL_MODE,
    ROLE_NAMES,
    CONDITIONS,
    ORGANIZATIONS_ROLE_ARN,
    DRY_RUN,
)
# Set by CloudFormation itself on every custom resource.
PASSED_THROUGH = ("ServiceToken", "ServiceTimeout")

ConditionBlock = Mapping[str, Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Spec:
    """What one ``Custom::OrgKeyPolicy`` asks for, validated and de-duplicated."""

    key_refs: tuple[KeyRef, ...]
    ou_ids: tuple[str, ...] = ()
    account_ids: tuple[str, ...] = ()
    exclude_account_ids: frozenset[str] = frozenset()
    include_nested_ous: bool = True
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    allow_grants: bool = False
    principal_mode: PrincipalMode = PrincipalMode.ACCOUNTS
    role_names: tuple[str, ...] = ()
    conditions: ConditionBlock = field(default_factory=dict)
    organizations_role_arn: str | None = None
    dry_run: bool = False


def parse_properties(raw: object, *, default_role_arn: str | None = None) -> Spec:
    """Validate ``ResourceProperties``; raise ``InvalidPropertyError`` on the first problem."""
    if not isinstance(raw, Mapping):
        raise InvalidPropertyError("ResourceProperties", raw, "is not a map", "declare Properties")
    _refuse_unknown(raw)
    key_refs = _key_refs(raw.get(KEY_IDS))
    ou_ids = _id_list(raw, OU_IDS, MAX_OUS, _is_unit_id, "an OU ID (ou-...) or root ID (r-...)")
    account_ids = _id_list(raw, ACCOUNT_IDS, MAX_ACCOUNTS, _is_account, "a 12-digit account ID")
    if not ou_ids and not account_ids:
        raise InvalidPropertyError(
            OU_IDS, raw.get(OU_IDS, ""), "is empty and so is AccountIds", "name at least one OU"
        )
    excluded = _id_list(
        raw, EXCLUDE_ACCOUNT_IDS, MAX_ACCOUNTS, _is_account, "a 12-digit account ID"
    )
    role_arn = raw.get(ORGANIZATIONS_ROLE_ARN, default_role_arn)
    # Only an empty string means "no role": [] or false are mistakes, not an opt-out.
    role_arn = None if role_arn in (None, "") else role_arn
    if role_arn is not None and not (isinstance(role_arn, str) and ROLE_ARN.fullmatch(role_arn)):
        raise InvalidPropertyError(
            ORGANIZATIONS_ROLE_ARN,
            role_arn,
            "is not an IAM role ARN",
            "use arn:aws:iam::ID:role/NAME",
        )
    return Spec(
        key_refs=key_refs,
        ou_ids=ou_ids,
        account_ids=account_ids,
        exclude_account_ids=frozenset(excluded),
        include_nested_ous=_bool(raw, INCLUDE_NESTED_OUS, default=True),
        actions=_actions(raw.get(ACTIONS)),
        allow_grants=_bool(raw, ALLOW_GRANTS, default=False),
        principal_mode=_principal_mode(raw.get(PRINCIPAL_MODE)),
        role_names=_id_list(
            raw, ROLE_NAMES, MAX_ROLE_NAMES, _is_role_name, "a role name without *"
        ),
        conditions=_conditions(raw.get(CONDITIONS)),
        organizations_role_arn=role_arn,
        dry_run=_bool(raw, DRY_RUN, default=False),
    )


def check_organizations_role(
    spec: Spec, *, default_role_arn: str | None, assumable_roles: Sequence[str]
) -> None:
    """Refuse an ``OrganizationsRoleArn`` the provider may not assume.

    ``default_role_arn`` is the provider's reader role, used when the property is absent;
    ``assumable_roles`` (IAM wildcards allowed) are the other roles the property may name. The
    provider's IAM policy allows assuming exactly these, and lets the function read the
    organization itself only when it has no reader role: anything else would fail later as an
    AccessDenied that names neither the property nor the fix.
    """
    role_arn = spec.organizations_role_arn
    if role_arn is None and default_role_arn:
        raise InvalidPropertyError(
            ORGANIZATIONS_ROLE_ARN,
            "",
            "asks for the provider's own role, which may not read the organization",
            "leave the property out to use the provider's reader role",
        )
    if (
        role_arn is not None
        and role_arn != default_role_arn
        and not role_allowed(role_arn, assumable_roles)
    ):
        raise InvalidPropertyError(
            ORGANIZATIONS_ROLE_ARN,
            role_arn,
            "is not a role this provider may assume",
            "add it to the provider's AllowedOrganizationsRoles or leave the property out",
        )


def role_allowed(arn: str, patterns: Sequence[str]) -> bool:
    """Whether ``arn`` matches one of ``patterns`` as an IAM policy's Resource would: ``*``
    stands for any run of characters, ``?`` for one, and case matters."""
    return any(_wildcard(pattern).fullmatch(arn) for pattern in patterns)


def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def key_refs_leniently(raw: object) -> tuple[KeyRef, ...]:
    """The well-formed ``KeyIds`` entries of properties that may be invalid as a whole.

    Used on Delete and for the old side of an Update: the statements this resource wrote must
    be found and removed even when its properties no longer validate.
    """
    values = raw.get(KEY_IDS) if isinstance(raw, Mapping) else None
    if not isinstance(values, list):
        return ()
    refs = (parse_key_ref(value) for value in values if isinstance(value, str))
    return tuple(dict.fromkeys(ref for ref in refs if ref is not None))


def _refuse_unknown(raw: Mapping[Any, Any]) -> None:
    for name in raw:
        if name in KNOWN or name in PASSED_THROUGH:
            continue
        close = difflib.get_close_matches(str(name), KNOWN, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"known properties: {', '.join(KNOWN)}"
        raise InvalidPropertyError("Properties", name, "is not a property of this resource", hint)


def _string_list(prop: str, value: object, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidPropertyError(prop, value, "is not a list", f"write {prop}: [value, ...]")
    for item in value:
        if not isinstance(item, str):
            raise InvalidPropertyError(prop, item, "is not a string", "list strings only")
    unique = list(dict.fromkeys(value))
    if len(unique) > limit:
        raise InvalidPropertyError(
            prop, f"{len(unique)} entries", f"is more than {limit}", "split the resource"
        )
    return unique


def _id_list(
    raw: Mapping[str, Any], prop: str, limit: int, valid: Any, form: str
) -> tuple[str, ...]:
    values = _string_list(prop, raw.get(prop), limit)
    for value in values:
        if not valid(value):
            raise InvalidPropertyError(prop, value, f"is not {form}", "check for typos")
    return tuple(values)


def _is_account(value: str) -> bool:
    return ACCOUNT_ID.fullmatch(value) is not None


def _is_unit_id(value: str) -> bool:
    return OU_ID.fullmatch(value) is not None or ROOT_ID.fullmatch(value) is not None


def _is_role_name(value: str) -> bool:
    path, _, name = value.strip("/").rpartition("/")
    # IAM: a path of at most 512 characters (with its slashes), a name of at most 64.
    return (
        ROLE_NAME.fullmatch(value.strip("/")) is not None
        and len(path) + 2 <= MAX_ROLE_PATH
        and len(name) <= 64
    )


def _key_refs(value: object) -> tuple[KeyRef, ...]:
    texts = _string_list(KEY_IDS, value, MAX_KEYS)
    if not texts:
        raise InvalidPropertyError(KEY_IDS, value or "", "is empty", "name 1 to 50 keys")
    refs = []
    for text in texts:
        ref = parse_key_ref(text)
        if ref is None:
            raise InvalidPropertyError(
                KEY_IDS, text, "is not a key ID, key ARN, alias/NAME or alias ARN", "fix the entry"
            )
        if ref.is_aws_managed_alias:
            raise InvalidPropertyError(
                KEY_IDS, text, "is an AWS managed key", "its policy cannot be changed"
            )
        refs.append(ref)
    return tuple(refs)


def _bool(raw: Mapping[str, Any], prop: str, *, default: bool) -> bool:
    value = raw.get(prop)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidPropertyError(prop, value, "is not a boolean", "use true or false")


def _principal_mode(value: object) -> PrincipalMode:
    if value is None:
        return PrincipalMode.ACCOUNTS
    for mode in PrincipalMode:
        if value == mode.value:
            return mode
    choices = ", ".join(mode.value for mode in PrincipalMode)
    raise InvalidPropertyError(PRINCIPAL_MODE, value, "is not a principal mode", f"use {choices}")


def _actions(value: object) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_ACTIONS
    texts = _string_list(ACTIONS, value, MAX_ACTION_SPELLINGS)
    if not texts:
        raise InvalidPropertyError(ACTIONS, value, "is empty", "omit it for the default actions")
    actions = []
    for text in texts:
        canonical = _CANONICAL_ACTIONS.get(text.lower())
        if canonical is None:
            raise InvalidPropertyError(ACTIONS, text, _why_refused(text), "list kms: use actions")
        actions.append(canonical)
    return tuple(dict.fromkeys(actions))


def _why_refused(action: str) -> str:
    lowered = action.lower()
    if lowered in (grant.lower() for grant in GRANT_ACTIONS):
        return "is a grant action (set AllowGrants: true instead)"
    if lowered.startswith("kms:"):
        return "is refused: only key use actions may be shared, not administration"
    return "is not a KMS use action"


def _conditions(value: object) -> ConditionBlock:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidPropertyError(
            CONDITIONS, value, "is not a map", "write {Operator: {key: value}}"
        )
    block: dict[str, dict[str, tuple[str, ...]]] = {}
    count = 0
    for operator, entries in value.items():
        if not isinstance(operator, str) or not CONDITION_OPERATOR.fullmatch(operator):
            raise InvalidPropertyError(CONDITIONS, operator, "is not an IAM condition operator")
        if not isinstance(entries, Mapping) or not entries:
            raise InvalidPropertyError(
                f"{CONDITIONS}.{operator}", entries, "is not a map of keys", "write {key: value}"
            )
        for key, values in entries.items():
            count += 1
            checked = _condition_key(operator, key)
            twin = next((k for k in block.get(operator, {}) if k.lower() == checked.lower()), None)
            if twin is not None:
                raise InvalidPropertyError(
                    f"{CONDITIONS}.{operator}",
                    checked,
                    f"is the same key as {twin} (IAM ignores case in key names)",
                    "keep one of them",
                )
            block.setdefault(operator, {})[checked] = _condition_values(
                f"{CONDITIONS}.{operator}.{checked}", values
            )
    if count > MAX_CONDITION_KEYS:
        raise InvalidPropertyError(
            CONDITIONS, f"{count} keys", f"is more than {MAX_CONDITION_KEYS}"
        )
    return block


def _condition_key(operator: str, key: object) -> str:
    prop = f"{CONDITIONS}.{operator}"
    # Spaces may sit inside a tag key, never around it: "aws:PrincipalOrgID " is no new key.
    if not isinstance(key, str) or not CONDITION_KEY.fullmatch(key) or key != key.strip():
        raise InvalidPropertyError(prop, key, "is not a condition key", "use service:Key")
    if key.lower() in RESERVED_CONDITION_KEYS:
        raise InvalidPropertyError(
            prop, key, "is set by this resource", "use RoleNames, AccountIds or ExcludeAccountIds"
        )
    if key.lower() == GRANT_CONDITION_KEY:
        raise InvalidPropertyError(
            prop, key, "is set by this resource", "use AllowGrants: true for grants"
        )
    return key


def _condition_values(prop: str, values: object) -> tuple[str, ...]:
    items: Sequence[object] = values if isinstance(values, list) else [values]
    if not items or len(items) > MAX_CONDITION_VALUES:
        raise InvalidPropertyError(prop, values, f"needs 1 to {MAX_CONDITION_VALUES} values")
    result = []
    for item in items:
        # CloudFormation passes booleans and numbers as strings; accept both forms.
        text = str(item).lower() if isinstance(item, bool) else item
        if isinstance(text, int | float) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str) or len(text) > MAX_CONDITION_VALUE_LENGTH:
            raise InvalidPropertyError(prop, item, "is not a string value")
        if not all(" " <= ch <= "~" or "\xa0" <= ch <= "\xff" for ch in text):
            raise InvalidPropertyError(
                prop, item, "holds characters a key policy cannot", "use printable Latin-1 text"
            )
        result.append(text)
    return tuple(dict.fromkeys(result))
