"""An HTTP proxy in front of the local AWS that adds latency, injects errors and logs calls.

boto3 clients reach it through ``AWS_ENDPOINT_URL`` (or ``endpoint_url=proxy.url``). For each
request it works out the AWS operation:

- JSON protocol (Organizations, KMS): the ``X-Amz-Target`` header, e.g.
  ``AWSOrganizationsV20161128.ListAccountsForParent`` or ``TrentService.PutKeyPolicy``;
- query protocol (STS): ``Action=`` in the form body (or the query string);

and names it ``service:Operation`` (``kms:PutKeyPolicy``), the service being the SigV4
signing name from the ``Authorization`` header.

Rules (:meth:`FaultProxy.add_rule`) answer matching calls with an AWS-shaped error instead
of forwarding them, or only delay them. Errors are shaped as AWS sends them, so botocore
parses them into ``ClientError`` with the given code and applies its own retry rules: JSON
protocol as ``{"__type": code, "message": ...}`` with ``x-amzn-ErrorType``, query protocol
as an XML ``ErrorResponse``.

Latency and delays are slept in the request's own handler thread, so concurrent calls
overlap as they would against AWS.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from xml.sax.saxutils import escape

SERVICE_BY_TARGET_PREFIX = {
    "AWSOrganizationsV20161128": "organizations",
    "TrentService": "kms",
}

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        # The proxy has read the whole body already; upstream must not wait for a 100.
        "expect",
    }
)
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")
_FORWARD_TIMEOUT = 60.0

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Call:
    """One request that reached the proxy, as it was answered.

    ``started`` and ``ended`` are ``time.perf_counter()`` values: arrival of the request,
    and the moment the answer was ready to send (latency and delays included).
    ``body`` is the parsed JSON body (JSON protocol) or the form fields (query protocol).
    """

    service: str
    operation: str
    status: int
    injected: bool
    started: float
    ended: float
    body: dict[str, Any]
    error_code: str | None = None

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"

    @property
    def duration(self) -> float:
        return self.ended - self.started


@dataclass
class Rule:
    """A fault rule; see :meth:`FaultProxy.add_rule`. ``seen`` counts the calls that matched
    it (operation and ``when``), ``fired`` those it acted on."""

    operation: str
    error_code: str | None
    status: int
    message: str
    probability: float
    nth: frozenset[int] | None
    times: int | None
    delay: float
    when: Predicate | None
    seen: int = 0
    fired: int = 0


def operation_matches(pattern: str, service: str, operation: str) -> bool:
    """``*`` matches everything, ``kms:*`` a whole service, ``kms:PutKeyPolicy`` one
    operation and a bare ``PutKeyPolicy`` that operation in any service."""
    if pattern == "*":
        return True
    if ":" not in pattern:
        return pattern == operation
    want_service, want_operation = pattern.split(":", 1)
    if want_service.lower() != service.lower():
        return False
    return want_operation in ("*", operation)


def identify(headers: Any, path: str, body: bytes) -> tuple[str, str, dict[str, Any], str]:
    """(service, operation, parsed parameters, protocol) of one request."""
    authorization = headers.get("Authorization", "") or ""
    scope = _CREDENTIAL_SCOPE.search(authorization)
    signing_service = scope.group(1) if scope else ""
    target = headers.get("X-Amz-Target")
    if target and "." in target:
        prefix, operation = target.rsplit(".", 1)
        service = SERVICE_BY_TARGET_PREFIX.get(prefix) or signing_service or prefix.lower()
        params: dict[str, Any] = {}
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                params = parsed
        return service, operation, params, "json"
    query = urllib.parse.urlsplit(path).query
    fields = urllib.parse.parse_qs(query)
    content_type = headers.get("Content-Type", "") or ""
    if body and ("x-www-form-urlencoded" in content_type or body.startswith(b"Action=")):
        fields.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
    flat = {name: values[0] for name, values in fields.items()}
    if "Action" in flat:
        return signing_service or "unknown", str(flat["Action"]), flat, "query"
    return signing_service or "unknown", "unknown", flat, "other"


def json_error(code: str, message: str, status: int) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("x-amzn-RequestId", str(uuid.uuid4())),
        ("x-amzn-ErrorType", code),
    ]
    return status, headers, body


def query_error(
    code: str, message: str, status: int, service: str, version: str | None
) -> tuple[int, list[tuple[str, str]], bytes]:
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
    return status, headers, body


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up, or stop() closing a connection mid-delay, is expected.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections from boto3's pool end after this, so no thread waits
    # forever on a client that went away.
    timeout = 120
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm and the
        # client's delayed ACK that costs ~40 ms per call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.proxy._track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, open_=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the call log is the record."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        started = time.perf_counter()
        body = self._read_body()
        proxy = self.server.proxy
        service, operation, params, protocol = identify(self.headers, self.path, body)
        delay, rule = proxy._decide(service, operation, params)
        pause = proxy.latency + delay
        if pause > 0:
            time.sleep(pause)
        if rule is not None and rule.error_code:
            if protocol == "query":
                status, headers, payload = query_error(
                    rule.error_code, rule.message, rule.status, service, params.get("Version")
                )
            else:
                status, headers, payload = json_error(rule.error_code, rule.message, rule.status)
            error_code: str | None = rule.error_code
            injected = True
        else:
            status, headers, payload = self._forward(proxy.target, body)
            error_code = None
            injected = False
        proxy._record(
            Call(
                service=service,
                operation=operation,
                status=status,
                injected=injected,
                started=started,
                ended=time.perf_counter(),
                body=params,
                error_code=error_code,
            )
        )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, target: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urllib.parse.urlsplit(target)
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=_FORWARD_TIMEOUT
        )
        try:
            # Host and the rest go upstream exactly as signed by the client.
            connection.putrequest(
                self.command, self.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            headers = [
                (name, value)
                for name, value in response.getheaders()
                if name.lower() not in _HOP_BY_HOP
            ]
            return response.status, headers, payload
        except OSError as error:
            return json_error("ServiceUnavailable", f"proxy could not reach {target}: {error}", 503)
        finally:
            connection.close()


@dataclass(eq=False)
class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of ``target`` (the local AWS url).

    ``latency`` seconds are added to every call, forwarded or injected. ``seed`` seeds the
    random draws of rules with ``probability < 1``, so a run is repeatable.
    """

    target: str
    seed: int = 0
    latency: float = 0.0
    _rules: list[Rule] = field(default_factory=list, init=False, repr=False)
    _calls: list[Call] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _random: random.Random = field(init=False, repr=False)
    _server: _ProxyServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _connections: set[socket.socket] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.target = self.target.rstrip("/")
        self._random = random.Random(self.seed)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is None:
            self._server = _ProxyServer(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fault-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- rules -------------------------------------------------------------------------

    def add_rule(
        self,
        operation: str,
        *,
        error_code: str | None = None,
        status: int = 400,
        message: str | None = None,
        probability: float = 1.0,
        nth: set[int] | frozenset[int] | None = None,
        times: int | None = None,
        delay: float = 0.0,
        when: Predicate | None = None,
    ) -> Rule:
        """Act on calls of ``operation`` (``kms:PutKeyPolicy``, ``organizations:*``, ``*``).

        A call matches when its operation matches and ``when`` (given the parsed request
        body, e.g. ``lambda body: body["KeyId"] == key_arn``) is true. Of the matching calls,
        the rule fires on those whose 1-based match count is in ``nth`` (all if ``None``),
        at most ``times`` times, each with ``probability``. Firing sleeps ``delay`` seconds,
        then answers ``error_code`` with HTTP ``status``, or forwards the call when there is
        no ``error_code``. Rules are tried in the order added; the first that answers with an
        error ends the call, delays add up.
        """
        if not error_code and delay <= 0:
            raise ValueError("a rule needs an error_code, a delay, or both")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        rule = Rule(
            operation=operation,
            error_code=error_code or None,
            status=status,
            message=message if message is not None else _default_message(error_code),
            probability=probability,
            nth=frozenset(nth) if nth is not None else None,
            times=times,
            delay=delay,
            when=when,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def _decide(
        self, service: str, operation: str, params: dict[str, Any]
    ) -> tuple[float, Rule | None]:
        """Total delay, and the rule answering with an error if any."""
        delay = 0.0
        answering: Rule | None = None
        with self._lock:
            for rule in self._rules:
                if not operation_matches(rule.operation, service, operation):
                    continue
                if rule.when is not None and not _safe_predicate(rule.when, params):
                    continue
                rule.seen += 1
                if answering is not None:
                    continue
                if rule.nth is not None and rule.seen not in rule.nth:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.fired += 1
                delay += rule.delay
                if rule.error_code:
                    answering = rule
        return delay, answering

    # -- call log ----------------------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    @property
    def calls(self) -> list[Call]:
        """A snapshot of the call log, in the order the answers were ready."""
        with self._lock:
            return list(self._calls)

    def calls_for(self, operation: str = "*", injected: bool | None = None) -> list[Call]:
        return [
            call
            for call in self.calls
            if operation_matches(operation, call.service, call.operation)
            and (injected is None or call.injected == injected)
        ]

    def count(self, operation: str | None = None, injected: bool | None = None) -> int:
        return len(self.calls_for(operation or "*", injected))

    def max_concurrency(self, operation: str | None = None) -> int:
        """Most calls (of ``operation``) that were in flight at one moment."""
        events: list[tuple[float, int]] = []
        for call in self.calls_for(operation or "*"):
            events.append((call.started, 1))
            events.append((call.ended, -1))
        # Ends sort before starts at the same instant: touching calls do not overlap.
        events.sort()
        peak = current = 0
        for _, step in events:
            current += step
            peak = max(peak, current)
        return peak

    def reset_log(self) -> None:
        with self._lock:
            self._calls.clear()


def _default_message(error_code: str | None) -> str:
    return f"{error_code} injected by the local fault proxy" if error_code else ""


def _safe_predicate(predicate: Predicate, params: dict[str, Any]) -> bool:
    # A predicate written for one operation's body (body["KeyId"]) must not break calls
    # of others that happen to match the same pattern.
    try:
        return bool(predicate(params))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
