"""Webhooks, subscription_count and watchlist events across real replicas linked by Redis:
each webhook is sent once by the cluster, not once per replica, and counts and online status
are cluster-wide."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests import test_scaling
from tests.conftest import PusherSocket
from tests.replicas import Replica
from tests.test_scaling import join
from tests.webhook_receiver import Receiver, names

pytestmark = pytest.mark.redis

# The same private redis-server and replica starter as the core scaling tests.
redis_server = test_scaling.redis_server
replicas = test_scaling.replicas

KINDS = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def hook_env(receiver: Receiver) -> dict[str, str]:
    return {
        "REVERB_APP_WEBHOOKS": json.dumps([{"url": receiver.url, "event_types": KINDS}]),
        "REVERB_WEBHOOK_DELAY": "0.3",
        "REVERB_WEBHOOK_BATCH_WINDOW": "0.02",
    }


async def settle(receiver: Receiver, count: int) -> list[tuple[str, ...]]:
    """Wait for `count` events, then long enough for any duplicate to show up too."""
    await receiver.wait_for(count, timeout=10)
    await asyncio.sleep(1.0)
    return names(receiver.events())


async def test_each_webhook_once_with_two_replicas(replicas: Any, receiver: Receiver) -> None:
    a, b = await replicas(2, **hook_env(receiver))
    alice, bob = await a.connect(), await b.connect()
    await join(a, alice, "presence-room", "alice")
    await asyncio.sleep(0.2)
    await join(b, bob, "presence-room", "bob")
    auth = b.sdk().authenticate("private-ops", bob.socket_id)
    await bob.subscribe("private-ops", auth["auth"])
    await bob.send("client-ping", {"n": 1}, channel="private-ops")
    await asyncio.sleep(0.2)
    await bob.close()
    await asyncio.sleep(0.2)
    await alice.close()
    events = await settle(receiver, 8)
    assert sorted(events) == sorted(
        [
            ("channel_occupied", "presence-room"),
            ("member_added", "presence-room", "alice"),
            ("member_added", "presence-room", "bob"),
            ("channel_occupied", "private-ops"),
            ("client_event", "private-ops"),
            ("channel_vacated", "private-ops"),
            ("member_removed", "presence-room", "bob"),
            ("member_removed", "presence-room", "alice"),
            ("channel_vacated", "presence-room"),
        ]
    )


async def test_reload_onto_another_replica_sends_nothing(replicas: Any, receiver: Receiver) -> None:
    a, b = await replicas(2, **hook_env(receiver))
    tab = await a.connect()
    await join(a, tab, "presence-room", "alice")
    assert len(await settle(receiver, 2)) == 2
    await tab.close()  # the reload lands on the other replica
    tab = await b.connect()
    await join(b, tab, "presence-room", "alice")
    await asyncio.sleep(1.5)
    assert len(receiver.events()) == 2


async def test_the_next_leader_reports_a_killed_leaders_clients(
    replicas: Any, receiver: Receiver
) -> None:
    (old,) = await replicas(1, **hook_env(receiver))
    (young,) = await replicas(1, **hook_env(receiver))  # the older replica is the leader
    doomed, staying = await old.connect(), await young.connect()
    await join(old, doomed, "presence-room", "doomed")
    await asyncio.sleep(0.2)
    await join(young, staying, "presence-room", "staying")
    await settle(receiver, 3)
    old.stop(signal.SIGKILL)  # no goodbye: the young replica reaps it (node timeout 2 s)
    await receiver.wait_for(4, timeout=10)
    await staying.close()
    events = await settle(receiver, 6)
    assert events[3:] == [
        ("member_removed", "presence-room", "doomed"),
        ("member_removed", "presence-room", "staying"),
        ("channel_vacated", "presence-room"),
    ]


def count_of(frame: dict[str, Any]) -> int:
    assert frame["event"] == "pusher_internal:subscription_count", frame
    return json.loads(frame["data"])["subscription_count"]


async def test_subscription_count_is_cluster_wide(replicas: Any) -> None:
    a, b = await replicas(2, REVERB_APP_SUBSCRIPTION_COUNT="true")
    on_a, on_b = await a.connect(), await b.connect()
    await on_a.subscribe("news")
    assert count_of(await on_a.recv()) == 1
    await asyncio.sleep(0.2)
    await on_b.subscribe("news")
    assert count_of(await on_b.recv()) == 2
    assert count_of(await on_a.recv()) == 2
    await on_b.close()
    assert count_of(await on_a.recv()) == 1


async def sign_in(replica: Replica, client: PusherSocket, user: dict[str, Any]) -> None:
    await client.send("pusher:signin", replica.sdk().authenticate_user(client.socket_id, user))
    await client.expect("pusher:signin_success")


def watchlist_events(frame: dict[str, Any]) -> list[dict[str, Any]]:
    assert frame["event"] == "pusher_internal:watchlist_events", frame
    return json.loads(frame["data"])["events"]


async def test_watchlist_is_cluster_wide(replicas: Any) -> None:
    a, b = await replicas(2, REVERB_APP_WATCHLIST_EVENTS="true")
    carol = await b.connect()
    await sign_in(b, carol, {"id": "carol"})
    await asyncio.sleep(0.2)
    alice = await a.connect()
    await sign_in(a, alice, {"id": "alice", "watchlist": ["bob", "carol"]})
    assert watchlist_events(await alice.recv()) == [
        {"name": "online", "user_ids": ["carol"]},
        {"name": "offline", "user_ids": ["bob"]},
    ]
    bob_on_a, bob_on_b = await a.connect(), await b.connect()
    await sign_in(b, bob_on_b, {"id": "bob"})
    assert watchlist_events(await alice.recv()) == [{"name": "online", "user_ids": ["bob"]}]
    await sign_in(a, bob_on_a, {"id": "bob"})  # a second replica, the same user: no event
    await bob_on_b.close()
    await alice.nothing(0.5)
    await bob_on_a.close()
    assert watchlist_events(await alice.recv()) == [{"name": "offline", "user_ids": ["bob"]}]
    b.stop(signal.SIGKILL)  # carol's replica dies: she goes offline once it is reaped
    frame = await alice.recv(timeout=10)
    assert watchlist_events(frame) == [{"name": "offline", "user_ids": ["carol"]}]
