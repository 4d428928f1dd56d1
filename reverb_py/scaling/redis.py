"""The Redis link between replicas: one pub/sub channel carrying every operation, in order.

Each replica publishes batches of operations (`{"n": node_id, "o": [op, ...]}`) on the
scaling channel and subscribes to it. Everything a loop iteration produces goes out as one
PUBLISH, through one connection, so operations from one replica arrive everywhere in the order
they were made (per-channel event order from one publisher is kept).

When Redis goes away, local delivery is untouched (the hubs deliver locally before forwarding);
operations wait in a bounded backlog and are published on reconnect if they are still fresh,
and the replica then announces its whole state, which replaces whatever the others believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from reverb_py.logs import counted
from reverb_py.scaling.cluster import Cluster, Op

logger = logging.getLogger("reverb_py.redis")

BATCH_OPS = 512
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0


class RedisLink:
    def __init__(
        self,
        url: str,
        channel: str,
        cluster: Cluster,
        backlog_seconds: float = 15.0,
        backlog_ops: int = 100_000,
    ) -> None:
        self.url = url
        self.channel = channel
        self.cluster = cluster
        self.backlog_seconds = backlog_seconds
        self.backlog_ops = backlog_ops
        self.connected = False
        self._ever_connected = False
        self.dropped = 0
        self._outbox: deque[tuple[float, Op]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._publisher: aioredis.Redis | None = None

    def _client(self) -> aioredis.Redis:
        return aioredis.from_url(
            self.url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=5,
        )

    async def start(self) -> None:
        self._publisher = self._client()
        self._tasks = [
            asyncio.create_task(self._subscribe_forever()),
            asyncio.create_task(self._publish_forever()),
        ]

    def send(self, op: Op) -> None:
        outbox = self._outbox
        outbox.append((time.monotonic(), op))
        if len(outbox) > self.backlog_ops:
            outbox.popleft()
            self.dropped += 1
        self._wake.set()

    def backlog(self) -> tuple[int, float | None]:
        """Operations not yet published, and when (monotonic) the oldest was queued: how far
        the other replicas lag behind this one (read by the metrics at scrape time)."""
        outbox = self._outbox
        return len(outbox), (outbox[0][0] if outbox else None)

    # Publishing --------------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        node = self.cluster.node_id
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox and self.connected:
                self._drop_stale()
                ops = [op for _, op in list(self._outbox)[:BATCH_OPS]]
                if not ops:
                    break
                try:
                    await self._publish(orjson.dumps({"n": node, "o": ops}))
                except (RedisError, OSError) as exc:
                    logger.warning("publishing to Redis failed (%s); will retry", _describe(exc))
                    await asyncio.sleep(RETRY_MIN_SECONDS)
                    continue
                for _ in ops:
                    self._outbox.popleft()

    async def _publish(self, message: bytes) -> None:
        assert self._publisher is not None
        await self._publisher.publish(self.channel, message)

    def _drop_stale(self) -> None:
        """Events older than the backlog window would arrive too late to be useful: drop them
        (state changes are superseded by the announcement after a reconnect anyway)."""
        horizon = time.monotonic() - self.backlog_seconds
        outbox = self._outbox
        stale = 0
        while outbox and outbox[0][0] < horizon:
            outbox.popleft()
            stale += 1
        if stale:
            self.dropped += stale
            logger.warning("dropped %s queued while Redis was away", counted(stale, "operation"))

    # Subscribing -------------------------------------------------------------------------

    async def _subscribe_forever(self) -> None:
        delay = RETRY_MIN_SECONDS
        while True:
            client = self._client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected = True
                self._ever_connected = True
                delay = RETRY_MIN_SECONDS
                logger.info("connected to Redis; scaling channel %r", self.channel)
                self.cluster.link_up(time.monotonic())
                self._wake.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._receive(message["data"])
            except (RedisError, OSError) as exc:
                if self.connected:
                    logger.error(
                        "lost Redis (%s): local delivery continues; reconnecting",
                        _describe(exc),
                    )
                elif not self._ever_connected and delay == RETRY_MIN_SECONDS:
                    logger.error(
                        "cannot reach Redis (%s): retrying; /ready answers 503 until it does",
                        _describe(exc),
                    )
                self.connected = False
                self.cluster.link_down()
            finally:
                await _close_quietly(pubsub.aclose(), client.aclose())
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _receive(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            sender, ops = message["n"], message["o"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignoring a malformed message on the scaling channel")
            return
        self.cluster.receive(sender, ops)

    # Stopping ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Say goodbye (so the others drop our members at once), then disconnect."""
        if self.connected and self._publisher is not None:
            self.cluster.goodbye()
            node = self.cluster.node_id
            ops = [op for _, op in self._outbox]
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2):
                    for start in range(0, len(ops), BATCH_OPS):
                        batch = ops[start : start + BATCH_OPS]
                        await self._publish(orjson.dumps({"n": node, "o": batch}))
        for task in self._tasks:
            task.cancel()
        # redis-py's pubsub cleanup can wait forever once its reader was cancelled: bound it.
        await asyncio.wait(self._tasks, timeout=2)
        if self._publisher is not None:
            await _close_quietly(self._publisher.aclose())
        self.connected = False


async def _close_quietly(*closing: Coroutine[Any, Any, Any]) -> None:
    for coroutine in closing:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(coroutine, 1)


def _describe(exc: BaseException) -> str:
    """The error without anything that could hold credentials (redis-py messages name the
    host and port, never the password, but a URL could slip into an exception's args)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if "@" not in text else type(exc).__name__
