"""Authenticated channels, presence, encrypted and cache channels, client events, user sign-in
and the query API, with signatures made by the official pusher SDK as a backend would."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pusher
import pytest
import websockets

from reverb_py.pusher.auth import sign
from tests.conftest import PusherSocket, Running, ServerFactory, app_with


def sdk_auth(running: Running, channel: str, client: PusherSocket, data: Any = None) -> dict:
    return running.sdk().authenticate(channel, client.socket_id, data)


async def join_presence(
    running: Running, client: PusherSocket, channel: str, user_id: Any, info: Any = None
) -> dict[str, Any]:
    auth = sdk_auth(running, channel, client, {"user_id": user_id, "user_info": info})
    return await client.subscribe(channel, auth["auth"], auth["channel_data"])


def roster(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    return json.loads(reply["data"])["presence"]


# Private channels -------------------------------------------------------------------------


async def test_private_channel_with_sdk_auth(running: Running) -> None:
    client = await running.connect()
    auth = sdk_auth(running, "private-security-dashboard", client)
    reply = await client.subscribe("private-security-dashboard", auth["auth"])
    assert reply["event"] == "pusher_internal:subscription_succeeded"
    alert = {"alert_id": 123, "user": {"name": "Juan Pérez"}, "status": "triggered 🚨"}
    await running.call(
        running.sdk().trigger, "private-security-dashboard", "panic-alert.triggered", alert
    )
    event = await client.expect("panic-alert.triggered")
    assert json.loads(event["data"]) == alert


@pytest.mark.parametrize("auth", [None, "test-key:" + "0" * 64, "not even a signature"])
async def test_private_channel_bad_auth_is_a_subscription_error(
    running: Running, auth: str | None
) -> None:
    client = await running.connect()
    reply = await client.subscribe("private-alerts", auth)
    assert reply["event"] == "pusher:subscription_error"
    assert reply["channel"] == "private-alerts"
    assert reply["data"]["type"] == "AuthError"
    assert reply["data"]["status"] == 401
    # The connection stays usable, and the refused channel receives nothing.
    assert (await client.subscribe("public"))["event"].endswith("subscription_succeeded")
    await running.call(running.sdk().trigger, "private-alerts", "secret", "x")
    await client.nothing()


async def test_auth_for_another_socket_is_refused(running: Running) -> None:
    thief, victim = await running.connect(), await running.connect()
    stolen = sdk_auth(running, "private-x", victim)
    assert (await thief.subscribe("private-x", stolen["auth"]))["event"] == (
        "pusher:subscription_error"
    )


# Presence channels ------------------------------------------------------------------------


async def test_presence_roster_and_member_events(running: Running) -> None:
    alice, bob = await running.connect(), await running.connect()
    first = roster(await join_presence(running, alice, "presence-room", "alice", {"n": "A"}))
    assert first == {"ids": ["alice"], "hash": {"alice": {"n": "A"}}, "count": 1}
    second = roster(await join_presence(running, bob, "presence-room", "bob", {"n": "B"}))
    assert second["count"] == 2
    assert sorted(second["ids"]) == ["alice", "bob"]
    added = await alice.expect("pusher_internal:member_added")
    assert json.loads(added["data"]) == {"user_id": "bob", "user_info": {"n": "B"}}
    await bob.nothing(0.1)  # no member_added for oneself
    await bob.close()
    removed = await alice.expect("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "bob"}


async def test_user_with_two_sockets_is_one_member(running: Running) -> None:
    watcher = await running.connect()
    await join_presence(running, watcher, "presence-room", "watcher")
    tab1, tab2 = await running.connect(), await running.connect()
    await join_presence(running, tab1, "presence-room", "carol")
    await watcher.expect("pusher_internal:member_added")
    reply = roster(await join_presence(running, tab2, "presence-room", "carol"))
    assert reply["count"] == 2
    await watcher.nothing()  # the second tab adds no member
    await tab1.close()
    await watcher.nothing()  # carol is still here through tab2
    await tab2.send("pusher:unsubscribe", {"channel": "presence-room"})
    removed = await watcher.expect("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "carol"}
    await watcher.nothing()


async def test_integer_user_ids_keep_their_type(running: Running) -> None:
    a, b = await running.connect(), await running.connect()
    await join_presence(running, a, "presence-ints", 1)
    reply = roster(await join_presence(running, b, "presence-ints", 2))
    assert sorted(reply["ids"]) == [1, 2]
    assert set(reply["hash"]) == {"1", "2"}
    added = await a.expect("pusher_internal:member_added")
    assert json.loads(added["data"])["user_id"] == 2
    users = await running.call(running.sdk().users_info, "presence-ints")
    assert sorted(user["id"] for user in users["users"]) == [1, 2]


async def test_presence_channel_data_is_signed(running: Running) -> None:
    client = await running.connect()
    auth = sdk_auth(running, "presence-room", client, {"user_id": "u1"})
    forged = json.dumps({"user_id": "admin"})
    reply = await client.subscribe("presence-room", auth["auth"], forged)
    assert reply["event"] == "pusher:subscription_error"


@pytest.mark.parametrize(
    ("channel_data", "kind"),
    [
        (None, "AuthError"),
        ("{not json", "InvalidData"),
        ('{"user_info":{}}', "InvalidData"),
        ('{"user_id":""}', "InvalidData"),
        (json.dumps({"user_id": "u" * 129}), "LimitReached"),
        (json.dumps({"user_id": "u", "user_info": {"bio": "x" * 1100}}), "LimitReached"),
    ],
)
async def test_presence_channel_data_validated(
    running: Running, channel_data: str | None, kind: str
) -> None:
    client = await running.connect()
    signed = running.sdk()._authentication_client
    auth = signed.authenticate("presence-room", client.socket_id)["auth"]
    if channel_data is not None:
        to_sign = f"{client.socket_id}:presence-room:{channel_data}"
        auth = f"{running.app.key}:{sign(running.app.secret, to_sign)}"
    reply = await client.subscribe("presence-room", auth, channel_data)
    assert reply["event"] == "pusher:subscription_error"
    assert reply["data"]["type"] == kind


async def test_presence_member_limit(start_server: ServerFactory) -> None:
    running = await start_server(app_with(max_presence_members=2))
    clients = [await running.connect() for _ in range(4)]
    await join_presence(running, clients[0], "presence-small", "a")
    await join_presence(running, clients[1], "presence-small", "b")
    full = await join_presence(running, clients[2], "presence-small", "c")
    assert full["event"] == "pusher:subscription_error"
    assert full["data"]["type"] == "LimitReached"
    again = await join_presence(running, clients[3], "presence-small", "a")  # existing user
    assert again["event"] == "pusher_internal:subscription_succeeded"


# Encrypted channels -----------------------------------------------------------------------


async def test_encrypted_channel_is_relayed_untouched(running: Running) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    sdk = running.sdk(encryption_master_key_base64=key)
    client = await running.connect()
    auth = sdk.authenticate("private-encrypted-vault", client.socket_id)
    assert "shared_secret" in auth
    await client.subscribe("private-encrypted-vault", auth["auth"])
    await running.call(sdk.trigger, "private-encrypted-vault", "sealed", {"pin": 1234})
    event = await client.expect("sealed")
    envelope = json.loads(event["data"])
    assert set(envelope) == {"ciphertext", "nonce"}
    assert "1234" not in event["data"]


# Cache channels ---------------------------------------------------------------------------


async def test_cache_channel_replays_last_event_to_new_subscribers(running: Running) -> None:
    sdk = running.sdk()
    await running.call(sdk.trigger, "cache-status", "status", {"v": 1})
    await running.call(sdk.trigger, "cache-status", "status", {"v": 2})
    client = await running.connect()
    await client.subscribe("cache-status")
    replay = await client.expect("status")
    assert json.loads(replay["data"]) == {"v": 2}
    assert replay["channel"] == "cache-status"


async def test_cache_miss(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("cache-empty")
    miss = await client.expect("pusher:cache_miss")
    assert miss["channel"] == "cache-empty"


@pytest.mark.parametrize(
    "prefix", ["private-cache-", "presence-cache-", "private-encrypted-cache-"]
)
async def test_every_cache_channel_kind_caches(running: Running, prefix: str) -> None:
    channel = prefix + "x"
    sdk = running.sdk(encryption_master_key_base64=base64.b64encode(b"k" * 32).decode())
    await running.call(sdk.trigger, channel, "last", {"v": 1})
    client = await running.connect()
    data = {"user_id": "u"} if prefix.startswith("presence") else None
    auth = sdk.authenticate(channel, client.socket_id, data)
    await client.subscribe(channel, auth["auth"], auth.get("channel_data"))
    await client.expect("last")


async def test_cache_expires_after_ttl(start_server: ServerFactory) -> None:
    running = await start_server(app_with(cache_ttl=0.2))
    await running.call(running.sdk().trigger, "cache-short", "e", "1")
    await asyncio.sleep(0.3)
    client = await running.connect()
    await client.subscribe("cache-short")
    await client.expect("pusher:cache_miss")


async def test_cache_info_on_http_api(running: Running) -> None:
    await running.call(running.sdk().trigger, "cache-info", "e", "payload")
    info = await running.call(running.sdk().channel_info, "cache-info", ["cache"])
    assert info["occupied"] is False
    assert info["cache"]["event"] == "e"
    assert info["cache"]["data"] == "payload"
    assert 0 < info["cache"]["ttl"] <= 1800


# Client events ----------------------------------------------------------------------------


async def private_pair(running: Running, channel: str) -> tuple[PusherSocket, PusherSocket]:
    a, b = await running.connect(), await running.connect()
    for client in (a, b):
        auth = sdk_auth(running, channel, client)
        await client.subscribe(channel, auth["auth"])
    return a, b


async def test_client_event_relayed_not_echoed(running: Running) -> None:
    a, b = await private_pair(running, "private-chat")
    await a.send("client-typing", {"who": "a"}, channel="private-chat")
    event = await b.expect("client-typing")
    assert event == {"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}}
    await a.nothing()


async def test_client_event_on_presence_carries_user_id(running: Running) -> None:
    a, b = await running.connect(), await running.connect()
    await join_presence(running, a, "presence-chat", 7)
    await join_presence(running, b, "presence-chat", 8)
    await a.expect("pusher_internal:member_added")
    await a.send("client-hello", "hi", channel="presence-chat")
    event = await b.expect("client-hello")
    assert event["user_id"] == 7


async def test_client_events_refused_on_public_channels(running: Running) -> None:
    a, b = await running.connect(), await running.connect()
    await a.subscribe("public-chat")
    await b.subscribe("public-chat")
    await a.send("client-x", {}, channel="public-chat")
    error = await a.expect("pusher:error")
    assert error["data"]["code"] == 4301
    await b.nothing()


async def test_client_events_need_a_subscription(running: Running) -> None:
    _, b = await private_pair(running, "private-room")
    outsider = await running.connect()
    await outsider.send("client-x", {}, channel="private-room")
    error = await outsider.expect("pusher:error")
    assert error["data"]["code"] == 4009
    await b.nothing()


async def test_client_events_disabled(start_server: ServerFactory) -> None:
    running = await start_server(app_with(accept_client_events_from="none"))
    a, b = await private_pair(running, "private-room")
    await a.send("client-x", {}, channel="private-room")
    error = await a.expect("pusher:error")
    assert error["data"] == {
        "code": 4301,
        "message": "The app does not have client messaging enabled.",
    }
    await b.nothing()


async def test_client_event_rate_limit(running: Running) -> None:
    a, b = await private_pair(running, "private-fast")
    for i in range(12):
        await a.send("client-tick", {"i": i}, channel="private-fast")
    received = [await b.expect("client-tick") for _ in range(10)]
    assert [m["data"]["i"] for m in received] == list(range(10))
    errors = [await a.expect("pusher:error") for _ in range(2)]
    assert {e["data"]["code"] for e in errors} == {4301}
    await b.nothing()


async def test_client_events_are_not_cached(running: Running) -> None:
    a, _ = await private_pair(running, "private-cache-room")
    await a.expect("pusher:cache_miss")
    await a.send("client-x", {}, channel="private-cache-room")
    late = await running.connect()
    auth = sdk_auth(running, "private-cache-room", late)
    await late.subscribe("private-cache-room", auth["auth"])
    await late.expect("pusher:cache_miss")


# User sign-in, server-to-user, terminate ------------------------------------------------


async def sign_in(running: Running, client: PusherSocket, user_id: str) -> dict[str, Any]:
    auth = running.sdk().authenticate_user(client.socket_id, {"id": user_id, "name": user_id})
    await client.send("pusher:signin", auth)
    return await client.recv()


async def test_signin_and_server_to_user_events(running: Running) -> None:
    phone, laptop, other = [await running.connect() for _ in range(3)]
    for client, user in ((phone, "guard-1"), (laptop, "guard-1"), (other, "guard-2")):
        success = await sign_in(running, client, user)
        assert success["event"] == "pusher:signin_success"
        assert json.loads(success["data"]["user_data"])["id"] == user
        reply = await client.subscribe(f"#server-to-user-{user}")
        assert reply["event"] == "pusher_internal:subscription_succeeded"
    await running.call(running.sdk().send_to_user, "guard-1", "assignment", {"zone": "B"})
    for client in (phone, laptop):
        event = await client.expect("assignment")
        assert event["channel"] == "#server-to-user-guard-1"
    await other.nothing()


async def test_server_to_user_channel_needs_that_user(running: Running) -> None:
    client = await running.connect()
    reply = await client.subscribe("#server-to-user-guard-1")
    assert reply["event"] == "pusher:subscription_error"
    await sign_in(running, client, "guard-2")
    reply = await client.subscribe("#server-to-user-guard-1")
    assert reply["event"] == "pusher:subscription_error"


async def test_bad_signin_closes_4009(running: Running) -> None:
    client = await running.connect()
    await client.send("pusher:signin", {"auth": "test-key:bad", "user_data": '{"id":"x"}'})
    error = await client.expect("pusher:error")
    assert error["data"]["code"] == 4009
    with pytest.raises(websockets.ConnectionClosed):
        await client.recv()
    assert client.ws.protocol.close_rcvd.code == 4009


async def test_terminate_user_connections(running: Running) -> None:
    victim, presence_only, bystander = [await running.connect() for _ in range(3)]
    await sign_in(running, victim, "bad-actor")
    await join_presence(running, presence_only, "presence-x", "bad-actor")
    await sign_in(running, bystander, "good")
    assert await running.call(running.sdk().terminate_user_connections, "bad-actor") == {}
    for client in (victim, presence_only):
        error = await client.expect("pusher:error")
        assert error["data"]["code"] == 4009
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv()
    await bystander.send("pusher:ping")
    await bystander.expect("pusher:pong")


# Query API ------------------------------------------------------------------------------


async def test_channel_queries(running: Running) -> None:
    sdk = running.sdk()
    a, b = await running.connect(), await running.connect()
    await a.subscribe("news")
    await b.subscribe("news")
    await join_presence(running, a, "presence-lobby", "u1")
    await join_presence(running, b, "presence-lobby", "u2")
    await a.expect("pusher_internal:member_added")

    listing = await running.call(sdk.channels_info)
    assert listing == {"channels": {"news": {}, "presence-lobby": {}}}
    presence = await running.call(sdk.channels_info, "presence-", ["user_count"])
    assert presence == {"channels": {"presence-lobby": {"user_count": 2}}}
    # Attributes that do not apply are left out (Reverb's 200), not refused (Pusher's 400).
    everything = await running.call(sdk.channels_info, None, ["user_count", "subscription_count"])
    assert everything == {
        "channels": {"news": {"subscription_count": 2}, "presence-lobby": {"user_count": 2}}
    }

    news = await running.call(sdk.channel_info, "news", ["subscription_count"])
    assert news == {"occupied": True, "subscription_count": 2}
    lobby = await running.call(sdk.channel_info, "presence-lobby", ["user_count"])
    assert lobby == {"occupied": True, "user_count": 2}
    empty = await running.call(sdk.channel_info, "nobody-here")
    assert empty == {"occupied": False}
    both = ["user_count", "subscription_count"]
    assert await running.call(sdk.channel_info, "news", both) == news
    assert await running.call(sdk.channel_info, "presence-lobby", both) == lobby

    users = await running.call(sdk.users_info, "presence-lobby")
    assert sorted(u["id"] for u in users["users"]) == ["u1", "u2"]
    with pytest.raises(pusher.errors.PusherBadRequest):
        await running.call(sdk.users_info, "news")


async def test_queries_answer_like_reverb_where_pusher_refuses(running: Running) -> None:
    """What a Laravel dashboard written against Reverb asks: every call answers 200 with the
    attributes that apply; empty and unknown channels are unoccupied, not errors."""
    sdk = running.sdk()
    client = await running.connect()
    await client.subscribe("panic-alerts")
    await running.call(sdk.trigger, "cache-status", "armed", "{}")

    assert await running.call(sdk.channel_info, "panic-alerts", ["cache", "user_count"]) == {
        "occupied": True
    }
    assert await running.call(sdk.channel_info, "never-used", ["subscription_count"]) == {
        "occupied": False,
        "subscription_count": 0,
    }
    assert await running.call(sdk.channel_info, "presence-empty", ["user_count"]) == {
        "occupied": False,
        "user_count": 0,
    }
    assert await running.call(sdk.users_info, "presence-empty") == {"users": []}
    cached = await running.call(sdk.channels_info, "cache-", ["cache"])
    assert cached == {"channels": {}}  # listed channels are occupied ones, as everywhere
    watcher = await running.connect()
    await watcher.subscribe("cache-status")
    await watcher.expect("armed")
    cached = await running.call(sdk.channels_info, "cache-", ["cache", "subscription_count"])
    entry = cached["channels"]["cache-status"]
    assert (entry["subscription_count"], entry["cache"]["event"]) == (1, "armed")


async def test_connections_endpoint(running: Running) -> None:
    clients = [await running.connect() for _ in range(3)]
    request = pusher.http.Request(
        running.sdk()._pusher_client, "GET", f"/apps/{running.app.id}/connections"
    )
    result = await running.call(running.sdk()._pusher_client.http.send_request, request)
    assert result == {"connections": len(clients)}


async def test_events_info_user_count(running: Running) -> None:
    client = await running.connect()
    await join_presence(running, client, "presence-info", "u1")
    request = pusher.http.Request(
        running.sdk()._pusher_client,
        "POST",
        f"/apps/{running.app.id}/events",
        {"name": "e", "channels": ["presence-info", "plain"], "data": "d", "info": "user_count"},
    )
    result = await running.call(running.sdk()._pusher_client.http.send_request, request)
    assert result == {"channels": {"presence-info": {"user_count": 1}, "plain": {}}}


async def test_disconnect_cleans_every_subscription(running: Running) -> None:
    client = await running.connect()
    for i in range(5):
        await client.subscribe(f"room-{i}")
    await join_presence(running, client, "presence-z", "z")
    await client.close()
    await asyncio.sleep(0.1)
    hub = running.server.router.hubs_by_id[running.app.id]
    assert hub.channels == {}
    assert hub.sessions == {}
