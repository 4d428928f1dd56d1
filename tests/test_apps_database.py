"""Apps from the machine's real PostgreSQL and MariaDB: created with the CLI, served, rotated,
disabled across two replica processes, and kept serving through a real outage (a TCP proxy in
front of the database is cut; the shared servers are never stopped)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pusher
import pytest
import websockets
from click.testing import CliRunner

from reverb_py.apps.sql import DatabaseError
from reverb_py.cli import main
from reverb_py.config import App, Settings
from reverb_py.server import Server
from tests.conftest import PusherSocket
from tests.databases import Database, TcpProxy, port_of, private_table
from tests.replicas import free_port, start_replica
from tests.test_app_store import sdk
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.database

# Documented bound for a change to reach every replica: the poll interval (2 s by default)
# plus a query; asserted with a wide margin, the machine is loaded.
CHANGE_BOUND = 15.0


@pytest.fixture(params=["postgresql", "mysql"])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    async with private_table(request.param) as db:
        await cli(db, "init-db")
        yield db


async def cli(db: Database, *args: str, status: int = 0) -> str:
    """Run `reverb-py apps ...` (in a thread: it runs its own event loop); its stdout, or
    its stderr when `status` is not 0."""
    command = ["apps", "--database-url", db.url, "--table", db.table, *args]
    result = await asyncio.to_thread(CliRunner().invoke, main, command)
    assert result.exit_code == status, (result.output, result.exception)
    return result.stdout if status == 0 else result.stderr


async def add_app(db: Database, app_id: str, key: str) -> App:
    output = await cli(db, "add", "--id", app_id, "--key", key)
    secret = re.search(r"REVERB_APP_SECRET=(\w+)", output)
    assert secret is not None, output
    return App(id=app_id, key=key, secret=secret.group(1))


async def connect(port: int, key: str) -> PusherSocket:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/app/{key}?protocol=7")
    established = await asyncio.wait_for(ws.recv(), 5)
    assert "pusher:connection_established" in established, established
    socket_id = re.search(r'socket_id\\":\\"([\d.]+)', str(established))
    assert socket_id is not None
    return PusherSocket(ws, socket_id.group(1))


async def closed_with(client: PusherSocket, code: int, within: float) -> None:
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await client.recv(timeout=within)
    assert client.ws.protocol.close_rcvd.code == code


async def eventually(check: Callable[[], Awaitable[bool]], within: float = CHANGE_BOUND) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.05)


async def trigger_ok(port: int, app: App) -> bool:
    try:
        await asyncio.to_thread(sdk(port, app).trigger, "alerts", "panic", {"unit": 4})
    except pusher.errors.PusherError:
        return False
    return True


async def serve(url: str, table: str, poll: float = 0.2, **settings: Any) -> Server:
    server = Server(
        Settings(
            host="127.0.0.1",
            port=0,
            apps_database_url=url,
            apps_database_table=table,
            apps_database_poll_interval=poll,
            **settings,
        )
    )
    await server.start()
    return server


async def test_cli_app_is_served_rotated_and_disabled(database: Database) -> None:
    app = await add_app(database, "501", "tenant-501")
    server = await serve(database.url, database.table)
    try:
        client = await connect(server.port, app.key)
        await client.subscribe("alerts")
        assert await trigger_ok(server.port, app)
        assert (await client.expect("panic"))["data"] == '{"unit": 4}'

        rotated = App(
            app.id, app.key, re.findall(r"=(\w+)", await cli(database, "rotate-secret", app.id))[0]
        )
        await eventually(lambda: trigger_ok(server.port, rotated))
        assert not await trigger_ok(server.port, app)  # the old secret stopped at once

        listing = await cli(database, "list")
        assert "501\tkey=tenant-501\tenabled" in listing
        assert app.secret not in listing and rotated.secret not in listing

        await cli(database, "disable", app.id)
        await closed_with(client, 4003, CHANGE_BOUND)
        assert not await trigger_ok(server.port, rotated)
        await cli(database, "enable", app.id)
        await eventually(lambda: trigger_ok(server.port, rotated))
    finally:
        await server.close()


async def test_cli_refuses_what_the_server_would_not_serve(database: Database) -> None:
    app = await add_app(database, "551", "tenant-551")
    assert "already exists" in await cli(database, "add", "--id", "551", status=1)
    assert "already exists" in await cli(database, "add", "--key", app.key, status=1)
    error = await cli(database, "set", app.id, "max_connections", "many", status=1)
    assert "apps row '551'.max_connections: expected an integer, got 'many'" in error
    assert "unknown setting(s) colour" in await cli(database, "set", "551", "colour", "1", status=1)
    assert "NAME=VALUE" in await cli(database, "add", "--set", "oops", status=2)
    assert "no app with id '999'" in await cli(database, "disable", "999", status=1)
    await cli(database, "set", app.id, "allowed_origins", '["a.example.com"]')
    await cli(database, "set", app.id, "max_connections", "5")
    await cli(database, "unset", app.id, "max_connections")
    assert (await cli(database, "list")).endswith("\toptions=allowed_origins\n")
    server = await serve(database.url, database.table)
    try:
        client = await connect(server.port, app.key)  # no Origin header: allowed by default
        assert server.store.apps[app.id].allowed_origins == ("a.example.com",)
        await cli(database, "delete", app.id)
        await closed_with(client, 4001, CHANGE_BOUND)
    finally:
        await server.close()


async def test_cli_needs_a_database_url() -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["apps", "list"], env={"REVERB_APPS_DATABASE_URL": None}
    )
    assert result.exit_code == 2 and "REVERB_APPS_DATABASE_URL" in result.stderr
    command = ["apps", "--database-url", "mysql://root:hunter2@127.0.0.1:9/test", "list"]
    result = await asyncio.to_thread(CliRunner().invoke, main, command)
    assert result.exit_code == 1 and "hunter2" not in result.output


async def test_a_second_replica_closes_a_disabled_apps_connections(database: Database) -> None:
    app = await add_app(database, "601", "tenant-601")
    env = {
        "REVERB_SCALING_ENABLED": "false",
        "REVERB_APPS_DATABASE_URL": database.url,
        "REVERB_APPS_DATABASE_TABLE": database.table,
    }
    replicas = await asyncio.gather(
        *(asyncio.to_thread(start_replica, "redis://127.0.0.1:1/0", **env) for _ in range(2))
    )
    try:
        clients = [await connect(replica.port, app.key) for replica in replicas]
        assert await trigger_ok(replicas[1].port, app)
        late = await add_app(database, "602", "tenant-602")  # added while both serve
        await eventually(lambda: trigger_ok(replicas[1].port, late))
        await cli(database, "disable", app.id)
        for client in clients:
            await closed_with(client, 4003, CHANGE_BOUND)
    finally:
        for replica in replicas:
            replica.stop()


async def test_an_outage_keeps_known_apps_served(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reverb_py.apps")
    app = await add_app(database, "701", "tenant-701")
    proxy = TcpProxy(port_of(database.url))
    await proxy.start()
    server = await serve(database.via(proxy.port), database.table, metrics_enabled=True)
    try:
        client = await connect(server.port, app.key)
        await proxy.cut()
        await eventually(lambda: _metric(server, "reverb_app_store_up", 0.0), within=CHANGE_BOUND)
        await cli(database, "disable", app.id)  # a change the server cannot see yet
        newcomer = await connect(server.port, app.key)  # known apps keep working
        await newcomer.subscribe("alerts")
        assert await trigger_ok(server.port, app)
        await newcomer.expect("panic")
        stale = value(await scrape(server.port), "reverb_app_store_stale_seconds")
        assert stale > 0
        await asyncio.sleep(0.3)
        assert value(await scrape(server.port), "reverb_app_store_stale_seconds") > stale

        await proxy.resume()
        await closed_with(client, 4003, CHANGE_BOUND)  # caught up once the database answers
        assert await _metric(server, "reverb_app_store_up", 1.0)
        assert value(await scrape(server.port), "reverb_app_store_stale_seconds") == 0
        # One line per change of state, however many retries failed in between.
        assert caplog.text.count("app store: cannot read apps") == 1
        assert caplog.text.count("app store: reading apps again") == 1
    finally:
        await server.close()
        await proxy.cut()


async def test_postgresql_notifies_every_change_at_once() -> None:
    """With a poll interval far beyond the wait, only NOTIFY can deliver the change in time."""
    async with private_table("postgresql") as database:
        await cli(database, "init-db")
        app = await add_app(database, "901", "tenant-901")
        server = await serve(database.url, database.table, poll=600)
        try:
            client = await connect(server.port, app.key)
            await cli(database, "disable", app.id)
            await closed_with(client, 4003, within=10)
        finally:
            await server.close()


async def test_a_bad_hand_edit_keeps_the_last_valid_app(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    app = await add_app(database, "801", "tenant-801")
    server = await serve(database.url, database.table)
    try:
        client = await connect(server.port, app.key)
        bad = """UPDATE {} SET options = '{{"max_connections": "many"}}' WHERE id = '801'"""
        await database.execute(bad.format(database.table))
        await eventually(lambda: _logged(caplog, "invalid row for app 801"))
        assert "still serving its last valid version" in caplog.text
        await client.subscribe("alerts")
        assert await trigger_ok(server.port, app)
        await client.expect("panic")
        await cli(database, "set", app.id, "max_connections", "1")  # fixed by the CLI
        await eventually(lambda: _served(server, app.id, max_connections=1))
        assert caplog.text.count("invalid row for app 801") == 1
    finally:
        await server.close()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def _served(server: Server, app_id: str, **settings: Any) -> bool:
    app = server.store.apps.get(app_id)
    return app is not None and all(getattr(app, k) == v for k, v in settings.items())


async def _metric(server: Server, name: str, expected: float) -> bool:
    return value(await scrape(server.port), name) == expected


async def test_start_fails_clearly_without_the_database(database: Database) -> None:
    nothing_there = database.via(free_port())
    server = Server(Settings(host="127.0.0.1", port=0, apps_database_url=nothing_there))
    with pytest.raises(DatabaseError, match="cannot load apps from"):
        await server.start()
