"""The ``orgkeypolicy`` group: version, help, global options, exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from click.testing import CliRunner, Result

import orgkeypolicy
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.cli.main import State, cli
from orgkeypolicy.cli.output import ExitCode
from orgkeypolicy.errors import InvalidPropertyError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("orgkeypolicy")


def invoke(*args: str) -> Result:
    return CliRunner(mix_stderr=False).invoke(cli, list(args), prog_name="orgkeypolicy")


@pytest.fixture
def command() -> Iterator[Callable[[click.Command], None]]:
    """Registers throwaway commands on the real group for one test."""
    added: list[str] = []

    def add(new: click.Command) -> None:
        assert new.name is not None
        cli.add_command(new)
        added.append(new.name)

    yield add
    for name in added:
        cli.commands.pop(name)


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"orgkeypolicy {orgkeypolicy.__version__}\n"


def test_help_lists_the_global_options() -> None:
    for args in (["--help"], ["-h"], []):
        result = invoke(*args)
        assert result.exit_code == 0
        for option in ("--version", "--debug", "--region", "--profile"):
            assert option in result.stdout
        assert "Exit codes" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "No such option: --bogus"),
        (["--region"], "Option '--region' requires an argument"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_usage_errors_exit_1_with_one_line(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"orgkeypolicy: error: {message} (see 'orgkeypolicy --help')"
    ]


FAILURES: list[tuple[Exception, str]] = [
    (
        InvalidPropertyError("KeyIds", "alias/nope", "does not exist", "check the alias"),
        "KeyIds: 'alias/nope' does not exist; check the alias",
    ),
    (
        ClientError({"Error": {"Code": "AccessDenied", "Message": "Not\nallowed"}}, "GetKeyPolicy"),
        "An error occurred (AccessDenied) when calling the GetKeyPolicy operation: Not allowed",
    ),
    (NoCredentialsError(), "Unable to locate credentials: give --profile NAME"),
    (CommandError("--key x: no such key or alias"), "--key x: no such key or alias"),
    (KeyError("boom"), "unexpected KeyError: 'boom' (rerun with --debug)"),
]


@pytest.mark.parametrize(("error", "shown"), FAILURES)
def test_failures_are_one_line_and_exit_1(
    command: Callable[[click.Command], None], error: Exception, shown: str
) -> None:
    @click.command("fails")
    def fails() -> None:
        click.echo("partial result")
        raise error

    command(fails)
    result = invoke("fails")
    assert result.exit_code == ExitCode.ERROR
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"orgkeypolicy: error: {shown}")
    assert "Traceback" not in result.stderr

    debugged = invoke("--debug", "fails")
    assert debugged.exit_code == ExitCode.ERROR
    assert "Traceback (most recent call last)" in debugged.stderr
    assert debugged.stderr.splitlines()[-1].startswith(f"orgkeypolicy: error: {shown}")


@pytest.mark.parametrize("code", list(ExitCode))
def test_a_command_returns_its_exit_code(
    command: Callable[[click.Command], None], code: ExitCode
) -> None:
    @click.command("returns")
    def returns() -> ExitCode:
        return code

    command(returns)
    assert invoke("returns").exit_code == code


def test_global_options_shape_the_session(command: Callable[[click.Command], None]) -> None:
    @click.command("where")
    @click.pass_obj
    def where(state: State) -> None:
        click.echo(state.session().region_name)

    command(where)
    assert invoke("--region", "eu-west-3", "where").stdout == "eu-west-3\n"
    missing = invoke("--profile", "no-such-profile", "where")
    assert missing.exit_code == ExitCode.ERROR
    assert missing.stderr == (
        "orgkeypolicy: error: The config profile (no-such-profile) could not be found\n"
    )


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    # This checkout's code, whichever checkout the venv's editable install points at.
    env = {**os.environ, "PYTHONPATH": str(REPO / "handler")}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=REPO
    )


@pytest.mark.parametrize(
    "launcher", [[str(SCRIPT)], [sys.executable, "-m", "orgkeypolicy"]], ids=["script", "module"]
)
def test_installed_command(launcher: list[str]) -> None:
    assert SCRIPT.exists(), "make installs the package into the venv (pip install -e .)"
    version = _run(*launcher, "--version")
    assert (version.returncode, version.stdout) == (0, f"orgkeypolicy {orgkeypolicy.__version__}\n")
    bad = _run(*launcher, "--bogus")
    assert bad.returncode == ExitCode.ERROR
    assert bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "orgkeypolicy: error: No such option: --bogus (see 'orgkeypolicy --help')"
    ]
