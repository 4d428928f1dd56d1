"""The running server: the listening socket, the periodic sweep, signals and graceful drain.

One periodic sweep replaces per-connection timers: it pings sockets that have been silent for
the app's ping interval, closes those that did not answer (4201), aborts sockets stuck in
closing, closes idle HTTP keep-alive connections, expires cached events, releases delayed
webhooks and announces throttled subscription counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import resource
import signal
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

from reverb_py.address_file import remove_address_file, write_address_file
from reverb_py.apps.store import app_store
from reverb_py.config import App, ConfigError, Settings
from reverb_py.logs import counted
from reverb_py.metrics import Metrics, MetricsApplication
from reverb_py.pauses import PauseProbe, PauseRecorder
from reverb_py.pusher.messages import ErrorCode
from reverb_py.router import Router
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.redis import RedisLink
from reverb_py.transport.connection import Connection, ConnectionLimits, WriteCoalescer
from reverb_py.webhooks import Webhooks

logger = logging.getLogger("reverb_py.server")

STUCK_CLOSING_SECONDS = 5.0
# File descriptors kept back from client sockets: listeners, Redis, webhook deliveries, logs.
FD_RESERVE = 32


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: 1024 fds is a few hundred clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def connection_cap(fd_limit: int) -> int:
    """The most sockets served at once: the rest of the descriptors are for the server itself,
    and a socket past this is refused (and counted) rather than dropped unseen at accept."""
    return max(1, fd_limit - FD_RESERVE)


def sweep_interval(settings: Settings, apps: Collection[App] | None = None) -> float:
    """From the apps known at start (`apps`, or the configured ones): apps that a database
    adds later are swept at this pace too."""
    apps = settings.apps if apps is None else apps
    shortest = min((min(app.ping_interval, app.pong_timeout) for app in apps), default=30.0)
    shortest = min(shortest, settings.request_timeout, settings.http_idle_timeout)
    if settings.webhook_delay and any(app.webhooks for app in apps):
        shortest = min(shortest, settings.webhook_delay)  # delayed webhooks leave on time
    return max(0.05, min(1.0, shortest / 4))


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, apps, settings: hundreds of thousands of
    objects that live as long as the process) out of the collector's reach.

    Otherwise every full collection walks them all: measured at 1 000 subscribers, those gen2
    pauses were the whole p99 and maximum of delivery latency (docs/performance.md). Frozen
    objects are never collected, so only start-up state belongs there: connections and
    sessions come later and stay collectable."""
    gc.collect()
    gc.freeze()


def new_node_id() -> str:
    """Start time (ms, hex) then randomness: ordering node ids orders replicas by age, which
    makes the oldest live replica the webhook leader (see scaling.cluster)."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:8]}"


class Server:
    """One replica: the listeners, the router and its hubs, the webhooks, the Redis link.

    `clock` is the time every timer of the server reads (the sweep and what it drives, the
    hubs and sessions, webhook ages and delays, the rate limiter, the drain), so a test can
    move it by hand; the Redis link (scaling/) and the apps database store keep their own."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.cluster = Cluster(new_node_id(), settings.scaling_node_timeout)
        self.webhooks = Webhooks(settings, clock)
        self.store = app_store(settings)
        self.router = Router(settings, self.cluster, self.webhooks, self.store, clock)
        self.link: RedisLink | None = None
        if settings.scaling_enabled:
            self.link = RedisLink(
                settings.redis,
                settings.scaling_channel,
                self.cluster,
                backlog_seconds=settings.scaling_backlog_seconds,
                stream_length=settings.scaling_stream_length,
            )
            self.cluster.link = self.link
        self._next_heartbeat = 0.0
        self.metrics: Metrics | None = None
        if settings.metrics_enabled or settings.metrics_port is not None:
            self.metrics = Metrics(self.router, self.cluster, self.link)
            if settings.metrics_port is None:
                self.router.metrics = self.metrics.response
        self.connections: set[Connection] = set()
        self._listener: asyncio.Server | None = None
        self._metrics_listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._pauses: PauseProbe | None = None
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._listener is not None
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    @property
    def metrics_port(self) -> int | None:
        """The bound port of the separate metrics listener, if there is one."""
        if self._metrics_listener is None:
            return None
        port: int = self._metrics_listener.sockets[0].getsockname()[1]
        return port

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.tls_cert or not settings.tls_key:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except OSError as exc:  # ssl.SSLError is one; neither names the files
            raise ConfigError(
                f"--tls-cert/--tls-key: cannot load certificate {settings.tls_cert} / key "
                f"{settings.tls_key}: {exc.strerror or exc}"
            ) from None
        return context

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        await self.store.start()  # apps first: the first client must find its app
        coalescer = WriteCoalescer(loop, self.router.api.delivery_latency)
        limits = ConnectionLimits(
            max_body=settings.max_request_size,
            max_header=settings.max_header_size,
            write_buffer_limit=settings.write_buffer_limit,
            request_timeout=settings.request_timeout,
            idle_timeout=settings.http_idle_timeout,
            max_connections=connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
            refusals=self.router.transport_refusals,
        )
        router, connections = self.router, self.connections
        self._listener = await loop.create_server(
            lambda: Connection(router, coalescer, limits, connections),
            host=settings.host,
            port=settings.port,
            ssl=self._ssl_context(),
            backlog=4096,
            reuse_address=True,
        )
        if self.metrics is not None and settings.metrics_port is not None:
            # Same transport, its own tiny application; it stays open while draining, so the
            # drain itself can be watched.
            application = MetricsApplication(self.metrics)
            self._metrics_listener = await loop.create_server(
                lambda: Connection(application, coalescer, limits, connections),
                host=settings.host,
                port=settings.metrics_port,
                reuse_address=True,
            )
        if self.link is not None:
            await self.link.start()
        self.webhooks.start()
        self._sweeper = loop.create_task(
            self._sweep_forever(sweep_interval(settings, self.store.apps.values()))
        )
        if os.environ.get("REVERB_DEBUG_PAUSES", "").lower() in ("1", "true", "yes"):
            self._pauses = PauseProbe(loop, PauseRecorder())
            self._pauses.start()
        write_address_file(settings, self.port)

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep(self.clock(), loop_time=asyncio.get_running_loop().time())
            except Exception:
                logger.exception("sweep failed")

    def sweep(self, now: float, loop_time: float) -> None:
        if self.link is not None:
            self.cluster.reap(now)
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.settings.scaling_node_timeout / 5
                self.cluster.heartbeat()
        if self.router.limiter is not None:
            self.router.limiter.sweep(now)
        for connection in list(self.connections):
            if connection.closing_since is not None:
                if loop_time - connection.closing_since > STUCK_CLOSING_SECONDS:
                    connection.abort()
            elif connection.ws is None:  # slow requests, idle keep-alive connections
                connection.check_deadlines(now)
            else:  # pings, and 4201 for WebSockets that stopped answering
                connection.check_liveness(now)
        for hub in self.router.hubs_by_id.values():  # many tenants: most hubs are idle
            if hub.cache.entries:
                hub.expire_cache(now)
            if hub.counts.sent:
                hub.announce_throttled_counts(now)
        self.webhooks.tick(now)

    async def drain(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Fail readiness and refuse new WebSocket upgrades, then close every client with 4200
        spread over the drain window, so that reconnects land on other replicas without a
        stampede. The listener stays open: a trigger that reaches this replica while balancers
        catch up is still delivered, here and through the cluster. Every wait and progress
        report goes by the server's clock and `sleep`, so tests drive the window without
        waiting."""
        clock = self.clock
        router = self.router
        router.draining = True
        sessions = [s for hub in router.hubs_by_id.values() for s in hub.sessions.values()]
        random.shuffle(sessions)
        window = self.settings.drain_seconds
        started = clock()
        logger.info(
            "draining: readiness is 503 and new WebSockets are refused, the HTTP API is still "
            "served; telling %s to reconnect (4200) over %.1f s",
            counted(len(sessions), "client"),
            window,
        )
        if sessions:
            steps = max(1, min(len(sessions), int(window * 10)))
            per_step = -(-len(sessions) // steps)
            next_report = started + 1.0
            for start in range(0, len(sessions), per_step):
                if start and window:
                    await sleep(window / steps)
                for session in sessions[start : start + per_step]:
                    session.close(ErrorCode.RECONNECT, "Server is shutting down, reconnect")
                if clock() >= next_report:
                    next_report += 1.0
                    done = min(start + per_step, len(sessions))
                    total = counted(len(sessions), "client")
                    logger.info("drain: %d of %s told to reconnect", done, total)
        if self.link is not None:
            # Behind a balancer, however few clients there were, the HTTP API stays up for the
            # whole window: triggers may be routed here until the failing readiness is noticed,
            # and they still reach the other replicas' clients. A lone server has nobody left to
            # deliver to once its clients are gone.
            await sleep(max(0.0, started + window - clock()))
        deadline = clock() + STUCK_CLOSING_SECONDS
        while any(c.is_websocket for c in self.connections) and clock() < deadline:
            await sleep(0.05)
        stuck = sum(1 for c in self.connections if c.is_websocket)
        for connection in list(self.connections):
            connection.abort()
        logger.info(
            "drain finished in %.1f s: %s told to reconnect, %s aborted",
            clock() - started,
            counted(len(sessions), "client"),
            counted(stuck, "unanswered close"),
        )

    async def close(self) -> None:
        """Stop everything, each step even if an earlier one failed: the others must hear our
        goodbye and the webhooks must be flushed whatever went wrong before."""
        steps = (
            self._close_connections,
            # After the last sessions left (their vacated/removed webhooks are decided) and
            # before the goodbye (after which another replica is the leader).
            self.webhooks.close,
            self._close_link,
            self.store.close,
        )
        for step in steps:
            try:
                await step()
            except Exception:
                logger.exception("stopping: %s failed; going on", step.__name__)
        remove_address_file(self.settings)
        self._stopped.set()

    async def _close_connections(self) -> None:
        if self._pauses is not None:
            self._pauses.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        listeners = [x for x in (self._listener, self._metrics_listener) if x is not None]
        for listener in listeners:
            listener.close()
        for connection in list(self.connections):
            connection.abort()
        for listener in listeners:
            await listener.wait_closed()

    async def _close_link(self) -> None:
        if self.link is not None:
            await self.link.close()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain and stop. A second signal during the drain
        stops at once (what is left of the drain is skipped; the goodbye to the other replicas
        and the webhook flush still happen, bounded)."""
        freeze_startup_objects()
        loop = asyncio.get_running_loop()
        first, second = asyncio.Event(), asyncio.Event()
        received: list[str] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, (first, second), received, signum.name)
        await first.wait()
        logger.info("%s received: shutting down (a second signal stops at once)", received[0])
        try:
            await _unless(self.drain(), second)
        except Exception:
            logger.exception("the drain failed: stopping anyway")
            raise
        finally:
            if second.is_set():
                logger.warning("%s received again: stopped draining", received[-1])
            await self.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            logger.info("stopped")


async def _unless(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run `work` until it ends (its exception propagates) or `stop` is set (it is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    task.result()


def _on_signal(events: tuple[asyncio.Event, asyncio.Event], received: list[str], name: str) -> None:
    """The first signal starts the shutdown, the second cuts the drain short."""
    received.append(name)
    first, second = events
    (second if first.is_set() else first).set()
