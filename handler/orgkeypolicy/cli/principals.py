"""What ``simulate`` evaluates: a key policy, and the principals asking to use the key.

Principals are plain records: an ARN, the organization ID and ``aws:PrincipalOrgPaths``
values IAM would give it, and extra request context keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from orgkeypolicy.aws import KeyStore
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.intrinsics import text
from orgkeypolicy.cli.sources import load_document
from orgkeypolicy.identifiers import ORGANIZATION_ID, ROLE_NAME, parse_key_ref
from orgkeypolicy.organization import Directory, Progress, walk
from orgkeypolicy.properties import CONDITION_KEY

PRINCIPAL_ARN = re.compile(
    r"arn:aws(?:-cn|-us-gov|-iso|-iso-b)?:(?:iam|sts)::[0-9]{12}:"
    r"(?:root|(?:user|role|assumed-role|federated-user)/[\w+=,.@/-]{1,512})",
    re.ASCII,
)
ORG_PATH = re.compile(
    r"(?P<org>o-[a-z0-9]{10,32})/r-[0-9a-z]{4,32}/(?:ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}/){0,5}",
    re.ASCII,
)

Context = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class PrincipalRecord:
    """A principal as the request context shows it; ``org_id`` is None outside organizations."""

    arn: str
    org_id: str | None = None
    org_paths: tuple[str, ...] = ()
    context: Context = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "arn": self.arn,
            "org_id": self.org_id,
            "org_paths": list(self.org_paths),
            "context": {key: list(values) for key, values in self.context.items()},
        }


def principal(
    arn: str,
    org_id: str | None = None,
    org_paths: Sequence[str] = (),
    context: Context | None = None,
    *,
    where: str = "--principal",
) -> PrincipalRecord:
    """A checked ``PrincipalRecord``; errors name ``where`` it came from."""
    if not PRINCIPAL_ARN.fullmatch(arn):
        raise CommandError(
            f"{where}: {arn!r} is not an IAM principal ARN (arn:aws:iam::ACCOUNT:root, "
            ":role/NAME, :user/NAME, or arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION)"
        )
    if org_id is not None and not ORGANIZATION_ID.fullmatch(org_id):
        raise CommandError(f"{where}: org_id {org_id!r} is not an organization ID (o-...)")
    if org_paths and org_id is None:
        raise CommandError(f"{where}: org paths need the organization ID (org_id, --org-id)")
    for path in org_paths:
        match = ORG_PATH.fullmatch(path)
        if match is None:
            raise CommandError(f"{where}: org path {path!r} is not o-.../r-.../ou-.../ (with /)")
        if match["org"] != org_id:
            raise CommandError(f"{where}: org path {path!r} is not in organization {org_id}")
    return PrincipalRecord(arn, org_id, tuple(dict.fromkeys(org_paths)), dict(context or {}))


def principals_from_file(path: Path) -> list[PrincipalRecord]:
    """A JSON list of ``{"arn", "org_id", "org_paths": [], "context": {}}``."""
    document = load_document(path)
    if not isinstance(document, list) or not document:
        raise CommandError(f"{path}: is not a non-empty list of principals")
    records = []
    for index, item in enumerate(document):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("arn"), str):
            raise CommandError(f"{where}: is not a map with an arn")
        unknown = sorted(set(item) - {"arn", "org_id", "org_paths", "context"})
        if unknown:
            raise CommandError(f"{where}: unknown field {unknown[0]!r}")
        org_id = item.get("org_id")
        org_paths = item.get("org_paths", [])
        if org_id is not None and not isinstance(org_id, str):
            raise CommandError(f"{where}: org_id is not a string")
        if not isinstance(org_paths, list) or not all(isinstance(p, str) for p in org_paths):
            raise CommandError(f"{where}: org_paths is not a list of strings")
        context = _context_map(item.get("context", {}), f"{where}.context")
        records.append(principal(item["arn"], org_id, org_paths, context, where=where))
    return records


def _context_map(value: object, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise CommandError(f"{where}: is not a map of condition keys to values")
    pairs = []
    for key, values in value.items():
        for item in values if isinstance(values, list) else [values]:
            if isinstance(item, Mapping | list) or item is None:
                raise CommandError(f"{where}.{key}: {item!r} is not a value")
            pairs.append((str(key), text(item)))
    return context_from(pairs, where=where)


def context_from(
    pairs: Iterable[tuple[str, str]], *, where: str = "--context"
) -> dict[str, tuple[str, ...]]:
    """Condition keys and their values; a key given again adds a value.

    Key names are case-insensitive, as in IAM: ``aws:SourceVpc`` and ``AWS:sourcevpc`` are one
    key, kept under its first spelling.
    """
    spelling: dict[str, str] = {}
    context: dict[str, tuple[str, ...]] = {}
    for key, value in pairs:
        if not CONDITION_KEY.fullmatch(key):
            raise CommandError(f"{where}: {key!r} is not a condition key (service:Name)")
        name = spelling.setdefault(key.lower(), key)
        if value not in context.get(name, ()):
            context[name] = (*context.get(name, ()), value)
    return context


def with_context(records: Iterable[PrincipalRecord], context: Context) -> list[PrincipalRecord]:
    """Each record with ``context`` added; a key given here replaces the record's own."""
    given = {key.lower() for key in context}
    return [
        replace(
            record,
            context={
                **{k: v for k, v in record.context.items() if k.lower() not in given},
                **context,
            },
        )
        for record in records
    ]


class Organization(Directory, Protocol):
    """What ``organization_principals`` reads: the directory, the organization and its root."""

    def organization_id(self) -> str: ...

    def root_id(self) -> str: ...


def organization_principals(
    organization: Organization,
    *,
    partition: str,
    roles: Sequence[str] = (),
    max_workers: int = 8,
    progress: Progress | None = None,
) -> list[PrincipalRecord]:
    """Every ACTIVE account of the organization, as its root or as each of ``roles``.

    Each comes with the organization ID and the ``aws:PrincipalOrgPaths`` value IAM gives
    its principals: the path of the unit the account sits in.
    """
    names = [role_name(role) for role in roles]
    org_id = organization.organization_id()
    tree = walk(
        organization,
        [organization.root_id()],
        include_nested=True,
        max_workers=max_workers,
        progress=progress,
    )
    records: list[PrincipalRecord] = []
    for account in sorted(tree.accounts.values(), key=lambda account: account.id):
        if not account.active:
            continue
        paths = (tree.principal_org_path(org_id, account.id),)
        arns = [f"arn:{partition}:iam::{account.id}:role/{name}" for name in names] or [
            f"arn:{partition}:iam::{account.id}:root"
        ]
        records.extend(PrincipalRecord(arn, org_id, paths) for arn in arns)
    return records


def role_name(name: str) -> str:
    """A ``--role`` value: a role name, with its path if it has one (``ops/Admin``)."""
    name = name.strip("/")
    if not ROLE_NAME.fullmatch(name):
        raise CommandError(f"--role {name!r}: is not a role name (a path is allowed, * is not)")
    return name


def policy_from_file(path: Path) -> dict[str, Any]:
    """A key policy document held by ``path``."""
    document = load_document(path)
    if not isinstance(document, Mapping) or "Statement" not in document:
        raise CommandError(f"{path}: is not a policy document (no Statement)")
    return dict(document)


def policy_from_key(store: KeyStore, key_text: str) -> tuple[str, dict[str, Any]]:
    """The ARN and current policy of the key ``key_text`` names (ID, ARN or alias)."""
    ref = parse_key_ref(key_text)
    if ref is None:
        raise CommandError(f"--key {key_text}: is not a key ID, key ARN, alias/NAME or alias ARN")
    key = store.describe(ref)
    if key is None:
        raise CommandError(f"--key {key_text}: no such key or alias")
    policy = json.loads(store.read(key))
    if not isinstance(policy, dict):
        raise CommandError(f"--key {key_text}: its policy is not a JSON object")
    return key.arn, policy
