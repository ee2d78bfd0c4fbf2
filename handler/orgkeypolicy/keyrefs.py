"""Which keys a resource names: its ``KeyIds`` resolved to keys of this account, the keys its
earlier properties named, and the consent each key must give. The first stage of a plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from orgkeypolicy.aws import Identity, KeyInfo, KeyStore
from orgkeypolicy.concurrency import fan_out
from orgkeypolicy.errors import InvalidPropertyError, KeyUnreachableError
from orgkeypolicy.identifiers import KeyRef
from orgkeypolicy.properties import KEY_IDS, key_refs_leniently
from orgkeypolicy.settings import KeyConsent

logger = logging.getLogger(__name__)


def check_refs(refs: Iterable[KeyRef], me: Identity) -> None:
    """Refuse keys of other accounts and partitions before any call names them."""
    for ref in refs:
        if ref.account is not None and ref.account != me.account:
            raise InvalidPropertyError(
                KEY_IDS,
                ref.text,
                f"is in account {ref.account}, not {me.account}",
                "only keys of the function's own account can be changed",
            )
        if ref.partition is not None and ref.partition != me.partition:
            raise InvalidPropertyError(KEY_IDS, ref.text, f"is not in partition {me.partition}")


def resolve_targets(
    store: KeyStore,
    refs: Sequence[KeyRef],
    me: Identity,
    workers: int,
    missing: Callable[[KeyRef], None] | None = None,
) -> list[KeyInfo]:
    """The key each reference names, one entry per key, or a refusal naming the reference.

    With ``missing``, a reference to a key or alias that no longer exists is passed to it and
    left out instead (a re-sync reports that key and still fixes the resource's others).
    """
    keys: dict[str, KeyInfo] = {}
    for ref, key in zip(refs, fan_out(store.describe, refs, workers), strict=True):
        if key is None and missing is not None:
            missing(ref)
            continue
        if key is None:
            raise InvalidPropertyError(
                KEY_IDS, ref.text, "does not exist", "check the ID, alias and region"
            )
        if key.manager != "CUSTOMER":
            raise InvalidPropertyError(
                KEY_IDS, ref.text, "is an AWS managed key", "its policy cannot change"
            )
        if key.account != me.account:
            raise InvalidPropertyError(
                KEY_IDS, ref.text, f"is in account {key.account}", "use a key of this account"
            )
        if key.state == "Disabled":
            logger.warning(
                "Key is disabled; its policy is updated all the same", extra={"key": key.arn}
            )
        keys.setdefault(key.arn, key)
    return list(keys.values())


def check_consent(
    store: KeyStore, keys: Sequence[KeyInfo], consent: KeyConsent | None, workers: int
) -> None:
    """Refuse, before any key policy is read, a key that does not carry the consent tag.

    The provider's IAM role refuses the same keys (``aws:ResourceTag`` on GetKeyPolicy and
    PutKeyPolicy); this check turns that AccessDenied into a reason naming the key, the tag
    and the command that gives consent. Only the keys a resource grants are checked: taking
    statements off a key is never refused here.
    """
    if consent is None:
        return
    for key, tags in zip(keys, fan_out(store.tags, keys, workers), strict=True):
        if not consent.given(tags):
            raise InvalidPropertyError(
                KEY_IDS,
                _short_ref(key),
                f"lacks the consent tag {consent.tag}",
                f"tag it: {tag_command(consent, key)}",
            )


def _short_ref(key: KeyInfo) -> str:
    # The command names the key ID: an ARN or a long alias is shown by that ID, so that the
    # whole command fits in the reason.
    text = key.ref.text
    return key.arn.rsplit("/", 1)[-1] if text.startswith("arn:") or len(text) > 40 else text


def tag_command(consent: KeyConsent, key: KeyInfo) -> str:
    """The command that gives ``key`` the consent tag."""
    return consent.command(key.arn.rsplit("/", 1)[-1], key.region)


def resolve_previous(
    store: KeyStore, properties: Mapping[str, Any] | None, me: Identity, workers: int
) -> list[KeyInfo]:
    """The keys that the well-formed references of earlier ``properties`` name now.

    For the old side of an Update and for Delete: those properties may no longer validate,
    and their keys may be gone, yet the statements this resource wrote must still be found.
    A key that does not exist, or could not be reached (a mistyped or disabled region), was
    never written by this resource, so it is passed over.
    """
    if properties is None:
        return []
    refs = [
        ref
        for ref in key_refs_leniently(properties)
        if ref.account in (None, me.account) and ref.partition in (None, me.partition)
    ]

    def describe(ref: KeyRef) -> KeyInfo | None:
        try:
            return store.describe(ref)
        except KeyUnreachableError as error:
            logger.warning("Key not reached; it was never written", extra={"reason": str(error)})
            return None

    found = fan_out(describe, refs, workers)
    return [
        key
        for key in found
        if key is not None and key.account == me.account and key.manager == "CUSTOMER"
    ]
