"""The Redis link between replicas: one Redis stream, a durable and ordered log of operations.

Pub/sub drops whatever is published while a replica is not subscribed, so after a Redis blip
replicas that re-subscribed at different moments lost each other's events. A stream keeps them:
each replica appends its batches (`XADD`, one entry per loop iteration, trimmed to about
`stream_length` entries) and reads everyone's from its own last position (`XREAD BLOCK` on a
dedicated connection), so a replica that was cut off reads what it missed when it comes back.

An entry is `n` (the sender's node id), `c` (how many operations the sender had appended before
this entry) and `o` (the operations, JSON). Readers keep, per sender, how many of its
operations they applied: an entry seen again (a write retried after its reply was lost, a
stream read again after a reset) is applied once, and a jump in `c` is a gap (entries trimmed
before this replica read them, or lost by Redis) that is counted, logged and repaired by a
snapshot exchange. Only single-key commands are used, so the stream works on Redis Cluster too.

While Redis is away, local delivery is untouched (the hubs deliver locally before forwarding);
operations wait in a bounded backlog and are appended on reconnect if they are still fresh,
and the replica then announces its whole state, which replaces whatever the others believed.
Both tasks that talk to Redis are supervised: whatever ends them, they are logged, counted and
restarted with back-off, and the reader resumes from its last position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Container, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from reverb_py.config import RedisSettings
from reverb_py.logs import ThrottledLog, counted
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.connect import RedisClient, connect
from reverb_py.scaling.ops import Op

logger = logging.getLogger("reverb_py.redis")

BATCH_OPS = 512
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
READ_BLOCK_MS = 1000
READ_COUNT = 256
# Longer than a blocked XREAD, so a read on a silently dead connection ends too.
SOCKET_TIMEOUT_SECONDS = 5.0
# A supervised task that ran this long before failing restarts without back-off.
HEALTHY_RUN_SECONDS = 30.0
CLOSE_FLUSH_SECONDS = 2.0
LOG_INTERVAL_SECONDS = 10.0


class SenderPositions:
    """How many operations of each other replica this one has applied.

    Pure bookkeeping, so that every operation is applied once and every gap is counted, however
    often an entry is read or written."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def accept(self, sender: str, first: int, count: int) -> tuple[int, int]:
        """For an entry holding the sender's operations first..first+count-1: how many of its
        leading operations were already applied (skip them), and how many of the sender's
        operations before it never arrived (lost)."""
        expected = self._next.get(sender)
        end = first + count
        if expected is None or first >= expected:
            self._next[sender] = end
            return 0, 0 if expected is None else first - expected
        if end > expected:
            self._next[sender] = end
        return min(count, expected - first), 0

    def retain(self, live: Container[str]) -> None:
        """Forget replicas that left: the map stays as small as the cluster."""
        for sender in [s for s in self._next if s not in live]:
            del self._next[sender]

    def __len__(self) -> int:
        return len(self._next)


@dataclass(slots=True)
class Batch:
    """Operations on their way into the stream: kept, with the same `first`, until appended."""

    first: int
    ops: list[Op]
    queued_at: float


_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


class RedisLink:
    def __init__(
        self,
        redis: RedisSettings,
        stream: str,
        cluster: Cluster,
        backlog_seconds: float = 60.0,
        backlog_ops: int = 100_000,
        stream_length: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.cluster = cluster
        self.backlog_seconds = backlog_seconds
        self.backlog_ops = backlog_ops
        self.stream_length = stream_length
        self.clock = cluster.clock if clock is None else clock
        self.connected = False
        self._ever_connected = False
        self._told_unreachable = False
        self._down_since: float | None = self.clock()
        # Counters read by the metrics (and the /ready body).
        self.dropped = 0  # never appended: queued longer than the backlog allows
        self.lost = 0  # appended by another replica, never read here (trimmed or lost)
        self.duplicates = 0  # read twice and applied once
        self.write_errors = 0
        self.restarts: Counter[str] = Counter()
        self._outbox: deque[tuple[float, Op]] = deque()
        self._pending: Batch | None = None
        self._appended = 0  # operations of ours in the stream (the next entry's `c`)
        self._position: str | None = None  # the last stream id read
        self._positions = SenderPositions()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: RedisClient | None = None
        self._log = ThrottledLog(logger, LOG_INTERVAL_SECONDS, self.clock)

    def _client(self) -> RedisClient:
        """Every Redis connection of the link comes from here (one place to change how)."""
        return connect(self.redis, socket_timeout=SOCKET_TIMEOUT_SECONDS)

    async def start(self) -> None:
        self._writer = self._client()
        self._tasks = [
            asyncio.create_task(self._supervise("reader", self._read_forever)),
            asyncio.create_task(self._supervise("writer", self._write_forever)),
        ]

    def send(self, op: Op) -> None:
        outbox = self._outbox
        outbox.append((self.clock(), op))
        if len(outbox) > self.backlog_ops:
            outbox.popleft()
            self.dropped += 1
            self._log.warning(
                "overflow",
                "dropped the oldest operation: more than %d wait for Redis (%d dropped so far)",
                self.backlog_ops,
                self.dropped,
            )
        self._wake.set()

    def backlog(self) -> tuple[int, float | None]:
        """Operations not yet appended, and when (monotonic) the oldest was queued: how far
        the other replicas lag behind this one (read by the metrics at scrape time)."""
        pending, outbox = self._pending, self._outbox
        queued = len(outbox) + (len(pending.ops) if pending is not None else 0)
        if pending is not None:
            return queued, pending.queued_at
        return queued, (outbox[0][0] if outbox else None)

    def down_seconds(self, now: float) -> float:
        """Seconds since the link was lost (0 while it is up)."""
        return 0.0 if self._down_since is None else max(0.0, now - self._down_since)

    def status(self, now: float) -> dict[str, Any]:
        """The link's state for the /ready body: degraded is still ready."""
        queued, _ = self.backlog()
        return {
            "link": "up" if self.connected else "down",
            "down_seconds": round(self.down_seconds(now), 1),
            "queued": queued,
            "dropped": self.dropped,
            "lost": self.lost,
            "replicas": self.cluster.size,
        }

    # Supervision -------------------------------------------------------------------------

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a task that talks to Redis forever: whatever ends it is logged and counted, and
        it restarts with back-off (none after a long healthy run)."""
        delay = RETRY_MIN_SECONDS
        while True:
            started = self.clock()
            bug: Exception | None = None  # what is not Redis or the network: log its stack
            try:
                await run()
                reason = "returned"
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                reason = _describe(exc)
            except Exception as exc:  # the point is to survive anything
                reason = _describe(exc)
                bug = exc if "@" not in str(exc) else None  # see _describe: a URL's password
            self.restarts[name] += 1
            if name == "reader":
                self._link_lost(reason)
            if self.clock() - started > HEALTHY_RUN_SECONDS:
                delay = RETRY_MIN_SECONDS
            self._log.warning(
                f"task:{name}",
                "Redis link %s task ended (%s): restarting in %.1f s",
                name,
                reason,
                delay,
                exc_info=bug,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    # Link state --------------------------------------------------------------------------

    def _link_up(self, now: float) -> None:
        was_down = self.down_seconds(now)
        self.connected = True
        self._ever_connected = True
        self._down_since = None
        queued, _ = self.backlog()
        logger.info(
            "Redis link up: reading stream %r after %s (down %.1f s, %s queued)",
            self.stream,
            self._position,
            was_down,
            counted(queued, "operation"),
        )
        self.cluster.link_up(now)
        self._wake.set()

    def _link_lost(self, reason: str) -> None:
        if self.connected:
            logger.error(
                "Redis link down (%s): degraded but still serving; local delivery continues, "
                "operations wait up to %.0f s for Redis",
                reason,
                self.backlog_seconds,
            )
        elif not self._ever_connected and not self._told_unreachable:
            self._told_unreachable = True
            logger.error(
                "cannot reach Redis (%s): retrying; serving local clients meanwhile", reason
            )
        if self._down_since is None:
            self._down_since = self.clock()
        self.connected = False
        self.cluster.link_down()

    # Reading -----------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = RETRY_MIN_SECONDS
        while True:
            client = self._client()
            try:
                self._position = await self._find_position(client)
                self._link_up(self.clock())
                delay = RETRY_MIN_SECONDS
                while True:
                    response = await client.xread(
                        {self.stream: self._position}, count=READ_COUNT, block=READ_BLOCK_MS
                    )
                    # RESP2 (the client's protocol): [[stream, [(id, fields), ...]]]; redis-py
                    # types every protocol's shape at once.
                    for _stream, entries in cast(_XReadReply, response or ()):
                        self._receive(entries)
            except (RedisError, OSError) as exc:
                self._link_lost(_describe(exc))
            finally:
                await _close_quietly(client.aclose())
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _find_position(self, client: RedisClient) -> str:
        """Where to read from: the stream's end on first start (history before this replica
        existed is not its business), else where we left off; from the start of the stream if
        the stream is younger than our position (Redis lost it and started a new one)."""
        last = await client.xrevrange(self.stream, "+", "-", count=1)
        newest = last[0][0] if last else None
        end = newest.decode() if isinstance(newest, bytes) else newest or "0-0"
        if self._position is None:
            return end
        if _stream_id(end) < _stream_id(self._position):
            logger.warning(
                "the Redis stream %r ends before our position (Redis restarted, or failed over "
                "to a replica that had not yet received the last entries): reading it from the "
                "start; entries that never reached it are counted as lost",
                self.stream,
            )
            return "0-0"
        return self._position

    def _receive(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        node = self.cluster.node_id
        gap = False
        for entry_id, fields in entries:
            # The position moves first: an entry that breaks the reader is not read again.
            self._position = entry_id.decode()
            try:
                sender = fields[b"n"].decode()
                first = int(fields[b"c"])
                ops = orjson.loads(fields[b"o"])
                if not isinstance(ops, list):
                    raise TypeError("operations are not a list")
            except (KeyError, ValueError, TypeError, AttributeError):
                self._log.warning("malformed", "ignoring a malformed entry in the Redis stream")
                continue
            if sender == node:
                continue
            skip, lost = self._positions.accept(sender, first, len(ops))
            if lost:
                gap = True
                self.lost += lost
                self._log.warning(
                    "lost",
                    "missed %s of replica %s (trimmed from the stream before they were "
                    "read, or lost by Redis): %d lost so far; resynchronising state",
                    counted(lost, "operation"),
                    sender,
                    self.lost,
                )
            self.duplicates += skip
            if skip < len(ops):
                self.cluster.receive(sender, ops[skip:] if skip else ops)
        if gap:
            self.cluster.announce(reply=True)
        if len(self._positions) > 2 * len(self.cluster.state.nodes) + 16:
            self._positions.retain(self.cluster.state.nodes)

    # Writing -----------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        delay = RETRY_MIN_SECONDS
        self._wake.set()  # after a restart, a batch may be waiting
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.connected:
                batch = self._pending or self._next_batch()
                if batch is None:
                    break
                self._pending = batch
                try:
                    await self._append(batch)
                except (RedisError, OSError) as exc:
                    self.write_errors += 1
                    self._log.warning(
                        "write",
                        "appending to the Redis stream failed (%s): retrying in %.1f s",
                        _describe(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                delay = RETRY_MIN_SECONDS
                self._pending = None

    def _next_batch(self) -> Batch | None:
        self._drop_stale()
        outbox = self._outbox
        if not outbox:
            return None
        queued_at = outbox[0][0]
        ops = [outbox.popleft()[1] for _ in range(min(BATCH_OPS, len(outbox)))]
        batch = Batch(self._appended, ops, queued_at)
        self._appended += len(ops)
        return batch

    async def _append(self, batch: Batch) -> None:
        assert self._writer is not None
        await self._writer.xadd(
            self.stream,
            {
                "n": self.cluster.node_id,
                "c": batch.first,
                "o": orjson.dumps([op.to_wire() for op in batch.ops]),
            },
            maxlen=self.stream_length,
            approximate=True,
        )

    def _drop_stale(self) -> None:
        """Operations queued longer than the backlog window are dropped, counted and logged
        (state changes among them are superseded by the announcement after a reconnect)."""
        horizon = self.clock() - self.backlog_seconds
        outbox = self._outbox
        stale = 0
        while outbox and outbox[0][0] < horizon:
            outbox.popleft()
            stale += 1
        if stale:
            self.dropped += stale
            logger.warning(
                "dropped %s queued longer than %.0f s while Redis was away (%d dropped so far)",
                counted(stale, "operation"),
                self.backlog_seconds,
                self.dropped,
            )

    # Stopping ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Say goodbye (so the others drop our members at once), let the writer append what is
        queued (bounded), then disconnect."""
        if self.connected:
            self.cluster.goodbye()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_SECONDS):
                    while self.connected and (self._outbox or self._pending is not None):
                        await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # a cancelled blocking read can take a while to let go: bound it
            await asyncio.wait(self._tasks, timeout=2)
        if self._writer is not None:
            await _close_quietly(self._writer.aclose())
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
