"""``orgkeypolicy audit``: who used or tried the key, per CloudTrail, against who the key
policy grants now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from orgkeypolicy.aws import KeyInfo, KeyStore
from orgkeypolicy.cli import usage
from orgkeypolicy.cli.members import Unreadable, read_members
from orgkeypolicy.cli.output import ExitCode, Output, json_option, key_option, table
from orgkeypolicy.cli.principals import policy_from_key
from orgkeypolicy.cli.trail import Trail
from orgkeypolicy.cli.usage import AccountAudit, Principals
from orgkeypolicy.evaluation import compile_policy

if TYPE_CHECKING:
    from orgkeypolicy.cli.main import State

DEFAULT_DAYS = 7
MAX_DAYS = 90


@click.command("audit")
@key_option
@click.option(
    "--days",
    type=click.IntRange(1, MAX_DAYS),
    default=DEFAULT_DAYS,
    show_default=True,
    help="How far back to read CloudTrail's event history (at most 90 days).",
)
@json_option
@click.pass_obj
def audit(state: State, key_text: str, days: int, as_json: bool) -> ExitCode:
    """Summarise who used the key, per CloudTrail, against who the key policy grants now.

    Reads the event history of the key's account and region (LookupEvents) over --days: per
    calling account, calls by action, denied attempts, first and last seen. Run it with
    credentials of the key's account. Exit codes: 0 every account that used or tried the key
    is granted now, 2 one is not, 1 error. Granted accounts that never used the key are
    listed, not counted against.
    """
    output = Output(as_json)
    session = state.session()
    key_arn, policy = policy_from_key(KeyStore(session, pool=4), key_text)
    key = KeyInfo.at(key_arn)
    partition = key.ref.partition or "aws"
    end = datetime.now(UTC)
    start = end - timedelta(days=days)

    with output.progress("Reading the organization") as progress:
        members = read_members(session, partition, role=None, progress=progress)
    unreadable = members.reason if isinstance(members, Unreadable) else None
    records = None
    if not isinstance(members, Unreadable):
        records = {record.arn.split(":")[4]: record for record in members}
    if unreadable is not None:
        output.note(f"The organization cannot be read ({unreadable}); see the blind spots.")

    with _counting(output, f"Reading CloudTrail in {key.region}") as counted:
        events = Trail(session, key.region).key_events(key_arn, start, end, counted)
    calls = [call for event in events if (call := usage.key_call(event, key_arn)) is not None]
    rows = usage.audit(
        usage.summarise(calls),
        set(records or ()) | usage.account_principals(policy),
        Principals(partition, records),
        compile_policy(policy),
        key_arn,
    )
    spots = usage.blind_spots(key.account, key.region, days, unreadable)

    if as_json:
        output.document(
            {
                "key_arn": key_arn,
                "days": days,
                "accounts": [row.to_json() for row in rows],
                "blind_spots": spots,
            }
        )
    else:
        output.show(_report(key_arn, days, rows, spots))
    flagged = sum(row.flagged for row in rows)
    unused = sum(row.unused for row in rows)
    output.note(
        f"{len(calls)} calls on the key in {days} days; {flagged} of {len(rows)} accounts used "
        f"or tried it without a grant now; {unused} granted and unused."
    )
    return ExitCode.CHANGED if flagged else ExitCode.OK


@contextmanager
def _counting(output: Output, what: str) -> Iterator[Callable[[int], None]]:
    """A spinner on stderr counting events read: their total is known only at the end."""
    if not output.shows_progress:
        yield lambda read: None
        return
    with output.err.status(what) as status:
        yield lambda read: status.update(f"{what}: {read} events")


def _finding(row: AccountAudit, days: int) -> Text:
    if row.ungranted:
        return Text(f"used or tried without a grant now: {', '.join(row.ungranted)}", "bold red")
    if row.undecided:
        return Text(f"cannot tell for {', '.join(row.undecided)} (see the blind spots)", "yellow")
    if row.unused:
        return Text(f"granted, not used in {days} days", "dim")
    return Text("")


def _calls(row: AccountAudit) -> str:
    return ", ".join(f"{action.removeprefix('kms:')} {n}" for action, n in row.calls.items())


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _report(key_arn: str, days: int, rows: list[AccountAudit], spots: list[str]) -> Group:
    accounts: Table = table(
        f"Use of {key_arn} in the last {days} days",
        ("Account", "Granted", "Calls", "Denied", "First seen", "Last seen", "Finding"),
        (
            (
                row.account,
                "yes" if row.granted else "no",
                _calls(row),
                str(row.denied or ""),
                _when(row.first_seen),
                _when(row.last_seen),
                _finding(row, days),
            )
            for row in rows
        ),
    )
    blind = Text("\n").join(Text(f"- {spot}") for spot in spots)
    return Group(accounts, Text("What this audit cannot see:", style="bold"), blind)
