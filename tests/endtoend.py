"""Helpers of the end-to-end tests: the real handler, run as Lambda would, against the local
AWS (moto behind the fault proxy), with CloudFormation's responses received over HTTPS."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from moto.kms.models import kms_backends

import app
from localaws.cfn import CfnResponse, CloudFormation, FakeLambdaContext
from localaws.proxy import FaultProxy, Predicate
from localaws.seed import DEFAULT_STATEMENT, SeededOrg
from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID, LocalAws
from orgkeypolicy import lifecycle
from orgkeypolicy.settings import Deadline, Settings
from orgkeypolicy.statements import sid_prefix

T = TypeVar("T")
Policy = dict[str, Any]


def invoke(event: Mapping[str, Any], timeout: float = 300.0, bound: float = 60.0) -> float:
    """Run the handler as Lambda would, in a thread that must end within ``bound`` seconds
    (a hung handler fails the test instead of hanging it); the seconds it took."""
    context = FakeLambdaContext(timeout_seconds=timeout)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            app.lambda_handler(dict(event), context)
        except BaseException as error:
            errors.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=target, name="lambda", daemon=True)
    thread.start()
    thread.join(bound)
    took = time.monotonic() - started
    assert not thread.is_alive(), f"the handler was still running after {bound} s"
    if errors:
        raise errors[0]
    return took


def run(cfn: CloudFormation, event: Mapping[str, Any], timeout: float = 300.0) -> CfnResponse:
    """Invoke, and return the one response CloudFormation received."""
    invoke(event, timeout)
    response = cfn.response(event)
    assert [r.http_status for r in cfn.responses(event)] == [200], "exactly one response"
    assert response.size <= 4096
    assert response.physical_id
    assert len(response.reason or "") < 256
    return response


def read_policy(aws: LocalAws, key_arn: str) -> Policy:
    """The key's policy as moto holds it, read past the proxy."""
    region = key_arn.split(":")[3]
    document: Policy = json.loads(
        aws.client("kms", region).get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    )
    return document


def policies(aws: LocalAws, keys: list[str]) -> dict[str, Policy]:
    return {key: read_policy(aws, key) for key in keys}


def ours(document: Policy, prefix: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if str(s.get("Sid", "")).startswith(prefix)]


def foreign(document: Policy, prefix: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if not str(s.get("Sid", "")).startswith(prefix)]


def granted(document: Policy, prefix: str, suffix: str = "Use") -> set[str]:
    found = [s for s in ours(document, prefix) if s["Sid"] == prefix + suffix]
    assert len(found) == 1, f"{len(found)} statements {prefix}{suffix} on the key"
    [statement] = found
    principals = statement["Principal"]["AWS"]
    return {
        arn.split(":")[4] for arn in ([principals] if isinstance(principals, str) else principals)
    }


def names(org: SeededOrg, *account_names: str) -> set[str]:
    return {org.accounts[name] for name in account_names}


def add_keys(aws: LocalAws, count: int, tag: str = "audit") -> dict[str, Policy]:
    """New keys, each with the default statement and one foreign statement of its own."""
    kms = aws.client("kms")
    created: dict[str, Policy] = {}
    for i in range(count):
        arn = kms.create_key(Description=f"{tag} {i}")["KeyMetadata"]["Arn"]
        document: Policy = {
            "Version": "2012-10-17",
            "Statement": [
                dict(DEFAULT_STATEMENT),
                {
                    "Sid": f"Allow{tag.title()}{i}",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT_ID}:role/{tag}-{i}"},
                    "Action": ["kms:Decrypt", "kms:DescribeKey"],
                    "Resource": "*",
                },
            ],
        }
        kms.put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(document))
        created[arn] = document
    return created


def key_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def on_key(arn: str) -> Predicate:
    return lambda body: body.get("KeyId") == arn


def delete_key_now(aws: LocalAws, arn: str) -> None:
    """The end of a key's waiting period: KMS deletes the key and its aliases."""
    kms = aws.client("kms")
    for alias in kms.list_aliases(KeyId=key_id(arn))["Aliases"]:
        kms.delete_alias(AliasName=alias["AliasName"])
    kms_backends[MOTO_ACCOUNT_ID][DEFAULT_REGION].delete_key(key_id(arn))


def schedule_deletion(aws: LocalAws, proxy: FaultProxy, arn: str) -> None:
    """Schedule the key's deletion, and make its policy read-only as KMS does (moto lets a
    key pending deletion take a new policy; KMS answers KMSInvalidStateException)."""
    aws.client("kms").schedule_key_deletion(KeyId=key_id(arn), PendingWindowInDays=7)
    proxy.add_rule(
        "kms:PutKeyPolicy",
        error_code="KMSInvalidStateException",
        message=f"{arn} is pending deletion.",
        when=on_key(arn),
    )


def flaky(rate: float, seed: int, longest_run: int = 2) -> Predicate:
    """True for a seeded ``rate`` of calls, never more than ``longest_run`` times in a row for
    one request (the same body again is botocore's retry), so the retry budget is enough."""
    draw = random.Random(seed)
    runs: dict[str, int] = {}

    def decide(body: dict[str, Any]) -> bool:
        # The proxy calls this under its lock.
        request = json.dumps(body, sort_keys=True)
        if runs.get(request, 0) < longest_run and draw.random() < rate:
            runs[request] = runs.get(request, 0) + 1
            return True
        runs[request] = 0
        return False

    return decide


def refused_locks(proxy: FaultProxy, key_arn: str) -> int:
    """Attempts to take the key's write lock that found it held by another writer."""
    return sum(
        1
        for call in proxy.calls_for("dynamodb:PutItem")
        if call.body["Item"]["id"]["S"] == f"lock/key/{key_arn}" and call.status != 200
    )


def forwarded(proxy: FaultProxy) -> Counter[str]:
    return Counter(call.name for call in proxy.calls if not call.injected)


def concurrently(*calls: Callable[[], T]) -> list[T]:
    """Start every call at the same moment; their results in order."""
    barrier = threading.Barrier(len(calls))

    def start(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(start, call) for call in calls]
        return [future.result(timeout=120) for future in futures]


def lifecycle_request(
    request_type: str,
    properties: Mapping[str, Any],
    *,
    stack_id: str,
    logical_id: str,
    old_properties: Mapping[str, Any] | None = None,
) -> lifecycle.Request:
    return lifecycle.Request(
        request_type=request_type,
        stack_id=stack_id,
        logical_id=logical_id,
        request_id=str(uuid.uuid4()),
        properties=properties,
        old_properties=old_properties,
        physical_id=None if request_type == "Create" else sid_prefix(stack_id, logical_id),
    )


def racing(settings: Settings, request: lifecycle.Request) -> Callable[[], object]:
    """One Lambda invocation's work, on its own session, as a separate execution environment
    would run it (one handler object per process cannot serve two requests at once)."""
    step = lifecycle.delete if request.request_type == "Delete" else lifecycle.apply
    return lambda: step(request, boto3.Session(), settings, Deadline(120))


def other_stack_id(cfn: CloudFormation) -> str:
    return cfn.stack_id.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
