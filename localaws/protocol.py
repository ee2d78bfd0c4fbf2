"""What an AWS request is, and how AWS shapes its errors: the wire side of :mod:`localaws.proxy`.

A request is named ``service:Operation`` from

- JSON protocol (Organizations, KMS, DynamoDB, EventBridge, CloudTrail, SQS): the
  ``X-Amz-Target`` header, e.g. ``TrentService.PutKeyPolicy`` or
  ``DynamoDB_20120810.PutItem``, its prefix mapped by :data:`SERVICE_BY_TARGET_PREFIX`;
- query protocol (STS, CloudFormation): ``Action=`` in the form body or the query string;
- anything else (REST protocols such as Access Analyzer's): only the service is known, the
  operation is ``unknown``;

the service falling back to the SigV4 signing name of the ``Authorization`` header's
credential scope (``Credential=AKID/DATE/REGION/SERVICE/aws4_request``), which also gives the
request's region.

Errors are shaped as AWS sends them, so botocore parses them into ``ClientError`` with the
given code and applies its own retry rules: JSON protocols as ``{"__type": code, "message":
...}`` with ``x-amzn-ErrorType``, query protocol as an XML ``ErrorResponse``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple
from xml.sax.saxutils import escape

SERVICE_BY_TARGET_PREFIX = {
    "AWSOrganizationsV20161128": "organizations",
    "TrentService": "kms",
    "DynamoDB_20120810": "dynamodb",
    "AWSEvents": "events",
    "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101": "cloudtrail",
    "AmazonSQS": "sqs",
}

INVALID_TOKEN = "UnrecognizedClientException"
"""What AWS answers (HTTP 400) in an opt-in region that the account has not enabled."""

# The messages AWS itself sends with these codes.
_AWS_MESSAGES = {
    INVALID_TOKEN: "The security token included in the request is invalid.",
    "InternalFailure": "The request processing has failed because of an unknown error.",
    "InternalServerError": "Internal server error",
}

_CREDENTIAL_SCOPE = re.compile(
    r"Credential=[^/,\s]+/\d{8}/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)/aws4_request"
)
_DEFAULT_JSON_CONTENT_TYPE = "application/x-amz-json-1.1"


class Answer(NamedTuple):
    """An HTTP response: status, headers (without ``Content-Length``) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Request:
    """What :func:`identify` made of one request. ``params`` is the parsed JSON body (JSON
    protocol) or the form fields (query protocol); ``region`` is ``""`` for an unsigned
    request."""

    service: str
    operation: str
    region: str
    protocol: str
    params: dict[str, Any]
    content_type: str


def identify(headers: Any, path: str, body: bytes) -> Request:
    """Name the request whose ``headers`` (any mapping with ``get``), path and body these are."""
    scope = _CREDENTIAL_SCOPE.search(headers.get("Authorization", "") or "")
    signing_service = scope.group("service") if scope else ""
    region = scope.group("region") if scope else ""
    content_type = headers.get("Content-Type", "") or ""
    target = headers.get("X-Amz-Target")
    if target and "." in target:
        prefix, operation = target.rsplit(".", 1)
        service = SERVICE_BY_TARGET_PREFIX.get(prefix) or signing_service or prefix.lower()
        return Request(service, operation, region, "json", _json_object(body), content_type)
    fields = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    if body and ("x-www-form-urlencoded" in content_type or body.startswith(b"Action=")):
        fields.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
    flat = {name: values[0] for name, values in fields.items()}
    service = signing_service or "unknown"
    if "Action" in flat:
        return Request(service, str(flat["Action"]), region, "query", flat, content_type)
    return Request(service, "unknown", region, "other", flat, content_type)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def default_message(code: str | None) -> str:
    """AWS's own message for ``code`` when there is a well-known one."""
    if not code:
        return ""
    return _AWS_MESSAGES.get(code, f"{code} injected by the local fault proxy")


def internal_error_code(service: str) -> str:
    """The code of a 500 from ``service``: DynamoDB names it in its model, others send the
    common ``InternalFailure``."""
    return "InternalServerError" if service == "dynamodb" else "InternalFailure"


def error_answer(request: Request, code: str, message: str, status: int) -> Answer:
    """The error ``code`` shaped for the protocol of ``request``."""
    if request.protocol == "query":
        return _query_error(code, message, status, request.service, request.params.get("Version"))
    content_type = request.content_type
    if not content_type.startswith("application/x-amz-json"):
        content_type = _DEFAULT_JSON_CONTENT_TYPE
    return json_error(code, message, status, content_type)


def json_error(
    code: str, message: str, status: int, content_type: str = _DEFAULT_JSON_CONTENT_TYPE
) -> Answer:
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = [
        ("Content-Type", content_type),
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("x-amzn-ErrorType", code),
    ]
    return Answer(status, headers, body)


def _query_error(code: str, message: str, status: int, service: str, version: str | None) -> Answer:
    request_id = str(uuid.uuid4())
    kind = "Receiver" if status >= 500 else "Sender"
    namespace = f' xmlns="https://{service}.amazonaws.com/doc/{version}/"' if version else ""
    body = (
        f"<ErrorResponse{namespace}>"
        f"<Error><Type>{kind}</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    return Answer(status, headers, body)
