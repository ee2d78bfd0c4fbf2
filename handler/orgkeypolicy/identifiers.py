"""The shapes of AWS identifiers this resource accepts, and parsing of key references.

Patterns are ASCII-only and anchored (``fullmatch``): Python's ``\\d`` also matches other
scripts' digits, which would let a look-alike account ID through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

ACCOUNT_ID = re.compile(r"[0-9]{12}")
OU_ID = re.compile(r"ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}")
ROOT_ID = re.compile(r"r-[0-9a-z]{4,32}")
ORGANIZATION_ID = re.compile(r"o-[a-z0-9]{10,32}")
ROLE_ARN = re.compile(
    r"arn:aws(?:-cn|-us-gov|-iso|-iso-b)?:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}", re.ASCII
)
# A role name with an optional path; wildcards are refused so that a grant never widens silently.
ROLE_NAME = re.compile(r"(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}", re.ASCII)

_KEY_UUID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS_NAME = r"alias/[a-zA-Z0-9:/_-]{1,250}"
_ARN_HEAD = (
    r"arn:(?P<partition>aws(?:-cn|-us-gov|-iso|-iso-b)?):kms:"
    r"(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]):(?P<account>[0-9]{12})"
)
KEY_ID = re.compile(_KEY_UUID)
ALIAS_NAME = re.compile(_ALIAS_NAME)
KEY_ARN = re.compile(rf"{_ARN_HEAD}:key/(?P<id>{_KEY_UUID})")
ALIAS_ARN = re.compile(rf"{_ARN_HEAD}:(?P<id>{_ALIAS_NAME})")


class KeyRefKind(Enum):
    KEY_ID = "key ID"
    KEY_ARN = "key ARN"
    ALIAS = "alias"
    ALIAS_ARN = "alias ARN"


@dataclass(frozen=True)
class KeyRef:
    """One entry of ``KeyIds`` as written, with what its form tells about where the key lives."""

    text: str
    kind: KeyRefKind
    region: str | None = None
    account: str | None = None
    partition: str | None = None

    @property
    def is_aws_managed_alias(self) -> bool:
        name = self.text.split(":", 5)[-1] if self.kind is KeyRefKind.ALIAS_ARN else self.text
        return name.startswith("alias/aws/")


def parse_key_ref(text: str) -> KeyRef | None:
    """Classify a ``KeyIds`` entry; ``None`` when it has none of the accepted forms."""
    if KEY_ID.fullmatch(text):
        return KeyRef(text, KeyRefKind.KEY_ID)
    if ALIAS_NAME.fullmatch(text):
        return KeyRef(text, KeyRefKind.ALIAS)
    for pattern, kind in ((KEY_ARN, KeyRefKind.KEY_ARN), (ALIAS_ARN, KeyRefKind.ALIAS_ARN)):
        match = pattern.fullmatch(text)
        if match:
            return KeyRef(text, kind, match["region"], match["account"], match["partition"])
    return None
