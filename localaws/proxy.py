"""An HTTP proxy in front of the local AWS that adds latency, injects faults and logs calls.

boto3 clients reach it through ``AWS_ENDPOINT_URL`` (or ``endpoint_url=proxy.url``). Each
request is named ``service:Operation`` (``kms:PutKeyPolicy``, ``dynamodb:PutItem``) and
placed in the region of its SigV4 credential scope by :func:`localaws.protocol.identify`.

Rules (:meth:`FaultProxy.add_rule`) act on the calls they match, by operation, region and
request body:

- ``error_code``: answer an AWS-shaped error instead of forwarding the call; botocore parses
  it into ``ClientError`` and applies its own retry rules to it;
- ``delay`` alone: forward the call late;
- ``lose_answer``: forward the call, so it takes effect, then lose moto's answer: close the
  connection without a response (``"reset"``; botocore raises ``ConnectionClosedError``),
  answer a 500 ``InternalFailure`` (``"500"``; ``InternalServerError`` for DynamoDB), or hold
  the answer ``delay`` seconds, past the client's read timeout, then close the connection
  (``"timeout"``; botocore raises ``ReadTimeoutError``). botocore retries all three in its
  standard and adaptive modes, so the retry meets the state the lost call left behind: a
  ``CreateAlias`` retried this way gets ``AlreadyExistsException``;
- ``drop``: close the connection without forwarding or answering the call;
  with ``region=`` that is a region whose endpoint cannot be reached. An opt-in region that
  the account has not enabled answers ``UnrecognizedClientException`` instead; see
  :meth:`FaultProxy.unreachable_region` for both.

The call log (:attr:`FaultProxy.calls`) records each request as its own :class:`Call`,
retries included, with whether it reached moto (``forwarded``) and whether its answer was
lost on the way back (``answer_lost``), so a test can count the calls that took effect.

Latency, delays and holds are slept in the request's own handler thread, so concurrent calls
overlap as they would against AWS.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self, get_args

from localaws.protocol import (
    INVALID_TOKEN,
    Answer,
    Request,
    default_message,
    error_answer,
    identify,
    internal_error_code,
    json_error,
)

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
_FORWARD_TIMEOUT = 60.0

Predicate = Callable[[dict[str, Any]], bool]
LoseAnswer = Literal["reset", "500", "timeout"]
Unreachable = Literal["reset", "UnrecognizedClientException"]


@dataclass(frozen=True)
class Call:
    """One request that reached the proxy, as it was answered.

    ``status`` is the HTTP status the client got, ``0`` when the connection was closed
    without a response. ``injected`` says a rule answered the call (an error, a closed
    connection or a lost answer); ``forwarded`` that the call reached moto and took effect
    there, ``upstream_status`` being moto's status; ``answer_lost`` that moto's answer never
    reached the client. ``region`` comes from the SigV4 credential scope (``""`` unsigned).

    ``started`` and ``ended`` are ``time.perf_counter()`` values: arrival of the request,
    and the moment the answer was ready to send (latency and delays included). A lost answer
    is logged, and ends, when moto has answered, before the hold of the ``timeout`` kind.
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
    region: str = ""
    forwarded: bool = False
    answer_lost: bool = False
    upstream_status: int | None = None

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"

    @property
    def duration(self) -> float:
        return self.ended - self.started


@dataclass
class Rule:
    """A fault rule; see :meth:`FaultProxy.add_rule`. ``seen`` counts the calls that matched
    it (operation, ``region`` and ``when``), ``fired`` those it acted on."""

    operation: str
    error_code: str | None
    status: int
    message: str | None
    probability: float
    nth: frozenset[int] | None
    times: int | None
    delay: float
    when: Predicate | None
    region: str | None = None
    lose_answer: LoseAnswer | None = None
    drop: bool = False
    seen: int = 0
    fired: int = 0

    @property
    def answers(self) -> bool:
        """Whether firing ends the call here (rather than only delaying it)."""
        return bool(self.error_code) or self.lose_answer is not None or self.drop

    def matches(self, request: Request) -> bool:
        if not operation_matches(self.operation, request.service, request.operation):
            return False
        if self.region is not None and self.region != request.region:
            return False
        return self.when is None or _safe_predicate(self.when, request.params)

    def message_for(self, code: str) -> str:
        return self.message if self.message is not None else default_message(code)


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
        request = identify(self.headers, self.path, body)
        pause, rule = proxy._decide(request)
        pause += proxy.latency
        if pause > 0:
            time.sleep(pause)

        def log(status: int, **outcome: Any) -> None:
            proxy._record(
                Call(
                    service=request.service,
                    operation=request.operation,
                    status=status,
                    started=started,
                    ended=time.perf_counter(),
                    body=request.params,
                    region=request.region,
                    **outcome,
                )
            )

        if rule is not None and rule.drop:
            log(0, injected=True)
            self.close_connection = True
            return
        if rule is not None and rule.error_code:
            code = rule.error_code
            answer = error_answer(request, code, rule.message_for(code), rule.status)
            log(answer.status, injected=True, error_code=code)
            self._send(answer)
            return
        try:
            upstream = self._forward(proxy.target, body)
        except OSError as error:
            answer = json_error(
                "ServiceUnavailable", f"proxy could not reach {proxy.target}: {error}", 503
            )
            log(answer.status, injected=False, error_code="ServiceUnavailable")
            self._send(answer)
            return
        landed = {"forwarded": True, "upstream_status": upstream.status}
        if rule is None or rule.lose_answer is None:
            log(upstream.status, injected=False, **landed)
            self._send(upstream)
            return
        lost: Answer | None = None
        if rule.lose_answer == "500":
            code = internal_error_code(request.service)
            lost = error_answer(request, code, rule.message_for(code), 500)
            log(lost.status, injected=True, answer_lost=True, error_code=code, **landed)
        else:
            log(0, injected=True, answer_lost=True, **landed)
        # Logged before the hold: by the time the client gives up, the log shows the call
        # took effect.
        if rule.delay > 0:
            time.sleep(rule.delay)
        if lost is None:
            self.close_connection = True
        else:
            self._send(lost)

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _forward(self, target: str, body: bytes) -> Answer:
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
            return Answer(response.status, headers, payload)
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
        lose_answer: LoseAnswer | None = None,
        drop: bool = False,
        region: str | None = None,
        probability: float = 1.0,
        nth: set[int] | frozenset[int] | None = None,
        times: int | None = None,
        delay: float = 0.0,
        when: Predicate | None = None,
    ) -> Rule:
        """Act on calls of ``operation`` (``kms:PutKeyPolicy``, ``organizations:*``, ``*``).

        A call matches when its operation matches, its SigV4 region is ``region`` (any if
        ``None``) and ``when`` (given the parsed request body, e.g. ``lambda body:
        body["KeyId"] == key_arn``) is true. Of the matching calls, the rule fires on those
        whose 1-based match count is in ``nth`` (all if ``None``), at most ``times`` times,
        each with ``probability``. Firing does one of:

        - ``error_code``: sleep ``delay`` seconds, then answer that error with HTTP
          ``status`` (``message`` defaults to AWS's own for well-known codes);
        - ``lose_answer``: forward the call, then, ``delay`` seconds after moto answered,
          close the connection (``"reset"``, and ``"timeout"``, which needs a ``delay``
          longer than the client's read timeout) or answer a 500 (``"500"``);
        - ``drop``: sleep ``delay`` seconds, then close the connection unforwarded;
        - none of these: sleep ``delay`` seconds, then forward the call.

        Rules are tried in the order added; the first that fires with one of the three ends
        the call, the delays before it add up.
        """
        actions = [
            name
            for name, chosen in [
                ("error_code", bool(error_code)),
                ("lose_answer", lose_answer is not None),
                ("drop", drop),
            ]
            if chosen
        ]
        if len(actions) > 1:
            raise ValueError(
                f"a rule takes one of error_code, lose_answer and drop, not {' and '.join(actions)}"
            )
        if not actions and delay <= 0:
            raise ValueError("a rule needs an error_code, a lose_answer, drop, or a delay")
        if lose_answer is not None and lose_answer not in get_args(LoseAnswer):
            raise ValueError(
                f"lose_answer={lose_answer!r} is not one of {', '.join(get_args(LoseAnswer))}"
            )
        if lose_answer == "timeout" and delay <= 0:
            raise ValueError(
                "lose_answer='timeout' needs delay=: the seconds to hold the answer, longer "
                "than the client's read timeout"
            )
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        rule = Rule(
            operation=operation,
            error_code=error_code or None,
            status=status,
            message=message,
            probability=probability,
            nth=frozenset(nth) if nth is not None else None,
            times=times,
            delay=delay,
            when=when,
            region=region,
            lose_answer=lose_answer,
            drop=drop,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def unreachable_region(self, region: str, *, answer: Unreachable = "reset") -> Rule:
        """Make every call signed for ``region`` fail without reaching moto: the connection
        closes without a response (``"reset"``: an endpoint that cannot be reached), or the
        call is refused as in an opt-in region the account has not enabled
        (``"UnrecognizedClientException"``, HTTP 400)."""
        if answer == "reset":
            return self.add_rule("*", region=region, drop=True)
        if answer == INVALID_TOKEN:
            return self.add_rule("*", region=region, error_code=INVALID_TOKEN)
        raise ValueError(f"answer={answer!r} is not one of {', '.join(get_args(Unreachable))}")

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def _decide(self, request: Request) -> tuple[float, Rule | None]:
        """Seconds to sleep before acting, and the rule that ends the call if any."""
        pause = 0.0
        answering: Rule | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(request):
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
                # A lost answer's delay is slept after forwarding: it holds the answer.
                if rule.lose_answer is None:
                    pause += rule.delay
                if rule.answers:
                    answering = rule
        return pause, answering

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

    def calls_for(
        self,
        operation: str = "*",
        injected: bool | None = None,
        *,
        forwarded: bool | None = None,
        answer_lost: bool | None = None,
    ) -> list[Call]:
        """The logged calls of ``operation``, those with the given flags if not ``None``:
        ``forwarded=True`` gives the calls that took effect."""
        return [
            call
            for call in self.calls
            if operation_matches(operation, call.service, call.operation)
            and (injected is None or call.injected == injected)
            and (forwarded is None or call.forwarded == forwarded)
            and (answer_lost is None or call.answer_lost == answer_lost)
        ]

    def count(
        self,
        operation: str | None = None,
        injected: bool | None = None,
        *,
        forwarded: bool | None = None,
        answer_lost: bool | None = None,
    ) -> int:
        return len(
            self.calls_for(operation or "*", injected, forwarded=forwarded, answer_lost=answer_lost)
        )

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


def _safe_predicate(predicate: Predicate, params: dict[str, Any]) -> bool:
    # A predicate written for one operation's body (body["KeyId"]) must not break calls
    # of others that happen to match the same pattern.
    try:
        return bool(predicate(params))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
