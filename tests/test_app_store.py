"""The app store without a database: what changes when apps are added, changed, disabled or
removed while the server runs, row validation, and that no message carries a password."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pusher
import pytest
import websockets

from reverb_py.apps import sql
from reverb_py.apps.store import AppStore
from reverb_py.config import App, ConfigError, Webhook, load_settings, mask_url
from tests.conftest import APP, PusherSocket, Running
from tests.test_metrics import scrape, value
from tests.webhook_receiver import Receiver


def sdk(port: int, app: App) -> pusher.Pusher:
    """The official SDK, signing as `app` (whatever the server thinks of it)."""
    return pusher.Pusher(
        app_id=app.id, key=app.key, secret=app.secret, host="127.0.0.1", port=port, ssl=False
    )


async def closed_with(client: PusherSocket, code: int) -> None:
    """The client is told `code` (pusher:error) and the socket is closed with it."""
    error = await client.expect("pusher:error")
    assert error["data"]["code"] == code
    with pytest.raises(websockets.ConnectionClosed):
        await client.recv()
    assert client.ws.protocol.close_rcvd.code == code


def test_replace_reports_each_change_once() -> None:
    a, b = App(id="1", key="a", secret="s"), App(id="2", key="b", secret="s")
    store = AppStore([a, b])
    seen: list[tuple[Any, Any]] = []
    store.listener = lambda old, new: seen.append((old, new))
    rotated, c = replace(a, secret="t"), App(id="3", key="c", secret="s")
    store.replace([rotated, c])
    assert sorted(seen, key=str) == sorted([(b, None), (a, rotated), (None, c)], key=str)
    seen.clear()
    store.replace([rotated, c])
    assert seen == []


def test_rows_are_validated_like_the_toml_file() -> None:
    app = sql.app_from_row(("7", "k", "s", 0, '{"max_connections": 5, "allowed_origins": ["x"]}'))
    assert (app.id, app.enabled, app.max_connections, app.allowed_origins) == (
        "7",
        False,
        5,
        ("x",),
    )
    bad_rows = {
        "max_connections: expected an integer": '{"max_connections": "many"}',
        "unknown setting(s) bogus": '{"bogus": 1}',
        "must not hold secret": '{"secret": "x"}',
        "must be a JSON object": "[1]",
        "not valid JSON": "{not json",
    }
    for message, options in bad_rows.items():
        with pytest.raises(ConfigError) as error:
            sql.app_from_row(("2", "k2", "s", True, options))
        assert message in str(error.value) and "apps row '2'" in str(error.value)


def test_passwords_never_appear_in_messages() -> None:
    url = "postgresql://reverb:p%40ssw0rd@db.internal:5432/apps?password=other"
    assert "p%40ssw0rd" not in mask_url(url) and "other" not in mask_url(url)
    reason = sql.describe(OSError("auth failed for p@ssw0rd and other"), url)
    assert "p@ssw0rd" not in reason and "other" not in reason
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"REVERB_APPS_DATABASE_URL": "redis://u:hunter2@h/0"})
    assert "hunter2" not in str(error.value) and "REVERB_APPS_DATABASE_URL" in str(error.value)
    settings = load_settings(environ={"REVERB_APPS_DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in repr(settings)
    assert settings.apps == () and not settings.generated_app  # the database has the apps


async def test_disabling_closes_with_4003_and_refuses_api_calls(running: Running) -> None:
    client = await running.connect()
    store = running.server.store
    disabled = replace(APP, enabled=False)
    store.replace([disabled])
    await closed_with(client, 4003)
    refused = await websockets.connect(running.url())
    assert "4003" in await asyncio.wait_for(refused.recv(), 2)
    with pytest.raises(pusher.errors.PusherForbidden):
        await running.call(sdk(running.port, disabled).trigger, "alerts", "panic", {})
    store.replace([APP])
    again = await running.connect()
    await running.call(sdk(running.port, APP).trigger, "alerts", "panic", {"unit": 4})
    await again.subscribe("alerts")
    await running.call(sdk(running.port, APP).trigger, "alerts", "panic", {"unit": 4})
    assert (await again.expect("panic"))["data"] == '{"unit": 4}'


async def test_rotated_secret_applies_at_once_to_api_and_open_sessions(running: Running) -> None:
    client = await running.connect()
    rotated = replace(APP, secret="fresh-secret")
    running.server.store.replace([rotated])
    with pytest.raises(pusher.errors.PusherBadAuth):
        await running.call(sdk(running.port, APP).trigger, "alerts", "panic", {})
    await running.call(sdk(running.port, rotated).trigger, "alerts", "panic", {})
    old = sdk(running.port, APP).authenticate("private-gate", client.socket_id)
    reply = await client.subscribe("private-gate", auth=old["auth"])
    assert reply["event"] == "pusher:subscription_error"
    new = sdk(running.port, rotated).authenticate("private-gate", client.socket_id)
    reply = await client.subscribe("private-gate", auth=new["auth"])
    assert reply["event"] == "pusher_internal:subscription_succeeded"


async def test_added_app_is_served_and_removed_app_closes_with_4001(running: Running) -> None:
    tenant = App(id="77", key="tenant-key", secret="tenant-secret")
    running.server.store.replace([APP, tenant])
    client = await running.connect(tenant.key)
    await client.subscribe("alerts")
    await running.call(sdk(running.port, tenant).trigger, "alerts", "panic", {"unit": 9})
    assert (await client.expect("panic"))["data"] == '{"unit": 9}'
    running.server.store.replace([APP])
    await closed_with(client, 4001)
    with pytest.raises(pusher.errors.PusherError, match="404"):
        await running.call(sdk(running.port, tenant).trigger, "alerts", "panic", {})
    still = await running.connect()  # the other app is untouched
    await still.close()


async def test_webhooks_follow_added_hooks_and_rotated_secrets(start_server: Any) -> None:
    """Webhooks that appear while serving get a sender at once; after a rotation the same
    sender signs with the new secret (the receiver validates with the official SDK)."""
    receiver = Receiver(secret="rotated-secret")
    try:
        running = await start_server(webhook_delay=0)
        hook = Webhook(url=receiver.url, event_types=("channel_occupied",))
        running.server.store.replace([replace(APP, webhooks=(hook,))])
        running.server.store.replace([replace(APP, webhooks=(hook,), secret="rotated-secret")])
        client = await running.connect()
        await client.subscribe("alerts")
        events = await receiver.wait_for(1)
        assert events[0] == {"name": "channel_occupied", "channel": "alerts"}
    finally:
        receiver.close()


async def test_a_deleted_apps_last_webhooks_go_out_at_once(start_server: Any) -> None:
    """Deleting an app closes its connections; the channel_vacated and member_removed events
    that decides go out now (not after the delay, not never), once, to the URL the app had and
    signed with the secret it had (the receiver validates with the official SDK)."""
    tenant = App(id="77", key="tenant-key", secret="tenant-secret")
    receiver = Receiver(app_key=tenant.key, secret=tenant.secret)
    try:
        kinds = ("channel_occupied", "channel_vacated", "member_added", "member_removed")
        tenant = replace(tenant, webhooks=(Webhook(url=receiver.url, event_types=kinds),))
        # A delay no test waits for: what arrives after the deletion came from the deletion.
        running = await start_server(webhook_delay=600, webhook_batch_window=0.02)
        running.server.store.replace([APP, tenant])
        client = await running.connect(tenant.key)
        await client.subscribe("alerts")
        signed = sdk(running.port, tenant).authenticate(
            "presence-room", client.socket_id, {"user_id": "alice"}
        )
        await client.subscribe("presence-room", signed["auth"], signed["channel_data"])
        assert len(await receiver.wait_for(3)) == 3  # two channel_occupied, one member_added

        running.server.store.replace([APP])
        await closed_with(client, 4001)
        events = await receiver.wait_for(6)
        assert sorted((e["name"], e["channel"]) for e in events[3:]) == [
            ("channel_vacated", "alerts"),
            ("channel_vacated", "presence-room"),
            ("member_removed", "presence-room"),
        ]
        await asyncio.sleep(0.3)
        assert len(receiver.events()) == 6  # once
    finally:
        receiver.close()


async def test_a_configured_app_can_be_disabled(start_server: Any, tmp_path: Any) -> None:
    """`enabled = false` in TOML (or REVERB_APP_ENABLED=false) refuses like the database."""
    config = tmp_path / "apps.toml"
    config.write_text('[[apps]]\nid = "5"\nkey = "off-key"\nsecret = "s"\nenabled = false\n')
    (app,) = load_settings(config_file=str(config)).apps
    assert not app.enabled
    assert not load_settings(environ={**ENV_APP, "REVERB_APP_ENABLED": "false"}).apps[0].enabled
    running = await start_server(app, metrics_enabled=True)
    refused = await websockets.connect(running.url())
    assert "4003" in await asyncio.wait_for(refused.recv(), 2)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(refused.recv(), 2)
    assert refused.protocol.close_rcvd.code == 4003
    samples = await scrape(running.port)
    assert value(samples, "reverb_connections_refused_total", app_id="5", reason="app_disabled")
    assert value(samples, "reverb_app_store_apps", state="disabled") == 1
    assert value(samples, "reverb_app_store_up") == 1


ENV_APP = {"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k", "REVERB_APP_SECRET": "s"}
