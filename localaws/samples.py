"""The sample requests in ``events/``, bound to an organization seeded in the local AWS.

The files hold example IDs, as users keep them for ``sam local invoke -e``; here those IDs
are replaced by the seeded organization's, and the ResponseURL by the local CloudFormation
stand-in's, so that every sample runs end to end.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from localaws.cfn import CloudFormation
from localaws.seed import SeededOrg

EVENTS = Path(__file__).resolve().parent.parent / "events"


def placeholders(seeded: SeededOrg) -> dict[str, str]:
    """Example ID in the sample files -> the seeded organization's ID."""
    return {
        "ou-ab12-11111111": seeded.ous["Workloads"],
        "ou-ab12-22222222": seeded.ous["Sandbox"],
        "ou-ab12-33333333": seeded.ous["Prod"],
        "r-ab12": seeded.root_id,
        "111111111111": seeded.accounts["sbx-a"],
        "222222222222": seeded.accounts["prod-b"],
    }


def sample_names() -> list[str]:
    return sorted(path.name for path in EVENTS.glob("*.json"))


def load_event(
    name: str, seeded: SeededOrg, cfn: CloudFormation | None = None, *, dry_run: bool = True
) -> dict[str, Any]:
    """A sample request with the seeded IDs, and a fresh ResponseURL on ``cfn`` when given.

    The samples are DryRun (run by hand, they act on a real account); ``dry_run=False`` takes
    ``DryRun`` out of the new and old properties, as a user does to make them write.
    """
    text = (EVENTS / name).read_text()
    for example, real in placeholders(seeded).items():
        text = text.replace(example, real)
    event: dict[str, Any] = json.loads(text)
    if not dry_run:
        for properties in ("ResourceProperties", "OldResourceProperties"):
            event.get(properties, {}).pop("DryRun", None)
    if cfn is not None:
        request_id = str(uuid.uuid4())
        event["RequestId"] = request_id
        event["ResponseURL"] = cfn.response_url(request_id)
    return event
