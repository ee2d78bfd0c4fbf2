"""Full Create requests through the Lambda handler: one key against many."""

from __future__ import annotations

import contextlib
import importlib
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from bench.local import Local
from localaws import patched_environment
from localaws.cfn import CloudFormation, FakeLambdaContext, stringify
from localaws.seed import CONSENT_TAGS


@dataclass
class KeyRun:
    keys: int
    walls: list[float]
    lookup_spans: list[float]
    key_spans: list[float]
    calls_by_operation: dict[str, int] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def lookup(self) -> float:
        return statistics.median(self.lookup_spans)

    @property
    def key_phase(self) -> float:
        return statistics.median(self.key_spans)


@contextlib.contextmanager
def _stdout_to(stream: IO[str]) -> Iterator[None]:
    with contextlib.redirect_stdout(stream):
        yield


def load_handler(verify_delay: float, log: IO[str]) -> Any:
    """``app`` as Lambda imports it, with ``VERIFY_DELAY_SECONDS`` set before the import.

    Powertools binds its log handler to ``sys.stdout`` when ``app`` is imported and prints
    metrics to it per invocation; both go to ``log`` so the report stays readable.
    """
    with (
        patched_environment({"VERIFY_DELAY_SECONDS": str(verify_delay)}, unset=()),
        _stdout_to(log),
    ):
        app: Any = importlib.import_module("app")
    if app.settings.verify_delay != verify_delay:
        # Imported earlier in this process with another setting.
        app.settings = replace(app.settings, verify_delay=verify_delay)
    return app


def create_keys(local: Local, count: int) -> list[str]:
    kms = local.direct("kms")
    return [
        kms.create_key(Description=f"bench key {index}", Tags=CONSENT_TAGS)["KeyMetadata"]["Arn"]
        for index in range(count)
    ]


def _span(calls: list[Any]) -> float:
    return (max(c.ended for c in calls) - min(c.started for c in calls)) if calls else 0.0


def time_creates(
    local: Local,
    app: Any,
    cfn: CloudFormation,
    unit: str,
    key_counts: tuple[int, ...],
    repeats: int,
    log: IO[str],
) -> list[KeyRun]:
    """Create requests granting ``unit``'s accounts in Accounts mode, each on fresh keys (a
    second Create on the same keys would find nothing to write), interleaved across
    ``key_counts`` so drift hits every count alike."""
    runs = {count: KeyRun(count, [], [], []) for count in key_counts}
    for attempt in range(repeats):
        for count in key_counts:
            keys = create_keys(local, count)
            properties = {
                "KeyIds": keys,
                "OrganizationalUnitIds": [unit],
                "PrincipalMode": "Accounts",
            }
            event = cfn.event("Create", stringify(properties), logical_id=f"Bench{count}x{attempt}")
            local.proxy.reset_log()
            started = time.perf_counter()
            with _stdout_to(log):
                app.lambda_handler(event, FakeLambdaContext(timeout_seconds=300))
            wall = time.perf_counter() - started
            response = cfn.response(event, timeout=30)
            if response.status != "SUCCESS":
                raise RuntimeError(f"Create with {count} keys failed: {response.reason}")
            calls = local.proxy.calls
            run = runs[count]
            run.walls.append(wall)
            run.lookup_spans.append(_span([c for c in calls if c.service == "organizations"]))
            run.key_spans.append(_span([c for c in calls if c.service == "kms"]))
            run.calls_by_operation = dict(Counter(call.name for call in calls))
    return list(runs.values())


def handler_log_path(results: Path) -> Path:
    return results / "handler-log.jsonl"
