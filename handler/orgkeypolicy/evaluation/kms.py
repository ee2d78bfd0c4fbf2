"""What the evaluator knows about KMS: the actions a key policy decides, which condition keys
a KMS request carries for which action, and which keys are multivalued.

``KMS_ACTIONS`` is a constant that the tests check against botocore's KMS service model, rather
than a list read from botocore at import: IAM's action names are not the API's operation names
(``ReEncrypt`` is authorized as ``kms:ReEncryptFrom`` and ``kms:ReEncryptTo``), some operations
are never authorized on a key (``CreateKey``, ``ListKeys``), this pure module must not depend
on an AWS SDK, and the Lambda runtime bundles its own botocore, so the answer would otherwise
depend on where it runs. A new KMS operation fails that test until it is placed here.
"""

from __future__ import annotations

# The IAM actions authorized on a KMS key, so decided by its key policy: every KMS API
# operation that acts on a key, with ReEncrypt's two permissions in place of its name.
KMS_ACTIONS: tuple[str, ...] = tuple(
    f"kms:{name}"
    for name in (
        "CancelKeyDeletion",
        "CreateAlias",
        "CreateGrant",
        "Decapsulate",
        "Decrypt",
        "DeleteAlias",
        "DeleteImportedKeyMaterial",
        "DeriveSharedSecret",
        "DescribeKey",
        "DisableKey",
        "DisableKeyRotation",
        "EnableKey",
        "EnableKeyRotation",
        "Encapsulate",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateMac",
        "GetKeyLastUsage",
        "GetKeyPolicy",
        "GetKeyRotationStatus",
        "GetParametersForImport",
        "GetPublicKey",
        "ImportKeyMaterial",
        "ListGrants",
        "ListKeyPolicies",
        "ListKeyRotations",
        "ListResourceTags",
        "PutKeyPolicy",
        "ReEncryptFrom",
        "ReEncryptTo",
        "ReplicateKey",
        "RetireGrant",
        "RevokeGrant",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
        "Sign",
        "TagResource",
        "UntagResource",
        "UpdateAlias",
        "UpdateKeyDescription",
        "UpdatePrimaryRegion",
        "Verify",
        "VerifyMac",
    )
)

_CRYPTO = (
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
)
_ALIASED = (
    *_CRYPTO,
    "DeriveSharedSecret",
    "DescribeKey",
    "GenerateMac",
    "GetPublicKey",
    "Sign",
    "Verify",
    "VerifyMac",
)

# Condition keys a KMS request carries only for some actions, from the Service Authorization
# Reference for KMS (keys ending in ":" or "/" are prefixes). A key the caller supplies is
# absent from the request of any other action. Every other key is carried by every action.
ACTION_SCOPED_KEYS: dict[str, frozenset[str]] = {
    key.lower(): frozenset(f"kms:{action}".lower() for action in actions)
    for key, actions in {
        "aws:RequestTag/": ("TagResource",),
        "aws:TagKeys": ("TagResource", "UntagResource"),
        "kms:BypassPolicyLockoutSafetyCheck": ("PutKeyPolicy",),
        "kms:DataKeyPairSpec": (
            "GenerateDataKeyPair",
            "GenerateDataKeyPairWithoutPlaintext",
        ),
        "kms:EncryptionAlgorithm": _CRYPTO,
        "kms:EncryptionContext:": (*_CRYPTO, "CreateGrant", "RetireGrant"),
        "kms:EncryptionContextKeys": (*_CRYPTO, "CreateGrant", "RetireGrant"),
        "kms:ExpirationModel": ("ImportKeyMaterial",),
        "kms:GrantConstraintSourceArn": ("CreateGrant",),
        "kms:GrantConstraintType": ("CreateGrant", "RetireGrant"),
        "kms:GrantIsForAWSResource": ("CreateGrant", "ListGrants", "RevokeGrant"),
        "kms:GrantOperations": ("CreateGrant",),
        "kms:GranteePrincipal": ("CreateGrant",),
        "kms:GranteeServicePrincipal": ("CreateGrant",),
        "kms:KeyAgreementAlgorithm": ("DeriveSharedSecret",),
        "kms:MacAlgorithm": ("GenerateMac", "VerifyMac"),
        "kms:MessageType": ("Sign", "Verify"),
        "kms:PrimaryRegion": ("UpdatePrimaryRegion",),
        "kms:ReEncryptOnSameKey": ("ReEncryptFrom", "ReEncryptTo"),
        "kms:RecipientAttestation:": (
            "Decrypt",
            "DeriveSharedSecret",
            "GenerateDataKey",
            "GenerateDataKeyPair",
        ),
        "kms:ReplicaRegion": ("ReplicateKey",),
        "kms:RequestAlias": _ALIASED,
        "kms:RetiringPrincipal": ("CreateGrant",),
        "kms:RetiringServicePrincipal": ("CreateGrant",),
        "kms:RotationPeriodInDays": ("EnableKeyRotation",),
        "kms:ScheduleKeyDeletionPendingWindowInDays": ("ScheduleKeyDeletion",),
        "kms:SigningAlgorithm": ("Sign", "Verify"),
        "kms:TrailingDaysWithoutKeyUsage": ("DisableKey", "ScheduleKeyDeletion"),
        "kms:ValidTo": ("ImportKeyMaterial",),
        "kms:WrappingAlgorithm": ("GetParametersForImport",),
        "kms:WrappingKeySpec": ("GetParametersForImport",),
    }.items()
}
# The actions the reference above describes; for any other KMS action (one newer than it) an
# action-scoped key's presence is not known.
SCOPE_DESCRIBED_ACTIONS = frozenset(
    action.lower() for action in KMS_ACTIONS if action not in ("kms:Encapsulate", "kms:Decapsulate")
)

# Keys whose request-context value is a set (ArrayOf... in the reference): a plain operator on
# them, or a policy variable naming them, has no documented meaning.
MULTIVALUED_KEYS = frozenset(
    key.lower()
    for key in (
        "aws:CalledVia",
        "aws:PrincipalOrgPaths",
        "aws:PrincipalServiceNamesList",
        "aws:ResourceOrgPaths",
        "aws:SourceOrgPaths",
        "aws:TagKeys",
        "kms:EncryptionContextKeys",
        "kms:GrantOperations",
        "kms:ResourceAliases",
    )
)


def action_scope(key: str) -> frozenset[str] | None:
    """The KMS actions whose requests carry the (lower-case) ``key``; None: every action."""
    scope = ACTION_SCOPED_KEYS.get(key)
    if scope is not None:
        return scope
    for prefix, actions in ACTION_SCOPED_KEYS.items():
        if prefix[-1] in ":/" and key.startswith(prefix):
            return actions
    return None
