"""pusher-js (the official JS client) against the server, with the Python SDK as the backend."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import NodeFactory
from .harness import Backend, Ingress, ReverbPy, Target

pytestmark = pytest.mark.interop


def test_public_channel_events_arrive_intact_in_order(node: NodeFactory, target: Target) -> None:
    channel = "orders.eu_west-1=@,;"
    client = node("public_event.mjs", channel, "order.created", "3")
    client.expect("subscribed", channel=channel)

    sdk = target.sdk()
    payloads = [
        {"order_id": n, "items": [{"sku": f"A-{n}", "qty": n}], "note": "entrega rápida"}
        for n in range(1, 4)
    ]
    for payload in payloads:
        sdk.trigger(channel, "order.created", payload)

    assert [client.expect("event")["data"] for _ in payloads] == payloads
    client.finish()


def test_server_to_user_event_reaches_only_that_user(node: NodeFactory, backend: Backend) -> None:
    juan = node("pusher_signin.mjs", "1")
    ana = node("pusher_signin.mjs", "2")
    for user_id, client in (("1", juan), ("2", ana)):
        signed_in = client.expect("signed_in")
        assert json.loads(signed_in["user_data"])["id"] == user_id
        client.expect("ready")

    for_juan = {"order_id": 77, "status": "enviado 📦"}
    for_ana = {"order_id": 78, "status": "entregado"}
    backend.sdk.send_to_user("1", "order-shipped", for_juan)
    backend.sdk.send_to_user("2", "order-shipped", for_ana)
    juan.expect("user_event", event="order-shipped", data=for_juan)
    ana.expect("user_event", event="order-shipped", data=for_ana)

    # A leaked event would be written to the wrong socket before these barriers are, so once
    # each user has its barrier, the list of what it received is complete.
    for user_id, client in (("1", juan), ("2", ana)):
        backend.sdk.send_to_user(user_id, "barrier", {"user": user_id})
        client.expect("user_event", event="barrier")
    assert [line["data"] for line in juan.lines("user_event")] == [for_juan, {"user": "1"}]
    assert [line["data"] for line in ana.lines("user_event")] == [for_ana, {"user": "2"}]
    juan.quit()
    ana.quit()


def test_encrypted_channel_is_decrypted_by_pusher_js(node: NodeFactory, backend: Backend) -> None:
    channel = "private-encrypted-vault-42"
    client = node("pusher_encrypted.mjs", "1", channel, "secret-note")
    client.expect("subscribed", channel=channel)

    note = {"code": "1234", "resident": "Juan Pérez", "message": "la llave está con el portero 🔑"}
    backend.sdk.trigger(channel, "secret-note", note)

    assert client.expect("event")["data"] == note
    client.finish()
    # The server relayed ciphertext only: the plaintext never crossed the wire.
    (wire,) = [f for f in client.frames() if f.get("event") == "secret-note"]
    assert set(wire["data"]) == {"ciphertext", "nonce"}
    assert "Juan" not in json.dumps(wire)
    (auth,) = [r for r in backend.requests if r.params.get("channel_name") == channel]
    assert auth.status == 200


def test_cache_channel_replays_last_event_to_new_subscriber(
    node: NodeFactory, target: Target
) -> None:
    # Unique, because an external server (INTEROP_EXTERNAL_SERVER) keeps its cache between runs.
    channel = f"cache-gate-status-{uuid.uuid4().hex[:8]}"
    first = node("pusher_cache.mjs", channel, "gate.changed")
    first.expect("subscribed", channel=channel)
    first.expect("cache_miss", channel=channel)

    status = {"gate": "norte", "open": False, "changed_by": "portería 🚧"}
    target.sdk().trigger(channel, "gate.changed", status)
    assert first.expect("event")["data"] == status
    first.finish()

    # Pusher keeps the cache for its TTL even with nobody subscribed (Reverb drops it then).
    late = node("pusher_cache.mjs", channel, "gate.changed")
    late.expect("subscribed", channel=channel)
    assert late.expect("event")["data"] == status
    late.finish()
    assert late.lines("cache_miss") == []


def test_pusher_js_follows_a_rolling_update(
    node: NodeFactory, reverb_py: ReverbPy | None, tmp_path: Path
) -> None:
    if reverb_py is None:
        pytest.skip("replaces the server, so it needs reverb-py under the suite's control")
    with Ingress(reverb_py.target.port) as ingress:
        client = node("public_event.mjs", "alerts", "alert", "1", port=ingress.port)
        client.expect("subscribed", channel="alerts")

        replacement = ReverbPy(tmp_path / "replacement.log")
        replacement.start()
        try:
            ingress.route_to(replacement.target.port)
            with ThreadPoolExecutor(max_workers=1) as pool:
                # SIGTERM must tell the client to reconnect; pusher-js then resubscribes by itself.
                stopping = pool.submit(reverb_py.stop)
                client.expect("subscribed", channel="alerts")
                alert = {"alert_id": 124, "status": "triggered"}
                replacement.target.sdk().trigger("alerts", "alert", alert)
                assert client.expect("event")["data"] == alert
                client.finish()
                assert stopping.result(timeout=30) == 0, reverb_py.log()
        finally:
            replacement.stop()
            print(f"--- replacement reverb-py log ---\n{replacement.log()}")

    # pusher-js reports the pusher:error frame and the close code alike; both must say "reconnect".
    errors = [line["error"] for line in client.lines("connection_error")]
    codes = {error["data"]["code"] for error in errors if error["type"] == "PusherError"}
    assert codes and all(4200 <= code <= 4299 for code in codes), errors
    states = client.lines("state")
    assert len({line["socket_id"] for line in states if line["current"] == "connected"}) == 2
