"""The human form of ``orgkeypolicy plan``: the grant, a table of keys, then each changed key's
accounts, access change, findings and policy diff."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.text import Text

from orgkeypolicy import keypolicy
from orgkeypolicy.cli.changes import KeyReport, PlanReport
from orgkeypolicy.cli.output import Output, diff, table
from orgkeypolicy.planning import key_change

# Accounts listed in a line before the rest are counted (--json lists them all).
SHOWN_ACCOUNTS = 20
SHOWN_PRINCIPALS = 3
_CHANGE_STYLES = {"add": "green", "update": "yellow", "remove": "red", "unchanged": "dim"}


def accounts(ids: Sequence[str], reasons: dict[str, str] | None = None) -> str:
    shown = [f"{a} ({reasons[a]})" if reasons else a for a in ids[:SHOWN_ACCOUNTS]]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "") if ids else "none"


def _size(report: KeyReport) -> Text:
    before = keypolicy.size(report.plan.before)
    after = keypolicy.size(report.after)
    style = "bold red" if after > keypolicy.MAX_POLICY_BYTES else ""
    return Text(f"{before:,} -> {after:,}", style=style)


def _access(report: KeyReport) -> RenderableType | None:
    """Principals grouped by what they gain and lose."""
    groups: dict[tuple[tuple[str, ...], ...], list[str]] = {}
    for change in report.access:
        groups.setdefault((change.gained, change.lost, change.unknown), []).append(change.principal)
    if not groups:
        return None
    rows = []
    for (gained, lost, unknown), principals in groups.items():
        names = principals[:SHOWN_PRINCIPALS]
        more = len(principals) - len(names)
        rows.append(
            [
                Text("\n".join(names) + (f"\n+{more:,} more" if more else "")),
                Text(", ".join(gained) or "-", style="green" if gained else "dim"),
                Text(", ".join(lost) or "-", style="red" if lost else "dim"),
                Text(", ".join(unknown) or "-", style="magenta" if unknown else "dim"),
            ]
        )
    return table("Access change", ["principals", "gains", "loses", "undecided"], rows)


def _findings(report: KeyReport) -> RenderableType | None:
    if not report.findings:
        return None
    rows = [
        [
            Text(finding["finding_type"], style="bold red" if finding["blocking"] else ""),
            Text(finding["issue_code"]),
            Text(str(finding["sid"] if finding["sid"] else finding["statement_index"])),
            Text(("blocks the write; " if finding["blocking"] else "") + finding["detail"]),
        ]
        for finding in report.findings
    ]
    return table("IAM Access Analyzer", ["finding", "code", "statement", "detail"], rows)


def _key_details(report: KeyReport) -> list[RenderableType]:
    plan = report.plan
    parts: list[RenderableType] = [Rule(Text(plan.key.arn, style="bold"), align="left")]
    if report.accounts_added or report.accounts_removed:
        parts.append(Text(f"Accounts added: {accounts(report.accounts_added)}", style="green"))
        parts.append(Text(f"Accounts removed: {accounts(report.accounts_removed)}", style="red"))
    for extra in (_access(report), _findings(report)):
        if extra is not None:
            parts.append(extra)
    if report.analyzer is not None and not report.analyzer["available"]:
        parts.append(Text(f"IAM Access Analyzer: {report.analyzer['cause']}", style="yellow"))
    if plan.changed:
        parts.append(
            diff(
                json.dumps(plan.before, indent=2),
                json.dumps(report.after, indent=2),
                name=plan.key.arn,
            )
        )
    return parts


def show_plan(output: Output, report: PlanReport) -> None:
    plan, summary = report.plan, report.summary
    if report.new_resource:
        where = (
            f"New resource {report.logical_id}: Sid prefix {plan.prefix} of the placeholder "
            f"stack {report.stack_id} (the deployed prefix will differ, not its length)"
        )
    else:
        where = f"{report.logical_id} in stack {report.stack_id}: Sid prefix {plan.prefix}"
    lines = [
        Text(where),
        Text(
            f"Organization {summary.organization_id}: {len(summary.granted):,} accounts "
            f"granted: {accounts(summary.granted)}"
        ),
    ]
    if summary.not_granted:
        not_granted = list(summary.not_granted)
        lines.append(Text(f"Not granted: {accounts(not_granted, dict(summary.not_granted))}"))
    output.show(Group(*lines))
    rows = [
        [
            Text(key.plan.key.arn),
            Text(key.plan.mode.value if key.plan.mode else "-"),
            Text(change := key_change(key.plan), style=_CHANGE_STYLES.get(change, "yellow")),
            Text(f"+{len(key.accounts_added):,} -{len(key.accounts_removed):,}"),
            _size(key),
        ]
        for key in report.keys
    ]
    columns = ["key", "mode", "change", "accounts", f"bytes (of {keypolicy.MAX_POLICY_BYTES:,})"]
    output.show(table("Keys", columns, rows))
    for key in report.keys:
        if key.plan.changed or key.findings:
            output.show(Group(*_key_details(key)))
    changed = sum(1 for key in report.keys if key.plan.changed)
    if plan.spec.dry_run:
        verdict = f"DryRun: the deploy writes nothing ({changed} keys would change without it)"
    elif changed:
        verdict = f"{changed} of {len(report.keys)} keys would change"
    else:
        verdict = "Nothing would change"
    output.show(Text(verdict, style="bold"))
    if report.assumed_absent and any(key.plan.changed for key in report.keys):
        output.note(
            "The access change is for requests without "
            + ", ".join(report.assumed_absent)
            + "; give --context KEY=VALUE to include them"
        )
