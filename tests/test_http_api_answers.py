"""The HTTP API's answers beyond the common path: routes that do not exist, a request signed by
an unknown key, trigger bodies that are refused, and the `info` a batch asks for."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Running, ServerFactory, app_with
from tests.test_http_api import post, raw_http, signed_query, status_and_json


async def get(running: Running, path: str) -> tuple[int, Any]:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    return status_and_json(await raw_http(running, request))


async def signed_get(running: Running, path: str, **params: str) -> tuple[int, Any]:
    return await get(running, f"{path}?{signed_query(running, 'GET', path, **params)}")


async def trigger(running: Running, body: Any, path: str = "/apps/1234/events") -> tuple[int, Any]:
    return status_and_json(await raw_http(running, post(running, path, json.dumps(body).encode())))


@pytest.mark.parametrize("path", ["/apps/1234", "/apps//events", "/apps/"])
async def test_an_api_path_without_app_id_and_route_is_not_found(
    running: Running, path: str
) -> None:
    assert await get(running, path) == (404, {"error": "Not found", "code": 404})


async def test_an_unknown_route_under_a_known_app_is_not_found(running: Running) -> None:
    status, body = await signed_get(running, "/apps/1234/channels/news/members")
    assert (status, body) == (404, {"error": "Not found", "code": 404})
    hub = running.server.router.hubs_by_id["1234"]
    assert hub.stats.api_requests == {("unknown", 404): 1}


async def test_terminate_signed_with_an_unknown_key_is_401(running: Running) -> None:
    status, body = await get(
        running, "/users/alice/terminate_connections?auth_key=someone-else&auth_signature=x"
    )
    assert (status, body) == (401, {"error": "Unknown auth_key", "code": 401})
    status, body = await get(running, "/users/alice/terminate_connections")
    assert (status, body) == (401, {"error": "Unknown auth_key", "code": 401})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "e", "channels": "news", "data": "d"}, "channels must be a non-empty list"),
        ({"name": "e", "channels": [], "data": "d"}, "channels must be a non-empty list"),
        ({"name": "e", "channels": [7], "data": "d"}, "channels must be a list of channel names"),
        ({"name": "e", "channel": "news", "data": "d", "info": ["cache"]}, "info must be a"),
        ({"name": "e", "channel": "news", "data": "d", "info": 1}, "info must be a"),
    ],
)
async def test_trigger_bodies_refused_with_400(
    running: Running, body: dict[str, Any], message: str
) -> None:
    status, answer = await trigger(running, body)
    assert status == 400
    assert answer["error"].startswith(message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"batch": {"name": "e"}}, "batch must be a non-empty list of events"),
        ({"batch": []}, "batch must be a non-empty list of events"),
        ([{"name": "e"}], "batch must be a non-empty list of events"),
        ({"batch": ["e"]}, "Each event must be a JSON object"),
    ],
)
async def test_batch_bodies_refused_with_400(running: Running, body: Any, message: str) -> None:
    status, answer = await trigger(running, body, "/apps/1234/batch_events")
    assert (status, answer) == (400, {"error": message, "code": 400})


async def test_a_signature_of_another_auth_version_is_401(running: Running) -> None:
    status, body = await signed_get(running, "/apps/1234/channels", auth_version="2.0")
    assert (status, body) == (
        401,
        {"error": "Unsupported auth_version (expected 1.0)", "code": 401},
    )


@pytest.mark.parametrize("timestamp", ["", "1_700_000_000", "+1700000000", "9" * 13])
async def test_a_malformed_auth_timestamp_is_401(running: Running, timestamp: str) -> None:
    status, body = await signed_get(running, "/apps/1234/channels", auth_timestamp=timestamp)
    assert (status, body) == (401, {"error": "Missing or invalid auth_timestamp", "code": 401})


async def test_a_body_signed_without_its_md5_is_401(running: Running) -> None:
    body = b'{"name":"e","channel":"news","data":"d"}'
    query = signed_query(running, "POST", "/apps/1234/events")  # signed as if empty
    request = (
        f"POST /apps/1234/events?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
        "\r\nConnection: close\r\n\r\n"
    ).encode() + body
    status, answer = status_and_json(await raw_http(running, request))
    assert (status, answer) == (
        401,
        {"error": "Missing body_md5 for a request with a body", "code": 401},
    )


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


async def test_data_nested_too_deeply_to_encode_is_400(running: Running) -> None:
    client = await running.connect()
    await client.subscribe("news")
    status, answer = await trigger(running, {"name": "e", "channel": "news", "data": nested(300)})
    assert (status, answer) == (400, {"error": "data is nested too deeply", "code": 400})
    await client.nothing()
    status, _ = await trigger(running, {"name": "e", "channel": "news", "data": nested(20)})
    assert status == 200
    assert json.loads((await client.expect("e"))["data"]) == nested(20)


async def test_batch_answers_info_per_event_when_asked(start_server: ServerFactory) -> None:
    running = await start_server(app_with(subscription_count=True))
    client = await running.connect()
    await client.subscribe("news")
    await client.expect("pusher_internal:subscription_count")
    batch = [
        {"name": "a", "channel": "news", "data": "1", "info": "subscription_count"},
        {"name": "b", "channel": "quiet", "data": "2"},
        {"name": "c", "channel": "quiet", "data": "3", "info": "subscription_count,cache"},
    ]
    status, answer = await trigger(running, {"batch": batch}, "/apps/1234/batch_events")
    assert (status, answer) == (
        200,
        {"batch": [{"subscription_count": 1}, {}, {"subscription_count": 0}]},
    )
    assert (await client.expect("a"))["data"] == "1"


async def test_cache_info_of_a_cache_channel_without_an_event_is_null(running: Running) -> None:
    status, body = await signed_get(running, "/apps/1234/channels/cache-news", info="cache")
    assert (status, body) == (200, {"occupied": False, "cache": None})
