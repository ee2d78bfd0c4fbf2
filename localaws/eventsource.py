"""Lambda's SQS event source mapping, on this machine.

:class:`SqsEventSource` receives a batch from a queue of the local AWS (up to ``batch_size``
messages, in receives of at most 10, as Lambda's poller fills a batch within its batching
window) and invokes a handler with it, shaped as Lambda shapes it (``Records`` of ``aws:sqs``
messages). As with
``ReportBatchItemFailures``, the messages the handler's answer lists in ``batchItemFailures``
go back to the queue and the others are deleted; a handler that raises leaves every message
of the batch for a later receive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localaws.server import DEFAULT_REGION, fake_client

Handler = Callable[[dict[str, Any]], Any]


@dataclass
class SqsEventSource:
    url: str
    queue_url: str
    region: str = DEFAULT_REGION
    batch_size: int = 100

    def __post_init__(self) -> None:
        self._sqs = fake_client("sqs", self.url, self.region)
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )
        self.queue_arn = str(attributes["Attributes"]["QueueArn"])

    def event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The Lambda event for received ``messages``."""
        return {
            "Records": [
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message.get("Attributes", {}),
                    "messageAttributes": {},
                    "md5OfBody": hashlib.md5(message["Body"].encode()).hexdigest(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.region,
                }
                for message in messages
            ]
        }

    def poll(self, handler: Handler) -> int:
        """Invoke ``handler`` with the next batch; the number of messages in it (0: the queue
        was empty and the handler was not invoked)."""
        messages: list[dict[str, Any]] = []
        while len(messages) < self.batch_size:
            received = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                AttributeNames=["All"],
            ).get("Messages", [])
            if not received:
                break
            messages += received
        if not messages:
            return 0
        answer = handler(self.event(messages))
        failed = {
            item["itemIdentifier"]
            for item in (answer or {}).get("batchItemFailures", [])
            if isinstance(item, dict)
        }
        for message in messages:
            if message["MessageId"] in failed:
                self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
            else:
                self._sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return len(messages)
