"""pusher-js (the official JS client) against the server, with the Python SDK as the backend."""

from __future__ import annotations

import json
import uuid

import pytest

from .conftest import NodeFactory
from .harness import Backend, Target

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
