"""What every command shares: exit codes, one-line errors, JSON or human output, progress.

stdout carries the result only: the JSON document with ``--json``, else tables and diffs.
Everything else (progress, notes, logs, errors) goes to stderr, so ``--json | jq`` always
works. rich colours a terminal and writes plain text to a pipe or when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from rich import box
from rich.console import Console, RenderableType
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.errors import OrgKeyPolicyError
from orgkeypolicy.organization import Progress as ProgressCallback

PROG = "orgkeypolicy"


class ExitCode(IntEnum):
    """0: nothing to change, all in order; 1: error; 2: a change or a drift was found."""

    OK = 0
    ERROR = 1
    CHANGED = 2


class Failure(click.ClickException):
    """Any failure, shown as ``orgkeypolicy: error: …`` on one line of stderr, exit code 1."""

    exit_code = ExitCode.ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{PROG}: error: {self.format_message()}", file=file, err=file is None)


# Errors a user can act on: their message is the whole story, no traceback needed.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    CommandError,
    OrgKeyPolicyError,
    ClientError,
    BotoCoreError,
)


_HINTS: tuple[tuple[type[Exception], str], ...] = (
    (NoCredentialsError, "give --profile NAME, set AWS_PROFILE or the AWS_ACCESS_KEY_ID variables"),
    (NoRegionError, "give --region or set AWS_REGION"),
)


def _no_debug() -> bool:
    return False


@contextmanager
def reported(debug: Callable[[], bool] = _no_debug) -> Iterator[None]:
    """Turn every failure into a one-line ``Failure``; the traceback too when ``debug()``.

    ``debug`` is asked when a failure happens: ``--debug`` is parsed inside the block.
    """
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, Failure, BrokenPipeError):
        # click ends these itself: an exit code, "Aborted!", or quietly for `| head`.
        raise
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else PROG
        message = error.format_message().rstrip(".")
        raise Failure(f"{message} (see '{where} --help')") from error
    except click.ClickException as error:
        raise Failure(error.format_message()) from error
    except Exception as error:
        if debug():
            traceback.print_exception(error)
        message = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, EXPECTED_ERRORS):
            message = f"unexpected {type(error).__name__}: {message} (rerun with --debug)"
        hint = next((hint for kind, hint in _HINTS if isinstance(error, kind)), None)
        if hint:
            message = f"{message}: {hint}"
        raise Failure(message) from error


def setup_logging(*, debug: bool) -> None:
    """This package's log lines go to stderr: at DEBUG with ``--debug``, else warnings only."""
    logger = logging.getLogger("orgkeypolicy")
    if not any(isinstance(handler, RichHandler) for handler in logger.handlers):
        logger.addHandler(RichHandler(console=console(stderr=True), show_path=False))
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


# Piped output is read by tools and people alike: keep long ARNs on one line.
PIPE_WIDTH = 200


def console(*, stderr: bool = False) -> Console:
    """A rich console: coloured on a terminal; plain (no escape codes) when piped or NO_COLOR."""
    plain = bool(os.environ.get("NO_COLOR"))
    result = Console(stderr=stderr, color_system=None if plain else "auto")
    if not result.is_terminal and "COLUMNS" not in os.environ:
        result.width = PIPE_WIDTH
    return result


F = TypeVar("F", bound=Callable[..., Any])


# A file the command reads.
INPUT_FILE = click.Path(path_type=Path, dir_okay=False)


def key_option(command: F) -> F:
    """The ``--key`` a command acts on, passed as ``key_text``."""
    return click.option(
        "--key",
        "key_text",
        required=True,
        metavar="KEY_REF",
        help="The key: ID, ARN, alias/NAME or alias ARN.",
    )(command)


def json_option(command: F) -> F:
    """The ``--json`` flag every command takes, passed as ``as_json``."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the result as one JSON document on stdout; progress and logs stay on stderr.",
    )(command)


@dataclass
class Output:
    """Where a command's result and its commentary go."""

    as_json: bool = False
    out: Console = field(default_factory=console)
    err: Console = field(default_factory=lambda: console(stderr=True))

    def document(self, doc: object) -> None:
        """The JSON result: the only thing written to stdout with ``--json``."""
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))

    def show(self, renderable: RenderableType) -> None:
        """Human output (tables, diffs, lines) on stdout; nothing with ``--json``."""
        if not self.as_json:
            self.out.print(renderable)

    def note(self, message: str) -> None:
        """Commentary for the person at the terminal, on stderr."""
        self.err.print(Text(message, style="dim"))

    @property
    def shows_progress(self) -> bool:
        return not self.as_json and self.err.is_terminal

    @contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback]:
        """A progress bar on stderr, driven by the callback given; off unless it is a terminal."""
        if not self.shows_progress:
            yield _ignore_progress
            return
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update


def _ignore_progress(done: int, total: int) -> None:
    del done, total


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[RenderableType]]) -> Table:
    """A table for ``Output.show``."""
    result = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*row)
    return result


_DIFF_STYLES = (("+++", "bold"), ("---", "bold"), ("@@", "cyan"), ("+", "green"), ("-", "red"))


def diff(before: str, after: str, *, name: str) -> Text:
    """A unified diff of two texts, for ``Output.show``; empty when they are equal."""
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), f"{name} (before)", f"{name} (after)", lineterm=""
    )
    return Text("\n").join(
        Text(line, style=next((s for prefix, s in _DIFF_STYLES if line.startswith(prefix)), ""))
        for line in lines
    )
