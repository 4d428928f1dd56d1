"""Webhooks as a Laravel backend receives them: a real HTTP receiver, every body checked with the
official pusher SDK's `validate_webhook`, clients driven over real WebSockets.

The delay of `channel_vacated` / `member_removed` is a minute here, longer than any test: the
test releases delayed events itself (`release_delayed`, what the server's sweep does once they
are due) and waits for the senders to be idle (`settled`) instead of sleeping to see whether
something else arrives. The senders' own timers are tested in test_webhook_timers.py."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reverb_py.config import Webhook
from reverb_py.webhooks import AppWebhooks
from tests.clock import eventually
from tests.conftest import PusherSocket, Running, ServerFactory, app_with
from tests.replicas import free_port
from tests.webhook_receiver import Receiver, names

FAST = {"webhook_delay": 60.0, "webhook_batch_window": 0.02, "webhook_retry_base": 0.05}
ALL_KINDS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


async def start_with_hooks(
    start_server: ServerFactory, *hooks: Webhook, app: Any = None, **settings: Any
) -> Running:
    app = app_with(webhooks=hooks, **(app or {}))
    return await start_server(app, **{**FAST, **settings})


def app_hooks(running: Running) -> AppWebhooks:
    return running.server.webhooks.apps[running.app.id]


def release_delayed(running: Running) -> None:
    """What the server's sweep does once the delay has passed."""
    running.server.webhooks.tick(time.monotonic() + FAST["webhook_delay"])


async def settled(running: Running) -> None:
    """Until nothing is queued or in flight: every event decided so far has been sent."""
    targets = list(running.server.webhooks.targets())
    await eventually(lambda: not any(target.queue or target.in_flight for target in targets))


async def join_presence(running: Running, client: PusherSocket, channel: str, user: str) -> None:
    auth = running.sdk().authenticate(channel, client.socket_id, {"user_id": user})
    reply = await client.subscribe(channel, auth["auth"], auth["channel_data"])
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply


async def test_occupied_then_vacated_after_the_delay(
    start_server: ServerFactory, receiver: Receiver
) -> None:
    hook = Webhook(receiver.url, ("channel_occupied", "channel_vacated"), (("X-Tenant", "acme"),))
    running = await start_with_hooks(start_server, hook)
    client = await running.connect()
    await client.subscribe("security-dashboard")
    events = await receiver.wait_for(1)
    assert names(events) == [("channel_occupied", "security-dashboard")]
    request = receiver.accepted[0]
    assert request.headers["x-pusher-key"] == running.app.key
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-tenant"] == "acme"
    body = json.loads(request.body)
    assert isinstance(body["time_ms"], int)

    hooks = app_hooks(running)
    left_at = time.monotonic()
    await client.send("pusher:unsubscribe", {"channel": "security-dashboard"})
    await eventually(lambda: bool(hooks.delayed))  # Pusher delays vacated by a few seconds
    ((due, item, _),) = hooks.delayed.values()
    assert item == {"name": "channel_vacated", "channel": "security-dashboard"}
    assert left_at + FAST["webhook_delay"] <= due <= time.monotonic() + FAST["webhook_delay"]
    running.server.webhooks.tick(due - 0.001)
    await settled(running)
    assert len(receiver.events()) == 1
    running.server.webhooks.tick(due)
    events = await receiver.wait_for(2)
    assert names(events)[1] == ("channel_vacated", "security-dashboard")


async def test_page_reload_within_the_delay_sends_nothing(
    start_server: ServerFactory, receiver: Receiver
) -> None:
    running = await start_with_hooks(start_server, Webhook(receiver.url, ALL_KINDS[:4]))
    tab = await running.connect()
    await join_presence(running, tab, "presence-room", "alice")
    events = await receiver.wait_for(2)
    assert sorted(names(events)) == [
        ("channel_occupied", "presence-room"),
        ("member_added", "presence-room", "alice"),
    ]
    await tab.close()  # the page reloads: the same user is back within the delay
    tab = await running.connect()
    await join_presence(running, tab, "presence-room", "alice")
    release_delayed(running)
    await settled(running)
    assert len(receiver.events()) == 2  # no vacated/removed, and no second occupied/added

    await tab.close()  # a real departure still arrives, member first
    hooks = app_hooks(running)
    await eventually(lambda: len(hooks.delayed) == 2)
    release_delayed(running)
    events = await receiver.wait_for(4)
    assert names(events)[2:] == [
        ("member_removed", "presence-room", "alice"),
        ("channel_vacated", "presence-room"),
    ]


async def test_members_are_users_not_sockets(
    start_server: ServerFactory, receiver: Receiver
) -> None:
    running = await start_with_hooks(
        start_server, Webhook(receiver.url, ("member_added", "member_removed"))
    )
    alice1, alice2, bob = [await running.connect() for _ in range(3)]
    await join_presence(running, alice1, "presence-room", "alice")
    await join_presence(running, alice2, "presence-room", "alice")
    await join_presence(running, bob, "presence-room", "bob")
    await alice1.close()  # alice is still there through her second tab
    await bob.close()
    hooks = app_hooks(running)
    await eventually(lambda: bool(hooks.delayed))
    release_delayed(running)
    await settled(running)
    events = receiver.events()
    assert names(events) == [
        ("member_added", "presence-room", "alice"),
        ("member_added", "presence-room", "bob"),
        ("member_removed", "presence-room", "bob"),
    ]
    assert events[0]["user_id"] == "alice"


async def test_client_event_webhook(start_server: ServerFactory, receiver: Receiver) -> None:
    running = await start_with_hooks(start_server, Webhook(receiver.url, ("client_event",)))
    sender, other = await running.connect(), await running.connect()
    for client in (sender, other):
        auth = running.sdk().authenticate("private-ops", client.socket_id)
        await client.subscribe("private-ops", auth["auth"])
    await join_presence(running, sender, "presence-ops", "guard-1")
    await sender.send("client-typing", {"zone": 3}, channel="private-ops")
    await sender.send("client-typing", "plain text", channel="presence-ops")
    events = await receiver.wait_for(2)
    assert events == [
        {
            "name": "client_event",
            "channel": "private-ops",
            "event": "client-typing",
            "data": '{"zone":3}',
            "socket_id": sender.socket_id,
        },
        {
            "name": "client_event",
            "channel": "presence-ops",
            "event": "client-typing",
            "data": "plain text",
            "socket_id": sender.socket_id,
            "user_id": "guard-1",
        },
    ]


async def test_cache_miss_once_for_simultaneous_subscribers(
    start_server: ServerFactory, receiver: Receiver
) -> None:
    running = await start_with_hooks(
        start_server, Webhook(receiver.url, ("cache_miss",)), webhook_batch_window=0.2
    )
    clients = [await running.connect() for _ in range(3)]
    for client in clients:
        await client.send("pusher:subscribe", {"channel": "cache-status"})
    for client in clients:
        await client.expect("pusher_internal:subscription_succeeded")
        await client.expect("pusher:cache_miss")
    await settled(running)
    assert names(receiver.events()) == [("cache_miss", "cache-status")]


async def test_failing_receiver_gets_the_events_once_after_retries(
    start_server: ServerFactory,
) -> None:
    receiver = Receiver(fail_first=2)
    try:
        running = await start_with_hooks(start_server, Webhook(receiver.url, ("channel_occupied",)))
        client = await running.connect()
        await client.subscribe("alerts")
        await client.subscribe("news")  # same batch window: one request carries both
        await receiver.wait_for(2)
        await settled(running)
        assert sorted(names(receiver.events())) == [
            ("channel_occupied", "alerts"),
            ("channel_occupied", "news"),
        ]
        assert len(receiver.requests) == 3  # two 500s, then the one that counted
        assert len({request.body for request in receiver.requests}) == 1  # the same body
        (target,) = running.server.webhooks.targets()
        assert (target.delivered, target.failed_attempts, target.dropped_total) == (2, 2, 0)
    finally:
        receiver.close()


async def test_filters_and_event_types(start_server: ServerFactory) -> None:
    private_only, ends_with = Receiver(), Receiver()
    try:
        running = await start_with_hooks(
            start_server,
            Webhook(private_only.url, ("channel_occupied",), channel_prefix="private-"),
            Webhook(ends_with.url, ("channel_vacated",), channel_suffix="-eu"),
        )
        client = await running.connect()
        auth = running.sdk().authenticate("private-eu", client.socket_id)
        await client.subscribe("private-eu", auth["auth"])
        for channel in ("public-eu", "public-us"):
            await client.subscribe(channel)
        await client.close()
        hooks = app_hooks(running)
        await eventually(lambda: len(hooks.delayed) == 3)
        release_delayed(running)
        await settled(running)
        assert names(private_only.events()) == [("channel_occupied", "private-eu")]
        assert sorted(names(ends_with.events())) == [
            ("channel_vacated", "private-eu"),
            ("channel_vacated", "public-eu"),
        ]
    finally:
        private_only.close()
        ends_with.close()


async def test_dead_receiver_costs_bounded_memory_and_never_delays_delivery(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there
    running = await start_with_hooks(
        start_server,
        Webhook(dead, ("channel_occupied", "channel_vacated")),
        webhook_queue_size=5,
        webhook_retry_base=30.0,
        webhook_delay=0.0,
    )
    caplog.set_level(logging.WARNING, "reverb_py.webhooks")
    watcher = await running.connect()
    await watcher.subscribe("panic")
    churn = await running.connect()
    for i in range(40):
        await churn.subscribe(f"room-{i}")
        await churn.send("pusher:unsubscribe", {"channel": f"room-{i}"})
    await churn.subscribe("last")  # its reply proves every earlier frame was handled
    await running.call(running.sdk().trigger, "panic", "alert", {"n": 1})
    await watcher.expect("alert", timeout=1)
    (target,) = running.server.webhooks.targets()
    assert len(target.queue) <= 5
    assert target.dropped_total >= 70  # 81 events, one request in flight, 5 queued
    assert "dropped" in caplog.text
    assert dead not in caplog.text and running.app.secret not in caplog.text
    # Done: without its webhooks the server's close need not wait for the dead receiver.
    running.server.webhooks.remove(running.app.id)


async def test_subscription_count_webhook_by_the_count(
    start_server: ServerFactory, receiver: Receiver
) -> None:
    running = await start_with_hooks(
        start_server, Webhook(receiver.url, ("subscription_count",)), webhook_batch_window=0.0
    )
    first, second = await running.connect(), await running.connect()
    await first.subscribe("news")
    await receiver.wait_for(1)
    await second.subscribe("news")
    await receiver.wait_for(2)
    await second.close()
    events = await receiver.wait_for(3)
    assert [(e["channel"], e["subscription_count"]) for e in events] == [
        ("news", 1),
        ("news", 2),
        ("news", 1),
    ]
    assert events[0]["name"] == "subscription_count"
