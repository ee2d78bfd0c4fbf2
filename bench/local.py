"""The local AWS the benchmark runs against: moto in a child process, the fault proxy here.

moto answers every call on one thread of one process and spends a few milliseconds of CPU
on each. Sharing a process (and its GIL) with the boto3 clients and the proxy would make the
clients' own CPU slow moto down and the other way round, so moto and the synthetic
organization live in a forked child, and only the proxy (latency, call log) and the clients
run in this process. On a 2-core machine that gives each side a core.

``seed_large_org`` fills moto's backend directly, so it must run in the process that serves
moto: the child seeds the organization and sends its shape back over a pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from localaws import LocalAws, aws_environment, patched_environment
from localaws.proxy import FaultProxy
from localaws.registry import REGISTRY_TABLE, create_registry_table
from localaws.seed import LargeOrg, seed_large_org
from localaws.server import fake_client

_START_TIMEOUT = 180.0


@dataclass(frozen=True)
class OrgShape:
    accounts: int
    ous: int
    depth: int
    seed: int = 0


@dataclass
class Local:
    """The running stand-in: moto's URL (no latency), the proxy in front of it, the org."""

    moto_url: str
    proxy: FaultProxy
    org: LargeOrg
    seed_seconds: float

    def set_latency(self, seconds: float) -> None:
        self.proxy.latency = seconds

    def direct(self, service: str) -> Any:
        """A client that talks to moto itself: set-up calls stay out of the proxy's log."""
        return fake_client(service, self.moto_url)


def add_organization_arguments(parser: argparse.ArgumentParser, *, seed_help: str) -> None:
    """The options every benchmark takes: the latency added per call and the organization's
    shape."""
    parser.add_argument("--latency", type=float, default=30.0, help="ms added per call (30)")
    parser.add_argument("--accounts", type=int, default=5000, help="accounts (5000)")
    parser.add_argument("--ous", type=int, default=500, help="OUs (500)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def _serve(connection: Connection, shape: OrgShape) -> None:
    aws = LocalAws.start()
    try:
        started = time.perf_counter()
        org = seed_large_org(
            aws.url, accounts=shape.accounts, ous=shape.ous, depth=shape.depth, seed=shape.seed
        )
        connection.send((aws.url, org, time.perf_counter() - started))
        # Serve until the parent says stop, or goes away (EOFError).
        with contextlib.suppress(EOFError, OSError):
            connection.recv()
    finally:
        aws.stop()
        connection.close()


@contextlib.contextmanager
def local_aws(shape: OrgShape, latency: float) -> Iterator[Local]:
    """moto with a seeded organization in a child process, a FaultProxy in front of it, and
    ``os.environ`` pointing boto3 at the proxy for the ``with`` block.

    Call it before this process starts any thread: the child is forked.
    """
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_serve, args=(child_end, shape), name="moto", daemon=True)
    process.start()
    child_end.close()
    try:
        if not parent_end.poll(_START_TIMEOUT):
            raise RuntimeError(f"moto did not start and seed within {_START_TIMEOUT:.0f} s")
        try:
            moto_url, org, seed_seconds = parent_end.recv()
        except EOFError as error:
            raise RuntimeError("moto's process ended while seeding; see its traceback") from error
        create_registry_table(moto_url)
        proxy = FaultProxy(moto_url, latency=latency).start()
        try:
            # moto has no IAM Access Analyzer: its HTTP 500s would be retried on every request.
            env = {
                **aws_environment(proxy.url),
                "REGISTRY_TABLE": REGISTRY_TABLE,
                "ACCESS_ANALYZER": "false",
            }
            with patched_environment(env):
                yield Local(moto_url, proxy, org, seed_seconds)
        finally:
            proxy.stop()
    finally:
        with contextlib.suppress(OSError):
            parent_end.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)
        parent_end.close()
