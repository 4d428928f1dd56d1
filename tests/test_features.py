"""The Pusher features Reverb and soketi lack: subscription_count events, watchlist events; and
Reverb's origin allow-list. Driven by real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.conftest import PusherSocket, Running, ServerFactory, app_with


def count_of(frame: dict[str, Any]) -> int:
    assert frame["event"] == "pusher_internal:subscription_count", frame
    return json.loads(frame["data"])["subscription_count"]


# subscription_count -----------------------------------------------------------------------


async def test_subscription_count_follows_every_change(start_server: ServerFactory) -> None:
    running = await start_server(app_with(subscription_count=True))
    first, second = await running.connect(), await running.connect()
    await first.subscribe("news")
    frame = await first.recv()  # right after its own subscription_succeeded
    assert frame["channel"] == "news"
    assert count_of(frame) == 1
    await second.subscribe("news")
    assert count_of(await second.recv()) == 2
    assert count_of(await first.recv()) == 2
    await second.close()
    assert count_of(await first.recv()) == 1
    await first.nothing()


async def test_subscription_count_is_not_sent_for_presence_or_when_disabled(
    start_server: ServerFactory,
) -> None:
    enabled = await start_server(app_with(subscription_count=True))
    client = await enabled.connect()
    auth = enabled.sdk().authenticate("presence-room", client.socket_id, {"user_id": "u"})
    await client.subscribe("presence-room", auth["auth"], auth["channel_data"])
    await client.nothing()

    disabled = await start_server()
    client = await disabled.connect()
    await client.subscribe("news")
    await client.nothing()


async def test_subscription_count_is_throttled_above_100(start_server: ServerFactory) -> None:
    running = await start_server(app_with(subscription_count=True))
    watcher = await running.connect()
    await watcher.subscribe("stadium")
    # The crowd never reads: an unbounded client queue lets its close handshake through.
    crowd = [await running.connect(max_queue=None) for _ in range(101)]
    for client in crowd:
        await client.send("pusher:subscribe", {"channel": "stadium"})
    counts = []
    while not counts or counts[-1] < 101:
        counts.append(count_of(await watcher.recv()))
    assert counts == list(range(1, 102))  # every change up to 100, then the first above
    await crowd[0].close()  # 101 -> 100 within 5 s of the last announcement: held back
    await crowd[1].close()
    await watcher.nothing(0.3)
    running.sweep_after(5.0)  # Pusher's interval: the sweep sends the latest count, once
    assert count_of(await watcher.recv()) == 100
    running.sweep_after(5.0)
    await watcher.nothing(0.3)


# Watchlist events -------------------------------------------------------------------------


async def sign_in(running: Running, client: PusherSocket, user: dict[str, Any]) -> None:
    await client.send("pusher:signin", running.sdk().authenticate_user(client.socket_id, user))
    await client.expect("pusher:signin_success")


def watchlist_events(frame: dict[str, Any]) -> list[dict[str, Any]]:
    assert frame["event"] == "pusher_internal:watchlist_events", frame
    return json.loads(frame["data"])["events"]


async def test_watchlist_initial_state_then_online_and_offline(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(watchlist_events=True))
    carol = await running.connect()
    await sign_in(running, carol, {"id": "carol"})
    alice = await running.connect()
    await sign_in(running, alice, {"id": "alice", "watchlist": ["bob", "carol"]})
    assert watchlist_events(await alice.recv()) == [
        {"name": "online", "user_ids": ["carol"]},
        {"name": "offline", "user_ids": ["bob"]},
    ]
    bob_tabs = [await running.connect() for _ in range(2)]
    await sign_in(running, bob_tabs[0], {"id": "bob"})
    assert watchlist_events(await alice.recv()) == [{"name": "online", "user_ids": ["bob"]}]
    await sign_in(running, bob_tabs[1], {"id": "bob"})
    await bob_tabs[0].close()
    await alice.nothing()  # bob is online while one signed-in connection remains
    await bob_tabs[1].close()
    assert watchlist_events(await alice.recv()) == [{"name": "offline", "user_ids": ["bob"]}]
    await carol.close()
    assert watchlist_events(await alice.recv()) == [{"name": "offline", "user_ids": ["carol"]}]


async def test_watchlist_over_100_keeps_the_first_100_and_says_4302(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(watchlist_events=True))
    ids = [f"user-{n}" for n in range(120)]
    alice = await running.connect()
    await sign_in(running, alice, {"id": "alice", "watchlist": ids})
    error = await alice.expect("pusher:error")
    assert error["data"]["code"] == 4302
    assert watchlist_events(await alice.recv()) == [{"name": "offline", "user_ids": ids[:100]}]
    late = await running.connect()
    await sign_in(running, late, {"id": "user-110"})  # beyond the first 100: not watched
    await alice.nothing()
    ok = await running.connect()
    await sign_in(running, ok, {"id": "user-99"})
    assert watchlist_events(await alice.recv()) == [{"name": "online", "user_ids": ["user-99"]}]


async def test_watchlist_needs_the_app_setting(running: Running) -> None:
    alice = await running.connect()
    await sign_in(running, alice, {"id": "alice", "watchlist": ["bob"]})
    bob = await running.connect()
    await sign_in(running, bob, {"id": "bob"})
    await alice.nothing()


# Origins ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("http://example.com:8080", True),
        ("https://example.com.evil.net", False),
        ("https://evil.net", False),
        (None, False),
    ],
)
async def test_origin_allow_list(
    start_server: ServerFactory, origin: str | None, allowed: bool
) -> None:
    app = app_with(allowed_origins=("example.com", "*.example.com"), allow_missing_origin=False)
    running = await start_server(app)
    ws = await websockets.connect(running.url(), origin=origin)  # type: ignore[arg-type]
    first = json.loads(await asyncio.wait_for(ws.recv(), 2))
    if allowed:
        assert first["event"] == "pusher:connection_established"
        await ws.close()
        return
    assert first == {
        "event": "pusher:error",
        "data": {"code": 4009, "message": "Origin not allowed"},
    }
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == 4009


async def test_missing_origin_is_allowed_by_default(start_server: ServerFactory) -> None:
    """Native and mobile clients send no Origin; Reverb refuses them, we accept by default."""
    running = await start_server(app_with(allowed_origins=("example.com",)))
    client = await running.connect()  # the websockets client sends no Origin header
    await client.subscribe("news")
