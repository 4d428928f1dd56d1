"""One asyncio.Protocol per TCP connection: HTTP/1.1 until a WebSocket upgrade, then frames.

No Pusher knowledge lives here. The application side is two small interfaces:
`HttpApplication` answers requests and routes upgrades, `WebSocketHandler` receives messages.

Design choices that matter for speed and memory (DESIGN.md "Performance design"):
- callbacks only: no task and no timer per connection;
- outgoing frames are queued per connection and flushed once per event-loop iteration by the
  shared `WriteCoalescer`, so N frames for one socket cost one `transport.write`;
- a broadcast is framed once by the caller (`text_frame`) and the same bytes are queued to
  every subscriber;
- the unsent buffer of each socket is bounded: past the limit the handler is told once and
  closes the connection, so a client that stops reading cannot grow memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Protocol

import httptools
from websockets.frames import Opcode

from reverb_py.transport.http import HttpRequest, HttpResponse, error_response
from reverb_py.transport.websocket import (
    PING_FRAME,
    FrameError,
    FrameReader,
    Received,
    close_frame,
    close_reply,
    control_frame,
    handshake_response,
    text_frame,
)

logger = logging.getLogger("reverb_py.transport")

_MAX_PIPELINED_RESPONSES = 64


class WebSocketHandler(Protocol):
    def on_message(self, data: bytes, binary: bool) -> None: ...

    def on_write_overflow(self) -> None: ...

    def on_close(self) -> None: ...


class WebSocketEndpoint(Protocol):
    """What an upgrade request was routed to: its message size limit and its handler factory."""

    max_message_size: int

    def open(self, socket: Connection) -> WebSocketHandler: ...


class HttpApplication(Protocol):
    def handle_http(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]: ...

    def route_websocket(self, request: HttpRequest) -> WebSocketEndpoint | HttpResponse: ...


class _RequestTooLarge(Exception):
    def __init__(self, response: HttpResponse) -> None:
        self.response = response


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of a request target. Clients send the origin form (`/path?query`), which
    a split reads; anything else (absolute form, a fragment) goes through httptools' URL parser."""
    if target[:1] == b"/" and b"#" not in target:
        path, _, query = target.partition(b"?")
        return path, query
    url = httptools.parse_url(target)
    return url.path or b"/", url.query or b""


class WriteCoalescer:
    """Flushes every connection that has queued frames, once per event-loop iteration."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Connection] = []
        self._scheduled = False

    def mark(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        # HTTP answers first: a backend waiting for `{}` sends its next trigger sooner, and
        # more triggers then share each subscriber's write (fan-out 345k -> 528k+ msg/s).
        for connection in dirty:
            if connection.ws is None:
                connection.flush()
        for connection in dirty:
            connection.flush()


class ConnectionLimits:
    """Server-wide transport limits, shared by every connection."""

    __slots__ = ("max_body", "max_header", "write_buffer_limit")

    def __init__(self, max_body: int, max_header: int, write_buffer_limit: int) -> None:
        self.max_body = max_body
        self.max_header = max_header
        self.write_buffer_limit = write_buffer_limit


class Connection(asyncio.Protocol):
    """A TCP connection, speaking HTTP/1.1 and, after an upgrade, WebSocket."""

    __slots__ = (
        "_app",
        "_body",
        "_coalescer",
        "_header_bytes",
        "_headers",
        "_limits",
        "_parser",
        "_pending",
        "_registry",
        "_responses",
        "_url",
        "client_ip",
        "closing_since",
        "handler",
        "idle_ticks",
        "seen",
        "transport",
        "ws",
    )

    def __init__(
        self,
        app: HttpApplication,
        coalescer: WriteCoalescer,
        limits: ConnectionLimits,
        registry: set[Connection],
    ) -> None:
        self._app = app
        self._coalescer = coalescer
        self._limits = limits
        self._registry = registry
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._responses: deque[tuple[HttpResponse | asyncio.Future[HttpResponse], bool]] = deque()
        self._pending: list[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.ws: FrameReader | None = None
        self.handler: WebSocketHandler | None = None
        self.client_ip = ""
        self.closing_since: float | None = None
        self.seen = True
        self.idle_ticks = 0

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self.transport = None
        self._pending = None
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.on_close()
        for pending, _ in self._responses:
            if isinstance(pending, asyncio.Future):
                pending.cancel()
        self._responses.clear()

    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.ws is not None:
            self._websocket_data(data)
            return
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0] :])
        except _RequestTooLarge as too_large:
            self._reply_and_close(too_large.response)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _RequestTooLarge):
                self._reply_and_close(cause.response)
            else:
                logger.exception("HTTP request handling failed")
                self._reply_and_close(error_response(500, "Internal server error"))
        except httptools.HttpParserError:
            self._reply_and_close(error_response(400, "Malformed HTTP request"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if len(name) == 14 and name.lower() == "content-length" and value.isdigit():
                if int(value) <= self._limits.max_body:
                    return
                raise _RequestTooLarge(error_response(413, "Request body too large"))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        if sum(map(len, self._body)) > self._limits.max_body:
            raise _RequestTooLarge(error_response(413, "Request body too large"))

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        if parser.should_upgrade():
            return  # handled when feed_data raises HttpParserUpgrade
        request = self._build_request(parser)
        if len(self._responses) >= _MAX_PIPELINED_RESPONSES:
            raise _RequestTooLarge(error_response(429, "Too many pipelined requests"))
        self._dispatch(request)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.max_header:
            raise _RequestTooLarge(error_response(431, "Request header fields too large"))

    def _build_request(self, parser: httptools.HttpRequestParser) -> HttpRequest:
        path, query = _split_target(self._url)
        return HttpRequest(
            method=parser.get_method().decode("latin-1"),
            path=path.decode("latin-1"),
            query_string=query.decode("latin-1"),
            headers={name.lower(): value for name, value in self._headers},
            body=b"".join(self._body),
            client_ip=self.client_ip,
            keep_alive=parser.should_keep_alive(),
            raw_headers=self._headers,
        )

    # HTTP responses, kept in request order even when some are computed asynchronously ------

    def _dispatch(self, request: HttpRequest) -> None:
        try:
            result = self._app.handle_http(request)
        except Exception:
            logger.exception("HTTP handler failed for %s %s", request.method, request.path)
            result = error_response(500, "Internal server error")
        if isinstance(result, HttpResponse):
            if not self._responses:
                self._write_response(result, request.keep_alive)
                return
            self._responses.append((result, request.keep_alive))
        else:
            future = asyncio.ensure_future(result)
            future.add_done_callback(self._response_ready)
            self._responses.append((future, request.keep_alive))

    def _response_ready(self, _: asyncio.Future[HttpResponse]) -> None:
        while self._responses:
            pending, keep_alive = self._responses[0]
            if isinstance(pending, asyncio.Future):
                if not pending.done():
                    return
                if pending.cancelled():
                    return
                exc = pending.exception()
                if exc is not None:
                    logger.error("HTTP handler failed", exc_info=exc)
                    response = error_response(500, "Internal server error")
                else:
                    response = pending.result()
            else:
                response = pending
            self._responses.popleft()
            self._write_response(response, keep_alive)

    def _write_response(self, response: HttpResponse, keep_alive: bool) -> None:
        """Queued like WebSocket frames: pipelined requests read together are answered with
        one write, not one system call each."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.send(response.encode(keep_alive))
        if not keep_alive:
            self._parser = None
            self.flush()
            transport.close()

    def _reply_and_close(self, response: HttpResponse) -> None:
        self._parser = None
        self._responses.clear()
        self._write_response(response, keep_alive=False)

    # WebSocket upgrade --------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        parser = self._parser
        assert parser is not None
        request = self._build_request(parser)
        self._parser = None
        if self._responses:  # an upgrade pipelined behind HTTP requests is not supported
            self._reply_and_close(error_response(400, "Upgrade after pipelined requests"))
            return
        endpoint = self._app.route_websocket(request)
        if isinstance(endpoint, HttpResponse):
            self._reply_and_close(endpoint)
            return
        accepted = handshake_response(request)
        if isinstance(accepted, HttpResponse):
            self._reply_and_close(accepted)
            return
        self.send(accepted)  # one write with the frames the handler queues on open
        self._headers = []
        self.ws = FrameReader(endpoint.max_message_size)
        self.handler = endpoint.open(self)
        if rest and self.transport is not None:
            self._websocket_data(rest)

    # WebSocket frames ---------------------------------------------------------------------

    def _websocket_data(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        if self.closing_since is not None:
            return  # after a close frame either way, nothing more is read
        try:
            for kind, payload in ws.feed(data):
                handler = self.handler
                if handler is None:
                    return
                if kind is Received.TEXT or kind is Received.BINARY:
                    handler.on_message(payload, kind is Received.BINARY)
                elif kind is Received.PING:
                    self.send(control_frame(Opcode.PONG, payload))
                else:
                    code, reason = close_reply(payload)
                    self._close_transport(code, reason)
                    return
                if self.closing_since is not None:
                    return  # the handler closed the connection
        except FrameError as error:
            self._close_transport(error.code, error.reason)

    # Writing ------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue an already-framed message; written at the end of this loop iteration."""
        pending = self._pending
        if pending is None:
            if self.transport is None:
                return
            self._pending = [frame]
            self._coalescer.mark(self)
        else:
            pending.append(frame)

    def send_text(self, payload: bytes) -> None:
        self.send(text_frame(payload))

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        transport = self.transport
        if not pending or transport is None or transport.is_closing():
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if transport.get_write_buffer_size() > self._limits.write_buffer_limit:
            handler = self.handler
            if handler is not None and self.closing_since is None:
                handler.on_write_overflow()

    def ping(self) -> None:
        self.send(PING_FRAME)

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame with this code, then close the TCP connection."""
        if self.ws is None or self.transport is None or self.closing_since is not None:
            return
        self._close_transport(code, reason)

    def _close_transport(self, code: int, reason: str) -> None:
        """Queued frames, then the close frame, then TCP close: the server closes first, as
        RFC 6455 asks, whether it or the client started the closing handshake."""
        self.closing_since = asyncio.get_running_loop().time()
        self.send(close_frame(code, reason))
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def is_websocket(self) -> bool:
        return self.ws is not None
