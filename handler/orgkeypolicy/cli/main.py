"""The ``orgkeypolicy`` command group: global options, exit codes and one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
import click

from orgkeypolicy import __version__
from orgkeypolicy.cli.audit import audit
from orgkeypolicy.cli.output import PROG, ExitCode, reported, setup_logging
from orgkeypolicy.cli.plan import plan
from orgkeypolicy.cli.probe import probe
from orgkeypolicy.cli.simulate import simulate
from orgkeypolicy.cli.verify import resync_command, verify


@dataclass
class State:
    """The global options, shared by every command through ``click.Context.obj``."""

    debug: bool = False
    region: str | None = None
    profile: str | None = None
    _session: boto3.Session | None = field(default=None, repr=False)

    def session(self) -> boto3.Session:
        """The boto3 session of ``--profile`` and ``--region`` (the usual chain otherwise)."""
        if self._session is None:
            self._session = boto3.Session(profile_name=self.profile, region_name=self.region)
        return self._session


class Group(click.Group):
    """A group whose failures are one line on stderr and exit code 1 (2 stays "changes").

    Click exits with 2 on a usage error; here 2 means "a change or drift was found", so a
    usage error exits with 1 like any other error. A command returns an ``ExitCode``.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with reported():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.ensure_object(State)
        with reported(lambda: state.debug):
            result = super().invoke(ctx)
        if isinstance(result, ExitCode) and result is not ExitCode.OK:
            ctx.exit(result)
        return result


@click.group(
    PROG,
    cls=Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs on stderr.")
@click.option("--region", metavar="REGION", help="AWS region (default: the usual AWS settings).")
@click.option("--profile", metavar="NAME", help="AWS profile of the shared config files.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, region: str | None, profile: str | None) -> None:
    """Plan, simulate and verify the key-policy grants of Custom::OrgKeyPolicy resources.

    Exit codes: 0 nothing to change, 2 a change or drift was found, 1 error.
    """
    state = ctx.ensure_object(State)
    state.debug, state.region, state.profile = debug, region, profile
    setup_logging(debug=debug)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


cli.add_command(plan)
cli.add_command(simulate)
cli.add_command(probe)
cli.add_command(audit)
cli.add_command(verify)
cli.add_command(resync_command)


def main() -> None:
    """The console script."""
    cli(prog_name=PROG)
