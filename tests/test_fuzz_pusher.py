"""Property-based fuzzing (hypothesis) of what clients and backends send, without sockets:
Pusher message parsing, a whole session driven by arbitrary messages, and the HTTP API's
trigger validation. Each run is a few seconds; `HYPOTHESIS_PROFILE=long` (registered in
tests/conftest.py) runs many more examples. A crash found here becomes a plain regression
test in test_limits.py or test_adversarial_app.py."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reverb_py.config import App, Settings
from reverb_py.pusher import auth
from reverb_py.pusher.auth import ApiAuthError, verify_api_request
from reverb_py.pusher.http_api import ApiError, Event, parse_batch, parse_event
from reverb_py.pusher.messages import ClientMessage, ProtocolViolation, parse_client_message
from reverb_py.pusher.session import Session
from reverb_py.server import Server
from tests.test_session_liveness import RecordingSocket

APP = App(
    id="1", key="key", secret="secret", max_subscriptions_per_connection=3, watchlist_events=True
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=6,
)
channel_names = st.sampled_from(
    [
        "news",
        "cache-news",
        "private-a",
        "private-encrypted-a",
        "presence-a",
        "presence-cache-a",
        "#server-to-user-1",
        "bad name",
        "",
    ]
) | st.text(max_size=30)
event_names = st.sampled_from(
    [
        "pusher:subscribe",
        "pusher:unsubscribe",
        "pusher:signin",
        "pusher:ping",
        "pusher:pong",
        "pusher:other",
        "client-typing",
        "other",
    ]
)


def _signed(string: str) -> str:
    return f"key:{auth.sign('secret', string)}"


@st.composite
def well_formed(draw: st.DrawFn) -> dict[str, Any]:
    """A message a real client could send, correctly signed (socket id 1.1), so that the
    authorized paths (presence rosters, client events, sign-in, watchlists) are reached."""
    kind = draw(st.sampled_from(["public", "private", "presence", "signin", "client", "leave"]))
    if kind == "public":
        return {"event": "pusher:subscribe", "data": {"channel": draw(channel_names)}}
    if kind == "private":
        channel = draw(st.sampled_from(["private-a", "private-encrypted-a", "private-b"]))
        return {
            "event": "pusher:subscribe",
            "data": {"channel": channel, "auth": _signed(f"1.1:{channel}")},
        }
    if kind == "presence":
        channel = draw(st.sampled_from(["presence-a", "presence-cache-a"]))
        user_id = draw(st.text("ab1", min_size=1, max_size=3) | st.integers(0, 3) | json_values)
        member = json.dumps({"user_id": user_id, "user_info": draw(json_values)})
        return {
            "event": "pusher:subscribe",
            "data": {
                "channel": channel,
                "channel_data": member,
                "auth": _signed(f"1.1:{channel}:{member}"),
            },
        }
    if kind == "signin":
        # Small lists of anything, or lists over Pusher's 100-id limit (cheap to generate).
        watchlist = draw(
            st.lists(st.text(max_size=4) | st.integers() | json_values, max_size=3)
            | st.integers(95, 130).map(lambda n: list(range(n)))
        )
        user = {"id": draw(st.sampled_from(["1", "2"]) | json_values), "watchlist": watchlist}
        user_data = json.dumps(user)
        return {
            "event": "pusher:signin",
            "data": {"user_data": user_data, "auth": _signed(f"1.1::user::{user_data}")},
        }
    channel = draw(st.sampled_from(["private-a", "presence-a", "news"]) | channel_names)
    if kind == "client":
        return {"event": "client-typing", "channel": channel, "data": draw(json_values)}
    return {"event": "pusher:unsubscribe", "data": {"channel": channel}}


@st.composite
def pusher_messages(draw: st.DrawFn) -> bytes:
    """A client frame: a well-formed message, often with one part replaced by a value of
    another type, spelled with string data (the Java client) or made deeper than orjson
    encodes (254 levels) or decodes (1024)."""
    message = draw(well_formed())
    if draw(st.booleans()):
        part = draw(st.sampled_from(["event", "data", "channel", "field"]))
        if part == "field" and isinstance(message.get("data"), dict):
            field = draw(st.sampled_from([*message["data"], "channel"]))
            message["data"][field] = draw(json_values)
        else:
            message[part] = draw(json_values | event_names)
    if draw(st.booleans()):
        message["data"] = json.dumps(message.get("data"))
    text = json.dumps(message)
    depth = draw(st.sampled_from([0, 0, 0, 0, 300, 1100]))
    if depth:
        text = text[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    return text.encode()


@given(st.binary(max_size=200) | pusher_messages())
def test_parsing_a_client_frame_never_raises_anything_else(raw: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        assert isinstance(parse_client_message(raw), ClientMessage)


_HUB = Server(Settings(apps=(APP,))).router.hubs_by_id[APP.id]


@given(st.lists(pusher_messages(), min_size=1, max_size=5))
def test_a_session_answers_every_message_without_an_internal_error(frames: list[bytes]) -> None:
    socket = RecordingSocket()
    session = Session(_HUB, socket, "1.1")
    session.start()
    try:
        for frame in frames:
            session.on_message(frame, binary=False)
        assert "internal_error" not in _HUB.stats.messages_rejected
        assert not any(b"Internal server error" in sent for sent in socket.frames)
    finally:
        session.on_close()
    assert not _HUB.sessions and not _HUB.channels
    assert not _HUB.users.signed_in and not _HUB.users.watchers


trigger_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=10) | json_values,
        "data": json_values,
        "channel": channel_names | json_values,
        "channels": st.lists(channel_names | json_values, max_size=4) | json_values,
        "socket_id": st.sampled_from(["1.1", "x"]) | json_values,
        "info": st.sampled_from(["user_count", "subscription_count"]) | json_values,
    },
)


@given(trigger_bodies | json_values, st.booleans())
def test_trigger_validation_returns_an_event_or_a_4xx(body: Any, allow_channels: bool) -> None:
    try:
        assert isinstance(parse_event(APP, body, allow_channels=allow_channels), Event)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.message


@given(st.fixed_dictionaries({"batch": st.lists(trigger_bodies | json_values, max_size=12)}))
def test_batch_validation_returns_events_or_a_4xx(body: Any) -> None:
    try:
        assert all(isinstance(event, Event) for event in parse_batch(APP, body))
    except ApiError as error:
        assert 400 <= error.status < 500 and error.message


query_values = st.text(max_size=12) | st.integers(-(10**500), 10**500).map(str)
# The parameters the verification reads, each present or not, plus any others.
signed_params = st.tuples(
    st.fixed_dictionaries(
        {},
        optional={
            "auth_key": st.just("key") | query_values,
            "auth_timestamp": st.just("1700000000") | query_values,
            "auth_version": st.just("1.0") | query_values,
            "body_md5": query_values,
            "auth_signature": query_values,
        },
    ).map(lambda known: list(known.items())),
    st.lists(st.tuples(st.text(max_size=6), query_values), max_size=3),
).map(lambda parts: parts[0] + parts[1])


@given(signed_params, st.binary(max_size=20), st.text(max_size=10))
def test_api_request_verification_only_ever_refuses(
    params: list[tuple[str, str]], body: bytes, method: str
) -> None:
    """A request's query and body, however malformed, are accepted or refused (401), never
    an exception: a 400-digit auth_timestamp once overflowed into a 500."""
    with contextlib.suppress(ApiAuthError):
        verify_api_request(
            key="key",
            secret="secret",
            method=method,
            paths=["/apps/1/events"],
            params=params,
            body=body,
            now=1_700_000_000.0,
        )
