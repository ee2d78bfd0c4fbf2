"""Lambda entry points, wiring only: crhelper and Powertools to ``orgkeypolicy.lifecycle`` (the
custom resource), and Powertools' event classes and batch utility to ``orgkeypolicy.resync``
(the re-sync function)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import aws_xray_sdk
import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
    EventBridgeEvent,
    SQSEvent,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from aws_xray_sdk.core import xray_recorder

from orgkeypolicy import __version__, concurrency, lifecycle, resync
from orgkeypolicy.cfn import CustomResource
from orgkeypolicy.drift import Status
from orgkeypolicy.errors import OrgKeyPolicyError
from orgkeypolicy.settings import Deadline, Settings
from orgkeypolicy.statements import sid_prefix

# The template sets POWERTOOLS_*; the fallbacks keep local runs (tests, the demo) working.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "OrgKeyPolicy")
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OrgKeyPolicy"), service=SERVICE
)
helper = CustomResource(lambda event: sid_prefix(event["StackId"], event["LogicalResourceId"]))
# crhelper logs too: its lines go through the same JSON logger, with the stack and resource.
copy_config_to_registered_loggers(source_logger=logger, include={"orgkeypolicy", "crhelper"})
settings = Settings.from_environment()


def carry_trace() -> Callable[[], AbstractContextManager[object]]:
    """Hand the calling thread's X-Ray segment to the worker threads of ``fan_out``.

    X-Ray keeps the current segment per thread: without this, the boto3 calls made in the
    thread pools find no segment and their subsegments are dropped.
    """
    if not aws_xray_sdk.global_sdk_config.sdk_enabled():
        return nullcontext
    entity = xray_recorder.get_trace_entity()
    if entity is None:
        return nullcontext

    @contextmanager
    def attached() -> Iterator[None]:
        xray_recorder.set_trace_entity(entity)
        try:
            yield
        finally:
            # A worker runs several items: each starts from the caller's segment, none from
            # the subsegments an earlier item left open after a failure.
            xray_recorder.clear_trace_entities()

    return attached


concurrency.carry_context(carry_trace)

# Kept back from the Lambda timeout to put keys back and answer CloudFormation.
RESERVE_SECONDS = 45.0
# Kept back from the re-sync function's timeout to finish the keys under way and report.
RESYNC_RESERVE_SECONDS = 60.0

Step = Callable[[lifecycle.Request, boto3.Session, Settings, Deadline], lifecycle.Outcome]


def _request(event: Mapping[str, Any]) -> lifecycle.Request:
    cfn = CloudFormationCustomResourceEvent(dict(event))
    return lifecycle.Request(
        request_type=cfn.request_type,
        stack_id=cfn.stack_id,
        logical_id=cfn.logical_resource_id,
        request_id=cfn.request_id,
        properties=cfn.resource_properties or {},
        old_properties=cfn.old_resource_properties if cfn.request_type == "Update" else None,
        physical_id=cfn.physical_resource_id,
    )


def _deadline(context: LambdaContext, reserve: float) -> Deadline:
    """The time the work may take: the invocation's, less ``reserve`` (at most half of it)."""
    left = context.get_remaining_time_in_millis() / 1000
    return Deadline(max(left - reserve, left / 2))


def _run(step: Step, event: Mapping[str, Any], context: LambdaContext) -> str:
    deadline = _deadline(context, RESERVE_SECONDS)
    try:
        outcome = step(_request(event), boto3.Session(), settings, deadline)
    except OrgKeyPolicyError:
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        raise
    except Exception as error:
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        logger.exception("Unexpected failure")
        raise OrgKeyPolicyError(
            f"Internal error ({type(error).__name__}: {error}); see the function log"
        ) from error
    helper.Data.update(outcome.data)
    metrics.add_metric(name="KeysWritten", unit=MetricUnit.Count, value=outcome.keys_written)
    metrics.add_metric(
        name="AccountsGranted", unit=MetricUnit.Count, value=outcome.accounts_granted
    )
    return outcome.physical_id


@helper.create
@helper.update
def create_or_update(event: Mapping[str, Any], context: LambdaContext) -> str:
    return _run(lifecycle.apply, event, context)


@helper.delete
def delete(event: Mapping[str, Any], context: LambdaContext) -> str:
    return _run(lifecycle.delete, event, context)


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> None:
    logger.append_keys(
        version=__version__,
        stack_id=event.get("StackId"),
        logical_resource_id=event.get("LogicalResourceId"),
        request_type=event.get("RequestType"),
    )
    tracer.put_annotation(key="version", value=__version__)
    helper(event, context)


# --- The re-sync function ---------------------------------------------------------------------


def _note(event: EventBridgeEvent) -> None:
    """Log what woke the run. Its content is not applied: the run reads the organization as it
    is now, so any number of events come to one run that starts after the last of them."""
    detail = event.detail if isinstance(event.get("detail"), dict) else {}
    logger.info(
        "Re-sync triggered",
        extra={
            "source": event.source,
            "detail_type": event.detail_type,
            "event_name": detail.get("eventName"),
            "event_time": event.time,
        },
    )


def _note_record(record: SQSRecord) -> None:
    _note(EventBridgeEvent(record.json_body))


def _resync(only: Sequence[str] | None, context: LambdaContext) -> dict[str, Any]:
    report = resync.run(
        boto3.Session(),
        settings,
        only=only,
        apply=True,
        deadline=_deadline(context, RESYNC_RESERVE_SECONDS),
        run_id=context.aws_request_id,
    )
    summary = report.summary()
    for name, value in (
        ("ResourcesChecked", summary["resources"]),
        ("KeysDrifted", len(report.keys(Status.DRIFT))),
        ("KeysRewritten", summary["keys_rewritten"]),
        ("AccountsAdded", summary["accounts_added"]),
        ("AccountsRemoved", summary["accounts_removed"]),
        ("Failures", len(summary["failures"])),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info("Re-sync summary", extra={"summary": summary})
    return summary


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def resync_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One re-sync per invocation: from the queue (a batch of Organizations events or
    schedules: the batch response is returned, the summary logged), a scheduled EventBridge
    event, or a direct ``{"resources": ["<Sid prefix>", ...]}`` (both return the summary)."""
    if "Records" in event:
        batch = process_partial_response(
            event=event,
            record_handler=_note_record,
            processor=BatchProcessor(event_type=EventType.SQS),
            context=context,
        )
        logger.info("Queued events", extra={"messages": len(list(SQSEvent(event).records))})
        # A failed run raises: every message of the batch returns to the queue for a retry.
        _resync(None, context)
        return dict(batch)
    if "detail-type" in event:
        _note(EventBridgeEvent(event))
        return _resync(None, context)
    return _resync(resync.requested(event), context)
