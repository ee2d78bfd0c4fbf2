"""What one plan changes, key by key, for whom: the accounts a resource's statements reach
before and after, the access change (the evaluator, on the whole policies), and IAM Access
Analyzer's findings. The reports ``orgkeypolicy plan`` prints, as JSON or through
``planview``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orgkeypolicy import access, keypolicy, planning
from orgkeypolicy.analyzer import AccessAnalyzer, AccessAnalyzerError, Finding, require_clean
from orgkeypolicy.cli.output import Output
from orgkeypolicy.errors import OrgKeyPolicyError
from orgkeypolicy.organization import Reader, walk
from orgkeypolicy.planning import AccessSummary, KeyPlan, Plan
from orgkeypolicy.statements import Statement


@dataclass
class KeyReport:
    """One key of the plan, with what it changes for whom."""

    plan: KeyPlan
    accounts_added: tuple[str, ...] = ()
    accounts_removed: tuple[str, ...] = ()
    access: list[access.AccessChange] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    analyzer: dict[str, Any] | None = None
    """IAM Access Analyzer's status for this key; ``None`` without ``--access-analyzer``."""

    @property
    def after(self) -> keypolicy.Policy:
        return self.plan.after()

    def data(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "key_arn": plan.key.arn,
            "mode": plan.mode.value if plan.mode else None,
            "changed": plan.changed,
            "change": planning.key_change(plan),
            "accounts_added": list(self.accounts_added),
            "accounts_removed": list(self.accounts_removed),
            "size_before": keypolicy.size(plan.before),
            "size_after": keypolicy.size(self.after),
            "before": plan.before,
            "after": self.after,
            "findings": self.findings,
            "access": [change.data() for change in self.access],
            "access_analyzer": self.analyzer,
        }


@dataclass
class PlanReport:
    stack_id: str
    logical_id: str
    new_resource: bool
    plan: Plan
    summary: AccessSummary
    keys: list[KeyReport]
    assumed_absent: tuple[str, ...] = ()
    """Condition keys the access change took as absent from requests (no ``--context``)."""
    blocking: str | None = None
    """Access Analyzer's reason to refuse the write, if it has one."""

    @property
    def changed(self) -> bool:
        """Whether the deploy would write anything (a DryRun resource writes nothing)."""
        return not self.plan.spec.dry_run and any(key.plan.changed for key in self.keys)

    def data(self) -> dict[str, Any]:
        return {
            "sid_prefix": self.plan.prefix,
            "organization_id": self.summary.organization_id,
            "changed": self.changed,
            "stack_id": self.stack_id,
            "logical_id": self.logical_id,
            "new_resource": self.new_resource,
            "dry_run": self.plan.spec.dry_run,
            "accounts_granted": list(self.summary.granted),
            "accounts_not_granted": dict(self.summary.not_granted),
            "keys": [key.data() for key in self.keys],
        }


# --- The organization's side of the access change ---------------------------------------------


def organization_members(
    reader: Reader,
    organization_id: str,
    grants: Sequence[tuple[str, bool]],
    workers: int,
    output: Output,
) -> dict[str, str]:
    """ACTIVE accounts under the organization paths the statements grant by, each with its
    ``aws:PrincipalOrgPaths`` value. The reader is the plan's own, so the units the lookup
    listed already are not listed again."""
    members: dict[str, str] = {}
    for path, nested in grants:
        if not path.startswith(f"{organization_id}/"):
            continue
        unit = path.rstrip("/").rsplit("/", 1)[1]
        try:
            tree = walk(reader, [unit], include_nested=nested, max_workers=workers)
        except OrgKeyPolicyError as error:
            output.note(f"{path}: not listed ({error}); left out of the access change")
            continue
        for account_id, account in tree.accounts.items():
            if not account.active:
                continue
            chain: list[str] = []
            parent = tree.parents[account_id]
            while parent != unit:
                chain.insert(0, parent)
                parent = tree.parents[parent]
            members.setdefault(account_id, path + "".join(f"{step}/" for step in chain))
    return members


def after_statements(plan: KeyPlan) -> list[Statement]:
    """The resource's statements on the key once the plan is carried out."""
    return plan.current if plan.skipped else plan.wanted


def key_report(
    plan: KeyPlan,
    members: Mapping[str, str],
    organization_id: str,
    partition: str,
    context: Mapping[str, tuple[str, ...]],
) -> KeyReport:
    """Accounts gained and lost, and who gains or loses which actions, on one key."""
    current, wanted = plan.current, after_statements(plan)
    before = access.reached_accounts(current, members, organization_id, partition)
    after = access.reached_accounts(wanted, members, organization_id, partition)
    roles = sorted({*access.role_names(current), *access.role_names(wanted)})
    # An account grant without RoleNames lets in any principal of the account: its root
    # stands for them. With RoleNames on both sides, the named roles are the ones to watch.
    as_root = any(s and not access.role_names(s) for s in (current, wanted))
    principals = access.account_principals(
        before | after, members, organization_id, partition, roles, context
    )
    if as_root and roles:
        principals += access.account_principals(
            before | after, members, organization_id, partition, (), context
        )
    changes = access.access_changes(
        plan.before,
        plan.after(),
        principals,
        access.statement_actions([*current, *wanted]),
        plan.key.arn,
    )
    return KeyReport(
        plan,
        accounts_added=tuple(sorted(after - before)),
        accounts_removed=tuple(sorted(before - after)),
        access=changes,
    )


# --- IAM Access Analyzer ----------------------------------------------------------------------

# The review logs every finding for the function's log; the plan shows them itself.
ANALYZER_LOG = "orgkeypolicy.analyzer"


@contextmanager
def _quiet(name: str, *, unless: bool) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    if not unless:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _finding(finding: Finding, blocking: bool) -> dict[str, Any]:
    return {
        "finding_type": finding.finding_type,
        "issue_code": finding.issue_code,
        "detail": finding.detail,
        "statement_index": finding.statement_index,
        "sid": finding.sid,
        "ours": finding.ours,
        "blocking": blocking,
        "learn_more": finding.learn_more,
    }


def review(analyzer: AccessAnalyzer, report: KeyReport) -> str | None:
    """Access Analyzer's findings on the merged policy, into ``report``, and the reason the
    function's review would refuse the write, if any; CheckNoNewAccess's reasons say where the
    change grants access the policy did not grant before."""
    plan, after = report.plan, report.after
    result = analyzer.review(plan.key.arn, after, plan.prefix)
    report.findings = [_finding(f, f in result.blocking) for f in result.findings]
    answer = analyzer.check_no_new_access(plan.key.arn, after, plan.before)
    new_access = None if answer is None else str(answer.get("result"))
    statements = keypolicy.parse(keypolicy.serialize(after))["Statement"]
    for reason in (answer or {}).get("reasons", []) if new_access == "FAIL" else []:
        index = reason.get("statementIndex")
        statement = statements[index] if isinstance(index, int) else {}
        report.findings.append(
            {
                "finding_type": "NEW_ACCESS",
                "issue_code": "CheckNoNewAccess",
                "detail": str(reason.get("description", "")),
                "statement_index": index,
                "sid": statement.get("Sid", reason.get("statementId")),
                "ours": keypolicy.owns(statement, plan.prefix),
                "blocking": False,
                "learn_more": None,
            }
        )
    causes = [result.cause] if result.cause else []
    if new_access is None:
        causes.append("CheckNoNewAccess did not answer")
    report.analyzer = {
        "available": not causes,
        "cause": "; ".join(causes),
        "public": result.public,
        "new_access": new_access,
    }
    try:
        require_clean(result, plan.key.arn)
    except AccessAnalyzerError as error:
        return str(error)
    return None


def review_all(
    analyzer: AccessAnalyzer, reports: Sequence[KeyReport], *, verbose: bool
) -> str | None:
    """Review the keys the function's review looks at: those gaining or changing statements
    (removals and put-backs are never reviewed). The first reason it would refuse a write."""
    reviewed = [report for report in reports if report.plan.wanted and report.plan.changed]
    with _quiet(ANALYZER_LOG, unless=verbose):
        reasons = [review(analyzer, report) for report in reviewed]
    return next((reason for reason in reasons if reason), None)
