"""CloudFormation's side of the custom-resource protocol, on this machine.

CloudFormation invokes the function with an event whose ``ResponseURL`` is a presigned S3
URL, and learns the outcome only from the JSON document the function PUTs there.
:class:`CloudFormation` plays both parts: :meth:`CloudFormation.event` builds events shaped
like the real ones, and an HTTPS server on 127.0.0.1 receives the PUTs.

The server's certificate comes from a throw-away CA (``trustme``) whose PEM is written to
:attr:`CloudFormation.ca_file`. Setting ``SSL_CERT_FILE`` to it makes Python's default SSL
context trust the server, which is what crhelper's ``ssl.create_default_context()`` uses;
the handler needs no test-only switch to skip verification.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trustme

from localaws.server import DEFAULT_REGION, MOTO_ACCOUNT_ID

RESOURCE_TYPE = "Custom::OrgKeyPolicy"
FUNCTION_NAME = "org-key-policy"
DEFAULT_SERVICE_TOKEN = "arn:aws:lambda:us-east-1:123456789012:function:org-key-policy"
MAX_RESPONSE_BYTES = 4096
"""CloudFormation fails a custom resource whose response document is longer than this."""

REQUEST_TYPES = ("Create", "Update", "Delete")

_S3_ERRORS = {
    400: ("BadRequest", "An error occurred when parsing the HTTP request."),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


def stringify(value: Any) -> Any:
    """Turn scalars into strings the way CloudFormation passes template values to a custom
    resource: ``True`` -> ``"true"``, ``20`` -> ``"20"``, recursively through lists and
    dicts. Strings and ``None`` pass unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): stringify(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [stringify(item) for item in value]
    return value


@dataclass(frozen=True)
class CfnResponse:
    """One PUT received at a ResponseURL.

    ``status``, ``reason``, ``physical_id`` and ``data`` come from the JSON document;
    ``http_status`` is what this server answered (2xx means CloudFormation got it);
    ``count`` is how many PUTs had arrived for the same request id when this was returned.
    """

    request_id: str
    status: str | None
    reason: str | None
    physical_id: str | None
    data: dict[str, Any]
    body: dict[str, Any]
    raw: bytes
    size: int
    headers: dict[str, str]
    count: int
    http_status: int
    query: dict[str, str]
    received_at: float

    @property
    def accepted(self) -> bool:
        return 200 <= self.http_status < 300

    @property
    def too_large(self) -> bool:
        """CloudFormation would fail the resource with "Response object is too long"."""
        return self.size > MAX_RESPONSE_BYTES

    @property
    def no_echo(self) -> bool:
        return bool(self.body.get("NoEcho"))


@dataclass
class _Put:
    request_id: str
    raw: bytes
    headers: dict[str, str]
    query: dict[str, str]
    http_status: int
    received_at: float

    def as_response(self, count: int) -> CfnResponse:
        try:
            parsed = json.loads(self.raw)
        except ValueError:
            parsed = None
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        data = body.get("Data")
        physical_id = body.get("PhysicalResourceId")
        return CfnResponse(
            request_id=self.request_id,
            status=body.get("Status"),
            reason=body.get("Reason"),
            physical_id=str(physical_id) if physical_id is not None else None,
            data=data if isinstance(data, dict) else {},
            body=body,
            raw=self.raw,
            size=len(self.raw),
            headers=self.headers,
            count=count,
            http_status=self.http_status,
            query=self.query,
            received_at=self.received_at,
        )


class _ResponseServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: CloudFormation, context: ssl.SSLContext) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _ResponseHandler)
        # The handshake runs in each request's thread: a client that connects and stalls
        # must not block the accept loop.
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that distrust the certificate, hang up or time out are part of what the
        # tests exercise; they are not server errors.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _ResponseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _ResponseServer

    def handle(self) -> None:
        # Headers and body go out in separate writes: no Nagle delay between them.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the stored responses are the record."""

    def do_PUT(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        query = {name: values[0] for name, values in urllib.parse.parse_qs(parts.query).items()}
        request_id = parts.path.removeprefix("/responses/")
        if not parts.path.startswith("/responses/") or not request_id:
            self._answer(404, raw_error=_s3_error(404))
            return
        if not owner._signature_ok(request_id, query.get("X-Amz-Signature", "")):
            self._answer(403, raw_error=_s3_error(403, "SignatureDoesNotMatch"))
            return
        status, delay = owner._next_answer()
        if delay > 0:
            time.sleep(delay)
        owner._store(
            _Put(
                request_id=request_id,
                raw=raw,
                headers={name.lower(): value for name, value in self.headers.items()},
                query=query,
                http_status=status,
                received_at=time.time(),
            )
        )
        if 200 <= status < 300:
            self._answer(status, etag=hashlib.md5(raw).hexdigest())
        else:
            self._answer(status, raw_error=_s3_error(status))

    def _refuse(self) -> None:
        # A presigned URL signs the method too: anything but PUT fails like a bad signature.
        self._answer(403, raw_error=_s3_error(403, "SignatureDoesNotMatch"))

    do_GET = do_POST = do_DELETE = do_HEAD = do_PATCH = _refuse

    def _answer(self, status: int, *, raw_error: bytes = b"", etag: str | None = None) -> None:
        self.send_response(status)
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        if etag is not None:
            self.send_header("ETag", f'"{etag}"')
        if raw_error:
            self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(raw_error)))
        self.end_headers()
        if raw_error and self.command != "HEAD":
            self.wfile.write(raw_error)


def _s3_error(status: int, code: str | None = None) -> bytes:
    default_code, message = _S3_ERRORS.get(status, ("ServiceError", "Error"))
    if code == "SignatureDoesNotMatch":
        message = "The request signature we calculated does not match the signature you provided."
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code or default_code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


class CloudFormation:
    """An HTTPS ResponseURL receiver on 127.0.0.1 plus an event factory.

    The server starts on construction; :meth:`stop` (or the ``with`` block) ends it and
    removes the CA file.
    """

    def __init__(
        self,
        *,
        region: str = DEFAULT_REGION,
        account_id: str = MOTO_ACCOUNT_ID,
        stack_name: str = "consumer",
    ) -> None:
        self.region = region
        self.account_id = account_id
        self.stack_id = (
            f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/{uuid.uuid4()}"
        )
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Condition()
        self._puts: dict[str, list[_Put]] = {}
        self._fail_statuses: list[int] = []
        self._hang_seconds = 0.0
        self._hang_count: int | None = None

        self._ca = trustme.CA()
        server_cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self._tmpdir = tempfile.mkdtemp(prefix="localaws-cfn-")
        self.ca_file = str(Path(self._tmpdir) / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_cert.configure_cert(context)
        self._server: _ResponseServer | None = _ResponseServer(self, context)
        self.port = int(self._server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="cfn-responses",
            daemon=True,
        )
        self._thread.start()

    @classmethod
    def start(cls, **kwargs: Any) -> CloudFormation:
        return cls(**kwargs)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """What makes Python's default SSL context trust this server."""
        return {"SSL_CERT_FILE": self.ca_file}

    # -- behaviour of the receiver -----------------------------------------------------

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` PUTs (any request id) with ``status`` and an S3 error
        body, as S3 does for an expired URL (403) or an internal error (500)."""
        with self._lock:
            self._fail_statuses.extend([status] * count)

    def hang(self, seconds: float, count: int | None = None) -> None:
        """Hold each of the next ``count`` answers (every answer if ``None``) for
        ``seconds``; ``hang(0)`` ends it."""
        with self._lock:
            self._hang_seconds = seconds
            self._hang_count = count if seconds > 0 else None

    def reset(self) -> None:
        """Forget received responses and pending failures or hangs."""
        with self._lock:
            self._puts.clear()
            self._fail_statuses.clear()
            self._hang_seconds = 0.0
            self._hang_count = None

    def _next_answer(self) -> tuple[int, float]:
        with self._lock:
            status = self._fail_statuses.pop(0) if self._fail_statuses else 200
            delay = self._hang_seconds
            if self._hang_count is not None:
                self._hang_count -= 1
                if self._hang_count <= 0:
                    self._hang_seconds = 0.0
                    self._hang_count = None
            return status, delay

    def _signature(self, request_id: str) -> str:
        return hmac.new(self._secret, request_id.encode(), hashlib.sha256).hexdigest()

    def _signature_ok(self, request_id: str, signature: str) -> bool:
        return hmac.compare_digest(self._signature(request_id), signature)

    def _store(self, put: _Put) -> None:
        with self._lock:
            self._puts.setdefault(put.request_id, []).append(put)
            self._lock.notify_all()

    # -- events ------------------------------------------------------------------------

    def response_url(self, request_id: str) -> str:
        """A presigned-S3-shaped URL on this server for ``request_id``."""
        now = datetime.now(UTC)
        query = urllib.parse.urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Date": now.strftime("%Y%m%dT%H%M%SZ"),
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Expires": "7199",
                "X-Amz-Credential": f"AKIAEXAMPLE/{now:%Y%m%d}/{self.region}/s3/aws4_request",
                "X-Amz-Signature": self._signature(request_id),
            }
        )
        return f"{self.url}/responses/{request_id}?{query}"

    def event(
        self,
        request_type: str,
        properties: Mapping[str, Any],
        *,
        logical_id: str = "SharedKeyPolicy",
        stack_id: str | None = None,
        old_properties: Mapping[str, Any] | None = None,
        physical_id: str | None = None,
        service_token: str = DEFAULT_SERVICE_TOKEN,
    ) -> dict[str, Any]:
        """A custom-resource request as CloudFormation sends it.

        ``properties`` are passed as given (use :func:`stringify` for what CloudFormation
        would have turned into strings). ``ServiceToken`` is added to the properties as
        CloudFormation does. ``Update`` needs ``old_properties`` and ``physical_id``,
        ``Delete`` needs ``physical_id``: CloudFormation always sends them.
        """
        if request_type not in REQUEST_TYPES:
            raise ValueError(f"RequestType must be one of {REQUEST_TYPES}, not {request_type!r}")
        if request_type in ("Update", "Delete") and physical_id is None:
            raise ValueError(f"a {request_type} event needs physical_id")
        if request_type == "Update" and old_properties is None:
            raise ValueError("an Update event needs old_properties")
        request_id = str(uuid.uuid4())
        event: dict[str, Any] = {
            "RequestType": request_type,
            "ServiceToken": service_token,
            "ResponseURL": self.response_url(request_id),
            "StackId": stack_id or self.stack_id,
            "RequestId": request_id,
            "LogicalResourceId": logical_id,
        }
        if physical_id is not None and request_type != "Create":
            event["PhysicalResourceId"] = physical_id
        event["ResourceType"] = RESOURCE_TYPE
        event["ResourceProperties"] = {"ServiceToken": service_token, **copy.deepcopy(properties)}
        if request_type == "Update" and old_properties is not None:
            event["OldResourceProperties"] = {
                "ServiceToken": service_token,
                **copy.deepcopy(old_properties),
            }
        return event

    # -- received responses ------------------------------------------------------------

    @staticmethod
    def request_id_of(request_id_or_event: str | Mapping[str, Any]) -> str:
        if isinstance(request_id_or_event, str):
            return request_id_or_event
        url = request_id_or_event.get("ResponseURL")
        if isinstance(url, str) and "/responses/" in url:
            return urllib.parse.urlsplit(url).path.removeprefix("/responses/")
        return str(request_id_or_event["RequestId"])

    def responses(self, request_id_or_event: str | Mapping[str, Any]) -> list[CfnResponse]:
        """Every PUT received so far for the request, rejected ones included, in order."""
        request_id = self.request_id_of(request_id_or_event)
        with self._lock:
            puts = list(self._puts.get(request_id, []))
        return [put.as_response(len(puts)) for put in puts]

    def response(
        self, request_id_or_event: str | Mapping[str, Any], timeout: float = 10
    ) -> CfnResponse:
        """Wait for the first accepted PUT for the request and return it."""
        request_id = self.request_id_of(request_id_or_event)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                puts = self._puts.get(request_id, [])
                for put in puts:
                    if 200 <= put.http_status < 300:
                        return put.as_response(len(puts))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    rejected = len(puts)
                    raise TimeoutError(
                        f"no response for request {request_id} within {timeout} s"
                        f" ({rejected} rejected PUTs)"
                    )
                self._lock.wait(remaining)


@dataclass
class FakeLambdaContext:
    """The Lambda context object, as the Python runtime builds it.

    ``memory_limit_in_mb`` is a string, as the runtime reads it from
    ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``. The remaining time counts down from
    ``timeout_seconds`` from construction, which drives crhelper's timeout timer and its
    wait before answering a Delete.
    """

    timeout_seconds: float = 300
    function_name: str = FUNCTION_NAME
    function_version: str = "$LATEST"
    memory_limit_in_mb: str = "256"
    region: str = DEFAULT_REGION
    account_id: str = MOTO_ACCOUNT_ID
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = ""
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None
    tenant_id: str | None = None
    _deadline: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        if not self.invoked_function_arn:
            self.invoked_function_arn = (
                f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"
            )
        if not self.log_group_name:
            self.log_group_name = f"/aws/lambda/{self.function_name}"
        if not self.log_stream_name:
            today = datetime.now(UTC)
            self.log_stream_name = f"{today:%Y/%m/%d}/[{self.function_version}]{uuid.uuid4().hex}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
