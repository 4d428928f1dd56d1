"""What the garbage collector walks per WebSocket connection: a full collection's pause grows
with it (docs/performance.md, "GC pauses at 10 000 sockets")."""

from __future__ import annotations

import asyncio
import gc

from benchmarks.fake_transport import CountingTransport
from benchmarks.harness import CHANNEL, SUBSCRIBE, UPGRADE
from reverb_py.config import Settings
from reverb_py.server import Server
from reverb_py.transport.connection import Connection, ConnectionLimits, WriteCoalescer
from tests.conftest import APP

SOCKETS = 200


async def subscribed(server: Server, registry: set[Connection]) -> None:
    """SOCKETS connections upgraded and subscribed to CHANNEL through their own parsers, on
    transports that take every write; returns once the coalescer has written their answers."""
    coalescer = WriteCoalescer(asyncio.get_running_loop())
    limits = ConnectionLimits(max_body=65536, max_header=8192, write_buffer_limit=1 << 20)
    upgrade = UPGRADE.replace(b"app-key", APP.key.encode())
    for _ in range(SOCKETS):
        connection = Connection(server.router, coalescer, limits, registry)
        connection.connection_made(CountingTransport())  # type: ignore[arg-type]
        connection.data_received(upgrade)
        connection.data_received(SUBSCRIBE)
        assert connection.is_websocket and connection.handler is not None
    for _ in range(4):
        await asyncio.sleep(0)


async def test_an_upgraded_subscribed_socket_leaves_four_objects_to_the_collector() -> None:
    """The Connection, its frame reader, its session and its transport: nothing of the HTTP
    request it arrived with (headers, body, the queue of answers)."""
    server = Server(Settings(host="127.0.0.1", port=0, apps=(APP,)))
    registry: set[Connection] = set()
    gc.collect()
    before = len(gc.get_objects())
    await subscribed(server, registry)
    gc.collect()
    per_socket = (len(gc.get_objects()) - before) / SOCKETS
    assert per_socket < 4.5  # 4 each, and the channel shared by all of them
    for connection in list(registry):
        connection.connection_lost(None)


async def test_a_broadcast_queues_no_tracked_object_per_socket() -> None:
    """One frame waiting for its socket's turn is the shared frame itself: a list per socket
    per broadcast is what made young collections promote thousands of objects per second."""
    server = Server(Settings(host="127.0.0.1", port=0, apps=(APP,)))
    registry: set[Connection] = set()
    await subscribed(server, registry)
    hub = server.router.hubs_by_id[APP.id]
    gc.collect()
    before = len(gc.get_objects())
    assert hub.broadcast(CHANNEL, b'{"event":"tick","channel":"fanout","data":"{}"}') == SOCKETS
    assert len(gc.get_objects()) - before < SOCKETS / 10
    hub.broadcast(CHANNEL, b'{"event":"tock","channel":"fanout","data":"{}"}')
    assert len(gc.get_objects()) - before >= SOCKETS  # two frames: now a list each
    for connection in list(registry):
        connection.connection_lost(None)
