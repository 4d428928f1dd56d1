"""Several replicas through a real Redis behave as one server, to clients and to the HTTP API.

Every replica here is a separate `reverb-py start` process; the Redis server is private to the
test module. A short node timeout (2 s) keeps the kill -9 test fast; the default is 10 s.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.conftest import PusherSocket
from tests.replicas import RedisServer, Replica, free_port, start_replica

pytestmark = pytest.mark.redis

NODE_TIMEOUT = "2"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


StartReplicas = Callable[..., "asyncio.Future[list[Replica]]"]


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[Replica] = []
    channel = f"test-{time.time_ns()}"  # isolate tests sharing the module's Redis

    async def start(count: int, **env: str) -> list[Replica]:
        new = await asyncio.gather(
            *(
                asyncio.to_thread(
                    start_replica,
                    redis_server.url,
                    **{
                        "REVERB_SCALING_CHANNEL": channel,
                        "REVERB_SCALING_NODE_TIMEOUT": NODE_TIMEOUT,
                        **env,
                    },
                )
                for _ in range(count)
            )
        )
        started.extend(new)
        await asyncio.sleep(0.3)  # let every replica hear every other's announcement
        return list(new)

    yield start
    for replica in started:
        replica.stop(signal.SIGKILL)


def sdk_auth(replica: Replica, channel: str, client: PusherSocket, data: Any = None) -> dict:
    return replica.sdk().authenticate(channel, client.socket_id, data)


async def join(replica: Replica, client: PusherSocket, channel: str, user: Any) -> dict:
    auth = sdk_auth(replica, channel, client, {"user_id": user, "user_info": {"name": user}})
    reply = await client.subscribe(channel, auth["auth"], auth["channel_data"])
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    return json.loads(reply["data"])["presence"]


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll an HTTP query until it holds (state travels asynchronously between replicas)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


async def test_event_reaches_every_replica_exactly_once(replicas: Any) -> None:
    a, b, c = await replicas(3)
    clients = [await r.connect() for r in (a, b, c, c)]
    for client in clients:
        await client.subscribe("security-dashboard")
    await asyncio.sleep(0.1)
    for i in range(20):
        await a.call(a.sdk().trigger, "security-dashboard", "panic-alert.triggered", {"i": i})
    for client in clients:
        received = [
            json.loads((await client.expect("panic-alert.triggered"))["data"])["i"]
            for _ in range(20)
        ]
        assert received == list(range(20))  # all, in order, once
        await client.nothing(0.2)


async def test_socket_id_exclusion_across_replicas(replicas: Any) -> None:
    a, b = await replicas(2)
    sender, other = await b.connect(), await b.connect()
    for client in (sender, other):
        await client.subscribe("chat")
    await asyncio.sleep(0.1)
    await a.call(a.sdk().trigger, "chat", "msg", "x", sender.socket_id)
    await other.expect("msg")
    await sender.nothing()


async def test_presence_is_cluster_wide(replicas: Any) -> None:
    a, b = await replicas(2)
    alice = await a.connect()
    roster = await join(a, alice, "presence-guards", "alice")
    assert roster["ids"] == ["alice"]
    bob = await b.connect()

    def b_sees_alice() -> bool:  # alice's join travels to b through Redis, asynchronously
        users = b.sdk().users_info("presence-guards")["users"]
        return [u["id"] for u in users] == ["alice"]

    await eventually(b_sees_alice)
    roster = await join(b, bob, "presence-guards", "bob")
    assert sorted(roster["ids"]) == ["alice", "bob"]  # the roster includes the other replica
    added = await alice.expect("pusher_internal:member_added")
    assert json.loads(added["data"])["user_id"] == "bob"

    # bob opens a second tab on the other replica: still one member, no event.
    bob2 = await a.connect()
    roster = await join(a, bob2, "presence-guards", "bob")
    assert roster["count"] == 2
    await alice.nothing()
    await bob.nothing(0.1)

    for replica in (a, b):
        info = await replica.call(replica.sdk().channel_info, "presence-guards", ["user_count"])
        assert info == {"occupied": True, "user_count": 2}
        users = await replica.call(replica.sdk().users_info, "presence-guards")
        assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]

    await bob.close()  # one of bob's tabs leaves: bob is still present through a
    await alice.nothing(0.5)
    await bob2.close()
    removed = await alice.expect("pusher_internal:member_removed")
    assert json.loads(removed["data"])["user_id"] == "bob"
    await alice.nothing()


async def test_queries_answer_the_same_from_every_replica(replicas: Any) -> None:
    a, b, c = await replicas(3)
    clients = [await a.connect(), await b.connect(), await b.connect(), await c.connect()]
    for client in clients:
        await client.subscribe("news")
    await clients[3].subscribe("weather")

    def agreed() -> bool:
        answers = []
        for replica in (a, b, c):
            sdk = replica.sdk()
            answers.append(
                (
                    sdk.channel_info("news", ["subscription_count"]),
                    sdk.channels_info(),
                )
            )
        return all(answer == answers[0] for answer in answers) and answers[0][0] == {
            "occupied": True,
            "subscription_count": 4,
        }

    await eventually(agreed)
    listing = await a.call(a.sdk().channels_info)
    assert listing == {"channels": {"news": {}, "weather": {}}}


async def test_cache_channel_is_shared(replicas: Any) -> None:
    a, b = await replicas(2)
    await a.call(a.sdk().trigger, "cache-status", "status", {"level": "red"})
    await asyncio.sleep(0.2)
    client = await b.connect()
    await client.subscribe("cache-status")
    replay = await client.expect("status")
    assert json.loads(replay["data"]) == {"level": "red"}
    # A replica that starts later gets the cache from the others' announcements.
    (late,) = await replicas(1)
    client = await late.connect()
    await client.subscribe("cache-status")
    assert json.loads((await client.expect("status"))["data"]) == {"level": "red"}


async def test_client_events_users_and_terminate_across_replicas(replicas: Any) -> None:
    a, b = await replicas(2)
    sender, receiver = await a.connect(), await b.connect()
    for client, replica in ((sender, a), (receiver, b)):
        auth = sdk_auth(replica, "private-ops", client)
        await client.subscribe("private-ops", auth["auth"])
    await asyncio.sleep(0.1)
    await sender.send("client-note", {"text": "hola"}, channel="private-ops")
    assert (await receiver.expect("client-note"))["data"] == {"text": "hola"}
    await sender.nothing()

    guard = await b.connect()
    signin = a.sdk().authenticate_user(guard.socket_id, {"id": "guard-7"})
    await guard.send("pusher:signin", signin)
    await guard.expect("pusher:signin_success")
    await asyncio.sleep(0.1)
    await a.call(a.sdk().send_to_user, "guard-7", "dispatch", {"zone": 3})
    assert (await guard.expect("dispatch"))["channel"] == "#server-to-user-guard-7"

    await a.call(a.sdk().terminate_user_connections, "guard-7")
    error = await guard.expect("pusher:error")
    assert error["data"]["code"] == 4009


async def watched_member(a: Replica, b: Replica, user: str) -> PusherSocket:
    """A presence member on replica b, and its watcher on replica a (returned)."""
    watcher = await a.connect()
    await join(a, watcher, "presence-room", "watcher")
    member = await b.connect()
    await asyncio.sleep(0.1)
    await join(b, member, "presence-room", user)
    await watcher.expect("pusher_internal:member_added")
    await member.subscribe("news")
    return watcher


async def test_killed_replica_leaves_no_ghost(replicas: Any) -> None:
    a, b = await replicas(2)
    watcher = await watched_member(a, b, "doomed")
    b.stop(signal.SIGKILL)  # no goodbye
    removed = await watcher.expect("pusher_internal:member_removed", timeout=15)
    assert json.loads(removed["data"])["user_id"] == "doomed"
    info = await a.call(a.sdk().channel_info, "presence-room", ["user_count"])
    assert info["user_count"] == 1
    assert await a.call(a.sdk().channel_info, "news") == {"occupied": False}


async def test_graceful_stop_cleans_up_at_once(replicas: Any) -> None:
    a, b = await replicas(2)
    watcher = await watched_member(a, b, "leaving")
    assert await asyncio.to_thread(b.stop) == 0, b.logs()
    removed = await watcher.expect("pusher_internal:member_removed", timeout=1.5)
    assert json.loads(removed["data"])["user_id"] == "leaving"
    assert await a.call(a.sdk().channel_info, "news") == {"occupied": False}


async def test_cluster_wide_connection_limit(replicas: Any) -> None:
    a, b = await replicas(2, REVERB_APP_MAX_CONNECTIONS="2")
    await a.connect()
    await b.connect()
    await asyncio.sleep(1.0)  # connection counts travel with heartbeats
    import websockets

    ws = await websockets.connect(f"ws://127.0.0.1:{a.port}/app/test-key?protocol=7")
    error = json.loads(await ws.recv())
    assert error["data"]["code"] == 4004


async def test_redis_restart_mid_traffic(replicas: Any, redis_server: RedisServer) -> None:
    a, b = await replicas(2)
    on_a, on_b = await a.connect(), await b.connect()
    for client in (on_a, on_b):
        await client.subscribe("alerts")
    await join(a, on_a, "presence-room", "alice")
    await asyncio.sleep(0.1)

    redis_server.stop()
    await eventually(lambda: a.link() == "down" and b.link() == "down")
    assert a.ready() and b.ready()  # degraded, still serving
    # Local delivery continues on each replica while Redis is away.
    await a.call(a.sdk().trigger, "alerts", "during", "a")
    assert (await on_a.expect("during"))["data"] == "a"
    await b.call(b.sdk().trigger, "alerts", "during", "b")
    assert (await on_b.expect("during"))["data"] == "b"
    # Presence changes made during the outage are resynchronised afterwards.
    await join(b, on_b, "presence-room", "bob")

    redis_server.start()
    await eventually(lambda: a.link() == "up" and b.link() == "up", timeout=15)
    # What each replica published during the outage is still fresh (backlog window 60 s):
    # it reaches the other replica's clients late rather than never, in order.
    assert (await on_a.expect("during", timeout=5))["data"] == "b"
    assert (await on_b.expect("during", timeout=5))["data"] == "a"
    added = await on_a.expect("pusher_internal:member_added", timeout=5)
    assert json.loads(added["data"])["user_id"] == "bob"

    def both_see_both() -> bool:
        return all(
            sorted(u["id"] for u in r.sdk().users_info("presence-room")["users"])
            == ["alice", "bob"]
            for r in (a, b)
        )

    await eventually(both_see_both)
    await asyncio.sleep(0.2)
    await a.call(a.sdk().trigger, "alerts", "after", "x")
    for client in (on_a, on_b):
        assert (await client.expect("after"))["data"] == "x"
    for replica in (a, b):
        assert replica.process.poll() is None, replica.logs()
    assert "Redis link down" in a.logs()


async def test_unreachable_redis_at_start_is_logged(redis_server: RedisServer) -> None:
    replica = await asyncio.to_thread(start_replica, f"redis://127.0.0.1:{free_port()}/0")
    try:
        await eventually(lambda: "cannot reach Redis" in replica.logs())
        status, body = replica.readiness()
        assert status == 200
        assert body["cluster"]["link"] == "down"
    finally:
        replica.stop(signal.SIGKILL)
