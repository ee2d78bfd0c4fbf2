"""What a release promises at run time: the version in every result and log line, and X-Ray
subsegments of the calls made in worker threads recorded under the invocation."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aws_xray_sdk
import boto3
import pytest
from aws_xray_sdk.core import patch, xray_recorder
from aws_xray_sdk.core.context import Context
from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter

import app
from localaws.cfn import CloudFormation, FakeLambdaContext
from localaws.seed import SeededOrg
from localaws.server import LocalAws
from orgkeypolicy import __version__, concurrency
from orgkeypolicy.cfn import fit_response


@pytest.fixture(autouse=True)
def fast_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "settings", replace(app.settings, verify_delay=0.0))


# --- The version ----------------------------------------------------------------------------------


def test_every_result_and_log_line_carries_the_version(
    aws: LocalAws, cfn: CloudFormation, demo_org: SeededOrg
) -> None:
    props = {"KeyIds": ["alias/demo-logs"], "OrganizationalUnitIds": [demo_org.ous["Dev"]]}
    handler = app.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        created = cfn.event("Create", props)
        app.lambda_handler(created, FakeLambdaContext())
        response = cfn.response(created)
        deleted = cfn.event("Delete", props, physical_id=response.physical_id)
        app.lambda_handler(deleted, FakeLambdaContext())
    finally:
        handler.setStream(previous)
    assert response.status == "SUCCESS", response.reason
    assert response.data["Version"] == __version__
    assert cfn.response(deleted).data["Version"] == __version__
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines
    assert {line["version"] for line in lines} == {__version__}


def test_the_version_survives_the_response_limit() -> None:
    # Bulky attributes are emptied first; the version, a few bytes, stays.
    data = {"AccountIds": ",".join(["111111111111"] * 400), "Version": __version__}
    body = {"Status": "SUCCESS", "Reason": "", "PhysicalResourceId": "x", "Data": data}
    sent = json.loads(fit_response(body))
    assert sent["Data"] == {"AccountIds": "", "Version": __version__}


# --- X-Ray across worker threads ---------------------------------------------------------------


class _Kept(UDPEmitter):  # type: ignore[misc]
    """Keeps what would be sent to the X-Ray daemon."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(entity)


@pytest.fixture
def recorder() -> Iterator[Any]:
    """The process's X-Ray recorder, enabled for one test on a plain in-memory context that
    sends nothing; everything is put back afterwards (the handler's tracer disabled it, as
    it does outside Lambda)."""
    saved = (
        aws_xray_sdk.global_sdk_config.sdk_enabled(),
        xray_recorder.context,
        xray_recorder.emitter,
        xray_recorder.sampling,
        xray_recorder.streaming_threshold,
    )
    aws_xray_sdk.global_sdk_config.set_sdk_enabled(True)
    # boto3's calls become subsegments, as Powertools' tracer patches them in Lambda.
    patch(["botocore"])
    xray_recorder.configure(
        context=Context(context_missing="LOG_ERROR"),
        emitter=_Kept(),
        sampling=False,
        # Nothing streamed away: the whole tree stays on the segment to be inspected.
        streaming_threshold=10_000,
    )
    try:
        yield xray_recorder
    finally:
        xray_recorder.clear_trace_entities()
        enabled, context, emitter, sampling, threshold = saved
        xray_recorder.configure(
            context=context, emitter=emitter, sampling=sampling, streaming_threshold=threshold
        )
        aws_xray_sdk.global_sdk_config.set_sdk_enabled(enabled)


def _traced_describe_calls(aws: LocalAws, recorder: Any, keys: list[str]) -> Any:
    """An invocation's segment with the handler's subsegment open, and one DescribeKey per
    key fanned out to worker threads; the handler subsegment."""
    kms = boto3.client("kms")
    threads: set[int] = set()

    def describe(key: str) -> None:
        threads.add(threading.get_ident())
        kms.describe_key(KeyId=key)

    recorder.begin_segment("OrgKeyPolicy")
    handler = recorder.begin_subsegment("## lambda_handler")
    concurrency.fan_out(describe, keys, workers=len(keys))
    recorder.end_subsegment()
    assert threading.get_ident() not in threads, "the calls must run in worker threads"
    return handler


def _kms_calls(entity: Any) -> list[Any]:
    return [sub for sub in entity.subsegments if sub.name == "kms"]


def test_calls_in_worker_threads_land_under_the_invocation(
    aws: LocalAws, demo_org: SeededOrg, recorder: Any
) -> None:
    keys = [*demo_org.keys.values()] * 3
    handler = _traced_describe_calls(aws, recorder, keys)
    calls = _kms_calls(handler)
    assert len(calls) == len(keys)
    for call in calls:
        assert call.parent_id == handler.id
        assert call.trace_id == handler.trace_id
        assert call.aws["operation"] == "DescribeKey"
        assert not call.in_progress
    assert recorder.current_segment().subsegments == [handler]


def test_without_the_carrier_the_calls_are_lost(
    aws: LocalAws, demo_org: SeededOrg, recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # What the carrier prevents: the worker threads find no segment and record nothing.
    concurrency.carry_context(None)
    try:
        with caplog.at_level(logging.ERROR, logger="aws_xray_sdk"):
            handler = _traced_describe_calls(aws, recorder, [*demo_org.keys.values()] * 2)
    finally:
        concurrency.carry_context(app.carry_trace)
    assert _kms_calls(handler) == []
    assert "cannot find the current segment" in caplog.text


def test_the_carrier_is_a_no_op_when_tracing_is_off(aws: LocalAws, demo_org: SeededOrg) -> None:
    # Outside Lambda the tracer disables the SDK: nothing is looked up, nothing logged.
    assert not aws_xray_sdk.global_sdk_config.sdk_enabled()
    enter = app.carry_trace()
    with enter():
        pass
    assert concurrency.fan_out(len, ["ab", "c"], workers=2) == [2, 1]
