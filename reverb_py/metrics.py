"""Prometheus metrics, computed when scraped.

Nothing here runs on the hot paths. Counters are the plain integers of each app's `AppStats`
(bumped where traffic happens); gauges (connections, channels, subscriptions, the Redis link)
are read from the hubs and the cluster at scrape time. Each Server has its own registry, so
several servers in one process (tests, embedding) never share or clash over metrics.

Metrics are served at `{path}/metrics` on the main port, or only on `--metrics-port` when one
is given (so a public ingress never exposes them), by the same HTTP transport as everything
else: no extra thread or server library.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from reverb_py import __version__
from reverb_py.http_types import HttpRequest, HttpResponse, error_response

if TYPE_CHECKING:
    from reverb_py.router import Router
    from reverb_py.scaling.cluster import Cluster
    from reverb_py.scaling.redis import RedisLink
    from reverb_py.stats import AppStats

# The classic text format: every Prometheus version and compatible scraper reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_APP = ""


class ServerCollector:
    """Yields every reverb_* metric from the live server state."""

    def __init__(self, router: Router, cluster: Cluster, link: RedisLink | None) -> None:
        self.router = router
        self.cluster = cluster
        self.link = link

    def _stats(self) -> Iterator[tuple[str, AppStats]]:
        for app_id, hub in self.router.hubs_by_id.items():
            yield app_id, hub.stats
        yield UNKNOWN_APP, self.router.unknown_app_stats

    def collect(self) -> Iterator[Metric]:
        yield from self._server()
        yield from self._app_store()
        yield from self._connections()
        yield from self._channels()
        yield from self._traffic()
        yield self._delivery_latency()
        yield from self._webhooks()
        if self.link is not None:
            yield from self._redis(self.link)

    def _server(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("reverb_build_info", "reverb-py version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "reverb_draining",
            "1 while the server drains after SIGTERM/SIGINT (readiness is 503).",
            value=1 if self.router.draining else 0,
        )

    def _app_store(self) -> Iterator[Metric]:
        store = self.router.store
        yield GaugeMetricFamily(
            "reverb_app_store_up",
            "1 while the apps source answers (always 1 without an apps database).",
            value=1 if store.up else 0,
        )
        yield GaugeMetricFamily(
            "reverb_app_store_stale_seconds",
            "Seconds since the apps database last answered, while it does not (else 0): "
            "the apps served may be this much out of date.",
            value=store.stale_seconds(time.monotonic()),
        )
        known = GaugeMetricFamily(
            "reverb_app_store_apps", "Apps this node serves, by state.", labels=["state"]
        )
        enabled = sum(1 for app in store.apps.values() if app.enabled)
        known.add_metric(["enabled"], enabled)
        known.add_metric(["disabled"], len(store.apps) - enabled)
        yield known

    def _connections(self) -> Iterator[Metric]:
        current = GaugeMetricFamily(
            "reverb_connections", "Open Pusher connections on this node.", labels=["app_id"]
        )
        for app_id, hub in self.router.hubs_by_id.items():
            current.add_metric([app_id], len(hub.sessions))
        yield current
        opened = CounterMetricFamily(
            "reverb_connections_opened",
            "Pusher connections established.",
            labels=["app_id"],
        )
        closed = CounterMetricFamily(
            "reverb_connections_closed",
            "Pusher connections closed, by reason: client (the client or the network closed "
            "it) or the Pusher close code the server sent (reconnect, pong_timeout, ...).",
            labels=["app_id", "reason"],
        )
        refused = CounterMetricFamily(
            "reverb_connections_refused",
            "WebSocket upgrades refused with a Pusher error, by reason "
            "(app_id is empty for an unknown app key).",
            labels=["app_id", "reason"],
        )
        for app_id, stats in self._stats():
            if app_id != UNKNOWN_APP:
                opened.add_metric([app_id], stats.opened)
            for reason, count in stats.closed.items():
                closed.add_metric([app_id, reason], count)
            for reason, count in stats.refused.items():
                refused.add_metric([app_id, reason], count)
        yield from (opened, closed, refused)
        transport = CounterMetricFamily(
            "reverb_transport_refused",
            "HTTP requests and sockets the transport refused before any app saw them, by "
            "reason: bad_request, bad_target, method (400/405), header_too_large (431), "
            "body_too_large (413), request_timeout (408), fd_limit (a socket closed on accept: "
            "no file descriptor to spare).",
            labels=["reason"],
        )
        for reason, count in self.router.transport_refusals.counts.items():
            transport.add_metric([reason], count)
        yield transport

    def _channels(self) -> Iterator[Metric]:
        channels = GaugeMetricFamily(
            "reverb_channels",
            "Occupied channels on this node, by type.",
            labels=["app_id", "type"],
        )
        subscriptions = GaugeMetricFamily(
            "reverb_subscriptions",
            "Channel subscriptions on this node, by channel type.",
            labels=["app_id", "type"],
        )
        for app_id, hub in self.router.hubs_by_id.items():
            by_type: Counter[str] = Counter()
            subscribed: Counter[str] = Counter()
            for channel in hub.channels.values():
                kind = channel.type.kind.value
                by_type[kind] += 1
                subscribed[kind] += len(channel.subscribers)
            for kind, count in by_type.items():
                channels.add_metric([app_id, kind], count)
                subscriptions.add_metric([app_id, kind], subscribed[kind])
        yield from (channels, subscriptions)

    def _traffic(self) -> Iterator[Metric]:
        families = {
            "messages_received": CounterMetricFamily(
                "reverb_messages_received", "WebSocket messages from clients.", labels=["app_id"]
            ),
            "message_bytes_received": CounterMetricFamily(
                "reverb_message_bytes_received",
                "Payload bytes of WebSocket messages from clients.",
                labels=["app_id"],
            ),
            "messages_sent": CounterMetricFamily(
                "reverb_messages_sent",
                "WebSocket messages to clients (a broadcast counts once per subscriber).",
                labels=["app_id"],
            ),
            "message_bytes_sent": CounterMetricFamily(
                "reverb_message_bytes_sent",
                "Payload bytes of WebSocket messages to clients.",
                labels=["app_id"],
            ),
            "client_events": CounterMetricFamily(
                "reverb_client_events", "Client events accepted and broadcast.", labels=["app_id"]
            ),
        }
        # AppStats attribute (a dict reason -> count) -> its family
        by_reason = {
            attribute: CounterMetricFamily(name, text, labels=["app_id", "reason"])
            for attribute, name, text in (
                (
                    "client_events_rejected",
                    "reverb_client_events_rejected",
                    "Client events refused, by reason.",
                ),
                (
                    "subscriptions_refused",
                    "reverb_subscriptions_refused",
                    "Subscriptions refused with pusher:subscription_error, by reason (a cap "
                    "such as subscriptions_per_connection, or auth, invalid_channel, ...).",
                ),
                (
                    "messages_rejected",
                    "reverb_messages_rejected",
                    "Client messages answered with pusher:error instead of being handled.",
                ),
            )
        }
        api = CounterMetricFamily(
            "reverb_http_api_requests",
            "HTTP API requests, by endpoint and response status.",
            labels=["app_id", "endpoint", "status"],
        )
        for app_id, stats in self._stats():
            if app_id == UNKNOWN_APP:
                continue
            for attribute, family in families.items():
                family.add_metric([app_id], getattr(stats, attribute))
            for attribute, family in by_reason.items():
                for reason, count in getattr(stats, attribute).items():
                    family.add_metric([app_id, reason], count)
            for (endpoint, status), count in stats.api_requests.items():
                api.add_metric([app_id, endpoint, str(status)], count)
        yield from families.values()
        yield from by_reason.values()
        yield api

    def _delivery_latency(self) -> Metric:
        latency = self.router.api.delivery_latency
        return HistogramMetricFamily(
            "reverb_delivery_latency_seconds",
            "From a trigger accepted by the HTTP API to its frame handed to the last local "
            "subscriber's socket (one observation per triggered event that reached a socket).",
            buckets=latency.cumulative(),
            sum_value=latency.total,
        )

    def _webhooks(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "reverb_webhook_events_queued",
            "Webhook events waiting to be sent, summed over the app's URLs.",
            labels=["app_id"],
        )
        delivered = CounterMetricFamily(
            "reverb_webhook_events_delivered",
            "Webhook events a receiver accepted (2xx).",
            labels=["app_id"],
        )
        dropped = CounterMetricFamily(
            "reverb_webhook_events_dropped",
            "Webhook events given up, by reason: queue_full, connection_share (one connection "
            "caused more than its share of a queue), expired, receiver_failed, shutdown, "
            "app_changed.",
            labels=["app_id", "reason"],
        )
        failed = CounterMetricFamily(
            "reverb_webhook_requests_failed",
            "Webhook requests that failed (error or non-2xx) and were retried or given up.",
            labels=["app_id"],
        )
        for app_id, hooks in self.router.webhooks.apps.items():
            targets = hooks.targets
            if not targets:
                continue
            queued.add_metric([app_id], sum(len(target.queue) for target in targets))
            delivered.add_metric([app_id], sum(target.delivered for target in targets))
            failed.add_metric([app_id], sum(target.failed_attempts for target in targets))
            by_reason: Counter[str] = Counter()
            for target in targets:
                by_reason.update(target.dropped)
            for reason, count in by_reason.items():
                dropped.add_metric([app_id, reason], count)
        yield from (queued, delivered, dropped, failed)

    def _redis(self, link: RedisLink) -> Iterator[Metric]:
        now = time.monotonic()
        queued, oldest = link.backlog()
        yield GaugeMetricFamily(
            "reverb_redis_connected",
            "1 while the Redis link to the other replicas is up (0: degraded, still serving).",
            value=1 if link.connected else 0,
        )
        yield GaugeMetricFamily(
            "reverb_redis_down_seconds",
            "Seconds since the Redis link was lost (0 while it is up).",
            value=link.down_seconds(now),
        )
        yield GaugeMetricFamily(
            "reverb_redis_backlog_operations",
            "Operations waiting to be appended to the stream for the other replicas.",
            value=queued,
        )
        yield GaugeMetricFamily(
            "reverb_redis_backlog_age_seconds",
            "Age of the oldest unappended operation: how far the other replicas lag behind.",
            value=0.0 if oldest is None else max(0.0, now - oldest),
        )
        yield CounterMetricFamily(
            "reverb_redis_dropped_operations",
            "Operations of this replica never appended: queued longer than the backlog allows.",
            value=link.dropped,
        )
        yield CounterMetricFamily(
            "reverb_redis_lost_operations",
            "Operations of other replicas never read here (trimmed from the stream or lost by "
            "Redis before this replica read them).",
            value=link.lost,
        )
        yield CounterMetricFamily(
            "reverb_redis_duplicate_operations",
            "Operations read more than once and applied once (a retried write, a re-read).",
            value=link.duplicates,
        )
        yield CounterMetricFamily(
            "reverb_redis_write_errors",
            "Failed appends to the stream (each retried with back-off).",
            value=link.write_errors,
        )
        restarts = CounterMetricFamily(
            "reverb_redis_link_restarts",
            "Restarts of the supervised tasks that talk to Redis, by task.",
            labels=["task"],
        )
        for task in ("reader", "writer"):
            restarts.add_metric([task], link.restarts[task])
        yield restarts
        yield GaugeMetricFamily(
            "reverb_cluster_replicas",
            "Other replicas this node currently hears from through Redis.",
            value=len(self.cluster.state.nodes),
        )
        yield CounterMetricFamily(
            "reverb_cluster_malformed_operations",
            "Operations from other replicas that could not be decoded and were skipped.",
            value=self.cluster.malformed,
        )


class Metrics:
    """A registry of this server's metrics (plus the process's CPU, memory and fds)."""

    def __init__(self, router: Router, cluster: Cluster, link: RedisLink | None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ServerCollector(router, cluster, link))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def response(self) -> HttpResponse:
        return HttpResponse(200, self.render(), content_type=CONTENT_TYPE)


class MetricsApplication:
    """The whole application of the separate metrics port: `GET /metrics`, nothing else."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def handle_http(self, request: HttpRequest) -> HttpResponse:
        if request.path != "/metrics":
            return error_response(404, "Not found")
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "Method not allowed", (("Allow", "GET"),))
        return self.metrics.response()

    def answer_post(self, target: bytes, body: bytes) -> None:
        return None  # every request goes through handle_http

    def route_websocket(self, request: HttpRequest) -> HttpResponse:
        return error_response(404, "Not found")
