"""CloudTrail event history of one key: LookupEvents in the key's account and region. A thin
adapter; what the events mean is ``orgkeypolicy.cli.usage``'s business.

LookupEvents allows 2 requests per second per account and region, shared with everything
else the account runs: requests are paced to that, and botocore's adaptive retry mode slows
down further when CloudTrail throttles anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from orgkeypolicy.aws import client_config, error_code
from orgkeypolicy.cli.errors import CommandError
from orgkeypolicy.concurrency import Pacer

logger = logging.getLogger(__name__)

LOOKUP_RATE = 2.0
"""LookupEvents requests per second per account and region (CloudTrail's quota)."""


class Trail:
    """The event history of one account and region."""

    def __init__(self, session: boto3.Session, region: str, *, rate: float = LOOKUP_RATE) -> None:
        self.region = region
        self.client = session.client(
            "cloudtrail",
            region_name=region,
            config=client_config("adaptive", attempts=10, pool=2),
        )
        pacer = Pacer(rate)

        def pace(**_: Any) -> None:
            pacer.wait(region)

        # Once per call (retries are spaced by the retry mode), on an event every handler of
        # which runs: a before-call handler may answer the call and end the chain.
        self.client.meta.events.register("before-parameter-build.cloudtrail.LookupEvents", pace)

    def key_events(
        self,
        key_arn: str,
        start: datetime,
        end: datetime,
        on_page: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Every event about the key between ``start`` and ``end``, parsed.

        KMS names the key by its ARN as the resource of every event about it (key-management
        events too, since December 2022, long before event history's 90 days): one lookup by
        that resource name finds them, whether the request named the key by ID, ARN or alias.
        ``on_page`` is told how many events were read so far.
        """
        pages = self.client.get_paginator("lookup_events").paginate(
            LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": key_arn}],
            StartTime=start,
            EndTime=end,
        )
        events: list[dict[str, Any]] = []
        try:
            for page in pages:
                events.extend(
                    json.loads(event["CloudTrailEvent"])
                    for event in page.get("Events", [])
                    if event.get("CloudTrailEvent")
                )
                if on_page is not None:
                    on_page(len(events))
        except ClientError as error:
            raise CommandError(
                f"CloudTrail LookupEvents in {self.region} failed ({error_code(error)}); "
                "run audit with credentials of the key's account that allow "
                "cloudtrail:LookupEvents"
            ) from error
        except BotoCoreError as error:
            raise CommandError(
                f"CloudTrail in {self.region} could not be reached ({type(error).__name__}); "
                "check the region and the network path to CloudTrail"
            ) from error
        logger.debug("%d events about %s in %s", len(events), key_arn, self.region)
        return events
