"""The HTTP API: SDK-signed requests, validation, limits and HTTP/1.1 robustness."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import pusher
import pytest

from reverb_py.pusher.auth import sign
from tests.conftest import Running, ServerFactory, app_with


async def raw_http(running: Running, data: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(data)
    await writer.drain()
    if read_until_close:
        response = await asyncio.wait_for(reader.read(), 3)
    else:
        response = await asyncio.wait_for(reader.read(65536), 3)
    writer.close()
    return response


def signed_query(running: Running, method: str, path: str, body: bytes = b"", **extra: str) -> str:
    params = {
        "auth_key": running.app.key,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        **extra,
    }
    if body:
        params["body_md5"] = hashlib.md5(body).hexdigest()
    string = "\n".join([method, path, "&".join(f"{k}={v}" for k, v in sorted(params.items()))])
    params["auth_signature"] = sign(running.app.secret, string)
    return "&".join(f"{k}={v}" for k, v in params.items())


def post(running: Running, path: str, body: bytes, keep_alive: bool = False) -> bytes:
    query = signed_query(running, "POST", path, body)
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"POST {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    ).encode() + body


def status_and_json(response: bytes) -> tuple[int, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_trigger_with_sdk(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("orders")
    result = await running.call(running.sdk().trigger, "orders", "created", {"id": 1})
    assert result == {}
    event = await client.expect("created")
    assert json.loads(event["data"]) == {"id": 1}


async def test_trigger_to_several_channels(running: Running) -> None:
    a, b = await running.connect(), await running.connect()
    await a.subscribe("a")
    await b.subscribe("b")
    await running.call(running.sdk().trigger, ["a", "b"], "multi", "x")
    assert (await a.expect("multi"))["channel"] == "a"
    assert (await b.expect("multi"))["channel"] == "b"


async def test_socket_id_is_excluded(running: Running) -> None:
    sender, other = await running.connect(), await running.connect()
    await sender.subscribe("chat")
    await other.subscribe("chat")
    await running.call(running.sdk().trigger, "chat", "msg", "hi", sender.socket_id)
    await other.expect("msg")
    await sender.nothing()


async def test_batch_with_sdk(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("one")
    await client.subscribe("two")
    batch = [
        {"channel": "one", "name": "first", "data": "1"},
        {"channel": "two", "name": "second", "data": "2"},
    ]
    assert await running.call(running.sdk().trigger_batch, batch) == {}
    assert (await client.expect("first"))["channel"] == "one"
    assert (await client.expect("second"))["channel"] == "two"


async def test_batch_limit(running: Running) -> None:
    batch = [{"channel": "c", "name": "e", "data": "d"}] * 11
    with pytest.raises(pusher.errors.PusherBadRequest, match="more than 10"):
        await running.call(running.sdk().trigger_batch, batch)


async def test_event_data_limit_is_413(running: Running) -> None:
    body = json.dumps({"name": "e", "channel": "c", "data": "x" * 10_241}).encode()
    status, payload = status_and_json(
        await raw_http(running, post(running, "/apps/1234/events", body))
    )
    assert (status, payload["code"]) == (413, 413)
    assert payload["code"] == 413


async def test_event_data_at_limit_is_accepted(running: Running) -> None:
    await running.call(running.sdk().trigger, "c", "e", "x" * 10_240)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"channel": "c", "data": "d"}, "name is required"),
        ({"name": "e", "channel": "c"}, "data is required"),
        ({"name": "e", "data": "d"}, "channel or channels"),
        ({"name": "e" * 201, "channel": "c", "data": "d"}, "Event name"),
        ({"name": "e", "channels": [f"c{i}" for i in range(101)], "data": "d"}, "100 channels"),
        ({"name": "e", "channel": "bad channel", "data": "d"}, "Invalid channel"),
        ({"name": "e", "channel": "c", "data": "d", "socket_id": "nope"}, "socket_id"),
        (
            {"name": "e", "channels": ["private-encrypted-a", "b"], "data": "d"},
            "Encrypted channels",
        ),
    ],
)
async def test_event_validation_is_400(
    running: Running, body: dict[str, Any], fragment: str
) -> None:
    raw = json.dumps(body).encode()
    status, payload = status_and_json(
        await raw_http(running, post(running, "/apps/1234/events", raw))
    )
    assert status == 400
    assert fragment in payload["error"]


async def test_invalid_json_body_is_400(running: Running) -> None:
    status, payload = status_and_json(
        await raw_http(running, post(running, "/apps/1234/events", b"{not json"))
    )
    assert status == 400
    assert "not valid JSON" in payload["error"]


async def test_bad_secret_is_401(running: Running) -> None:
    sdk = pusher.Pusher(
        app_id=running.app.id,
        key=running.app.key,
        secret="wrong",
        host="127.0.0.1",
        port=running.port,
        ssl=False,
    )
    with pytest.raises(pusher.errors.PusherBadAuth, match="Invalid signature"):
        await running.call(sdk.trigger, "c", "e", "d")


async def test_old_timestamp_is_401(running: Running) -> None:
    body = b'{"name":"e","channel":"c","data":"d"}'
    query = signed_query(running, "POST", "/apps/1234/events", body)
    query = query.replace(f"auth_timestamp={int(time.time())}", "auth_timestamp=1000")
    request = (
        f"POST /apps/1234/events?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
        "\r\nConnection: close\r\n\r\n"
    ).encode() + body
    status, _ = status_and_json(await raw_http(running, request))
    assert status == 401


async def test_unknown_app_is_404_and_wrong_method_405(running: Running) -> None:
    status, _ = status_and_json(await raw_http(running, post(running, "/apps/999/events", b"{}")))
    assert status == 404
    response = await raw_http(
        running, b"GET /apps/1234/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, _ = status_and_json(response)
    assert status == 405
    assert b"Allow: POST" in response


async def test_unknown_route_404_json(running: Running) -> None:
    status, payload = status_and_json(
        await raw_http(running, b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert (status, payload) == (404, {"error": "Not found", "code": 404})


async def test_up(running: Running) -> None:
    status, payload = status_and_json(
        await raw_http(running, b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert (status, payload) == (200, {"health": "OK"})


async def test_keep_alive_and_pipelining(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("pipe")
    requests = b"".join(
        post(
            running,
            "/apps/1234/events",
            json.dumps({"name": f"e{i}", "channel": "pipe", "data": str(i)}).encode(),
            keep_alive=True,
        )
        for i in range(5)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(requests)
    statuses = []
    for _ in range(5):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        statuses.append(int(head.split()[1]))
        assert b"Connection: keep-alive" in head
        assert await reader.readexactly(2) == b"{}"
    writer.close()
    assert statuses == [200] * 5
    for i in range(5):
        assert (await client.expect(f"e{i}"))["data"] == str(i)


async def test_chunked_body(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("chunks")
    body = b'{"name":"chunked","channel":"chunks","data":"ok"}'
    query = signed_query(running, "POST", "/apps/1234/events", body)
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:10], body[10:])
    )
    request = (
        (
            f"POST /apps/1234/events?{query} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ).encode()
        + chunks
        + b"0\r\n\r\n"
    )
    status, payload = status_and_json(await raw_http(running, request))
    assert (status, payload) == (200, {})
    await client.expect("chunked")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (
            b"POST /apps/1234/events HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
            413,
        ),
    ],
)
async def test_bad_http_gets_4xx_and_server_survives(
    running: Running, request_bytes: bytes, status: int
) -> None:
    response = await raw_http(running, request_bytes)
    assert int(response.split()[1]) == status
    assert await running.call(running.sdk().trigger, "c", "e", "still alive") == {}


async def test_get_requests_signed_by_python_sdk(running: Running) -> None:
    """The Python SDK signs body_md5 of the empty body on GETs; Reverb wrongly refuses it."""
    client = await running.connect()
    await client.subscribe("room-1")
    info = await running.call(running.sdk().channels_info)
    assert info == {"channels": {"room-1": {}}}


async def test_events_info(start_server: ServerFactory) -> None:
    running = await start_server(app_with(subscription_count=True))
    client = await running.connect()
    await client.subscribe("counted")
    body = json.dumps(
        {"name": "e", "channel": "counted", "data": "d", "info": "subscription_count,user_count"}
    ).encode()
    status, payload = status_and_json(
        await raw_http(running, post(running, "/apps/1234/events", body))
    )
    assert (status, payload) == (200, {"channels": {"counted": {"subscription_count": 1}}})


async def test_max_request_size(start_server: ServerFactory) -> None:
    running = await start_server(max_request_size=2048)
    body = json.dumps({"name": "e", "channel": "c", "data": "x" * 3000}).encode()
    status, payload = status_and_json(
        await raw_http(running, post(running, "/apps/1234/events", body))
    )
    assert (status, payload["code"]) == (413, 413)
