"""The signed trigger's fast path (`Router.answer_post`) answers exactly as the general path.

Each request is fed, as bytes, to two connections of the real router: one as served, where
`POST .../events` takes the fast path, and one whose router declines every fast answer, so
that the request goes through `handle_http` as every other request does. The answers, what
the subscribers receive and the API counters must be the same, for valid triggers and for
every kind of refusal; hypothesis then varies the query and the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import time
from dataclasses import replace
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fake_transport import FakeTransport
from reverb_py.config import App, Settings
from reverb_py.http_types import HttpResponse
from reverb_py.router import Router
from reverb_py.scaling.cluster import Cluster
from reverb_py.transport.connection import Connection, ConnectionLimits, WriteCoalescer
from reverb_py.webhooks import Webhooks

APP = App(id="1234", key="test-key", secret="test-secret")
OFF = replace(APP, id="off", key="off-key", secret="off-secret", enabled=False)
_QUIET = [HealthCheck.too_slow]
settings.register_profile("suite", max_examples=100, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


class GeneralRouter(Router):
    """The router with the fast path declined: every POST goes through handle_http."""

    def answer_post(self, target: bytes, body: bytes) -> HttpResponse | None:
        return None


def subscribe_frame(channel: str) -> bytes:
    from websockets.frames import Frame, Opcode

    message = orjson.dumps({"event": "pusher:subscribe", "data": {"channel": channel}})
    return Frame(Opcode.TEXT, message).serialize(mask=True, extensions=[])


UPGRADE = (
    b"GET /app/test-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def serve(router_class: type[Router], path: str, requests: list[bytes]) -> dict[str, Any]:
    """What a subscriber of `news` and the backend see when `requests` arrive in one read."""
    server_settings = Settings(host="127.0.0.1", port=0, path=path, apps=(APP, OFF))
    router = router_class(server_settings, Cluster("test"), Webhooks(server_settings))
    loop = asyncio.get_running_loop()
    coalescer = WriteCoalescer(loop)
    limits = ConnectionLimits(max_body=65536, max_header=4096, write_buffer_limit=1 << 20)
    subscriber, subscriber_transport = Connection(router, coalescer, limits, set()), FakeTransport()
    subscriber.connection_made(subscriber_transport)  # type: ignore[arg-type]
    subscriber.data_received(UPGRADE.replace(b"/app/", path.encode() + b"/app/"))
    subscriber.data_received(subscribe_frame("news") + subscribe_frame("cache-news"))
    await asyncio.sleep(0)
    subscribed = len(subscriber_transport.written)
    backend, backend_transport = Connection(router, coalescer, limits, set()), FakeTransport()
    backend.connection_made(backend_transport)  # type: ignore[arg-type]
    backend.data_received(b"".join(requests))
    for _ in range(3):
        await asyncio.sleep(0)
    api = {key: n for key, n in router.hubs_by_id["1234"].stats.api_requests.items()}
    return {
        "answers": bytes(backend_transport.written),
        "closed": backend_transport.closing,
        "delivered": bytes(subscriber_transport.written[subscribed:]),
        "api_requests": api,
    }


def signed(
    body: bytes,
    *,
    app: App = APP,
    path: str = "/apps/1234/events",
    signed_path: str | None = None,
    timestamp: int | None = None,
    extra: str = "",
    md5: str | None = None,
    secret: str | None = None,
    keep_alive: bool = True,
) -> bytes:
    """A trigger request signed as the SDKs sign it; each keyword spoils one part."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hashlib.md5(body).hexdigest() if md5 is None else md5
    query = f"auth_key={app.key}&auth_timestamp={stamp}&auth_version=1.0&body_md5={digest}"
    query = "&".join(sorted((query + extra).split("&")))
    to_sign = f"POST\n{signed_path or path}\n{query}"
    key = (secret or app.secret).encode()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    connection = b"" if keep_alive else b"Connection: close\r\n"
    return (
        f"POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\n".encode()
        + connection
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def event(**fields: Any) -> bytes:
    return orjson.dumps({"name": "alert", "channel": "news", "data": "hi", **fields})


async def same_both_ways(requests: list[bytes], path: str = "") -> dict[str, Any]:
    fast = await serve(Router, path, requests)
    general = await serve(GeneralRouter, path, requests)
    assert fast == general
    return fast


async def test_a_valid_trigger_is_answered_and_delivered_the_same() -> None:
    seen = await same_both_ways([signed(event()), signed(event(channel="cache-news"))])
    assert seen["answers"].count(b"HTTP/1.1 200 OK") == 2
    assert seen["delivered"].count(b'"event":"alert"') == 2
    assert seen["api_requests"] == {("events", 200): 2}


async def test_every_refusal_is_the_same() -> None:
    body = event()
    requests = [
        signed(body, secret="wrong"),
        signed(body, timestamp=int(time.time()) - 3600),
        signed(body, md5="0" * 32),
        signed(body, extra="&auth_version=2.0"),
        signed(b"not json"),
        signed(event(name="")),
        signed(event(channel="bad channel")),
        signed(event(data="x" * 20_000)),
        signed(event(socket_id="nope")),
        signed(body, app=OFF, path="/apps/off/events"),
        signed(body, path="/apps/nope/events"),
        signed(body, path="/apps/1234/events/more"),
        signed(body, path="/apps//events"),
        signed(body, keep_alive=False),
    ]
    seen = await same_both_ways(requests)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", seen["answers"])
    assert statuses == [b"401"] * 4 + [b"400"] * 3 + [b"413", b"400", b"403"] + [b"404"] * 3 + [
        b"200"
    ]
    assert seen["delivered"].count(b'"event":"alert"') == 1  # the last one only
    assert seen["closed"]


async def test_info_socket_id_prefix_and_signed_spellings_are_the_same() -> None:
    requests = [
        signed(event(info="subscription_count"), path="/ws/apps/1234/events"),
        signed(
            event(socket_id="1.1"), path="/ws/apps/1234/events", signed_path="/apps/1234/events"
        ),
        signed(event(), path="/ws/apps/1234/%65vents", signed_path="/ws/apps/1234/events"),
        signed(event(channels=["news", "cache-news"]), path="/ws/apps/1234/events"),
    ]
    seen = await same_both_ways(requests, path="/ws")
    assert seen["answers"].count(b"HTTP/1.1 200 OK") == 3
    assert b'{"channels":{"news":{"subscription_count":1}}}' in seen["answers"]


queries = st.lists(
    st.sampled_from(
        [
            "&auth_key=other",
            "&AUTH_KEY=test-key",
            "&info=user_count",
            "&x=1&x=2",
            "&flag",
            "&&",
            "&a=%41",
            "&plus=a+b",
            "&auth_signature=",
            "&body_md5=",
            "&auth_timestamp=99999999999999",
            "&auth_timestamp=%C2%B2",
        ]
    ),
    max_size=3,
)
bodies = st.one_of(
    st.builds(
        lambda name, data, channel: orjson.dumps({"name": name, "data": data, "channel": channel}),
        st.sampled_from(["alert", "", "x" * 300]),
        st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.none()),
        st.sampled_from(["news", "private-news", "#server-to-user-1", "ä", ""]),
    ),
    st.binary(max_size=40),
)


@given(body=bodies, extra=st.builds("".join, queries), sign_extra=st.booleans())
def test_any_query_and_body_is_answered_the_same(body: bytes, extra: str, sign_extra: bool) -> None:
    request = signed(body, extra=extra) if sign_extra else signed(body)
    if not sign_extra and extra:  # appended after signing: the signature no longer matches
        head, _, rest = request.partition(b" HTTP/1.1")
        request = head + extra.encode() + b" HTTP/1.1" + rest
    asyncio.run(same_both_ways([request]))
