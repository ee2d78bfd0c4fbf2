"""``orgkeypolicy plan``: what a Create or Update of a resource would write, before deploying.

The plan is the function's own: ``planning.prepare`` looks the organization up, resolves and
reads the keys, merges and checks every policy exactly as a deploy does, and writes nothing.
Here: where the plan's inputs come from (a properties file or a template, a deployed stack,
the registry) and the command; ``changes`` says what the plan changes for whom, ``planview``
shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import click

from orgkeypolicy import access, keyrefs, planning
from orgkeypolicy.analyzer import AccessAnalyzer
from orgkeypolicy.aws import Identity, KeyStore, OrganizationsDirectory, identity
from orgkeypolicy.aws import organizations_session as reader_session
from orgkeypolicy.cli.changes import (
    PlanReport,
    after_statements,
    key_report,
    organization_members,
    review_all,
)
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.intrinsics import Template
from orgkeypolicy.cli.lookups import DeployedStack, LiveAccount
from orgkeypolicy.cli.output import INPUT_FILE, ExitCode, Output, json_option
from orgkeypolicy.cli.planview import show_plan
from orgkeypolicy.cli.principals import context_from
from orgkeypolicy.cli.sources import (
    ASSIGNMENT,
    parse_document,
    properties_from_file,
    properties_from_template,
    resource_properties,
)
from orgkeypolicy.lifecycle import recorded_keys
from orgkeypolicy.organization import SharedReader
from orgkeypolicy.properties import parse_properties
from orgkeypolicy.registry import Record, Registry
from orgkeypolicy.settings import Settings
from orgkeypolicy.statements import sid_prefix

if TYPE_CHECKING:
    from orgkeypolicy.cli.main import State

# A new resource's Sid prefix depends on the stack ID CloudFormation has not yet chosen:
# the plan uses this one, and says so. The prefix has the same length, so sizes hold.
PLACEHOLDER_STACK = "orgkeypolicy-plan/00000000-0000-0000-0000-000000000000"
NEW_LOGICAL_ID = "NewResource"


def placeholder_stack_id(me: Identity) -> str:
    return f"arn:{me.partition}:cloudformation:{me.region}:{me.account}:stack/{PLACEHOLDER_STACK}"


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
    keyrefs.check_refs(spec.key_refs, me)
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
        reason = review_all(AccessAnalyzer(session, pool=4), reports, verbose=state.debug)
        # A DryRun resource is not reviewed by the function: nothing there blocks.
        blocking = None if spec.dry_run else reason
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
    type=INPUT_FILE,
    metavar="FILE",
    help="A YAML/JSON file holding the Properties map.",
)
@click.option(
    "--template",
    "template_file",
    type=INPUT_FILE,
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
