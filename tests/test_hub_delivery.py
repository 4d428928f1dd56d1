"""The hub's answers that only show with several sockets or with time: a user's event that
skips the socket which caused it, terminating a user among other members, and the periodic
sweep expiring cached events and forgetting old subscription_count announcements.

The sweep is run at a later time (`Running.sweep_after`), so nothing here waits for a TTL or a
throttling interval to pass."""

from __future__ import annotations

import json

import pytest
import websockets

from tests.conftest import Running, ServerFactory, app_with
from tests.test_channels import join_presence, sign_in
from tests.test_features import count_of
from tests.test_http_api import post, raw_http, status_and_json


async def test_an_event_to_a_user_skips_the_socket_that_caused_it(running: Running) -> None:
    phone, laptop = await running.connect(), await running.connect()
    for client in (phone, laptop):
        await sign_in(running, client, "guard-1")
        await client.subscribe("#server-to-user-guard-1")
    body = json.dumps(
        {
            "name": "moved",
            "channel": "#server-to-user-guard-1",
            "data": "B",
            "socket_id": phone.socket_id,
        }
    ).encode()
    status, _ = status_and_json(await raw_http(running, post(running, "/apps/1234/events", body)))
    assert status == 200
    assert (await laptop.expect("moved"))["data"] == "B"
    await phone.nothing()


async def test_terminating_a_user_spares_other_members_and_channels(running: Running) -> None:
    victim, neighbour, elsewhere = [await running.connect() for _ in range(3)]
    await join_presence(running, victim, "presence-room", "bad-actor")
    await join_presence(running, neighbour, "presence-room", "good")
    await victim.expect("pusher_internal:member_added")
    await join_presence(running, elsewhere, "presence-other", "good")
    assert await running.call(running.sdk().terminate_user_connections, "bad-actor") == {}
    error = await victim.expect("pusher:error")
    assert error["data"] == {"code": 4009, "message": "You got disconnected by the app."}
    with pytest.raises(websockets.ConnectionClosed):
        await victim.recv()
    removed = await neighbour.expect("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "bad-actor"}
    for client in (neighbour, elsewhere):
        await client.send("pusher:ping")
        await client.expect("pusher:pong")


async def test_the_sweep_drops_expired_cached_events(start_server: ServerFactory) -> None:
    running = await start_server(app_with(cache_ttl=60))
    await running.call(running.sdk().trigger, "cache-scores", "goal", "1-0")
    running.sweep_after(59)
    early = await running.connect()
    await early.subscribe("cache-scores")
    assert (await early.expect("goal"))["data"] == "1-0"
    running.sweep_after(61)
    late = await running.connect()
    await late.subscribe("cache-scores")
    await late.expect("pusher:cache_miss")
    info = await running.call(running.sdk().channel_info, "cache-scores", ["cache"])
    assert info == {"occupied": True, "cache": None}


async def test_the_sweep_forgets_old_count_announcements(start_server: ServerFactory) -> None:
    """Above 100 subscribers a count goes out at most every 5 s; once 5 s have passed without
    a change, the next change goes out at once."""
    running = await start_server(app_with(subscription_count=True))
    watcher = await running.connect()
    await watcher.subscribe("stadium")
    # The crowd never reads: an unbounded client queue lets its close handshake through.
    crowd = [await running.connect(max_queue=None) for _ in range(100)]
    for client in crowd:
        await client.send("pusher:subscribe", {"channel": "stadium"})
    counts = []
    while not counts or counts[-1] < 101:
        counts.append(count_of(await watcher.recv()))
    assert counts[-1] == 101  # above 100: announced, and the next change within 5 s waits
    late = await running.connect(max_queue=None)
    await late.subscribe("stadium")  # the count is decided before this answer is sent
    await watcher.nothing(0.1)
    running.sweep_after(5)  # sends the held-back count
    assert count_of(await watcher.recv()) == 102
    running.sweep_after(10)  # 5 s after that announcement, nothing changed: forgotten
    last = await running.connect(max_queue=None)
    await last.subscribe("stadium")
    assert count_of(await watcher.recv()) == 103
