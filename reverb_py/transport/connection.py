"""One asyncio.Protocol per TCP connection: HTTP/1.1 until a WebSocket upgrade, then frames.

No Pusher knowledge lives here. The application side is two small interfaces:
`HttpApplication` answers requests and routes upgrades, `WebSocketHandler` receives messages.

Design choices that matter for speed and memory:
- callbacks only: no task and no timer per connection;
- outgoing frames are queued per connection and written by the shared `WriteCoalescer`, once
  per round over every socket with something queued, so N frames for one socket cost one
  `transport.write`;
- a broadcast is framed once by the caller (`text_frame`) and the same bytes are queued to
  every subscriber;
- the unsent buffer of each socket is bounded: past the limit a WebSocket handler is told once
  and closes the connection, and an HTTP connection stops being read until its client has read
  the answers, so a client that stops reading cannot grow memory without bound;
- the work per received byte is bounded (running totals, the head counted as it arrives) and
  every request has a deadline, checked by the server's periodic sweep (`check_deadlines`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol, cast

import httptools
from websockets.frames import Opcode

from reverb_py.http_types import HttpRequest, HttpResponse, error_response
from reverb_py.latency import DeliveryLatency
from reverb_py.transport.refusals import RefusalReason, TransportRefusals
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

# HTTP requests answered per loop iteration for one client, the slices its reads are fed to
# httptools in (a 1 KiB slice holds at most 56 requests) and the bytes fed per iteration (16 KiB
# of one-byte chunks is 2 700 body callbacks): see Connection._feed_http.
MAX_REQUESTS_PER_READ = 32
_FEED_SLICE = 1024
_FEED_PER_TURN = 16384
# WebSocket messages handed to the handler per loop turn for one client.
MAX_MESSAGES_PER_TURN = 64
# A round of WebSocket writes is cut into this many slices (of at least MIN_SLICE sockets),
# with the loop reading between them: see WriteCoalescer.
ROUND_SLICES = 8
MIN_SLICE = 16
# A round that begins within this many seconds of the previous round's end is sliced (writes
# are backing up); one that begins later is written at once (see WriteCoalescer).
BUSY_GAP = 0.002
_UNSTAMPED = -1.0  # a request began since the last sweep, which stamps it with its time
# What a WebSocket connection holds instead of its HTTP request state: shared, and never
# filled, because only the HTTP parser's callbacks fill them and an upgraded connection has
# no parser.
_NO_HEADERS: list[tuple[bytes, bytes]] = []
_NO_BODY: list[bytes] = []


class WebSocketHandler(Protocol):
    def on_message(self, data: bytes, binary: bool) -> None: ...

    def on_write_overflow(self) -> None: ...

    def on_close(self) -> None: ...

    def check_liveness(self, now: float, seen: bool) -> None: ...


class WebSocketEndpoint(Protocol):
    """What an upgrade request was routed to: its message size limit and its handler factory."""

    @property
    def max_message_size(self) -> int: ...

    def open(self, socket: Connection) -> WebSocketHandler: ...


class HttpApplication(Protocol):
    def handle_http(self, request: HttpRequest) -> HttpResponse: ...

    def answer_post(self, target: bytes, body: bytes) -> HttpResponse | None:
        """A POST answered from its target and body alone, or None to have it handled the
        general way (`handle_http`). This is the signed trigger's fast path: a backend's
        `POST /apps/{id}/events` needs neither the headers nor a request object."""
        ...

    def route_websocket(self, request: HttpRequest) -> WebSocketEndpoint | HttpResponse: ...


class _Refused(Exception):
    """Raised from a parser callback to stop reading: answer this and close."""

    def __init__(self, reason: RefusalReason, response: HttpResponse) -> None:
        self.reason = reason
        self.response = response


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of a request target. Clients send the origin form (`/path?query`), which
    a split reads; anything else (absolute form, a fragment) goes through httptools' URL parser."""
    if target[:1] == b"/" and b"#" not in target:
        path, _, query = target.partition(b"?")
        return path, query
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise _Refused("bad_target", error_response(400, "Invalid request target")) from None
    return url.path or b"/", url.query or b""


class WriteCoalescer:
    """Writes every connection that has queued frames: HTTP answers at once, WebSocket frames
    in rounds of at most ROUND_SLICES slices, one slice per event-loop iteration.

    A round is every socket that had frames queued when it began, written in the order they
    were first queued; a socket that gets more frames during the round has them appended and
    written in its turn, or, once its turn has passed, in the next round. So every socket
    gets one write per round (fairness), and between two slices the loop reads what arrived
    meanwhile: a backend waiting for its `{}` sends the next trigger while the round goes on,
    and its frames join the same writes. With one write per socket per loop iteration instead,
    a backend with four requests in flight put at most four frames in a write, and loopback
    TCP costs about the same per write whatever its size (benchmarks/README.md, "ceiling").

    Slicing only pays when writes back up: a round that starts from a coalescer idle for
    BUSY_GAP or longer (a broadcast at 25 per second) is written at once, since spreading it
    over eight loop iterations only delayed its last sockets (measured in docs/performance.md,
    "Same-run table at the end of 2026-12-02"). A round that begins right after the previous
    one ended is sliced.

    `latency` (the HTTP API's) is told, after each slice, how many socket writes had been
    queued when it began and how many are done: a trigger is delivered once every write
    queued by the end of its fan-out is."""

    __slots__ = (
        "_answers",
        "_at",
        "_clock",
        "_latency",
        "_loop",
        "_next",
        "_queued",
        "_round",
        "_round_ended",
        "_scheduled",
        "_step",
        "_written",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        latency: DeliveryLatency | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self._latency = latency
        self._clock = clock
        self._round_ended = float("-inf")
        self._answers: list[Connection] = []
        self._round: list[Connection] = []
        self._next: list[Connection] = []
        self._at = 0
        self._step = 0
        # Socket writes queued and done since the start: positions in one first-in,
        # first-out sequence (this round, then the next).
        self._queued = 0
        self._written = 0
        self._scheduled = False

    def mark(self, connection: Connection) -> None:
        if connection.ws is None:
            self._answers.append(connection)
        else:
            self._next.append(connection)
            self._queued += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        queued = self._queued
        # HTTP answers first: a backend waiting for `{}` sends its next trigger sooner.
        if self._answers:
            answers, self._answers = self._answers, []
            for connection in answers:
                connection.flush()
        current, at = self._round, self._at
        if at == len(current):
            current, self._next = self._next, []
            self._round, at = current, 0
            if current and self._clock() - self._round_ended < BUSY_GAP:
                self._step = max(MIN_SLICE, -(-len(current) // ROUND_SLICES))
            else:
                self._step = len(current)
        end = min(at + self._step, len(current))
        for connection in current[at:end]:
            connection.flush()
        self._written += end - at
        if end == len(current):
            if end:
                self._round_ended = self._clock()
            current.clear()
            end = 0
        self._at = end
        if self._latency is not None:
            self._latency.flushed(queued, self._written)
        if (end or self._next) and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)


class ConnectionLimits:
    """Server-wide transport limits and the refusal counter, shared by every connection.

    `max_connections` caps the open sockets (0: no cap) below the file-descriptor limit, so the
    server keeps descriptors for Redis, webhooks and its metrics port, and every socket it cannot
    afford is refused here, where it is counted, instead of silently by the event loop."""

    __slots__ = (
        "idle_timeout",
        "max_body",
        "max_connections",
        "max_header",
        "refusals",
        "request_timeout",
        "write_buffer_limit",
    )

    def __init__(
        self,
        max_body: int,
        max_header: int,
        write_buffer_limit: int,
        request_timeout: float = 60.0,
        idle_timeout: float = 60.0,
        max_connections: int = 0,
        refusals: TransportRefusals | None = None,
    ) -> None:
        self.max_body = max_body
        self.max_header = max_header
        self.write_buffer_limit = write_buffer_limit
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.refusals = refusals if refusals is not None else TransportRefusals()


class Connection(asyncio.Protocol):
    """A TCP connection, speaking HTTP/1.1 and, after an upgrade, WebSocket."""

    __slots__ = (
        "_app",
        "_backlog",
        "_body",
        "_body_size",
        "_coalescer",
        "_frame",
        "_frames",
        "_head_fed",
        "_headers",
        "_in_head",
        "_limits",
        "_parser",
        "_queued_answers",
        "_reading_paused",
        "_registry",
        "_requests_in_read",
        "_unread",
        "_url",
        "_write_paused",
        "client_ip",
        "closing_since",
        "handler",
        "idle_since",
        "on_lost",
        "request_started",
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
        # Raw, decoded only if a request object is built: the trigger's fast path never does.
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        # Bytes received while the current request head is unfinished: httptools keeps a
        # header it has not seen the end of without a limit, so the head is measured here.
        self._in_head = True
        self._head_fed = 0
        # Bytes of answers queued while handling the current chunk of pipelined requests.
        self._queued_answers = 0
        self._requests_in_read = 0
        # The unparsed rest of a read, waiting for the next loop iteration (see _feed_http).
        self._backlog: bytes | None = None
        # WebSocket messages of a read not yet handed on (see _handle_messages).
        self._unread: Iterator[tuple[Received, bytes]] | None = None
        # What is queued for the next write: one frame, or (from the second on) all of them.
        self._frame: bytes | None = None
        self._frames: list[bytes] | None = None
        self._write_paused = False
        self._reading_paused = False
        self.transport: asyncio.Transport | None = None
        self.ws: FrameReader | None = None
        self.handler: WebSocketHandler | None = None
        self.client_ip = ""
        self.closing_since: float | None = None
        self.seen = True
        self.idle_since = 0.0
        # When the request being received began (the accept, for the first one), stamped by
        # the next sweep rather than read from a clock per request: the sweep answers 408 once
        # it is older than the request timeout. None between requests.
        self.request_started: float | None = None
        # Called once when the socket is gone (the router releases a per-address slot).
        self.on_lost: Callable[[], None] | None = None

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server always hands over a full Transport, but uvloop's implement
        # asyncio.Transport without subclassing it, so no isinstance check can narrow the type.
        stream = cast(asyncio.Transport, transport)
        self.transport = stream
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        limits = self._limits
        if limits.max_connections and len(self._registry) >= limits.max_connections:
            limits.refusals.refuse(
                "fd_limit",
                "refusing connections: %d sockets open, the most the file-descriptor limit "
                "allows (raise `ulimit -n`)",
                len(self._registry),
            )
            stream.abort()
            return
        self.request_started = _UNSTAMPED
        # Past this many unsent bytes asyncio calls pause_writing (see below).
        stream.set_write_buffer_limits(high=limits.write_buffer_limit)
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self.transport = None
        self._frame = self._frames = None
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.on_close()
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    def pause_writing(self) -> None:
        """The client is not reading what it asked for: over HTTP, stop reading its requests
        until it has (a WebSocket is closed by its handler instead, see `flush`)."""
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._backlog is not None:
            self._continue_backlog()
        else:
            self._update_reading()

    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.ws is not None:
            self._websocket_data(data)
            return
        if self._parser is None:
            return
        if self._backlog is not None:  # read before pause_reading took effect
            self._backlog += data
            return
        self._requests_in_read = 0
        self._queued_answers = 0
        self._feed_http(data)

    def _feed_http(self, data: bytes) -> None:
        """Parse requests out of `data` for at most a bounded amount of work per loop iteration.

        httptools cannot stop part-way through the bytes it is given, and 256 KiB of pipelined
        `GET /up` is 9 000 requests, answered in one go a stall every other client would feel.
        So a large read is fed in slices; once _FEED_PER_TURN bytes were fed, or
        MAX_REQUESTS_PER_READ requests or a write buffer's worth of answers came out of them,
        the rest waits for the next loop iteration (or, when the client is not reading its
        answers, for it to catch up), and the socket is not read meanwhile."""
        at, end = 0, len(data)
        while at < end:
            parser = self._parser
            if parser is None:
                return
            if (
                at >= _FEED_PER_TURN
                or self._requests_in_read >= MAX_REQUESTS_PER_READ
                or self._queued_answers > self._limits.write_buffer_limit
            ):
                self._backlog = data[at:]
                self._update_reading()
                if not self._write_paused:
                    asyncio.get_running_loop().call_soon(self._continue_backlog)
                return
            piece = data if at == 0 and end <= _FEED_SLICE else data[at : at + _FEED_SLICE]
            at += len(piece)
            if self._in_head:
                self._head_fed += len(piece)
            try:
                parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade(piece[upgrade.args[0] :] + data[at:])
                return
            except _Refused as refused:
                self._refuse(refused)
                return
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, _Refused):
                    self._refuse(cause)
                else:
                    logger.exception("HTTP request handling failed")
                    self._reply_and_close(error_response(500, "Internal server error"))
                return
            except httptools.HttpParserError as exc:
                self._refuse(
                    _Refused("bad_request", error_response(400, f"Malformed HTTP request: {exc}"))
                )
                return
            if self._in_head and self._head_fed > self._limits.max_header:
                self._refuse(
                    _Refused("header_too_large", error_response(431, "Request header too large"))
                )
                return

    def _continue_backlog(self) -> None:
        backlog = self._backlog
        if backlog is None or self._write_paused or self.transport is None:
            return  # resume_writing continues it
        self._backlog = None
        self._requests_in_read = 0
        self._queued_answers = 0
        self._feed_http(backlog)
        self._update_reading()

    def _update_reading(self) -> None:
        """Read from the socket unless an HTTP client has answers or requests waiting."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self.ws is None and (self._write_paused or self._backlog is not None)
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def check_deadlines(self, now: float) -> None:
        """Called by the server's periodic sweep for a connection still speaking HTTP: answer
        408 to a request that is taking too long to arrive, however slowly its bytes trickle,
        and close a keep-alive connection that has been idle too long."""
        limits = self._limits
        started = self.request_started
        if started == _UNSTAMPED:
            self.request_started = now
        elif started is not None and now - started > limits.request_timeout:
            self._refuse(
                _Refused(
                    "request_timeout",
                    error_response(408, f"Request not complete in {limits.request_timeout:g} s"),
                )
            )
        elif self.seen:
            self.seen = False
            self.idle_since = now
        elif now - self.idle_since > limits.idle_timeout:
            self.abort()

    def check_liveness(self, now: float) -> None:
        """Called by the server's periodic sweep for a WebSocket: tell the handler whether any
        frame arrived since the last sweep. The flag is set per read and reset only here."""
        handler = self.handler
        if handler is not None:
            seen, self.seen = self.seen, False
            handler.check_liveness(now, seen)

    def _refuse(self, refused: _Refused) -> None:
        status = refused.response.status
        self._limits.refusals.refuse(
            refused.reason,
            "refused a request from %s with %d (%s)",
            self.client_ip,
            status,
            refused.reason,
        )
        self._reply_and_close(refused.response)

    # httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        if self.request_started is None:
            self.request_started = _UNSTAMPED

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # A body announced too large is refused before it arrives. llhttp refuses a second
        # Content-Length before calling this, and bytes.isdigit() means ASCII digits only.
        if (
            len(name) == 14
            and name.lower() == b"content-length"
            and value.isdigit()
            and int(value) > self._limits.max_body
        ):
            raise _Refused("body_too_large", error_response(413, "Request body too large"))

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            raise _Refused("body_too_large", error_response(413, "Request body too large"))

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self.request_started = None
        self._in_head = True
        self._head_fed = 0
        if parser.should_upgrade():
            return  # handled when feed_data raises HttpParserUpgrade
        self._requests_in_read += 1
        url = self._url
        # A POST with a plain origin-form target (one _build_request cannot refuse) may be
        # answered without a request object: HttpApplication.answer_post.
        if parser.get_method() == b"POST" and url[:1] == b"/" and b"#" not in url:
            body = self._body
            try:
                response = self._app.answer_post(url, body[0] if len(body) == 1 else b"".join(body))
            except Exception:
                path = url.partition(b"?")[0][:200].decode("latin-1")
                logger.exception("HTTP handler failed for POST %s", path)
                response = error_response(500, "Internal server error")
            if response is not None:
                self._write_response(response, parser.should_keep_alive())
                return
        self._dispatch(self._build_request(parser))

    def _build_request(self, parser: httptools.HttpRequestParser) -> HttpRequest:
        path, query = _split_target(self._url)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in self._headers
        ]
        return HttpRequest(
            method=parser.get_method().decode("latin-1"),
            path=path.decode("latin-1"),
            query_string=query.decode("latin-1"),
            headers={name.lower(): value for name, value in headers},
            body=b"".join(self._body),
            client_ip=self.client_ip,
            keep_alive=parser.should_keep_alive(),
            raw_headers=headers,
        )

    # HTTP responses ------------------------------------------------------------------------

    def _dispatch(self, request: HttpRequest) -> None:
        try:
            response = self._app.handle_http(request)
        except Exception:
            logger.exception("HTTP handler failed for %s %s", request.method, request.path)
            response = error_response(500, "Internal server error")
        self._write_response(response, request.keep_alive, request.method == "HEAD")

    def _write_response(self, response: HttpResponse, keep_alive: bool, head: bool = False) -> None:
        """Queued like WebSocket frames: pipelined requests read together are answered with
        one write, not one system call each. The answer to HEAD is the head alone (its
        Content-Length still says what GET would send), or keep-alive clients lose their
        place in the stream."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        wire = response.encode(keep_alive)
        if head and response.body:
            wire = wire[: len(wire) - len(response.body)]
        self._queued_answers += len(wire)
        self.send(wire)
        if not keep_alive:
            self._parser = None
            self._backlog = None
            self.flush()
            self._linger(transport)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close our side once the answer is sent, but go on reading (and dropping) what the
        client still sends until it closes: closing with unread bytes makes the kernel send a
        reset, which destroys a 413 or 408 before a client still sending has read it (nginx's
        lingering close). The sweep aborts a socket left in this state (`closing_since`)."""
        if not transport.can_write_eof():  # TLS
            transport.close()
            return
        self.closing_since = asyncio.get_running_loop().time()
        transport.write_eof()
        self._update_reading()

    def _reply_and_close(self, response: HttpResponse) -> None:
        self._parser = None
        self.request_started = None
        self._write_response(response, keep_alive=False)

    # WebSocket upgrade --------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        parser = self._parser
        assert parser is not None
        if parser.get_method() == b"CONNECT":  # llhttp reads CONNECT as an upgrade
            allow = (("Allow", "GET, HEAD, POST"),)
            self._refuse(_Refused("method", error_response(405, "CONNECT is not supported", allow)))
            return
        try:
            request = self._build_request(parser)
        except _Refused as refused:
            self._refuse(refused)
            return
        self._parser = None
        try:
            endpoint = self._app.route_websocket(request)
        except Exception:
            logger.exception("WebSocket routing failed for %s", request.path)
            self._reply_and_close(error_response(500, "Internal server error"))
            return
        if isinstance(endpoint, HttpResponse):
            self._reply_and_close(endpoint)
            return
        accepted = handshake_response(request)
        if isinstance(accepted, HttpResponse):
            self._reply_and_close(accepted)
            return
        self.send(accepted)  # one write with the frames the handler queues on open
        # Nothing of HTTP is needed again (the parser is gone): two lists per socket otherwise,
        # for the collector to walk at every full collection (docs/performance.md, "The cost
        # of one delivery").
        self._headers = _NO_HEADERS
        self._body = _NO_BODY
        self._url = b""
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
        messages = ws.feed(data)
        if self._unread is not None:  # read before pause_reading took effect: after the rest
            messages = itertools.chain(self._unread, messages)
            self._unread = None
        self._handle_messages(messages)

    def _handle_messages(self, messages: Iterator[tuple[Received, bytes]]) -> None:
        """Hand each message to the handler, at most MAX_MESSAGES_PER_TURN per loop turn: a
        256 KiB read of small frames is 5 000 messages. The rest of the read stays in the
        suspended reader (`_unread`) and the socket is not read until it is handled."""
        budget = MAX_MESSAGES_PER_TURN
        try:
            for kind, payload in messages:
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
                budget -= 1
                if not budget:
                    self._unread = messages
                    if self.transport is not None:
                        self.transport.pause_reading()
                    asyncio.get_running_loop().call_soon(self._continue_messages)
                    return
        except FrameError as error:
            self._close_transport(error.code, error.reason)

    def _continue_messages(self) -> None:
        messages, self._unread = self._unread, None
        transport = self.transport
        if messages is None or transport is None or self.closing_since is not None:
            return
        transport.resume_reading()
        self._handle_messages(messages)

    # Writing ------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue an already-framed message; written in this socket's turn of the coalescer's
        round.

        A lone frame is kept as it is (`_frame`) and a list made only for a second one: a list
        per socket per broadcast is an object the garbage collector tracks, and a fan-out to
        10 000 sockets made 10 000 of them, alive across the slices of its round, so young
        collections promoted them by the thousand and a full collection followed every two
        seconds (docs/performance.md, "The cost of one delivery")."""
        frames = self._frames
        if frames is not None:
            frames.append(frame)
            return
        first = self._frame
        if first is None:
            if self.transport is None:
                return
            self._frame = frame
            self._coalescer.mark(self)
        else:
            self._frames = [first, frame]

    def send_text(self, payload: bytes) -> None:
        self.send(text_frame(payload))

    def flush(self) -> None:
        first, frames = self._frame, self._frames
        self._frame = self._frames = None
        transport = self.transport
        if first is None or transport is None or transport.is_closing():
            return
        transport.write(first if frames is None else b"".join(frames))
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
