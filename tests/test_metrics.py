"""Prometheus metrics: off by default, valid exposition text, and counters that follow traffic."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pusher
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from reverb_py.config import RedisSettings, Settings
from reverb_py.server import Server
from tests.conftest import APP, Running, ServerFactory
from tests.replicas import RedisServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def scrape(port: int, path: str = "/metrics") -> Samples:
    """Every sample, keyed by name and labels; fails unless the body is Prometheus text."""
    status, content_type, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}{path}")
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(body)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when absent (a labelled counter appears with its first event)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def settle() -> None:
    """Let the server handle what the clients just sent (it runs on this event loop)."""
    await asyncio.sleep(0.1)


@pytest.fixture
async def metered(start_server: ServerFactory) -> Running:
    return await start_server(metrics_enabled=True)


async def test_metrics_are_off_by_default(running: Running) -> None:
    status, _, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{running.port}/metrics")
    assert status == 404, body
    assert running.server.metrics is None


async def test_connection_counters_and_gauges(metered: Running) -> None:
    port, app_id = metered.port, APP.id
    first, second = await metered.connect(), await metered.connect()
    samples = await scrape(port)
    assert value(samples, "reverb_connections", app_id=app_id) == 2
    assert value(samples, "reverb_connections_opened_total", app_id=app_id) == 2
    assert value(samples, "reverb_build_info", version="0.1.0") == 1
    assert value(samples, "reverb_draining") == 0
    assert value(samples, "process_open_fds") > 0  # the fd headroom is on the dashboard

    await first.close()
    await settle()
    samples = await scrape(port)
    assert value(samples, "reverb_connections", app_id=app_id) == 1
    assert value(samples, "reverb_connections_closed_total", app_id=app_id, reason="client") == 1

    await metered.server.drain()
    # The drain closed the listener: read the registry the way a scrape would.
    assert metered.server.metrics is not None
    samples = parse(metered.server.metrics.render().decode())
    closed = value(samples, "reverb_connections_closed_total", app_id=app_id, reason="reconnect")
    assert closed == 1
    assert value(samples, "reverb_draining") == 1
    await second.close()


async def test_channels_and_subscriptions_by_type(metered: Running) -> None:
    sdk = metered.sdk()
    clients = [await metered.connect() for _ in range(3)]
    for client in clients:
        await client.subscribe("news")
    auth = sdk.authenticate("private-orders", clients[0].socket_id)["auth"]
    await clients[0].subscribe("private-orders", auth)
    samples = await scrape(metered.port)
    assert value(samples, "reverb_channels", app_id=APP.id, type="public") == 1
    assert value(samples, "reverb_subscriptions", app_id=APP.id, type="public") == 3
    assert value(samples, "reverb_channels", app_id=APP.id, type="private") == 1
    assert value(samples, "reverb_subscriptions", app_id=APP.id, type="private") == 1


async def test_message_counters_follow_traffic_exactly(metered: Running) -> None:
    port = metered.port
    subscribers = [await metered.connect() for _ in range(3)]
    for client in subscribers:
        await client.subscribe("ticker")
    before = await scrape(port)

    await metered.call(metered.sdk().trigger, "ticker", "tick", {"price": 42})
    frames = [await client.ws.recv() for client in subscribers]
    after = await scrape(port)
    sent = "reverb_messages_sent_total"
    sent_bytes = "reverb_message_bytes_sent_total"
    assert value(after, sent, app_id=APP.id) - value(before, sent, app_id=APP.id) == 3
    assert value(after, sent_bytes, app_id=APP.id) - value(
        before, sent_bytes, app_id=APP.id
    ) == sum(len(frame.encode()) for frame in frames)
    requests = "reverb_http_api_requests_total"
    assert value(after, requests, app_id=APP.id, endpoint="events", status="200") == 1

    ping = json.dumps({"event": "pusher:ping", "data": {}})
    await subscribers[0].ws.send(ping)
    await subscribers[0].expect("pusher:pong")
    final = await scrape(port)
    received = "reverb_messages_received_total"
    received_bytes = "reverb_message_bytes_received_total"
    assert value(final, received, app_id=APP.id) - value(after, received, app_id=APP.id) == 1
    assert value(final, received_bytes, app_id=APP.id) - value(
        after, received_bytes, app_id=APP.id
    ) == len(ping)


async def test_a_trigger_that_reaches_a_socket_is_one_delivery_latency_observation(
    metered: Running,
) -> None:
    client = await metered.connect()
    await client.subscribe("alerts")
    sdk = metered.sdk()
    await metered.call(sdk.trigger, "nobody-listens", "panic", {})  # reached no socket
    before = await scrape(metered.port)
    await metered.call(sdk.trigger, "alerts", "panic", {"zone": 3})
    await client.expect("panic")
    after = await scrape(metered.port)
    count = "reverb_delivery_latency_seconds_count"
    assert value(before, count) == 0
    assert value(after, count) == 1
    seconds = value(after, "reverb_delivery_latency_seconds_sum")
    assert 0 < seconds < 5
    assert value(after, "reverb_delivery_latency_seconds_bucket", le="+Inf") == 1


async def test_http_api_requests_by_endpoint_and_status(metered: Running) -> None:
    good = metered.sdk()
    bad = pusher.Pusher(
        app_id=APP.id, key=APP.key, secret="wrong", host="127.0.0.1", port=metered.port, ssl=False
    )
    await metered.call(good.channels_info)
    await metered.call(good.channel_info, "news")
    with pytest.raises(pusher.errors.PusherBadAuth):
        await metered.call(bad.trigger, "news", "event", {})
    samples = await scrape(metered.port)
    name = "reverb_http_api_requests_total"
    assert value(samples, name, app_id=APP.id, endpoint="channels", status="200") == 1
    assert value(samples, name, app_id=APP.id, endpoint="channel", status="200") == 1
    assert value(samples, name, app_id=APP.id, endpoint="events", status="401") == 1


async def test_rejected_client_events_by_reason(metered: Running) -> None:
    client = await metered.connect()
    await client.subscribe("public-room")
    await client.send("client-typing", {}, "public-room")
    await client.expect("pusher:error")
    await client.send("client-typing", {}, "private-not-mine")
    await client.expect("pusher:error")
    samples = await scrape(metered.port)
    name = "reverb_client_events_rejected_total"
    assert value(samples, name, app_id=APP.id, reason="channel_type") == 1
    assert value(samples, name, app_id=APP.id, reason="not_subscribed") == 1
    assert value(samples, "reverb_client_events_total", app_id=APP.id) == 0


async def test_refused_upgrades_by_reason(metered: Running) -> None:
    async with websockets.connect(metered.url("no-such-key")) as ws:
        assert json.loads(await ws.recv())["data"]["code"] == 4001
    async with websockets.connect(metered.url(query="protocol=4")) as ws:
        assert json.loads(await ws.recv())["data"]["code"] == 4007
    samples = await scrape(metered.port)
    name = "reverb_connections_refused_total"
    assert value(samples, name, app_id="", reason="app_not_found") == 1
    assert value(samples, name, app_id=APP.id, reason="protocol") == 1


async def test_metrics_follow_the_path_prefix(start_server: ServerFactory) -> None:
    running = await start_server(metrics_enabled=True, path="/ws")
    await scrape(running.port, "/ws/metrics")
    status, _, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{running.port}/metrics")
    assert status == 404


async def test_separate_metrics_port(start_server: ServerFactory) -> None:
    """A metrics port keeps /metrics off the public port, and answers during a drain."""
    running = await start_server(metrics_port=0)
    metrics_port = running.server.metrics_port
    assert metrics_port is not None and metrics_port != running.port
    status, _, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{running.port}/metrics")
    assert status == 404
    client = await running.connect()
    assert value(await scrape(metrics_port), "reverb_connections", app_id=APP.id) == 1

    drain = asyncio.create_task(running.server.drain())
    await client.expect("pusher:error")
    samples = await scrape(metrics_port)
    assert value(samples, "reverb_draining") == 1
    await drain


async def test_each_server_has_its_own_registry(start_server: ServerFactory) -> None:
    one = await start_server(metrics_enabled=True)
    two = await start_server(metrics_enabled=True)
    await one.connect()
    assert value(await scrape(one.port), "reverb_connections_opened_total", app_id=APP.id) == 1
    assert value(await scrape(two.port), "reverb_connections_opened_total", app_id=APP.id) == 0


async def test_redis_link_down_shows_in_metrics_and_readiness() -> None:
    """Nothing listens on port 1: the link stays down, which metrics and the /ready body both
    say; the replica is degraded, not unready (it still serves its own clients)."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        apps=(APP,),
        metrics_enabled=True,
        scaling_enabled=True,
        redis=RedisSettings(url="redis://127.0.0.1:1/0"),
    )
    server = Server(settings)
    await server.start()
    try:
        server.cluster.heartbeat()  # queued for a Redis that is not there
        samples = await scrape(server.port)
        assert value(samples, "reverb_redis_connected") == 0
        assert value(samples, "reverb_redis_backlog_operations") >= 1
        assert value(samples, "reverb_redis_backlog_age_seconds") >= 0
        assert value(samples, "reverb_redis_down_seconds") >= 0
        assert value(samples, "reverb_redis_link_restarts_total", task="reader") == 0
        status, _, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{server.port}/ready")
        assert status == 200
        ready = json.loads(body)
        assert ready["ready"] is True
        assert ready["cluster"]["link"] == "down"
        assert ready["cluster"]["queued"] >= 1
    finally:
        await server.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.mark.redis
async def test_redis_link_up_shows_in_metrics(redis_server: RedisServer) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        apps=(APP,),
        metrics_enabled=True,
        scaling_enabled=True,
        scaling_channel="metrics-test",
        redis=RedisSettings(url=redis_server.url),
    )
    server = Server(settings)
    await server.start()
    try:
        assert server.link is not None
        for _ in range(100):
            if server.link.connected:
                break
            await asyncio.sleep(0.05)
        samples = await scrape(server.port)
        assert value(samples, "reverb_redis_connected") == 1
        assert value(samples, "reverb_redis_dropped_operations_total") == 0
        assert value(samples, "reverb_redis_lost_operations_total") == 0
        assert value(samples, "reverb_redis_down_seconds") == 0
        assert value(samples, "reverb_cluster_replicas") == 0
        assert value(samples, "reverb_cluster_malformed_operations_total") == 0
        server.cluster.receive("bad-replica", [["no-such-operation"]])
        samples = await scrape(server.port)
        assert value(samples, "reverb_cluster_malformed_operations_total") == 1
        status, _, body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{server.port}/ready")
        assert status == 200
        assert json.loads(body)["cluster"]["link"] == "up"
    finally:
        await server.close()
