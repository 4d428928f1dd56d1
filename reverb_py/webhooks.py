"""Pusher webhooks: deciding what to send on the hot path, sending it off the hot path.

The hub and session call `AppWebhooks` synchronously when something happens; each call is a
dict lookup and, when some URL wants that kind of event on that channel, an append to that
URL's bounded queue. One long-lived task per URL (never one per connection or channel) batches
what accumulated during a short window into one POST `{"time_ms": ..., "events": [...]}`,
signed as Pusher signs it (`X-Pusher-Key`, `X-Pusher-Signature` = HMAC-SHA256 hex of the exact
body with the app secret), so the official SDKs' webhook validators accept it.

`channel_vacated` and `member_removed` wait `delay` seconds (Pusher: "a few seconds"; 3 by
default) in `AppWebhooks.delayed`; the channel or member coming back within the delay cancels
both the pending event and the matching `channel_occupied` / `member_added`, so a page reload
sends nothing. The server's periodic sweep releases due events (`tick`), so there is no timer
per channel.

A receiver that fails (connection error, timeout, non-2xx) gets the same body again with
exponential back-off until `retry_for` seconds after the first attempt (Pusher: 5 minutes).
Every wait (the batch window, the back-off, the shutdown flush) and every age is read from the
clock and sleep that `Webhooks` is given, so tests drive them without waiting.
Each URL has one request in flight at a time and at most `queue_size` waiting events; beyond
that new events are dropped, counted and logged, so a slow or dead receiver costs bounded
memory and never delays message delivery.

Fairness: every event carries its cause, the socket id of the connection whose action decided
it (None for what the server or another replica decided). One connection may hold at most
`share` events in a URL's queue, so a client that subscribes to thousands of junk channels
fills its own share and loses its own events, not everyone else's. The queue itself stays one
FIFO, so events reach the receiver in the order they were decided. Apps never share a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
import orjson

from reverb_py import __version__
from reverb_py.config import App, Settings, Webhook
from reverb_py.logs import ThrottledLog
from reverb_py.pusher.auth import webhook_signature

logger = logging.getLogger("reverb_py.webhooks")

MAX_EVENTS_PER_REQUEST = 100
MAX_RETRY_DELAY = 60.0
SHUTDOWN_FLUSH_SECONDS = 2.0

Item = dict[str, Any]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Why events are dropped: the metrics label and the log line's explanation.
DROP_REASONS = {
    "queue_full": "the queue is full: the receiver is too slow or down",
    "connection_share": "one connection caused more than its share of the queue",
    "expired": "waited longer than the retry window",
    "receiver_failed": "the receiver kept failing; gave up",
    "shutdown": "the server stopped before they were sent",
    "app_changed": "the app's webhooks changed or it was removed",
}


class Target:
    """One webhook URL of one app: its filter, its bounded queue and its counters."""

    __slots__ = (
        "app",
        "delivered",
        "dropped",
        "failed_attempts",
        "held",
        "hook",
        "in_flight",
        "log",
        "pending_cache_misses",
        "queue",
        "queue_size",
        "retired",
        "share",
        "wake",
    )

    def __init__(
        self, app: App, hook: Webhook, queue_size: int, share: int, log: ThrottledLog
    ) -> None:
        self.app = app
        self.log = log
        self.hook = hook
        self.queue_size = queue_size
        self.share = share
        self.queue: deque[tuple[float, Item, str | None]] = deque()
        # Events waiting in `queue` per causing connection; a connection leaves the map when
        # its last event leaves the queue, so the map is never larger than the queue.
        self.held: dict[str, int] = {}
        self.wake = asyncio.Event()
        self.in_flight = 0
        # Channels with a cache_miss already waiting: simultaneous subscribers send it once.
        self.pending_cache_misses: set[str] = set()
        self.delivered = 0
        self.dropped: dict[str, int] = {}
        self.failed_attempts = 0
        # The app is gone: its sender sends what is queued, then ends (Webhooks.remove).
        self.retired = False

    def offer(self, item: Item, now: float, cause: str | None = None) -> None:
        if len(self.queue) >= self.queue_size:
            self.drop(1, "queue_full")
            return
        if item["name"] == "cache_miss":
            if item["channel"] in self.pending_cache_misses:
                return
            self.pending_cache_misses.add(item["channel"])
        if cause is not None:
            held = self.held.get(cause, 0)
            if held >= self.share:
                self.drop(1, "connection_share")
                return
            self.held[cause] = held + 1
        self.queue.append((now, item, cause))
        self.wake.set()

    def drop(self, count: int, reason: str) -> None:
        """Count lost events by reason (a key of DROP_REASONS); the log says how many at most
        every 10 s per app and reason, a dead receiver under load would otherwise log once
        per event."""
        total = self.dropped[reason] = self.dropped.get(reason, 0) + count
        self.log.warning(
            reason,
            "webhook for app %s: dropped %d event(s), %d in total for this reason: %s",
            self.app.id,
            count,
            total,
            DROP_REASONS[reason],
        )

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def take(self, now: float, retry_for: float) -> list[Item]:
        """The next request's events; events older than the retry window are given up."""
        items: list[Item] = []
        expired = 0
        queue = self.queue
        while queue and len(items) < MAX_EVENTS_PER_REQUEST:
            created, item, cause = queue.popleft()
            self._release(item, cause)
            if now - created > retry_for:
                expired += 1
            else:
                items.append(item)
        if expired:
            self.drop(expired, "expired")
        return items

    def discard_queue(self, reason: str) -> None:
        """On shutdown or when the app's URLs change: what was not sent is counted as dropped."""
        if self.queue:
            self.drop(len(self.queue), reason)
        self.queue.clear()
        self.held.clear()
        self.pending_cache_misses.clear()

    def _release(self, item: Item, cause: str | None) -> None:
        if item["name"] == "cache_miss":
            self.pending_cache_misses.discard(item["channel"])
        if cause is not None:
            held = self.held[cause] - 1
            if held:
                self.held[cause] = held
            else:
                del self.held[cause]


class AppWebhooks:
    """The webhook decisions of one app. Every method is synchronous and cheap."""

    __slots__ = ("app", "by_kind", "clock", "delay", "delayed", "delayed_limit", "targets")

    def __init__(self, app: App, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.app = app
        self.clock = clock  # when an event decided without a time was queued
        self.delay = settings.webhook_delay
        # Channel churn (subscribe, unsubscribe, next name) defers one event per channel;
        # past this many, the oldest goes to the queue early instead of memory growing.
        self.delayed_limit = settings.webhook_queue_size
        log = ThrottledLog(logger, clock=clock)  # drop warnings, a line per reason every 10 s
        self.targets = [
            Target(app, hook, settings.webhook_queue_size, settings.webhook_queue_share, log)
            for hook in app.webhooks
        ]
        self.by_kind: dict[str, tuple[Target, ...]] = {}
        for target in self.targets:
            for kind in target.hook.event_types:
                self.by_kind[kind] = (*self.by_kind.get(kind, ()), target)
        # (kind, channel, user key) -> (due, item, cause); insertion order is due order, since
        # the delay is the same for every entry.
        self.delayed: dict[tuple[str, str, str], tuple[float, Item, str | None]] = {}

    def wants(self, kind: str) -> bool:
        return kind in self.by_kind

    @property
    def tracks_occupancy(self) -> bool:
        return "channel_occupied" in self.by_kind or "channel_vacated" in self.by_kind

    @property
    def tracks_members(self) -> bool:
        return "member_added" in self.by_kind or "member_removed" in self.by_kind

    def emit(self, item: Item, now: float | None = None, cause: str | None = None) -> None:
        """Queue `item` for every URL that wants it; `cause` is the socket id of the connection
        whose action decided it (None: the server or another replica)."""
        targets = self.by_kind.get(item["name"])
        if not targets:
            return
        channel = item["channel"]
        when = self.clock() if now is None else now
        for target in targets:
            if target.hook.accepts(channel):
                target.offer(item, when, cause)

    # Decisions (the callers decide cluster-wide facts; see scaling.cluster) ----------------

    def channel_occupied(self, channel: str, cause: str | None = None) -> None:
        if self.delayed.pop(("channel_vacated", channel, ""), None) is None:
            self.emit({"name": "channel_occupied", "channel": channel}, cause=cause)

    def channel_vacated(self, channel: str, now: float, cause: str | None = None) -> None:
        item = {"name": "channel_vacated", "channel": channel}
        self._defer(("channel_vacated", channel, ""), item, now, cause)

    def member_added(self, channel: str, user_id: Any, cause: str | None = None) -> None:
        key = ("member_removed", channel, str(user_id))
        if self.delayed.pop(key, None) is None:
            item = {"name": "member_added", "channel": channel, "user_id": str(user_id)}
            self.emit(item, cause=cause)

    def member_removed(
        self, channel: str, user_id: Any, now: float, cause: str | None = None
    ) -> None:
        item = {"name": "member_removed", "channel": channel, "user_id": str(user_id)}
        self._defer(("member_removed", channel, str(user_id)), item, now, cause)

    def subscription_count(self, channel: str, count: int, cause: str | None = None) -> None:
        item = {"name": "subscription_count", "channel": channel, "subscription_count": count}
        self.emit(item, cause=cause)

    def cache_miss(self, channel: str, cause: str | None = None) -> None:
        self.emit({"name": "cache_miss", "channel": channel}, cause=cause)

    def client_event(
        self, channel: str, event: str, data: Any, socket_id: str, user_id: Any
    ) -> None:
        item: Item = {
            "name": "client_event",
            "channel": channel,
            "event": event,
            "data": data if isinstance(data, str) else orjson.dumps(data).decode(),
            "socket_id": socket_id,
        }
        if user_id is not None:
            item["user_id"] = str(user_id)
        self.emit(item, cause=socket_id)

    def _defer(self, key: tuple[str, str, str], item: Item, now: float, cause: str | None) -> None:
        if self.delay <= 0:
            self.emit(item, now, cause)
            return
        delayed = self.delayed
        delayed.pop(key, None)  # re-inserted at the end: keeps insertion = due order
        if len(delayed) >= self.delayed_limit:
            _, oldest, oldest_cause = delayed.pop(next(iter(delayed)))
            self.emit(oldest, now, oldest_cause)
        delayed[key] = (now + self.delay, item, cause)

    def tick(self, now: float) -> None:
        """Release the delayed events that are due (called by the server's sweep)."""
        delayed = self.delayed
        while delayed:
            key = next(iter(delayed))
            due, item, cause = delayed[key]
            if due > now:
                return
            del delayed[key]
            self.emit(item, now, cause)

    def flush(self) -> None:
        """On shutdown or the app's deletion: what is still delayed goes out now, not never."""
        for _, item, cause in self.delayed.values():
            self.emit(item, cause=cause)
        self.delayed.clear()


class Webhooks:
    """Every app's webhooks and the senders: one task per URL and one shared HTTP client.

    Apps come and go while the server runs (the database app store): `add`, `update` and
    `remove` keep one sender per URL of the apps known, started at once once `start` ran."""

    def __init__(
        self, settings: Settings, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self.apps: dict[str, AppWebhooks] = {
            app.id: AppWebhooks(app, settings, clock) for app in settings.apps
        }
        self._client: httpx.AsyncClient | None = None
        self._tasks: dict[Target, asyncio.Task[None]] = {}
        self._started = False

    def targets(self) -> Iterable[Target]:
        return (target for hooks in self.apps.values() for target in hooks.targets)

    def start(self) -> None:
        self._started = True
        for target in self.targets():
            self._spawn(target)

    def _spawn(self, target: Target) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.webhook_timeout),
                follow_redirects=False,
                headers={"User-Agent": f"reverb-py/{__version__} webhooks"},
            )
        self._tasks[target] = asyncio.create_task(self._send_forever(target))

    def add(self, app: App) -> AppWebhooks:
        hooks = self.apps[app.id] = AppWebhooks(app, self.settings, self._clock)
        if self._started:
            for target in hooks.targets:
                self._spawn(target)
        return hooks

    def update(self, app: App) -> AppWebhooks:
        """The app changed: same URLs keep their queues (a rotated secret signs the next
        request); changed URLs start afresh and what the old ones still held is dropped."""
        hooks = self.apps.get(app.id)
        if hooks is None or hooks.app.webhooks != app.webhooks:
            self._discard(app.id)
            return self.add(app)
        hooks.app = app
        for target in hooks.targets:
            target.app = app
        return hooks

    def remove(self, app_id: str) -> None:
        """The app was deleted: its connections were just closed, and the receiver is told.

        The `channel_vacated` and `member_removed` events that closing them decided (and those
        still delayed from before) would otherwise be lost, and a receiver that tracks who is
        online or which channels are occupied would keep stale state forever. They go out now,
        without the delay (no client can come back to this app), once, to the URLs the app had
        and signed with the secret it had; with the usual retries. Then its senders end."""
        hooks = self.apps.pop(app_id, None)
        if hooks is None:
            return
        hooks.flush()
        for target in hooks.targets:
            if target in self._tasks:
                target.retired = True
                target.wake.set()
            else:  # not started: nothing could send them
                target.discard_queue("app_changed")

    def _discard(self, app_id: str) -> None:
        hooks = self.apps.pop(app_id, None)
        if hooks is None:
            return
        for target in hooks.targets:
            task = self._tasks.pop(target, None)
            if task is not None:
                task.cancel()
            target.discard_queue("app_changed")

    def tick(self, now: float) -> None:
        for hooks in self.apps.values():
            if hooks.delayed:
                hooks.tick(now)

    async def close(self) -> None:
        """Send what is delayed or queued, for up to SHUTDOWN_FLUSH_SECONDS, then stop."""
        for hooks in self.apps.values():
            hooks.flush()
        deadline = self._clock() + SHUTDOWN_FLUSH_SECONDS
        while (
            self._tasks
            and self._clock() < deadline
            and any(target.queue or target.in_flight for target in self._tasks)
        ):
            await self._sleep(0.02)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
        for target in {*self.targets(), *self._tasks}:  # with a deleted app's last events
            target.discard_queue("shutdown")

    async def _send_forever(self, target: Target) -> None:
        settings = self.settings
        while True:
            if not target.queue:
                if target.retired:
                    del self._tasks[target]
                    return
                target.wake.clear()
                await target.wake.wait()
            if settings.webhook_batch_window:
                await self._sleep(settings.webhook_batch_window)
            items = target.take(self._clock(), settings.webhook_retry_for)
            if not items:
                continue
            target.in_flight = len(items)
            try:
                await self._deliver(target, items)
            except Exception:  # a bug here must not stop this URL's webhooks for good
                logger.exception("webhook sender for app %s failed", target.app.id)
            finally:
                target.in_flight = 0

    async def _deliver(self, target: Target, items: list[Item]) -> None:
        """POST one batch until a 2xx answer or the retry window closes."""
        assert self._client is not None
        settings = self.settings
        app = target.app
        body = orjson.dumps({"time_ms": int(time.time() * 1000), "events": items})
        headers = {
            **dict(target.hook.headers),
            "Content-Type": "application/json",
            "X-Pusher-Key": app.key,
            "X-Pusher-Signature": webhook_signature(app.secret, body),
        }
        first = self._clock()
        attempt = 0
        while True:
            try:
                response = await self._client.post(target.hook.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    target.delivered += len(items)
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__  # never the URL or body: they may hold secrets
            target.failed_attempts += 1
            delay = min(settings.webhook_retry_base * 2**attempt, MAX_RETRY_DELAY)
            delay *= 0.75 + random.random() / 2  # spread retries of many replicas/URLs
            if self._clock() + delay - first > settings.webhook_retry_for:
                target.drop(len(items), "receiver_failed")
                return
            logger.warning(
                "webhook for app %s failed (%s, attempt %d); retrying in %.1f s",
                app.id,
                reason,
                attempt + 1,
                delay,
            )
            await self._sleep(delay)
            attempt += 1
