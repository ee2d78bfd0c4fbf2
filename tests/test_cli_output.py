"""Shared output conventions: JSON alone on stdout, human output plain when piped, progress."""

from __future__ import annotations

import io
import json
import logging

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from orgkeypolicy.cli.output import Output, console, diff, json_option, setup_logging, table
from orgkeypolicy.organization import Account, Unit, walk

ANSI = "\x1b["


@click.command()
@json_option
def report(as_json: bool) -> None:
    out = Output(as_json=as_json)
    out.note("reading 2 keys")
    out.show(table("Keys", ["key", "mode"], [["arn:aws:kms:us-east-1:1:key/a", "Accounts"]]))
    if as_json:
        out.document({"keys": [{"key_arn": "arn:aws:kms:us-east-1:1:key/a"}], "changed": False})


def test_json_mode_writes_the_document_alone_on_stdout() -> None:
    result = CliRunner(mix_stderr=False).invoke(report, ["--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "keys": [{"key_arn": "arn:aws:kms:us-east-1:1:key/a"}],
        "changed": False,
    }
    assert "reading 2 keys" in result.stderr


def test_human_mode_is_plain_text_when_piped() -> None:
    result = CliRunner(mix_stderr=False).invoke(report, [])
    assert result.exit_code == 0
    assert "Keys" in result.stdout
    # Piped: one line per row, however long the ARN, and no escape codes.
    assert any(
        "arn:aws:kms:us-east-1:1:key/a" in line and "Accounts" in line
        for line in result.stdout.splitlines()
    )
    assert ANSI not in result.stdout + result.stderr
    assert "reading 2 keys" not in result.stdout


def _render(renderable: object, monkeypatch: pytest.MonkeyPatch, *, no_color: bool) -> str:
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal, as far as rich can tell
    target = console()
    target.file = io.StringIO()
    target.print(renderable)
    written = target.file.getvalue()
    assert isinstance(written, str)
    return written


def test_diff_is_coloured_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    before = json.dumps({"Statement": [{"Sid": "A"}]}, indent=2)
    after = json.dumps({"Statement": [{"Sid": "A"}, {"Sid": "B"}]}, indent=2)
    coloured = _render(diff(before, after, name="key"), monkeypatch, no_color=False)
    plain = _render(diff(before, after, name="key"), monkeypatch, no_color=True)
    assert ANSI in coloured
    assert ANSI not in plain
    assert '+      "Sid": "B"\n' in plain
    assert plain.startswith("--- key (before)\n+++ key (after)\n@@")
    assert diff(before, before, name="key").plain == ""


class Directory:
    """Four units: the root, two OUs below it and one below those."""

    def child_units(self, parent_id: str) -> list[Unit]:
        tree = {"r-1": [Unit("ou-1"), Unit("ou-2")], "ou-1": [Unit("ou-3")]}
        return tree.get(parent_id, [])

    def accounts(self, parent_id: str) -> list[Account]:
        return [Account(f"{len(parent_id):012d}", "ACTIVE")]


def _walk_showing_progress(out: Output) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    with out.progress("Reading the organization") as update:

        def record(done: int, total: int) -> None:
            calls.append((done, total))
            update(done, total)

        walk(Directory(), ["r-1"], include_nested=True, max_workers=2, progress=record)
    return calls


@pytest.mark.parametrize(
    ("as_json", "terminal", "drawn"),
    [(False, True, True), (True, True, False), (False, False, False)],
)
def test_progress_is_drawn_only_on_a_terminal_and_never_with_json(
    as_json: bool, terminal: bool, drawn: bool
) -> None:
    stderr = io.StringIO()
    out = Output(as_json=as_json, err=Console(file=stderr, force_terminal=terminal))
    calls = _walk_showing_progress(out)
    # Two listings per unit (its accounts, its child units), four units.
    assert calls[-1] == (8, 8)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert out.shows_progress is drawn
    assert ("Reading the organization" in stderr.getvalue()) is drawn


def test_logs_go_to_stderr_and_debug_only_with_debug(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("orgkeypolicy.test")
    setup_logging(debug=False)
    log.debug("hidden detail")
    log.warning("visible warning")
    setup_logging(debug=True)
    log.debug("shown detail")
    setup_logging(debug=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "visible warning" in captured.err
    assert "shown detail" in captured.err
    assert "hidden detail" not in captured.err
