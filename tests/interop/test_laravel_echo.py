"""Laravel Echo (`broadcaster: 'reverb'`) against the server, as the panic-alert app uses it."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import NodeFactory
from .harness import USER_NAMES, Backend

pytestmark = pytest.mark.interop

# Shaped like the seed app's PanicAlertTriggered broadcast; accents and an emoji must survive.
PANIC_ALERT: dict[str, Any] = {
    "alert_id": 123,
    "title": "🚨 Alerta de pánico",
    "user": {"id": 456, "name": "Juan Pérez"},
    "apartment": {"id": 789, "address": "Apartamento 101"},
    "location": {"lat": 4.6097, "lng": -74.0817, "string": "Calle 123 #45-67"},
    "status": "triggered",
    "timestamp": "2025-11-04T17:30:00.000Z",
    "time_ago": "hace 2 minutos",
}


def member(user_id: int) -> dict[str, Any]:
    """A presence member's user_info as the backend's channel callback returns it."""
    return {"id": user_id, "name": USER_NAMES[user_id]}


def test_private_channel_listen_receives_panic_alert(node: NodeFactory, backend: Backend) -> None:
    dashboard = node("echo_private_listen.mjs", "1")
    dashboard.expect("subscribed", channel="private-security-dashboard")

    resolved = {"alert_id": 123, "status": "resolved", "resolved_by": "Guardia Núñez ✅"}
    backend.sdk.trigger("private-security-dashboard", "panic-alert.triggered", PANIC_ALERT)
    # Without broadcastAs, Laravel names the event after its class, backslashes and all.
    backend.sdk.trigger("private-security-dashboard", "App\\Events\\PanicAlertResolved", resolved)

    assert dashboard.expect("alert", listened=".panic-alert.triggered")["data"] == PANIC_ALERT
    assert dashboard.expect("alert", listened="PanicAlertResolved")["data"] == resolved
    dashboard.finish()
    assert [(r.params["channel_name"], r.user_id, r.status) for r in backend.requests] == [
        ("private-security-dashboard", 1, 200)
    ]


def test_auth_failures_fire_error_and_keep_connection(node: NodeFactory, backend: Backend) -> None:
    client = node("echo_auth_errors.mjs", "1")
    refused = client.expect("subscription_error", channel="private-refused-alerts")
    assert refused["error"]["status"] == 403
    client.expect("subscription_error", channel="private-forged-alerts")
    client.expect("subscribed", channel="private-security-dashboard")

    # Sent first: had the forged subscription been accepted, this would arrive before the alert.
    backend.sdk.trigger("private-forged-alerts", "panic-alert.triggered", {"leaked": True})
    backend.sdk.trigger("private-security-dashboard", "panic-alert.triggered", PANIC_ALERT)
    assert client.expect("alert")["data"] == PANIC_ALERT
    client.finish()

    assert not [line for line in client.lines("subscribed") if "security" not in line["channel"]]
    # The refused channel never reached the server; the forged one was refused by the server
    # itself, on the channel, the way pusher-js routes to the channel's error callbacks.
    assert sorted((r.params["channel_name"], r.status) for r in backend.requests) == [
        ("private-forged-alerts", 200),
        ("private-refused-alerts", 403),
        ("private-security-dashboard", 200),
    ]
    forged = [f["event"] for f in client.frames() if f.get("channel") == "private-forged-alerts"]
    assert forged == ["pusher:subscription_error"]
    # The same connection served the alert: no reconnect happened along the way.
    connected = [line for line in client.lines("state") if line["current"] == "connected"]
    assert len(connected) == 1
    assert client.lines("alert")[0]["socket_id"] == connected[0]["socket_id"]


def test_presence_here_joining_leaving_once_each(node: NodeFactory, backend: Backend) -> None:
    def roster(line: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted(line["members"], key=lambda m: m["id"])

    first = node("echo_presence.mjs", "1")
    assert roster(first.expect("here")) == [member(1)]

    second = node("echo_presence.mjs", "2")
    assert roster(second.expect("here")) == [member(1), member(2)]
    assert first.expect("joining")["member"] == member(2)

    third = node("echo_presence.mjs", "3")
    assert roster(third.expect("here")) == [member(1), member(2), member(3)]
    assert first.expect("joining")["member"] == member(3)
    assert second.expect("joining")["member"] == member(3)

    third.quit()
    assert first.expect("leaving")["member"] == member(3)
    assert second.expect("leaving")["member"] == member(3)

    # Anything duplicated would have been sent before this event, so it has arrived by now.
    backend.sdk.trigger("presence-room", "barrier", {})
    for client in (first, second):
        client.expect("barrier")
    seen = {
        name: [len(c.lines("here")), c.lines("joining"), c.lines("leaving")]
        for name, c in (("first", first), ("second", second), ("third", third))
    }
    members = {
        name: [here, [j["member"]["id"] for j in joining], [lv["member"]["id"] for lv in leaving]]
        for name, (here, joining, leaving) in seen.items()
    }
    assert members == {"first": [1, [2, 3], [3]], "second": [1, [3], [3]], "third": [1, [], []]}
    first.quit()
    second.quit()


def test_presence_user_with_two_tabs_is_one_member(node: NodeFactory, backend: Backend) -> None:
    guard = node("echo_presence.mjs", "2")
    guard.expect("here")
    first_tab = node("echo_presence.mjs", "1")
    first_tab.expect("here")
    assert guard.expect("joining")["member"] == member(1)

    second_tab = node("echo_presence.mjs", "1")
    assert sorted(m["id"] for m in second_tab.expect("here")["members"]) == [1, 2]
    first_tab.quit()

    def settle() -> None:
        """Returns once everything the server sent the guard before now has arrived."""
        backend.sdk.trigger("presence-room", "barrier", {})
        guard.expect("barrier")

    settle()
    # The user is still there in the second tab: no second joining, no leaving yet.
    assert (len(guard.lines("joining")), guard.lines("leaving")) == (1, [])
    assert first_tab.lines("joining") == []

    second_tab.quit()
    assert guard.expect("leaving")["member"] == member(1)
    settle()
    assert len(guard.lines("leaving")) == 1
    guard.quit()


def test_whisper_reaches_others_not_the_sender(node: NodeFactory) -> None:
    juan = node("echo_whisper.mjs", "1", "chat.42")
    ana = node("echo_whisper.mjs", "2", "chat.42")
    for client in (juan, ana):
        client.expect("subscribed", channel="private-chat.42")

    typing = {"typing": True, "name": "Juan Pérez", "hint": "escribiendo… ✍️"}
    juan.send("whisper", data=typing)
    assert ana.expect("whisper")["data"] == typing
    reply = {"typing": False, "name": "Ana María"}
    ana.send("whisper", data=reply)
    assert juan.expect("whisper")["data"] == reply
    again = {"typing": True, "name": "Juan Pérez"}
    juan.send("whisper", data=again)
    assert ana.expect("whisper")["data"] == again

    # Each sender's own whisper would have been relayed back before the other's next one.
    assert [line["data"] for line in juan.lines("whisper")] == [reply]
    assert [line["data"] for line in ana.lines("whisper")] == [typing, again]
    juan.quit()
    ana.quit()
