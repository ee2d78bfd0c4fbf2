"""crhelper's ``CfnResource`` with a response path that cannot hang, leak or overflow.

crhelper handles the protocol well but its response upload retries forever without looking
at the HTTP status, logs the pre-signed ResponseURL, sleeps two minutes on Delete, and can
answer with an empty or random PhysicalResourceId after a timeout or a failed Create. This
subclass keeps its lifecycle and timer, and replaces only the sending.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crhelper import CfnResource

from orgkeypolicy.errors import clip

logger = logging.getLogger(__name__)

# CloudFormation rejects a response body larger than this.
MAX_RESPONSE_BYTES = 4096
# Attributes emptied, in this order, when the response would not fit: never removed, since
# Fn::GetAtt of a missing attribute fails the consumer's stack.
SHEDDABLE = ("AccountIds", "PrincipalModes", "KeyArns")


def fit_response(body: dict[str, Any]) -> bytes:
    """The response as bytes within CloudFormation's limit, emptying bulky attributes first."""
    body = {
        **body,
        "Reason": clip(str(body.get("Reason", ""))),
        "Data": dict(body.get("Data") or {}),
    }
    payload = json.dumps(body).encode()
    for name in SHEDDABLE:
        if len(payload) <= MAX_RESPONSE_BYTES:
            break
        if body["Data"].get(name):
            body["Data"][name] = ""
            payload = json.dumps(body).encode()
    if len(payload) > MAX_RESPONSE_BYTES:
        body["Data"] = {}
        payload = json.dumps(body).encode()
    return payload


def is_local(response_url: str) -> bool:
    """``sam local invoke`` or a sample event: print the response instead of uploading it."""
    return bool(os.environ.get("AWS_SAM_LOCAL")) or not response_url.startswith("https://")


def upload(response_url: str, payload: bytes, *, attempts: int, timeout: float) -> bool:
    """PUT the response a bounded number of times; True when CloudFormation answered 200.

    The URL is pre-signed, a bearer credential for the stack's result: it is never logged.
    """
    parts = urlsplit(response_url)
    path = urlunsplit(("", "", parts.path, parts.query, ""))
    headers = {"content-type": "", "content-length": str(len(payload))}
    for attempt in range(1, attempts + 1):
        try:
            connection = http.client.HTTPSConnection(
                parts.netloc, timeout=timeout, context=ssl.create_default_context()
            )
            try:
                connection.request("PUT", path, body=payload, headers=headers)
                status = connection.getresponse().status
            finally:
                connection.close()
        except (OSError, http.client.HTTPException) as error:
            logger.warning(
                "Response upload failed", extra={"attempt": attempt, "error": str(error)}
            )
        else:
            if status == 200:
                logger.info("Response delivered", extra={"attempt": attempt})
                return True
            logger.warning("Response refused", extra={"attempt": attempt, "http_status": status})
        if attempt < attempts:
            time.sleep(min(2.0**attempt, timeout))
    logger.error("Response not delivered; CloudFormation will time the resource out")
    return False


class CustomResource(CfnResource):
    """One answer per request, with a stable PhysicalResourceId, bounded in size and time."""

    def __init__(
        self,
        physical_id: Callable[[Mapping[str, Any]], str],
        *,
        upload_attempts: int = 3,
        upload_timeout: float = 10.0,
    ) -> None:
        # INFO keeps crhelper from logging the whole event (and its ResponseURL) at DEBUG;
        # no sleep on Delete: nothing here needs CloudWatch to catch up before answering.
        super().__init__(
            json_logging=False, log_level="INFO", boto_level="ERROR", sleep_on_delete=0
        )
        self._physical_id_for = physical_id
        self._upload_attempts = upload_attempts
        self._upload_timeout = upload_timeout
        self._answer_lock = threading.Lock()
        self._answered = False
        self._request: Mapping[str, Any] = {}
        self._lambda_context: Any = None

    def generate_physical_id(self, event: Mapping[str, Any]) -> str:
        # A failed Create must answer with the ID that the following Delete can act on.
        return self._physical_id_for(event)

    def __call__(self, event: Mapping[str, Any], context: Any) -> None:
        with self._answer_lock:
            self._answered = False
        self._request = event
        self._lambda_context = context
        # crhelper logs the event at DEBUG; the ResponseURL is a credential and only _send needs it.
        super().__call__({**event, "ResponseURL": "(redacted)"}, context)

    def _send(self, status: str | None = None, reason: str = "", send_response: Any = None) -> None:
        # crhelper's timer and the request itself may both try to answer: the first one wins.
        with self._answer_lock:
            if self._answered:
                logger.warning("Already answered this request; not answering again")
                return
            self._answered = True
        body = {
            "Status": status or self.Status,
            "Reason": reason if status else self.Reason,
            "PhysicalResourceId": str(
                self.PhysicalResourceId
                or self._request.get("PhysicalResourceId")
                or self._physical_id_for(self._request)
            ),
            "StackId": self.StackId,
            "RequestId": self.RequestId,
            "LogicalResourceId": self.LogicalResourceId,
            "NoEcho": self.NoEcho,
            "Data": self.Data,
        }
        payload = fit_response(body)
        logger.info(
            "Answering CloudFormation",
            extra={"status": body["Status"], "reason": body["Reason"], "bytes": len(payload)},
        )
        response_url = str(self._request.get("ResponseURL", ""))
        if is_local(response_url):
            print(json.dumps(json.loads(payload), indent=2))
            return
        upload(
            response_url,
            payload,
            attempts=self._upload_attempts,
            timeout=self._time_per_attempt(),
        )

    def _time_per_attempt(self) -> float:
        """Share the time left between the attempts, so that the upload ends before Lambda does."""
        if self._lambda_context is None:
            return self._upload_timeout
        left = float(self._lambda_context.get_remaining_time_in_millis()) / 1000 - 1
        return max(1.0, min(self._upload_timeout, left / (2 * self._upload_attempts)))
