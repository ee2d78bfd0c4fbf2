"""``orgkeypolicy plan``: what a Create or Update of a resource would write, before deploying.

The plan is the function's own: ``planning.prepare`` looks the organization up, resolves and
reads the keys, merges and checks every policy exactly as a deploy does, and writes nothing.
This module adds what a person reviewing the change wants to see on top of it: per key, the
accounts gained and lost, the access change (the evaluator, on the whole policies before and
after), and IAM Access Analyzer's findings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import click

from orgkeypolicy import access, keypolicy, planning
from orgkeypolicy.analyzer import AccessAnalyzer, AccessAnalyzerError, Finding, require_clean
from orgkeypolicy.aws import Identity, KeyStore, OrganizationsDirectory, identity
from orgkeypolicy.aws import organizations_session as reader_session
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.intrinsics import Template
from orgkeypolicy.cli.lookups import DeployedStack, LiveAccount
from orgkeypolicy.cli.output import ExitCode, Output, json_option
from orgkeypolicy.cli.planview import show_plan
from orgkeypolicy.cli.principals import context_from
from orgkeypolicy.cli.sources import (
    ASSIGNMENT,
    parse_document,
    properties_from_file,
    properties_from_template,
    resource_properties,
)
from orgkeypolicy.errors import OrgKeyPolicyError
from orgkeypolicy.lifecycle import recorded_keys
from orgkeypolicy.organization import Reader, SharedReader, walk
from orgkeypolicy.planning import AccessSummary, KeyPlan, Plan
from orgkeypolicy.properties import parse_properties
from orgkeypolicy.registry import Record, Registry
from orgkeypolicy.settings import Settings
from orgkeypolicy.statements import Statement, sid_prefix

if TYPE_CHECKING:
    from orgkeypolicy.cli.main import State

# A new resource's Sid prefix depends on the stack ID CloudFormation has not yet chosen:
# the plan uses this one, and says so. The prefix has the same length, so sizes hold.
PLACEHOLDER_STACK = "orgkeypolicy-plan/00000000-0000-0000-0000-000000000000"
NEW_LOGICAL_ID = "NewResource"


def placeholder_stack_id(me: Identity) -> str:
    return f"arn:{me.partition}:cloudformation:{me.region}:{me.account}:stack/{PLACEHOLDER_STACK}"


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


# --- Where the plan's inputs come from --------------------------------------------------------


def deployed_properties(
    stack: DeployedStack, logical_id: str, output: Output
) -> Mapping[str, Any] | None:
    """The properties the stack deployed the resource with (its processed template, resolved
    against the stack), as an Update would receive them in ``OldResourceProperties``."""
    try:
        body = stack.template()
        document = parse_document(body, f"stack {stack.name}") if isinstance(body, str) else body
        template = Template.from_document(document, f"stack {stack.name}")
        if logical_id not in template.resources:
            return None
        return resource_properties(template, logical_id, {}, stack)
    except CommandError as error:
        output.note(f"The deployed properties of {logical_id} are not known ({error})")
        return None


def registry_record(
    session: boto3.Session, table: str | None, prefix: str, output: Output
) -> Record | None:
    if not table:
        output.note(
            "No registry table (--table or REGISTRY_TABLE): the keys written before are taken "
            "from the deployed template only"
        )
        return None
    return Registry(session, table).get(prefix)


def make_plan(
    state: State,
    output: Output,
    properties: Mapping[str, Any],
    stack: DeployedStack | None,
    logical_id: str,
    table: str | None,
    context: Mapping[str, tuple[str, ...]],
    analyzer: bool,
) -> PlanReport:
    session = state.session()
    settings = Settings()
    me = identity(session)
    stack_id = stack.stack_id if stack else placeholder_stack_id(me)
    prefix = sid_prefix(stack_id, logical_id)
    spec = parse_properties(properties)
    planning.check_refs(spec.key_refs, me)
    previous: Mapping[str, Any] | None = None
    record = None
    if stack is not None:
        record = registry_record(session, table, prefix, output)
        previous = deployed_properties(stack, logical_id, output)
        if previous is None and record is not None:
            previous = record.properties
    reader = SharedReader(
        OrganizationsDirectory(
            reader_session(session, spec.organizations_role_arn, f"OrgKeyPolicy-plan-{prefix}"),
            me.partition,
            pool=settings.org_workers,
        )
    )
    store = KeyStore(session, pool=settings.key_workers)
    plan = planning.prepare(
        spec, prefix, reader, store, me, previous, recorded_keys(record), settings
    )
    organization_id = plan.lookup.grantees.organization_id
    key_plans = [*plan.targets, *plan.cleanups]
    statements = [s for kp in key_plans for s in (*kp.current, *after_statements(kp))]
    members = organization_members(
        reader, organization_id, access.unit_grants(statements), settings.org_workers, output
    )
    reports = [key_report(kp, members, organization_id, me.partition, context) for kp in key_plans]
    blocking = None
    if analyzer:
        service = AccessAnalyzer(session, pool=4)
        # The keys the function's review looks at: those gaining or changing statements
        # (removals and put-backs are never reviewed), and none on a DryRun.
        reviewed = [report for report in reports if report.plan.wanted and report.plan.changed]
        with _quiet(ANALYZER_LOG, unless=state.debug):
            reasons = [review(service, report) for report in reviewed]
        if not spec.dry_run:
            blocking = next((reason for reason in reasons if reason), None)
    given = {key.lower() for key in context}
    absent = tuple(k for k in access.request_keys(statements) if k.lower() not in given)
    return PlanReport(
        stack_id,
        logical_id,
        stack is None,
        plan,
        planning.access_summary(plan),
        reports,
        absent,
        blocking,
    )


PLAN_HELP = """Show what deploying a Custom::OrgKeyPolicy resource would write, and write nothing.

The properties come from a file holding the Properties map (--properties), or from a
resource of a CloudFormation template (--template with --logical-id; parameters from
--parameter, else the deployed stack's, else their defaults; a Ref or GetAtt to another
resource is read from the deployed stack given by --stack or --stack-id, else refused).

With a stack, the Sid prefix is the deployed resource's, and the keys it wrote before (its
deployed properties' and the registry's record, with --table or REGISTRY_TABLE) are planned
too, as an Update would; without one, the plan is a new resource's, under a placeholder
stack ID (the Sid prefix deployed will differ; its length, so every size, will not).

The plan is the function's own: same lookup, same merge, same checks; a property the
function would refuse is an error here with the same reason. Per key: the principal mode
(what Auto picks), the accounts gained and lost, the access change (who gains or loses which
actions: the key policy before and after, evaluated offline; --context adds request keys),
the policy's diff and size against 32,768 bytes, and with --access-analyzer IAM Access
Analyzer's findings (ValidatePolicy, CheckNoPublicAccess, CheckNoNewAccess).

Exit codes: 0 nothing would change, 2 something would, 1 error (a refused property, or a
finding that Access Analyzer blocks a write for).
"""


@click.command("plan", help=PLAN_HELP, short_help="What a deploy would write, before it does.")
@click.option(
    "--properties",
    "properties_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="A YAML/JSON file holding the Properties map.",
)
@click.option(
    "--template",
    "template_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="A CloudFormation template (with --logical-id).",
)
@click.option(
    "--parameter",
    "parameters",
    type=ASSIGNMENT,
    multiple=True,
    help="A template parameter's value (repeat).",
)
@click.option("--logical-id", metavar="ID", help="The resource's logical ID.")
@click.option("--stack-id", metavar="ARN", help="The deployed stack, by ID.")
@click.option("--stack", "stack_name", metavar="NAME", help="The deployed stack, by name.")
@click.option(
    "--table",
    metavar="NAME",
    envvar="REGISTRY_TABLE",
    help="The provider's registry table (default: REGISTRY_TABLE).",
)
@click.option(
    "--context",
    "context_pairs",
    type=ASSIGNMENT,
    multiple=True,
    help="A request context key for the access change (repeat).",
)
@click.option("--access-analyzer", is_flag=True, help="Ask IAM Access Analyzer too.")
@json_option
@click.pass_obj
def plan(
    state: State,
    properties_file: Path | None,
    template_file: Path | None,
    parameters: tuple[tuple[str, str], ...],
    logical_id: str | None,
    stack_id: str | None,
    stack_name: str | None,
    table: str | None,
    context_pairs: tuple[tuple[str, str], ...],
    access_analyzer: bool,
    as_json: bool,
) -> ExitCode:
    output = Output(as_json)
    if (properties_file is None) == (template_file is None):
        raise CommandError("give the properties: --properties FILE or --template FILE")
    if parameters and template_file is None:
        raise CommandError("--parameter goes with --template")
    if stack_id and stack_name:
        raise CommandError("give the stack once: --stack NAME or --stack-id ARN")
    stack_ref = stack_id or stack_name
    if stack_ref and not logical_id:
        raise CommandError(
            "--logical-id is required with a stack: the Sid prefix comes from the stack ID "
            "and the logical ID"
        )
    session = state.session()
    stack = DeployedStack(session, stack_ref) if stack_ref else None
    if template_file is not None:
        properties = properties_from_template(
            template_file, logical_id, parameters, stack or LiveAccount(session)
        )
    else:
        properties = properties_from_file(Path(str(properties_file)))
    report = make_plan(
        state,
        output,
        properties,
        stack,
        logical_id or NEW_LOGICAL_ID,
        table,
        context_from(context_pairs),
        access_analyzer,
    )
    if as_json:
        output.document(report.data())
    else:
        show_plan(output, report)
    if report.blocking:
        raise CommandError(report.blocking)
    return ExitCode.CHANGED if report.changed else ExitCode.OK
