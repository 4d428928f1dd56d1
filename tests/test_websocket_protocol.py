"""The connection lifecycle and public channels, driven by a real WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest
import websockets
from pusher.http import Request
from websockets.frames import Close, Frame, Opcode

from tests.conftest import Running, ServerFactory, app_with


async def closed_with(ws: websockets.ClientConnection, timeout: float = 2.0) -> Close:
    """Read until the server closes; the close frame the server sent."""
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    close = ws.protocol.close_rcvd
    assert close is not None, "the server closed without a close frame"
    return close


async def test_connection_established(running: Running) -> None:
    async with websockets.connect(running.url()) as ws:
        message = json.loads(await ws.recv())
    assert message["event"] == "pusher:connection_established"
    data = json.loads(message["data"])  # double-encoded, as pusher-js expects
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"])
    assert data["activity_timeout"] == 30


async def test_activity_timeout_is_the_apps(start_server: ServerFactory) -> None:
    running = await start_server(app_with(activity_timeout=120))
    async with websockets.connect(running.url()) as ws:
        data = json.loads(json.loads(await ws.recv())["data"])
    assert data["activity_timeout"] == 120


async def test_socket_ids_are_unique(running: Running) -> None:
    sockets = [await running.connect() for _ in range(20)]
    assert len({s.socket_id for s in sockets}) == 20


async def test_pusher_ping_gets_pong(running: Running) -> None:
    client = await running.connect()
    await client.send("pusher:ping", {})
    await client.expect("pusher:pong")


async def test_websocket_ping_gets_pong(running: Running) -> None:
    client = await running.connect()
    pong = await client.ws.ping(b"hello")
    await asyncio.wait_for(pong, 2)


async def test_unknown_app_key(running: Running) -> None:
    async with websockets.connect(running.url("no-such-key")) as ws:
        message = json.loads(await ws.recv())
        close = await closed_with(ws)
    assert message == {
        "event": "pusher:error",
        "data": {"code": 4001, "message": "Application does not exist"},
    }
    assert close.code == 4001


@pytest.mark.parametrize(
    ("query", "code"),
    [("protocol=abc", 4006), ("protocol=4", 4007), ("protocol=8", 4007)],
)
async def test_protocol_version_checked(running: Running, query: str, code: int) -> None:
    async with websockets.connect(running.url(query=query)) as ws:
        message = json.loads(await ws.recv())
        close = await closed_with(ws)
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == code
    assert close.code == code


@pytest.mark.parametrize("query", ["protocol=5", "protocol=6", "protocol=7", "client=js"])
async def test_supported_or_missing_protocol_accepted(running: Running, query: str) -> None:
    async with websockets.connect(running.url(query=query)) as ws:
        message = json.loads(await ws.recv())
    assert message["event"] == "pusher:connection_established"


async def test_subscribe_public_channel_and_receive(running: Running) -> None:
    client = await running.connect()
    reply = await client.subscribe("my-channel")
    assert reply == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "my-channel",
        "data": "{}",
    }
    await running.call(running.sdk().trigger, "my-channel", "my-event", {"message": "héllo 🚨"})
    event = await client.expect("my-event")
    assert event["channel"] == "my-channel"
    assert json.loads(event["data"]) == {"message": "héllo 🚨"}


async def test_unsubscribe_stops_delivery(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("news")
    await client.send("pusher:unsubscribe", {"channel": "news"})
    await client.nothing(0.1)
    await running.call(running.sdk().trigger, "news", "update", "x")
    await client.nothing()


async def test_resubscribe_does_not_duplicate_delivery(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("news")
    second = await client.subscribe("news")
    assert second["event"] == "pusher:error"
    assert "Existing subscription" in second["data"]["message"]
    await running.call(running.sdk().trigger, "news", "update", "once")
    await client.expect("update")
    await client.nothing()


@pytest.mark.parametrize(
    "name",
    ["", "has space", "ünïcode", "a" * 165, "semi;colon{", "#server-to-user-"],
)
async def test_invalid_channel_names_refused(running: Running, name: str) -> None:
    client = await running.connect()
    reply = await client.subscribe(name)
    assert reply["event"] == "pusher:subscription_error"
    assert reply["channel"] == name
    await client.send("pusher:ping")
    await client.expect("pusher:pong")


async def test_longest_valid_channel_name(running: Running) -> None:
    client = await running.connect()
    name = "-_=@,.;" + "a" * 157
    assert len(name) == 164
    reply = await client.subscribe(name)
    assert reply["event"] == "pusher_internal:subscription_succeeded"


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("[1,2]", "expected a JSON object"),
        ('{"data":{}}', "missing event name"),
        ('{"event":"pusher:subscribe","data":"{bad"}', "data is not valid JSON"),
        ('{"event":"pusher:subscribe","data":{}}', "needs data.channel"),
        ('{"event":"pusher:unknown"}', "Unsupported event"),
        ('{"event":"whatever","channel":"x"}', "client-"),
    ],
)
async def test_bad_frames_get_errors_and_connection_survives(
    running: Running, frame: str, fragment: str
) -> None:
    client = await running.connect()
    await client.ws.send(frame)
    error = await client.expect("pusher:error")
    assert fragment in error["data"]["message"]
    assert 4200 <= error["data"]["code"] < 4400
    await client.send("pusher:ping")
    await client.expect("pusher:pong")


async def test_binary_frame_refused(running: Running) -> None:
    client = await running.connect()
    await client.ws.send(b'{"event":"pusher:ping"}')
    error = await client.expect("pusher:error")
    assert "Binary" in error["data"]["message"]


async def test_string_data_accepted_like_the_java_client_sends(running: Running) -> None:
    client = await running.connect()
    await client.ws.send(json.dumps({"event": "pusher:subscribe", "data": '{"channel":"x"}'}))
    await client.expect("pusher_internal:subscription_succeeded")


async def test_oversized_frame_closes_1009_without_affecting_others(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(max_message_size=1000))
    bystander = await running.connect()
    await bystander.subscribe("room")
    offender = await running.connect()
    await offender.ws.send(json.dumps({"event": "client-x", "data": "y" * 2000}))
    close = await closed_with(offender.ws)
    assert close.code == 1009
    await running.call(running.sdk().trigger, "room", "still-here", "1")
    await bystander.expect("still-here")


async def test_fragmented_message_is_reassembled(running: Running) -> None:
    client = await running.connect()
    text = json.dumps({"event": "pusher:subscribe", "data": {"channel": "frag"}})
    await client.ws.send([text[:10], text[10:20], text[20:]])
    await client.expect("pusher_internal:subscription_succeeded")


async def test_silent_socket_is_pinged_then_closed_4201(start_server: ServerFactory) -> None:
    running = await start_server(app_with(ping_interval=60, pong_timeout=30))
    # A client that never subscribes is checked too (Reverb leaves those forever).
    ws = await websockets.connect(running.url(), ping_interval=None)
    await ws.recv()
    ws.transport.pause_reading()  # a dead client: answers neither kind of ping
    for seconds in (1, 62, 93):  # the sweeps of a silent minute, then of the pong timeout
        running.sweep_after(seconds)
    ws.transport.resume_reading()
    ping = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert ping["event"] == "pusher:ping"
    error = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert error["data"]["code"] == 4201
    close = await closed_with(ws, timeout=3)
    assert close.code == 4201


@pytest.mark.parametrize("pusher_pong", [True, False])
async def test_answering_pings_keeps_socket_alive(
    start_server: ServerFactory, pusher_pong: bool
) -> None:
    """Either answer counts: mobile SDKs (Flutter, some Java clients) answer only the
    WebSocket ping frame, which the websockets client does by itself."""
    running = await start_server(app_with(ping_interval=0.2, pong_timeout=0.3))
    ws = await websockets.connect(running.url(), ping_interval=None)
    await ws.recv()
    for _ in range(3):
        ping = json.loads(await asyncio.wait_for(ws.recv(), 3))
        assert ping["event"] == "pusher:ping"
        if pusher_pong:
            await ws.send(json.dumps({"event": "pusher:pong", "data": {}}))
    await ws.send(json.dumps({"event": "pusher:ping"}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 3))["event"] == "pusher:pong"
    await ws.close()


async def test_after_a_pusher_pong_only_pusher_ping_is_sent(start_server: ServerFactory) -> None:
    """pusher-js answers pusher:ping; from then on the WebSocket ping is left out. The
    websockets client answers WebSocket pings by itself, so its frames are recorded to see them."""
    running = await start_server(app_with(ping_interval=0.2, pong_timeout=0.5))
    ws = await websockets.connect(running.url(), ping_interval=None)
    seen: list[str] = []
    process_event = ws.process_event

    def record(frame: Frame) -> None:
        seen.append("ping" if frame.opcode is Opcode.PING else frame.data.decode(errors="replace"))
        process_event(frame)

    ws.process_event = record  # type: ignore[method-assign]
    await ws.recv()  # connection_established
    for _ in range(3):
        ping = json.loads(await asyncio.wait_for(ws.recv(), 3))
        assert ping["event"] == "pusher:ping"
        await ws.send(json.dumps({"event": "pusher:pong", "data": {}}))
    await ws.close()
    pings = [entry for entry in seen if entry == "ping" or "pusher:ping" in entry]
    assert "pusher:ping" in pings[0] and pings[1] == "ping"  # before any answer: both kinds
    assert "ping" not in pings[2:], pings


async def test_slow_consumer_is_disconnected_and_memory_bounded(
    start_server: ServerFactory,
) -> None:
    running = await start_server(write_buffer_limit=64 * 1024)
    slow = await running.connect(max_queue=1)
    await slow.subscribe("firehose")
    slow.ws.transport.pause_reading()  # stops reading: kernel buffers, then ours, fill up
    fast = await running.connect()
    await fast.subscribe("firehose")
    sdk = running.sdk()
    batch = [{"channel": "firehose", "name": "big", "data": "x" * 10_000}] * 10
    for _ in range(300):  # up to 30 MB, far past any loopback socket buffer
        await running.call(sdk.trigger_batch, batch)
        for _ in batch:
            await fast.expect("big")
        if not any(s.socket_id == slow.socket_id for s in _sessions(running)):
            break
    assert not any(s.socket_id == slow.socket_id for s in _sessions(running))
    await running.call(sdk.trigger, "firehose", "after", "1")
    await fast.expect("after")
    slow.ws.transport.resume_reading()
    codes = []
    with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
        while True:
            await asyncio.wait_for(slow.ws.recv(), 5)
    codes.append(slow.ws.protocol.close_rcvd.code if slow.ws.protocol.close_rcvd else None)
    assert codes == [4100]


def _sessions(running: Running) -> list:
    return [s for hub in running.server.router.hubs_by_id.values() for s in hub.sessions.values()]


async def status_line(running: Running, request_line: bytes) -> bytes:
    """The status line the server answers a bare raw request with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(request_line + b"\r\nHost: x\r\n\r\n")
    status = await reader.readline()
    writer.close()
    return status


async def test_plain_http_on_websocket_path(running: Running) -> None:
    status = await status_line(running, b"GET /app/test-key HTTP/1.1")
    assert status.startswith(b"HTTP/1.1 426")


async def test_upgrade_without_key_is_a_json_400(running: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(
        f"GET /app/{running.app.key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"error":"Invalid or missing Sec-WebSocket-Key header"' in answer


async def test_client_close_is_echoed_and_the_session_ends(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("leaving")
    await client.ws.close(code=4000, reason="bye")
    assert client.ws.protocol.close_rcvd.code == 4000
    for _ in range(50):
        if not _sessions(running):
            break
        await asyncio.sleep(0.02)
    assert _sessions(running) == []


async def test_framing_violation_closes_1002_without_affecting_others(running: Running) -> None:
    bystander = await running.connect()
    await bystander.subscribe("room")
    offender = await running.connect()
    offender.ws.transport.write(b"\x81\x05hello")  # a client frame must be masked
    close = await closed_with(offender.ws)
    assert close.code == 1002
    await running.call(running.sdk().trigger, "room", "still-here", "1")
    await bystander.expect("still-here")


async def test_path_prefix(start_server: ServerFactory) -> None:
    """SDKs that know the prefix (pusher-php-server's `path`) sign the prefixed path."""
    running = await start_server(path="/ws")
    client = await running.connect()
    await client.subscribe("prefixed")
    sdk = running.sdk()._pusher_client
    body = {"name": "e", "channel": "prefixed", "data": "d"}
    request = Request(sdk, "POST", f"/ws/apps/{running.app.id}/events", body)
    assert await running.call(sdk.http.send_request, request) == {}
    await client.expect("e")
    unprefixed = await running.connect()
    assert unprefixed  # the WebSocket URL carries the prefix too (Running.url)


async def test_routes_outside_the_prefix_are_not_found(start_server: ServerFactory) -> None:
    running = await start_server(path="/ws")
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"GET /apps/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /ws/up HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await reader.readline()
    assert first.startswith(b"HTTP/1.1 404")
    await reader.readuntil(b'"code":404}')
    second = await reader.readline()
    writer.close()
    assert second.startswith(b"HTTP/1.1 200")


async def test_absolute_form_request_target_is_understood(running: Running) -> None:
    """Proxies may send `GET http://host/path?query`; the path is what routes."""
    status = await status_line(running, b"GET http://example.test/up?probe=1 HTTP/1.1")
    assert status.startswith(b"HTTP/1.1 200")


async def test_health_also_answers_at_the_root(start_server: ServerFactory) -> None:
    """Probes and load balancers need not know the prefix."""
    running = await start_server(path="/ws")
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await reader.readline()
    await reader.readuntil(b'{"health":"OK"}')
    second = await reader.readline()
    writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")


async def test_reverb_rate_limiting(start_server: ServerFactory) -> None:
    running = await start_server(app_with(rate_limiting_enabled=True, rate_limit_max_attempts=3))
    client = await running.connect()
    for _ in range(3):
        await client.send("pusher:ping")
        await client.expect("pusher:pong")
    await client.send("pusher:ping")
    error = await client.expect("pusher:error")
    assert error["data"] == {"code": 4301, "message": "Rate limit exceeded"}


async def test_reverb_rate_limiting_terminates(start_server: ServerFactory) -> None:
    app = app_with(rate_limiting_enabled=True, rate_limit_max_attempts=1, rate_limit_terminate=True)
    running = await start_server(app)
    client = await running.connect()
    await client.send("pusher:ping")
    await client.expect("pusher:pong")
    await client.send("pusher:ping")
    await client.expect("pusher:error")
    close = await closed_with(client.ws)
    assert close.code == 4301
