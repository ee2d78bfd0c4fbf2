"""``orgkeypolicy verify`` and ``orgkeypolicy resync``: is every recorded grant still what a
deploy would write now, and, with ``resync --apply``, make it so.

Both are the re-sync function's own run (``orgkeypolicy.resync.run``) with the function's
settings from the environment: ``verify`` is that run with writing off, ``resync --apply``
with writing on. Here: which resources, which table, the report and the exit code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import click
from botocore.exceptions import ClientError
from rich.console import RenderableType
from rich.text import Text

from orgkeypolicy import resync
from orgkeypolicy.aws import error_code
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.output import ExitCode, Output, json_option, table
from orgkeypolicy.drift import SETTLED, KeyReport, Report, ResourceReport, Status
from orgkeypolicy.errors import RegistryError
from orgkeypolicy.registry import Registry
from orgkeypolicy.settings import Settings
from orgkeypolicy.statements import sid_prefix

if TYPE_CHECKING:
    from orgkeypolicy.cli.main import State

# The registry table is the provider stack's resource RegistryTable; no output names it.
FIND_TABLE = (
    "aws cloudformation describe-stack-resource --stack-name <provider stack> "
    "--logical-resource-id RegistryTable "
    "--query StackResourceDetail.PhysicalResourceId --output text"
)
# Account IDs shown per cell of the human table; --json lists them all.
SHOWN_ACCOUNTS = 3

STYLES = {
    Status.IN_SYNC: "green",
    Status.DRIFT: "yellow",
    Status.KEY_GONE: "magenta",
    Status.STACK_GONE: "magenta",
    Status.ERROR: "bold red",
    Status.DRY_RUN: "dim",
    Status.REMOVED: "dim",
}

SETTINGS_HELP = """The settings are the re-sync function's, read from the environment: give
them the provider's values. ORGANIZATIONS_ROLE_ARN is the reader role the organization is read
through for a resource that names none (without it, with these credentials);
ALLOWED_ORGANIZATIONS_ROLES the other roles a resource may name; KEY_CONSENT,
KEY_CONSENT_TAG_KEY and KEY_CONSENT_TAG_VALUE the key consent; ORG_WALK_CONCURRENCY,
KEY_WRITE_CONCURRENCY and RESYNC_CONCURRENCY the concurrency."""

VERIFY_HELP = f"""Check that every recorded resource's keys hold what a deploy would write now.

Reads the provider's registry (--table, else REGISTRY_TABLE) and runs the re-sync function's
own check with writing off: the same organization lookup, statements, merge and checks. One
resource (--stack-id with --logical-id) or every recorded resource (--all). Per key a status:
in-sync, drift (accounts to add or remove, statements missing or edited), key-gone,
stack-gone or error.

No key policy and no record is written. Each resource's lock (an item of the registry table)
is taken for the moment of its check, so that a deploy under way is never reported as drift.

{SETTINGS_HELP}

Exit codes: 0 all in order, 2 drift found (drift, key-gone or stack-gone), 1 error (a check
failed, the registry cannot be read, the selected resource has no record).
"""

RESYNC_HELP = f"""Bring every recorded resource's keys back to what a deploy would write now.

Without --apply, this is exactly `verify`. With --apply, it does what the re-sync function
does: the keys that drifted are rewritten, each under its lock, read back and put back on
failure, through IAM Access Analyzer's review when ACCESS_ANALYZER is on (the default), at
most KMS_WRITE_RATE PutKeyPolicy a second, with VERIFY_DELAY_SECONDS before each read-back.
Keys and stacks that are gone, and DryRun resources, are reported and never written.

{SETTINGS_HELP}

Exit codes with --apply: 0 every key ended in order (re-synced, or in sync), 2 something is
left as it is (key-gone, stack-gone), 1 error (a write or check failed: that key is reported,
the others are still written). Without --apply, those of `verify`.
"""

F = TypeVar("F", bound=Callable[..., Any])


def selection_options(command: F) -> F:
    """The resource options both commands take: one resource, or --all."""
    for option in reversed(
        (
            click.option("--stack-id", metavar="ARN", help="The resource's stack, by ID (ARN)."),
            click.option("--logical-id", metavar="ID", help="The resource's logical ID."),
            click.option("--all", "every", is_flag=True, help="Every recorded resource."),
            click.option(
                "--table",
                metavar="NAME",
                help="The provider's registry table (default: REGISTRY_TABLE).",
            ),
        )
    ):
        command = option(command)
    return command


def selected(stack_id: str | None, logical_id: str | None, every: bool) -> list[str] | None:
    """The Sid prefixes to check, or ``None`` for every recorded resource."""
    if every:
        if stack_id or logical_id:
            raise click.UsageError("--all checks every resource: leave out --stack-id/--logical-id")
        return None
    if not stack_id or not logical_id:
        raise click.UsageError("give --stack-id ARN with --logical-id ID, or --all")
    if not stack_id.startswith("arn:") or ":stack/" not in stack_id:
        raise CommandError(
            f"--stack-id {stack_id}: give the stack's ID (arn:…:stack/NAME/ID), not its name: "
            f"aws cloudformation describe-stacks --stack-name {stack_id} "
            "--query Stacks[0].StackId --output text"
        )
    return [sid_prefix(stack_id, logical_id)]


def settings_for(table: str | None) -> Settings:
    """The function's settings from the environment, with the table of --table."""
    settings = Settings.from_environment()
    table = table or settings.registry_table
    if not table:
        raise CommandError(
            "no registry table: give --table NAME or set REGISTRY_TABLE; the table is the "
            f"provider stack's resource RegistryTable: {FIND_TABLE}"
        )
    return replace(settings, registry_table=table)


@contextmanager
def table_found(table: str, region: str | None) -> Iterator[None]:
    """A table that does not exist, said with the fix for the command line."""
    try:
        yield
    except RegistryError as error:
        cause = error.__cause__
        if isinstance(cause, ClientError) and error_code(cause) == "ResourceNotFoundException":
            raise CommandError(
                f"--table {table}: no such DynamoDB table in {region or 'this region'}; "
                f"give the provider's region (--region) and table: {FIND_TABLE}"
            ) from error
        raise


def check(
    state: State,
    output: Output,
    only: list[str] | None,
    settings: Settings,
    *,
    apply: bool,
) -> ExitCode:
    session = state.session()
    table = str(settings.registry_table)
    with table_found(table, session.region_name):
        if only is not None:
            [prefix] = only
            if Registry(session, table).get(prefix) is None:
                raise CommandError(
                    f"no record of the resource with Sid prefix {prefix} in registry table "
                    f"{table}; check --stack-id, --logical-id and --table"
                )
        doing = "Re-syncing resources" if apply else "Checking resources"
        with output.progress(doing) as progress:
            report = resync.run(session, settings, only=only, apply=apply, progress=progress)
    if output.as_json:
        output.document(report.detail())
    else:
        for resource in report.resources:
            show_resource(output, resource, report.applied)
    output.note(summary(report, table))
    code = exit_code(report)
    if code is ExitCode.ERROR:
        raise CommandError(first_failure(report))
    return code


def remaining(resource: ResourceReport, applied: bool) -> set[Status]:
    """What is left of the resource's statuses after the run."""
    if resource.settled_as is not None:
        return {resource.settled_as}
    statuses = {key.status for key in resource.keys}
    if applied:
        # Each drifted key was written and read back, or found in order under its lock; a
        # write that failed made it an error.
        statuses.discard(Status.DRIFT)
    return statuses or {Status.IN_SYNC}


def exit_code(report: Report) -> ExitCode:
    """1 when a check or a write failed (the result is incomplete), else 2 when anything is
    not as a deploy would leave it, else 0."""
    left = set().union(*(remaining(r, report.applied) for r in report.resources))
    if Status.ERROR in left:
        return ExitCode.ERROR
    return ExitCode.CHANGED if left - SETTLED else ExitCode.OK


def first_failure(report: Report) -> str:
    """The one line of exit code 1: the first failure, and how many there are."""
    failures = [
        (resource, key)
        for resource in report.resources
        for key in ([None] if resource.settled_as is Status.ERROR else resource.keys)
        if key is None or key.status is Status.ERROR
    ]
    resource, key = failures[0]
    reason = (key.reason if key else resource.reason) or "no reason given"
    where = f"{resource.sid_prefix}, {key.key_arn}" if key else resource.sid_prefix
    more = f" ({len(failures) - 1} more failures in the report)" if len(failures) > 1 else ""
    return f"could not check or re-sync {where}: {reason}{more}"


# --- The report -------------------------------------------------------------------------------


def status_text(status: Status) -> Text:
    return Text(status.value, style=STYLES[status])


def key_status(key: KeyReport, applied: bool) -> Text:
    text = status_text(key.status)
    if key.rewritten:
        text.append(" → re-synced", style="green")
    elif applied and key.status is Status.DRIFT:
        text.append(" → in order", style="green")
    return text


def accounts(ids: Iterable[str]) -> Text:
    ids = list(ids)
    if not ids:
        return Text("-", style="dim")
    shown = ", ".join(ids[:SHOWN_ACCOUNTS])
    more = ", …" if len(ids) > SHOWN_ACCOUNTS else ""
    return Text(f"{len(ids)}: {shown}{more}")


def statements(key: KeyReport) -> Text:
    found = [
        word
        for word, flag in (
            ("missing", key.difference.statements_missing),
            ("edited", key.difference.statements_edited),
        )
        if flag
    ]
    return Text(", ".join(found), style="yellow") if found else Text("-", style="dim")


def note(key: KeyReport, applied: bool) -> str:
    if key.reason:
        return key.reason
    if applied and key.status is Status.DRIFT and not key.rewritten:
        return "already in order when its lock was taken: nothing written"
    return ""


def heading(resource: ResourceReport) -> Text:
    parts = resource.stack_id.split(":")
    where = f"stack {parts[5].split('/')[1]} ({parts[4]}, {parts[3]})" if len(parts) > 5 else "?"
    text = Text()
    text.append(resource.logical_id or "?", style="bold")
    text.append(f" in {where}, Sid prefix {resource.sid_prefix}: ")
    text.append_text(status_text(resource.status))
    return text


def key_name(key_arn: str, region: str) -> str:
    """The key ID, and its region when it is not the stack's (the account is the stack's:
    a resource shares keys of its own account only). The JSON has the whole ARN."""
    parts = key_arn.split(":")
    if len(parts) < 6 or not parts[5].startswith("key/"):
        return key_arn  # a reference that names no key any more: as the properties give it
    key_id = parts[5].removeprefix("key/")
    return key_id if parts[3] == region else f"{key_id} ({parts[3]})"


def show_resource(output: Output, resource: ResourceReport, applied: bool) -> None:
    output.show(heading(resource))
    if resource.reason:
        output.show(Text(f"  {resource.reason}"))
    if not resource.keys:
        return
    region = resource.stack_id.split(":")[3] if resource.stack_id.count(":") >= 5 else ""
    notes = [note(key, applied) for key in resource.keys]
    columns = ["Key", "Status", "Accounts to add", "Accounts to remove", "Statements"]
    rows: list[list[RenderableType]] = [
        [
            key_name(key.key_arn, region),
            key_status(key, applied),
            accounts(key.difference.accounts_to_add),
            accounts(key.difference.accounts_to_remove),
            statements(key),
        ]
        for key in resource.keys
    ]
    if any(notes):
        columns.append("Note")
        for row, text in zip(rows, notes, strict=True):
            row.append(text)
    shown = table("", columns, rows)
    # A key ID cut short names no key, nor does an account ID: they fold or wrap instead.
    shown.columns[0].overflow = "fold"
    for column in shown.columns[2:4]:
        column.min_width = len("123456789012,")
    output.show(shown)


def summary(report: Report, table: str) -> str:
    if not report.resources:
        return f"No resource is recorded in registry table {table}."
    resources = Counter(resource.status.value for resource in report.resources)
    keys = Counter(key.status.value for resource in report.resources for key in resource.keys)
    line = (
        f"{len(report.resources)} resource(s): {_counts(resources)}; "
        f"{sum(keys.values())} key(s): {_counts(keys) or 'none'}"
    )
    if report.applied:
        line += f"; {len(report.rewritten())} re-synced"
    elif report.keys(Status.DRIFT):
        line += "; `orgkeypolicy resync --apply` with the same selection rewrites the drifted keys"
    return line + "."


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(counter.items()))


# --- The commands -----------------------------------------------------------------------------


@click.command("verify", help=VERIFY_HELP, short_help="Is every recorded grant still true?")
@selection_options
@json_option
@click.pass_obj
def verify(
    state: State,
    stack_id: str | None,
    logical_id: str | None,
    every: bool,
    table: str | None,
    as_json: bool,
) -> ExitCode:
    only = selected(stack_id, logical_id, every)
    output = Output(as_json)
    return check(state, output, only, settings_for(table), apply=False)


@click.command("resync", help=RESYNC_HELP, short_help="Rewrite the keys that drifted.")
@selection_options
@click.option("--apply", is_flag=True, help="Rewrite the drifted keys (else: verify).")
@json_option
@click.pass_obj
def resync_command(
    state: State,
    stack_id: str | None,
    logical_id: str | None,
    every: bool,
    table: str | None,
    apply: bool,
    as_json: bool,
) -> ExitCode:
    only = selected(stack_id, logical_id, every)
    output = Output(as_json)
    return check(state, output, only, settings_for(table), apply=apply)
