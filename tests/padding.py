"""Key policies filled to a chosen size, to test the 32 KB limit against the local AWS."""

from __future__ import annotations

import copy
from typing import Any

from orgkeypolicy import keypolicy


def padded(policy: dict[str, Any], size: int) -> dict[str, Any]:
    """A copy of ``policy`` with one more foreign statement, making it exactly ``size`` bytes
    as the handler measures it."""
    document = copy.deepcopy(policy)
    padding: dict[str, Any] = {
        "Sid": "Padding",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {"StringEquals": {"aws:SourceVpc": "vpc-"}},
    }
    document["Statement"].append(padding)
    padding["Condition"]["StringEquals"]["aws:SourceVpc"] += "0" * (size - keypolicy.size(document))
    assert keypolicy.size(document) == size
    return document
