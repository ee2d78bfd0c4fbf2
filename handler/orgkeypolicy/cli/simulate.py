"""``orgkeypolicy simulate``: who can use a key, decided offline from its key policy.

The principals come from a file, the options, or the live organization; the evaluator
(``orgkeypolicy.evaluation``) decides every principal and action. The human output groups the
principals that the policy treats alike (a 5,000-account organization is a handful of groups)
and shows one column per group; ``--json`` gives every decision.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Group
from rich.text import Text

from orgkeypolicy.aws import KeyStore, identity
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.lookups import OrganizationReader
from orgkeypolicy.cli.output import INPUT_FILE, ExitCode, Output, json_option, table
from orgkeypolicy.cli.principals import (
    PrincipalRecord,
    context_from,
    organization_principals,
    policy_from_file,
    policy_from_key,
    principal,
    principals_from_file,
    with_context,
)
from orgkeypolicy.cli.sources import ASSIGNMENT
from orgkeypolicy.evaluation import KMS_ACTIONS, Answer, Decision, compile_policy, evaluate_matrix
from orgkeypolicy.settings import Settings

if TYPE_CHECKING:
    from orgkeypolicy.cli.main import State

# Columns of the human matrix: more groups than this are counted, not shown.
MAX_GROUPS = 6
# Principals named per group in the legend.
SHOWN_PER_GROUP = 3

_KMS_ACTIONS = {action.lower(): action for action in KMS_ACTIONS}
_CELLS = {
    Decision.ALLOW: ("Allow", "green"),
    Decision.EXPLICIT_DENY: ("ExplicitDeny", "bold red"),
    Decision.IMPLICIT_DENY: ("ImplicitDeny", "dim"),
    Decision.UNKNOWN: ("Unknown", "magenta"),
}


def request_actions(names: Sequence[str]) -> tuple[str, ...]:
    """The ``--action`` values as KMS spells them; every KMS action when none is given.

    A request names one action: a wildcard is what a policy holds, not what a caller asks.
    """
    if not names:
        return KMS_ACTIONS
    actions: dict[str, None] = {}
    for name in names:
        if "*" in name or "?" in name:
            raise CommandError(
                f"--action {name}: name one action (kms:Decrypt); a request has no wildcards"
            )
        action = _KMS_ACTIONS.get(name.lower())
        if action is None:
            close = difflib.get_close_matches(name.lower(), list(_KMS_ACTIONS), n=1)
            hint = f"; did you mean {_KMS_ACTIONS[close[0]]}?" if close else ""
            raise CommandError(f"--action {name}: is not a KMS action{hint}")
        actions[action] = None
    return tuple(actions)


@dataclass(frozen=True)
class Simulation:
    key_arn: str | None
    actions: tuple[str, ...]
    answers: list[Answer]
    """Principal by principal, ``actions`` in order."""

    @property
    def unsupported(self) -> list[str]:
        return sorted({reason for answer in self.answers for reason in answer.unsupported})

    @property
    def decided(self) -> bool:
        return all(answer.decision is not Decision.UNKNOWN for answer in self.answers)

    def rows(self) -> list[list[Answer]]:
        width = len(self.actions)
        return [self.answers[i : i + width] for i in range(0, len(self.answers), width)]

    def document_text(self) -> str:
        """The JSON document, one decision per line (greppable). What ``json.dumps`` writes
        for each decision, put together from the encodings of its parts: 200,000 decisions
        share a few thousand principals, a few dozen actions and a handful of outcomes."""
        encode = json.JSONEncoder(ensure_ascii=False).encode
        principals: dict[str, str] = {}
        actions = {action: encode(action) for action in self.actions}
        outcomes: dict[tuple[Decision, tuple[str, ...], bool], str] = {}
        lines = []
        for answer in self.answers:
            principal = principals.get(answer.principal)
            if principal is None:
                principal = principals[answer.principal] = encode(answer.principal)
            key = (answer.decision, answer.statements, answer.delegated)
            outcome = outcomes.get(key)
            if outcome is None:
                outcome = outcomes[key] = (
                    f'"decision": {encode(answer.decision.value)}, '
                    f'"statements": {encode(list(answer.statements))}, '
                    f'"delegated": {encode(answer.delegated)}'
                )
            lines.append(
                f'{{"principal": {principal}, "action": {actions[answer.action]}, {outcome}}}'
            )
        decisions = "[\n    " + ",\n    ".join(lines) + "\n  ]" if lines else "[]"
        return (
            f'{{\n  "key_arn": {encode(self.key_arn)},\n  "decisions": {decisions},\n'
            f'  "unsupported": {encode(self.unsupported)}\n}}'
        )


def run_simulation(
    policy: dict[str, Any],
    key_arn: str | None,
    records: Sequence[PrincipalRecord],
    actions: tuple[str, ...],
) -> Simulation:
    principals = [record.evaluated() for record in records]
    answers = evaluate_matrix(compile_policy(policy), principals, actions, key_arn)
    return Simulation(key_arn, actions, answers)


def _cell(answer: Answer) -> Text:
    word, style = _CELLS[answer.decision]
    if answer.decision is Decision.ALLOW and answer.delegated:
        word += "*"
    return Text(word, style=style)


def _signature(row: list[Answer]) -> tuple[tuple[Decision, bool], ...]:
    return tuple((answer.decision, answer.delegated) for answer in row)


def _label(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def show(output: Output, simulation: Simulation) -> None:
    """The matrix (actions x groups of principals with identical answers) and its legend."""
    rows = simulation.rows()
    groups: dict[tuple[tuple[Decision, bool], ...], list[list[Answer]]] = {}
    for row in rows:
        groups.setdefault(_signature(row), []).append(row)
    ordered = sorted(groups.values(), key=lambda members: (-len(members), members[0][0].principal))
    shown = ordered[:MAX_GROUPS]
    counts = Counter(answer.decision for answer in simulation.answers)
    delegated = sum(1 for answer in simulation.answers if answer.delegated)
    where = simulation.key_arn or "the policy"
    output.show(
        Text(
            f"{where}: {len(rows):,} principals x {len(simulation.actions)} actions, "
            f"{len(groups):,} groups of principals with the same answers. "
            + ", ".join(
                f"{decision.value} {counts[decision]:,}"
                + (f" ({delegated:,} delegated)" if decision is Decision.ALLOW else "")
                for decision in Decision
                if counts[decision] or decision is Decision.ALLOW
            )
        )
    )
    headers = ["action", *(f"{_label(i)} ({len(m):,})" for i, m in enumerate(shown))]
    matrix_rows = []
    nobody = []
    for column, action in enumerate(simulation.actions):
        cells = [members[0][column] for members in shown]
        if all(cell.decision is Decision.IMPLICIT_DENY for cell in cells):
            nobody.append(action)
            continue
        matrix_rows.append([Text(action), *(_cell(cell) for cell in cells)])
    output.show(table("Decisions by group of principals", headers, matrix_rows))
    notes = []
    if nobody:
        notes.append(
            f"ImplicitDeny for every group shown: {len(nobody)} actions ({', '.join(nobody)})"
        )
    if delegated:
        notes.append("Allow*: delegated; the member account's IAM policies must allow it too")
    if len(ordered) > len(shown):
        rest = sum(len(members) for members in ordered[len(shown) :])
        notes.append(
            f"{len(ordered) - len(shown)} more groups ({rest:,} principals) are not shown; "
            "--json gives every decision"
        )
    legend = []
    for index, members in enumerate(shown):
        names = [row[0].principal for row in members[:SHOWN_PER_GROUP]]
        more = len(members) - len(names)
        legend.append(
            [
                Text(_label(index)),
                Text(f"{len(members):,}"),
                Text("\n".join(names) + (f"\n+{more:,} more" if more else "")),
            ]
        )
    output.show(table("Groups", ["group", "principals", "who"], legend))
    if simulation.unsupported:
        notes.append("Unknown answers come from: " + "; ".join(simulation.unsupported))
    if notes:
        output.show(Group(*(Text(note) for note in notes)))


SIMULATE_HELP = """Evaluate a key policy offline for principals and KMS actions.

Each answer is what the key policy decides for the principal and action, assuming the
principal's own IAM policies allow it: Allow (delegated when only an account principal
allows it, so the member account's IAM must grant it too), ExplicitDeny, ImplicitDeny, or
Unknown for a construct the evaluator does not implement (listed, never guessed).

Principals: --principals FILE (a JSON list of {"arn", "org_id", "org_paths", "context"}),
one --principal ARN with --org-id and --org-path, or --org: every ACTIVE account of the
live organization, as its root or as each --role NAME in it. Actions: every KMS action,
or each --action named (exact names: a request has no wildcards).

The human output groups the principals with identical answers and shows a column per
group; --json lists every decision.

Exit codes: 0 every answer is decided, 2 some answer is Unknown, 1 error.
"""


@click.command("simulate", help=SIMULATE_HELP, short_help="Who can use a key, offline.")
@click.option(
    "--policy",
    "policy_file",
    type=INPUT_FILE,
    metavar="FILE",
    help="A key policy document (JSON or YAML).",
)
@click.option("--key", "key_ref", metavar="KEY_REF", help="Read the policy of this key.")
@click.option(
    "--principals",
    "principals_file",
    type=INPUT_FILE,
    metavar="FILE",
    help="The principals, a JSON list.",
)
@click.option("--principal", "principal_arn", metavar="ARN", help="One principal.")
@click.option("--org-id", metavar="ID", help="The --principal's organization ID.")
@click.option(
    "--org-path", "org_paths", multiple=True, metavar="PATH", help="Its aws:PrincipalOrgPaths."
)
@click.option("--org", "whole_org", is_flag=True, help="Every ACTIVE account of the organization.")
@click.option(
    "--role", "roles", multiple=True, metavar="NAME", help="With --org: this role in each account."
)
@click.option(
    "--action", "action_names", multiple=True, metavar="ACTION", help="A KMS action (repeat)."
)
@click.option(
    "--context",
    "context_pairs",
    type=ASSIGNMENT,
    multiple=True,
    help="A request context key (repeat a key for several values).",
)
@json_option
@click.pass_obj
def simulate(
    state: State,
    policy_file: Path | None,
    key_ref: str | None,
    principals_file: Path | None,
    principal_arn: str | None,
    org_id: str | None,
    org_paths: tuple[str, ...],
    whole_org: bool,
    roles: tuple[str, ...],
    action_names: tuple[str, ...],
    context_pairs: tuple[tuple[str, str], ...],
    as_json: bool,
) -> ExitCode:
    output = Output(as_json)
    if (policy_file is None) == (key_ref is None):
        raise CommandError("give the policy: --policy FILE or --key KEY_REF (one of them)")
    sources = [principals_file is not None, principal_arn is not None, whole_org]
    if sum(sources) != 1:
        raise CommandError("give the principals: --principals FILE, --principal ARN or --org")
    if (org_id or org_paths) and principal_arn is None:
        raise CommandError("--org-id and --org-path describe a --principal ARN")
    if roles and not whole_org:
        raise CommandError("--role goes with --org")
    actions = request_actions(action_names)
    context = context_from(context_pairs)
    if policy_file is not None:
        key_arn, policy = None, policy_from_file(policy_file)
    else:
        store = KeyStore(state.session(), pool=2)
        key_arn, policy = policy_from_key(store, str(key_ref))
    if principals_file is not None:
        records = principals_from_file(principals_file)
    elif principal_arn is not None:
        records = [principal(principal_arn, org_id, org_paths)]
    else:
        records = _organization(state, output, roles)
    simulation = run_simulation(policy, key_arn, with_context(records, context), actions)
    if as_json:
        click.echo(simulation.document_text())
    else:
        show(output, simulation)
    return ExitCode.OK if simulation.decided else ExitCode.CHANGED


def _organization(state: State, output: Output, roles: Sequence[str]) -> list[PrincipalRecord]:
    session = state.session()
    partition = identity(session).partition
    workers = Settings().org_workers
    reader = OrganizationReader(session, partition, pool=workers)
    with output.progress("Reading the organization") as progress:
        records = organization_principals(
            reader, partition=partition, roles=roles, max_workers=workers, progress=progress
        )
    output.note(f"{len(records):,} principals of the organization's ACTIVE accounts")
    return records
