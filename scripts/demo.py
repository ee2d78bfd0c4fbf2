"""The demo: OrgKeyPolicy end to end against a local AWS, as CloudFormation would drive it.

It starts moto's server on 127.0.0.1, seeds an organization (nested OUs, a suspended
account) and two keys that already hold statements of their own, then sends the sample
requests of ``events/`` (Create, Update, Delete) to the real handler. CloudFormation's side
is a local HTTPS endpoint that receives each response. For every key it prints the policy
before and after, and which accounts each step grants.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "handler"), str(ROOT)]

from localaws.cfn import CloudFormation, FakeLambdaContext  # noqa: E402
from localaws.registry import REGISTRY_TABLE, create_registry_table  # noqa: E402
from localaws.samples import load_event  # noqa: E402
from localaws.seed import SeededOrg, seed_demo_org  # noqa: E402
from localaws.server import LocalAws, patched_environment  # noqa: E402


def account_names(seeded: SeededOrg) -> dict[str, str]:
    names = {account_id: name for name, account_id in seeded.accounts.items()}
    names[seeded.management_account_id] = "management"
    return names


def grants(policy: dict[str, Any], prefix: str, seeded: SeededOrg) -> list[str]:
    """What this resource's statements grant, in words."""
    names = account_names(seeded)
    lines = []
    for statement in policy["Statement"]:
        if not str(statement.get("Sid", "")).startswith(prefix):
            continue
        principal = statement["Principal"]["AWS"]
        if principal == "*":
            paths = next(
                value["aws:PrincipalOrgPaths"]
                for op, value in statement["Condition"].items()
                if "aws:PrincipalOrgPaths" in value
            )
            who = f"every account under {', '.join(paths)}"
        else:
            arns = [principal] if isinstance(principal, str) else principal
            who = ", ".join(names.get(arn.split(":")[4], arn.split(":")[4]) for arn in arns)
        lines.append(
            f"    {statement['Sid'].removeprefix(prefix)}: "
            f"{', '.join(statement['Action'])} -> {who}"
        )
    return lines or ["    (no statements of this resource)"]


def show_policy(title: str, policy: dict[str, Any]) -> None:
    print(f"{title}:")
    print("  " + json.dumps(policy, indent=2).replace("\n", "\n  "))


def main() -> int:
    with LocalAws.start() as aws, CloudFormation.start() as cfn:
        env = {
            **aws.environment(),
            **cfn.environment(),
            "VERIFY_DELAY_SECONDS": "0.2",
            "REGISTRY_TABLE": REGISTRY_TABLE,
            # moto has no IAM Access Analyzer: the review would only say so.
            "ACCESS_ANALYZER": "false",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
        with patched_environment(env):
            logging.disable(logging.INFO)  # the handler's structured log would drown the story
            # Imported here: the handler reads its settings from the environment just set.
            import app  # noqa: PLC0415

            seeded = seed_demo_org(aws.url)
            create_registry_table(aws.url)
            names = account_names(seeded)
            print(f"Local AWS at {aws.url}; organization {seeded.org_id}, root {seeded.root_id}")
            print(
                "  Workloads > Prod: prod-a, prod-b, prod-closed (SUSPENDED); "
                "Prod > Critical: crit-a"
            )
            print("  Workloads > Dev: dev-a;  Sandbox: sbx-a;  root: the management account\n")
            kms = aws.kms()

            def policy(key: str) -> dict[str, Any]:
                document: dict[str, Any] = json.loads(
                    kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
                )
                return document

            for name, key in seeded.keys.items():
                show_policy(f"{seeded.aliases[name]} before", policy(key))
            failures = 0
            for sample in ("create.json", "update.json", "delete.json"):
                event = load_event(sample, seeded, cfn)
                app.lambda_handler(event, FakeLambdaContext())
                response = cfn.response(event)
                print(
                    f"\n{event['RequestType']} ({sample}) -> "
                    f"{response.status} {response.reason}".rstrip()
                )
                print(
                    f"  PhysicalResourceId {response.physical_id}, response {response.size} bytes"
                )
                granted = [
                    names.get(a, a)
                    for a in filter(None, response.data.get("AccountIds", "").split(","))
                ]
                if granted:
                    print(
                        f"  AccountIds: {', '.join(granted)} "
                        "(prod-closed is SUSPENDED: not granted)"
                    )
                failures += response.status != "SUCCESS"
                for name, key in seeded.keys.items():
                    print(f"  {seeded.aliases[name]}:")
                    prefix = str(response.physical_id)
                    print("\n".join(grants(policy(key), prefix, seeded)))
            print()
            restored = all(
                policy(key) == seeded.original_policies[key] for key in seeded.keys.values()
            )
            for name, key in seeded.keys.items():
                show_policy(f"{seeded.aliases[name]} after Delete", policy(key))
            print(
                f"\nOriginal policies restored exactly after Delete: {'yes' if restored else 'NO'}"
            )
            return 0 if restored and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
