"""Errors whose message is the Reason CloudFormation shows: short, naming property, value, fix."""

from __future__ import annotations

# CloudFormation's console shows the Reason on one line; longer reasons are cut by us, not by it.
MAX_REASON = 255


def shown(value: object, limit: int = 90) -> str:
    """A value as it may appear in a reason: quoted, ASCII-escaped and shortened.

    Escaping keeps control characters and look-alike Unicode visible instead of letting
    them rewrite the console line; shortening keeps the reason under CloudFormation's limit.
    The middle goes, not the end: the end of an ARN (the key ID) is what tells keys apart.
    """
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    if len(text) > limit:
        head = (limit - 3) // 3
        text = text[:head] + "..." + text[len(text) - (limit - 3 - head) :]
    return f"'{text}'"


def clip(reason: str) -> str:
    """Shorten a reason to what CloudFormation displays, keeping its start (the cause)."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


class OrgKeyPolicyError(Exception):
    """A failure to report to CloudFormation; ``str(error)`` is the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(clip(reason))


class InvalidPropertyError(OrgKeyPolicyError):
    """A resource property is malformed or refers to something that does not exist."""

    def __init__(self, prop: str, value: object, problem: str, fix: str = "") -> None:
        self.prop = prop
        tail = f"; {fix}" if fix else ""
        super().__init__(f"{prop}: {shown(value)} {problem}{tail}")


class PolicyTooLargeError(OrgKeyPolicyError):
    """The merged key policy would exceed the KMS key-policy size limit."""


class KeyAccessError(OrgKeyPolicyError):
    """KMS refused to read or write a key policy."""


class OrganizationsError(OrgKeyPolicyError):
    """The Organizations lookup failed for a reason other than bad input."""


class DeadlineExceededError(OrgKeyPolicyError):
    """The work could not finish before the time kept back for answering CloudFormation."""


class KeyUnreachableError(KeyAccessError):
    """KMS in the key's region could not be reached: a mistyped or disabled region, or no
    network path. A key that could not be reached was never written by this resource."""


class LockBusyError(OrgKeyPolicyError):
    """Another writer held a lock for longer than this run could wait."""


class RegistryError(OrgKeyPolicyError):
    """The registry table could not be read or written."""
