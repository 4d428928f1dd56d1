"""Per-app caps on what a client can make the server hold, and malformed Pusher messages: each
refusal is a documented Pusher error, is counted in /metrics, and leaves the socket usable."""

from __future__ import annotations

import json

import pytest

from reverb_py.pusher import auth
from tests.conftest import APP, Running, ServerFactory, app_with
from tests.test_metrics import scrape, value


def _presence_auth(socket_id: str, channel: str, channel_data: str) -> str:
    return f"{APP.key}:{auth.sign(APP.secret, f'{socket_id}:{channel}:{channel_data}')}"


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_subscriptions_per_connection_cap(start_server: ServerFactory) -> None:
    running = await start_server(app_with(max_subscriptions_per_connection=3), metrics_enabled=True)
    client = await running.connect()
    for index in range(3):
        ok = await client.subscribe(f"room-{index}")
        assert ok["event"] == "pusher_internal:subscription_succeeded"
    refused = await client.subscribe("room-3")
    assert refused["event"] == "pusher:subscription_error"
    assert refused["channel"] == "room-3"
    assert refused["data"]["type"] == "LimitReached"
    assert refused["data"]["status"] == 4100
    # Leaving one channel makes room again: the cap counts live subscriptions only.
    await client.send("pusher:unsubscribe", {"channel": "room-0"})
    ok = await client.subscribe("room-3")
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    samples = await scrape(running.port)
    name = "reverb_subscriptions_refused_total"
    assert value(samples, name, app_id=APP.id, reason="subscriptions_per_connection") == 1


async def test_public_channel_cap_spares_existing_and_private_channels(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(max_public_channels=2), metrics_enabled=True)
    first, second = await running.connect(), await running.connect()
    assert (await first.subscribe("news"))["event"] == "pusher_internal:subscription_succeeded"
    assert (await first.subscribe("sport"))["event"] == "pusher_internal:subscription_succeeded"
    refused = await second.subscribe("junk")
    assert refused["event"] == "pusher:subscription_error"
    assert refused["data"] == {
        "type": "LimitReached",
        "error": "Channel limit reached: at most 2 public channels",
        "status": 4100,
    }
    # A channel that exists may still be joined, and authorized channels are never capped.
    assert (await second.subscribe("news"))["event"] == "pusher_internal:subscription_succeeded"
    channel = "private-alerts"
    signature = f"{APP.key}:{auth.sign(APP.secret, f'{second.socket_id}:{channel}')}"
    ok = await second.subscribe(channel, auth=signature)
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    # A vacated public channel frees its place.
    await first.send("pusher:unsubscribe", {"channel": "sport"})
    await first.send("pusher:ping")
    await first.expect("pusher:pong")  # the unsubscribe was handled
    assert (await second.subscribe("junk"))["event"] == "pusher_internal:subscription_succeeded"
    samples = await scrape(running.port)
    name = "reverb_subscriptions_refused_total"
    assert value(samples, name, app_id=APP.id, reason="public_channels") == 1


async def test_deeply_nested_user_info_is_refused(running: Running) -> None:
    """orjson decodes 1024 levels but encodes only 254: such a user_info would break every
    roster frame of the channel, so it is refused at subscribe."""
    client = await running.connect()
    channel = "presence-room"
    channel_data = json.dumps({"user_id": "1", "user_info": _nested(250)})
    refused = await client.subscribe(
        channel, _presence_auth(client.socket_id, channel, channel_data), channel_data
    )
    assert refused["event"] == "pusher:subscription_error"
    assert refused["data"]["type"] == "LimitReached"
    assert refused["data"]["status"] == 400
    channel_data = json.dumps({"user_id": "1", "user_info": _nested(5)})
    ok = await client.subscribe(
        channel, _presence_auth(client.socket_id, channel, channel_data), channel_data
    )
    assert ok["event"] == "pusher_internal:subscription_succeeded"


async def test_deeply_nested_client_event_data_is_refused(start_server: ServerFactory) -> None:
    running = await start_server(app_with(max_message_size=20_000))
    sender, receiver = await running.connect(), await running.connect()
    channel = "private-chat"
    for client in (sender, receiver):
        signature = f"{APP.key}:{auth.sign(APP.secret, f'{client.socket_id}:{channel}')}"
        await client.subscribe(channel, auth=signature)
    await sender.send("client-deep", _nested(300), channel)
    error = await sender.expect("pusher:error")
    assert error["data"]["code"] == 4301
    assert "nested too deeply" in error["data"]["message"]
    await receiver.nothing()
    await sender.send("client-fine", {"a": 1}, channel)
    assert (await receiver.expect("client-fine"))["data"] == {"a": 1}


class RawText(str):
    """A frame sent as is rather than JSON-encoded by the test."""


# Every shape a client could send instead of the documented one. Each must get a pusher:error
# (or a subscription_error), never an exception or a closed socket. (A sign-in with a wrong
# signature closes with 4009, as Pusher does: tested in test_features.)
MALFORMED: list[object] = [
    [],
    "text",
    1,
    None,
    {"event": 5},
    {"event": ""},
    {"event": ["pusher:ping"]},
    {"event": "pusher:subscribe"},
    {"event": "pusher:subscribe", "data": []},
    {"event": "pusher:subscribe", "data": "not json"},
    {"event": "pusher:subscribe", "data": {"channel": 5}},
    {"event": "pusher:subscribe", "data": {"channel": {"a": 1}}},
    {"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": 5}},
    {"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": ["a"]}},
    {"event": "pusher:subscribe", "data": {"channel": "presence-x", "channel_data": 5}},
    {"event": "pusher:subscribe", "data": {"channel": "presence-x", "channel_data": "[1]"}},
    {"event": "pusher:subscribe", "data": {"channel": "presence-x", "channel_data": "{}"}},
    {
        "event": "pusher:subscribe",
        "data": {"channel": "presence-x", "channel_data": '{"user_id":1e300}'},
    },
    {"event": "pusher:subscribe", "data": {"channel": "#server-to-user-1"}},
    {"event": "pusher:subscribe", "data": {"channel": "x" * 5000}},
    {"event": "pusher:unsubscribe", "data": 5},
    {"event": "pusher:unsubscribe", "data": {"channel": None}},
    {"event": "pusher:signin", "data": "[]"},
    {"event": "pusher:nonsense"},
    {"event": "client-x"},
    {"event": "client-x", "channel": 5},
    {"event": "client-x", "channel": "private-not-mine", "data": _nested(400)},
    {"event": "other", "data": 18446744073709551616},
    # Raw text: deeper than Python's json can encode, and than orjson can decode.
    RawText('{"event":"pusher:ping","data":' + "[" * 1000 + "]" * 1000 + "}"),
    RawText('{"event":"client-x","channel":"private-y","data":' + "[" * 2000 + "]" * 2000 + "}"),
    RawText('{"event":"client-x","channel":"private-y","data":"\\ud800"}'),
    RawText('{"event":"client-x","channel":"private-y","data":1e400}'),
]


@pytest.mark.parametrize("message", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_messages_get_an_error_and_the_socket_stays(
    running: Running, message: object
) -> None:
    client = await running.connect()
    await client.ws.send(message if isinstance(message, RawText) else json.dumps(message))
    answer = await client.recv()
    if answer["event"] != "pusher:pong":  # a valid ping whose data is merely ignored
        assert answer["event"] in ("pusher:error", "pusher:subscription_error"), answer
        assert answer["data"].get("code") != 4200 or "Internal" not in answer["data"]["message"]
    await client.send("pusher:ping")
    await client.expect("pusher:pong")
