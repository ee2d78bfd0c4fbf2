"""Fixtures: a local AWS (moto), a fault proxy in front of it, CloudFormation's response
endpoint, and the demo organization.

Session fixtures are per pytest-xdist worker. Each test gets an empty moto, and its
``os.environ`` points boto3 at the local AWS (or at the proxy, with ``fault_proxy``) only for
its own duration.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace

import boto3
import pytest

from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.proxy import FaultProxy
from localaws.registry import REGISTRY_TABLE, create_registry_table
from localaws.seed import SeededOrg, seed_demo_org
from localaws.server import LocalAws, aws_environment, stale_aws_variables
from tests.policychecks import assert_policy_safe

# Nothing listens on the discard port: a boto3 client created before a test's fixtures ran
# (at import time, say) fails fast with a connection error instead of reaching real AWS.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


def pytest_configure(config: pytest.Config) -> None:
    for name in stale_aws_variables():
        os.environ.pop(name, None)
    os.environ.update(aws_environment(UNREACHABLE_ENDPOINT))
    # The handler module reads its settings when imported, before any fixture runs.
    os.environ["REGISTRY_TABLE"] = REGISTRY_TABLE
    # moto has no Access Analyzer, and botocore retries its HTTP 500 answers for seconds per
    # request; the review is on in the tests about it (test_analyzer_gate.py).
    os.environ["ACCESS_ANALYZER"] = "false"


@pytest.fixture(autouse=True)
def no_terminal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output as piped to a file: pytest-xdist gives its workers the controller's COLUMNS and
    LINES, which the command line's output would take for a terminal's width."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAws]:
    server = LocalAws.start()
    yield server
    server.stop()


@pytest.fixture
def aws(local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> LocalAws:
    """The local AWS, emptied but for the provider's registry table, with ``os.environ``
    pointing boto3 at it for this test."""
    local_aws.reset()
    create_registry_table(local_aws.url)
    for name in stale_aws_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment(local_aws.url).items():
        monkeypatch.setenv(name, value)
    # boto3's default session caches what it resolved from an earlier test's environment.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return local_aws


@pytest.fixture(scope="session")
def cfn_server() -> Iterator[CloudFormation]:
    server = CloudFormation()
    yield server
    server.stop()


@pytest.fixture
def cfn(cfn_server: CloudFormation, monkeypatch: pytest.MonkeyPatch) -> CloudFormation:
    """CloudFormation's response endpoint, trusted through ``SSL_CERT_FILE`` for this test."""
    cfn_server.reset()
    monkeypatch.setenv("SSL_CERT_FILE", cfn_server.ca_file)
    return cfn_server


@pytest.fixture
def demo_org(aws: LocalAws) -> SeededOrg:
    return seed_demo_org(aws.url)


@pytest.fixture
def fault_proxy(aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of the local AWS; ``AWS_ENDPOINT_URL`` points at it."""
    proxy = FaultProxy(aws.url).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.stop()


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def fast_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """No read-back wait: moto is consistent at once, where KMS is eventually consistent.
    Tests about writers racing pass their own Settings."""
    import app

    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))


_checked: set[str] = set()


@pytest.fixture
def checked_writes(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The fault proxy, which sees every policy the code under test writes: each is checked by
    the independent policy tools when the test ends."""
    yield fault_proxy
    for call in fault_proxy.calls_for("kms:PutKeyPolicy", forwarded=True):
        text = str(call.body.get("Policy", ""))
        if text not in _checked:
            assert_policy_safe(text)
            _checked.add(text)


@pytest.fixture(autouse=True)
def _package_logger_restored() -> Iterator[None]:
    """The command line sets the ``orgkeypolicy`` logger up for its own process (stderr,
    warnings only); run in-process by a test, it must not leave that to the next test."""
    logger = logging.getLogger("orgkeypolicy")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.fixture
def proxy(checked_writes: FaultProxy) -> FaultProxy:
    """The checked fault proxy, for tests that count the calls made through it."""
    return checked_writes
