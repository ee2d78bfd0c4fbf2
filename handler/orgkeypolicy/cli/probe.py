"""``orgkeypolicy probe``: use the key from each account and hold the outcome against what the
key policy predicts."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from orgkeypolicy.aws import KeyInfo, KeyStore
from orgkeypolicy.cli import probing
from orgkeypolicy.cli.accounts import Prober
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.members import Unreadable, principal_arn, read_members
from orgkeypolicy.cli.output import ExitCode, Output, json_option, key_option, table
from orgkeypolicy.cli.principals import PrincipalRecord, policy_from_key, role_name
from orgkeypolicy.cli.probing import AccountProbe, Result, Tally
from orgkeypolicy.concurrency import fan_out
from orgkeypolicy.evaluation import compile_policy
from orgkeypolicy.identifiers import ACCOUNT_ID
from orgkeypolicy.organization import Progress

if TYPE_CHECKING:
    from orgkeypolicy.cli.main import State

DEFAULT_ROLE = "OrganizationAccountAccessRole"
WORKERS = 8
_SEPARATORS = re.compile(r"[\s,]+")


def account_ids(values: Sequence[str]) -> list[str]:
    """``--accounts`` values, each one ID or several separated by commas or spaces."""
    accounts = [item for value in values for item in _SEPARATORS.split(value) if item]
    for account in accounts:
        if not ACCOUNT_ID.fullmatch(account):
            raise CommandError(f"--accounts {account!r}: is not an account ID (12 digits)")
    return list(dict.fromkeys(accounts))


class _Several(click.Option):
    """A repeatable option that also takes several values at once: ``--accounts A B C``.

    click has no such option; the values after the flag, up to the next option, are fed to
    it one by one, as if the flag had been repeated.
    """

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            # Parser internals: click offers no public hook for this.
            option = parser._long_opt[name]
            take = option.process

            def process(value: str, state: Any, take: Any = take) -> None:
                take(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    take(state.rargs.pop(0), state)

            option.process = process


@click.command("probe")
@key_option
@click.option(
    "--accounts",
    cls=_Several,
    multiple=True,
    metavar="ID...",
    help="Accounts to probe (several after the flag, repeated, or separated by commas).",
)
@click.option(
    "--org",
    is_flag=True,
    help="Probe every ACTIVE account of the organization (the default without --accounts).",
)
@click.option(
    "--role",
    default=DEFAULT_ROLE,
    show_default=True,
    metavar="NAME",
    help="The role to assume in each account (a path is allowed: ops/Probe).",
)
@json_option
@click.pass_obj
def probe(
    state: State,
    key_text: str,
    accounts: tuple[str, ...],
    org: bool,
    role: str,
    as_json: bool,
) -> ExitCode:
    """Use the key from each account and compare with what the key policy predicts.

    In each account, assume --role and call kms:Encrypt on a few bytes, kms:GenerateDataKey,
    and kms:Decrypt on a ciphertext either gave, in the key's region. Each outcome is held
    against what `simulate` predicts for that role. Exit codes: 0 every outcome agrees, 2 one
    disagrees, 1 error. An account whose role cannot be assumed is reported, not fatal.
    """
    output = Output(as_json)
    chosen = account_ids(accounts)
    if chosen and org:
        raise CommandError("--accounts and --org: give one of them")
    role = role_name(role)
    session = state.session()
    key_arn, policy = policy_from_key(KeyStore(session, pool=4), key_text)
    key = KeyInfo.at(key_arn)
    partition = key.ref.partition or "aws"

    with output.progress("Reading the organization") as progress:
        members = read_members(session, partition, role=role, accounts=chosen, progress=progress)
    records: dict[str, PrincipalRecord | None]
    if isinstance(members, Unreadable):
        if not chosen:
            raise CommandError(
                f"--org: the organization cannot be read with these credentials "
                f"({members.reason}); use the management account's or a delegated "
                "administrator's credentials, or name the accounts with --accounts"
            )
        output.note(
            f"The organization cannot be read ({members.reason}): each account's organization "
            "ID comes from the account itself and its OU path is unknown, so predictions that "
            "depend on the path are Unknown."
        )
        records = dict.fromkeys(chosen)
    else:
        records = {record.arn.split(":")[4]: record for record in members}
    if not records:
        output.note("The organization has no ACTIVE account to probe.")

    targets = [
        (account, record.arn if record else principal_arn(partition, account, role))
        for account, record in records.items()
    ]
    with output.progress(f"Probing {len(targets)} accounts") as progress:
        probes = _probe_all(
            Prober(session, key, pool=WORKERS),
            targets,
            ask_organization=isinstance(members, Unreadable),
            progress=progress,
        )
    rows = probing.results(probes, records, compile_policy(policy), key_arn)

    if as_json:
        output.document({"key_arn": key_arn, "results": [row.to_json() for row in rows]})
    else:
        output.show(_table(key_arn, rows))
    tally = Tally.of(rows)
    output.note(_summary(len(targets), tally))
    return ExitCode.CHANGED if tally.disagree else ExitCode.OK


def _probe_all(
    prober: Prober,
    targets: list[tuple[str, str]],
    *,
    ask_organization: bool,
    progress: Progress,
) -> list[AccountProbe]:
    lock = threading.Lock()
    done = 0

    def one(target: tuple[str, str]) -> AccountProbe:
        nonlocal done
        account, arn = target
        result = prober.probe(account, arn, ask_organization=ask_organization)
        with lock:
            done += 1
            progress(done, len(targets))
        return result

    return fan_out(one, targets, WORKERS)


def _agreement(row: Result) -> Text:
    if not row.agrees:
        return Text("NO", style="bold red")
    if not row.counted:
        return Text("-", style="dim")
    return Text("yes", style="green")


def _table(key_arn: str, rows: list[Result]) -> Table:
    return table(
        f"Probe of {key_arn}",
        ("Account", "Action", "Expected", "Observed", "Agrees", "Finding"),
        (
            (row.account, row.action, row.expected, row.observed, _agreement(row), row.finding)
            for row in rows
        ),
    )


def _summary(accounts: int, tally: Tally) -> str:
    parts = [f"{tally.agree} agree", f"{tally.disagree} disagree"]
    if tally.not_counted:
        parts.append(f"{tally.not_counted} not tested or without a prediction")
    line = f"{accounts} account{'' if accounts == 1 else 's'}: {', '.join(parts)}."
    if tally.roles_not_assumed:
        line += f" The role could not be assumed in {tally.roles_not_assumed} of them."
    return line
