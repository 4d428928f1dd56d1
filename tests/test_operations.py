"""Connection-storm protection: the per-app connection limit, the per-IP new-connection rate
limit with trusted proxies, and the fd limit."""

from __future__ import annotations

import asyncio
import json
import resource

import pytest
import websockets

from reverb_py.ratelimit import ClientAddress, NewConnectionLimiter, parse_networks
from reverb_py.server import raise_fd_limit
from tests.conftest import APP, Running, ServerFactory, app_with
from tests.test_websocket_protocol import closed_with

# ---------------------------------------------------------------------------------------------
# Connection limits


async def refused_with(running: Running, code: int, headers: dict[str, str] | None = None) -> None:
    async with websockets.connect(running.url(), additional_headers=headers) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert message["event"] == "pusher:error", message
        assert message["data"]["code"] == code, message
        assert (await closed_with(ws)).code == code


async def test_app_connection_limit_refuses_with_4004(start_server: ServerFactory) -> None:
    running = await start_server(app_with(max_connections=2))
    first = await running.connect()
    await running.connect()
    await refused_with(running, 4004)
    await first.close()
    await asyncio.sleep(0.1)
    await running.connect()  # room again


async def test_per_ip_new_connection_rate_limit(start_server: ServerFactory) -> None:
    """Over the limit the socket is refused with 4100 (pusher-js waits a second and retries);
    a second later the same address may connect again."""
    running = await start_server(max_connections_per_ip_per_second=3, metrics_enabled=True)
    for _ in range(3):
        await running.connect()
    await refused_with(running, 4100)
    await refused_with(running, 4100)
    await asyncio.sleep(1.1)
    await running.connect()
    assert running.server.metrics is not None
    body = running.server.metrics.render().decode()
    assert f'reverb_connections_refused_total{{app_id="{APP.id}",reason="rate_limited"}} 2.0' in (
        body
    )


async def test_per_ip_limit_uses_forwarded_for_only_from_trusted_proxies(
    start_server: ServerFactory,
) -> None:
    trusting = await start_server(
        max_connections_per_ip_per_second=1, trusted_proxies=("127.0.0.0/8",)
    )
    alice = {"X-Forwarded-For": "203.0.113.7"}
    await trusting.connect(additional_headers=alice)
    await refused_with(trusting, 4100, alice)
    # A client cannot dodge the limit by prepending addresses: only the proxy's hop counts.
    await refused_with(trusting, 4100, {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    await trusting.connect(additional_headers={"X-Forwarded-For": "203.0.113.8"})

    untrusting = await start_server(max_connections_per_ip_per_second=1)
    await untrusting.connect(additional_headers=alice)
    await refused_with(untrusting, 4100, {"X-Forwarded-For": "203.0.113.8"})


def test_client_address_from_forwarded_for() -> None:
    address = ClientAddress(parse_networks("test", ["10.0.0.0/8", "192.168.1.1"]))
    assert address.resolve("10.1.2.3", ["1.2.3.4"]) == "1.2.3.4"
    assert address.resolve("10.1.2.3", ["6.6.6.6, 1.2.3.4, 10.9.9.9"]) == "1.2.3.4"
    assert address.resolve("10.1.2.3", ["6.6.6.6", "1.2.3.4"]) == "1.2.3.4"  # repeated header
    assert address.resolve("::ffff:10.1.2.3", ["1.2.3.4"]) == "1.2.3.4"  # dual-stack peer
    assert address.resolve("8.8.8.8", ["1.2.3.4"]) == "8.8.8.8"  # untrusted peer
    assert address.resolve("10.1.2.3", []) == "10.1.2.3"
    assert address.resolve("10.1.2.3", ["10.0.0.9, 192.168.1.1"]) == "10.0.0.9"
    assert ClientAddress(()).resolve("10.1.2.3", ["1.2.3.4"]) == "10.1.2.3"
    with pytest.raises(ValueError, match="not-an-ip"):
        parse_networks("REVERB_TRUSTED_PROXIES", ["not-an-ip"])


def test_rate_limiter_windows_and_bounded_memory() -> None:
    limiter = NewConnectionLimiter(2, max_tracked=3)
    assert [limiter.hit("a", 0.0) for _ in range(3)] == [1, 2, 3]
    assert limiter.hit("a", 1.0) == 1  # a new window
    for ip in ("b", "c"):
        limiter.hit(ip, 1.0)
    assert limiter.hit("d", 1.0) == 1  # beyond max_tracked: not tracked (fail open) ...
    assert "d" not in limiter.windows
    limiter.sweep(2.5)  # ... until the sweep forgets finished windows
    assert limiter.windows == {}


def test_fd_soft_limit_raised_to_hard_limit() -> None:
    limit = raise_fd_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit == soft
    assert soft == hard or hard == resource.RLIM_INFINITY
