"""The session's rarer answers, seen on the wire: sign-in twice or with bad user data,
watchlists replaced or malformed, client events at their limits, frame logging, a bug while
handling one message, and a drain reaching a socket its client already closed."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import websockets

from reverb_py.pusher import messages
from reverb_py.pusher.auth import sign
from tests.conftest import PusherSocket, Running, ServerFactory, app_with
from tests.test_channels import private_pair
from tests.test_features import sign_in, watchlist_events
from tests.test_session_liveness import new_session


def signed_user_data(running: Running, client: PusherSocket, user_data: str) -> dict[str, str]:
    """A sign-in whose signature is valid for `user_data`, whatever that text is."""
    signature = sign(running.app.secret, f"{client.socket_id}::user::{user_data}")
    return {"auth": f"{running.app.key}:{signature}", "user_data": user_data}


async def closed_by_server(client: PusherSocket) -> int | None:
    with pytest.raises(websockets.ConnectionClosed):
        await client.recv()
    close = client.ws.protocol.close_rcvd
    return close.code if close is not None else None


# Sign-in ----------------------------------------------------------------------------------


async def test_signed_user_data_that_is_not_json_closes_4009(running: Running) -> None:
    client = await running.connect()
    await client.send("pusher:signin", signed_user_data(running, client, "not json"))
    error = await client.expect("pusher:error")
    assert error["data"] == {
        "code": 4009,
        "message": "The user data must contain a valid string id",
    }
    assert await closed_by_server(client) == 4009


async def test_signin_without_auth_closes_4009(running: Running) -> None:
    client = await running.connect()
    await client.send("pusher:signin", {"user_data": '{"id":"alice"}'})
    error = await client.expect("pusher:error")
    assert error["data"] == {
        "code": 4009,
        "message": "Connection not authorized: invalid sign-in",
    }
    assert await closed_by_server(client) == 4009


async def test_signing_in_as_another_user_is_refused_and_the_first_stays(
    running: Running,
) -> None:
    client = await running.connect()
    await sign_in(running, client, {"id": "alice"})
    await client.send(
        "pusher:signin", running.sdk().authenticate_user(client.socket_id, {"id": "mallory"})
    )
    error = await client.expect("pusher:error")
    assert error["data"] == {"code": 4009, "message": "Already signed in as another user"}
    reply = await client.subscribe("#server-to-user-mallory")
    assert reply["event"] == "pusher:subscription_error"
    reply = await client.subscribe("#server-to-user-alice")
    assert reply["event"] == "pusher_internal:subscription_succeeded"


async def test_signing_in_again_as_the_same_user_replaces_the_watchlist(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(watchlist_events=True))
    alice = await running.connect()
    await sign_in(running, alice, {"id": "alice", "watchlist": ["bob"]})
    assert watchlist_events(await alice.recv()) == [{"name": "offline", "user_ids": ["bob"]}]
    await sign_in(running, alice, {"id": "alice", "watchlist": ["carol"]})
    assert watchlist_events(await alice.recv()) == [{"name": "offline", "user_ids": ["carol"]}]
    bob = await running.connect()
    await sign_in(running, bob, {"id": "bob"})
    await alice.nothing()  # no longer watched
    carol = await running.connect()
    await sign_in(running, carol, {"id": "carol"})
    assert watchlist_events(await alice.recv()) == [{"name": "online", "user_ids": ["carol"]}]
    # Signed in once: alice's second sign-in did not make her a second user session.
    await alice.close()
    watcher = await running.connect()
    await sign_in(running, watcher, {"id": "dave", "watchlist": ["alice"]})
    assert watchlist_events(await watcher.recv()) == [{"name": "offline", "user_ids": ["alice"]}]


@pytest.mark.parametrize("watchlist", ["bob", [True], [["bob"]], {"bob": 1}])
async def test_a_malformed_watchlist_is_an_error_after_a_successful_signin(
    start_server: ServerFactory, watchlist: Any
) -> None:
    running = await start_server(app_with(watchlist_events=True))
    alice = await running.connect()
    await sign_in(running, alice, {"id": "alice", "watchlist": watchlist})
    error = await alice.expect("pusher:error")
    assert error["data"] == {"code": None, "message": "watchlist must be a list of user ids"}
    bob = await running.connect()
    await sign_in(running, bob, {"id": "bob"})
    await alice.nothing()
    await alice.send("pusher:ping")
    await alice.expect("pusher:pong")


async def test_an_empty_watchlist_sends_no_watchlist_events(start_server: ServerFactory) -> None:
    running = await start_server(app_with(watchlist_events=True))
    alice = await running.connect()
    await sign_in(running, alice, {"id": "alice", "watchlist": []})
    bob = await running.connect()
    await sign_in(running, bob, {"id": "bob"})
    await alice.nothing()


async def test_a_watcher_leaving_keeps_the_other_watchers_of_that_user(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(watchlist_events=True))
    first, second = await running.connect(), await running.connect()
    for client, user in ((first, "alice"), (second, "carol")):
        await sign_in(running, client, {"id": user, "watchlist": ["bob"]})
        assert watchlist_events(await client.recv()) == [{"name": "offline", "user_ids": ["bob"]}]
    await first.close()
    bob = await running.connect()
    await sign_in(running, bob, {"id": "bob"})
    assert watchlist_events(await second.recv()) == [{"name": "online", "user_ids": ["bob"]}]


async def test_unsubscribing_from_a_channel_never_subscribed_is_ignored(
    running: Running,
) -> None:
    client, other = await running.connect(), await running.connect()
    await other.subscribe("news")
    await client.send("pusher:unsubscribe", {"channel": "news"})
    await client.send("pusher:ping")
    await client.expect("pusher:pong")  # no error came first
    await running.call(running.sdk().trigger, "news", "still-here", "x")
    await other.expect("still-here")


# Client events ----------------------------------------------------------------------------


async def test_client_event_name_longer_than_the_limit_is_refused(
    start_server: ServerFactory,
) -> None:
    running = await start_server(app_with(max_event_name_length=20))
    a, b = await private_pair(running, "private-room")
    await a.send("client-" + "x" * 14, {}, channel="private-room")
    error = await a.expect("pusher:error")
    assert error["data"] == {"code": 4301, "message": "Event name is longer than 20 characters"}
    await a.send("client-" + "x" * 13, {}, channel="private-room")
    assert (await b.expect("client-" + "x" * 13))["channel"] == "private-room"
    assert running.server.router.hubs_by_id["1234"].stats.client_events_rejected == {
        "name_too_long": 1
    }


async def test_client_event_rate_limit_zero_means_unlimited(start_server: ServerFactory) -> None:
    running = await start_server(app_with(client_event_rate_limit=0))
    a, b = await private_pair(running, "private-fast")
    for i in range(30):  # three times the default limit, within one second
        await a.send("client-tick", {"i": i}, channel="private-fast")
    received = [await b.expect("client-tick") for _ in range(30)]
    assert [m["data"]["i"] for m in received] == list(range(30))
    await a.nothing()


# Frame log, faults, drain -----------------------------------------------------------------


async def test_debug_logs_every_frame_in_and_out(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(debug=True)
    with caplog.at_level(logging.DEBUG, logger="reverb_py.frames"):
        client = await running.connect()
        await client.send("pusher:ping")
        await client.expect("pusher:pong")
    logged = [r.getMessage() for r in caplog.records if r.name == "reverb_py.frames"]
    assert f"> {client.socket_id} " in logged[0]
    assert "pusher:connection_established" in logged[0]
    sent = json.dumps({"event": "pusher:ping"}).encode()  # as PusherSocket.send writes it
    assert f"< {client.socket_id} {sent!r}" in logged
    assert f"> {client.socket_id} {messages.PONG!r}" in logged


async def test_frames_are_not_logged_without_debug(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="reverb_py.frames"):
        client = await running.connect()
        await client.send("pusher:ping")
        await client.expect("pusher:pong")
    assert [r for r in caplog.records if r.name == "reverb_py.frames"] == []


async def test_a_bug_handling_one_message_answers_4200_and_the_socket_stays(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault no client can cause on purpose (a bug), injected into the message parser."""
    parse = messages.parse_client_message

    def parse_or_fail(data: bytes) -> messages.ClientMessage:
        if b"client-boom" in data:
            raise KeyError("a bug")
        return parse(data)

    monkeypatch.setattr(messages, "parse_client_message", parse_or_fail)
    client = await running.connect()
    with caplog.at_level(logging.WARNING, logger="reverb_py.session"):
        await client.send("client-boom", {}, channel="private-x")
        error = await client.expect("pusher:error")
    assert error["data"] == {"code": 4200, "message": "Internal server error"}
    warning = next(r for r in caplog.records if r.name == "reverb_py.session")
    assert warning.getMessage() == "unexpected KeyError handling a message for app 1234"
    assert warning.exc_info is not None and isinstance(warning.exc_info[1], KeyError)
    hub = running.server.router.hubs_by_id["1234"]
    assert hub.stats.messages_rejected == {"internal_error": 1}
    await client.send("pusher:ping")
    await client.expect("pusher:pong")


async def test_frames_after_the_server_closed_the_session_are_ignored(
    start_server: ServerFactory,
) -> None:
    """The client cannot know the server closed until the close frame arrives: what it sent
    meanwhile is not handled (nor counted)."""
    app = app_with(rate_limiting_enabled=True, rate_limit_max_attempts=1, rate_limit_terminate=True)
    running = await start_server(app)
    client = await running.connect()
    for _ in range(3):  # sent before the server's close can arrive
        await client.send("pusher:ping")
    await client.expect("pusher:pong")
    error = await client.expect("pusher:error")
    assert error["data"] == {"code": 4301, "message": "Rate limit exceeded"}
    assert await closed_by_server(client) == 4301
    stats = running.server.router.hubs_by_id["1234"].stats
    assert stats.messages_received == 2


def test_a_closed_session_ignores_what_still_arrives() -> None:
    """The transport stops handing frames over once it closes (the test above); the session
    keeps the same rule itself, so bytes fed to it after its close are neither answered nor
    counted."""
    session, socket = new_session()
    session.close(messages.ErrorCode.RECONNECT, "Server is shutting down, reconnect")
    assert socket.closed_with == 4200
    socket.frames.clear()
    session.on_message(b'{"event":"pusher:ping"}', binary=False)
    assert socket.frames == []
    assert session.stats.messages_received == 0


async def test_drain_passes_over_a_socket_its_client_closed_meanwhile(
    start_server: ServerFactory,
) -> None:
    running = await start_server(drain_seconds=2.0)
    clients = [await running.connect(), await running.connect()]
    drain = asyncio.create_task(running.server.drain())
    # The drain closes one socket at once and the other a second later: close both from the
    # client side before then.
    await asyncio.sleep(0.05)
    for client in clients:
        await client.close()
    await asyncio.wait_for(drain, 5)
    codes = sorted(client.ws.close_code or 0 for client in clients)
    assert codes == [1000, 4200]
    stats = running.server.router.hubs_by_id["1234"].stats
    assert stats.closed == {"reconnect": 1, "client": 1}
