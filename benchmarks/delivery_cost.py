"""The Python cost of one delivery, without the kernel's: a socket-free fan-out under callgrind.

`python -m benchmarks.delivery_cost [--subscribers 1000] [--per-round 4] [--broadcasts 100]`
builds real `Connection`s, upgraded and subscribed through their own parsers, on transports
that only count what they are given, and broadcasts events through the app's hub, `--per-round`
of them before the write coalescer runs (the frames one socket write then carries). It runs
itself twice under `valgrind --tool=callgrind`, with `--broadcasts` and with twice as many, and
prints the difference in instructions divided by the extra deliveries: set-up, start-up and
the interpreter's own start cancel out. The server's time on a real run is this plus the
loopback send per write (see benchmarks/README.md, "The generator's ceiling"), which no
harness without sockets can show.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from typing import Any

import uvloop
from websockets.frames import Frame, Opcode

from reverb_py.config import App, Settings
from reverb_py.server import Server
from reverb_py.transport.connection import Connection, ConnectionLimits, WriteCoalescer

APP = App(id="app-id", key="app-key", secret="app-secret")
CHANNEL = "fanout"
UPGRADE = (
    b"GET /app/app-key?protocol=7&client=js&version=8.4.0 HTTP/1.1\r\nHost: x\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
SUBSCRIBE = Frame(
    Opcode.TEXT, b'{"event":"pusher:subscribe","data":{"channel":"%s"}}' % CHANNEL.encode()
).serialize(mask=True, extensions=[])
# About the size of the generator's benchmark event (its send time and some padding).
PAYLOAD = (
    b'{"event":"bench","channel":"fanout","data":"{\\"t\\":1234567890123,\\"pad\\":\\"%s\\"}"}'
    % (b"x" * 16)
)


class CountingTransport:
    """What a Connection uses of its transport; every write succeeds at once."""

    def __init__(self) -> None:
        self.writes = 0
        self.written = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def _drain() -> None:
    """Loop turns until the coalescer has written every round (its slices, one per turn)."""
    for _ in range(16):
        await asyncio.sleep(0)


async def fan_out(subscribers: int, per_round: int, broadcasts: int) -> CountingTransport:
    server = Server(Settings(host="127.0.0.1", port=0, apps=(APP,)))
    loop = asyncio.get_running_loop()
    coalescer = WriteCoalescer(loop, server.router.api.delivery_latency)
    limits = ConnectionLimits(max_body=65536, max_header=8192, write_buffer_limit=1 << 20)
    transports = []
    for _ in range(subscribers):
        connection = Connection(server.router, coalescer, limits, set())
        transport = CountingTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(UPGRADE)
        connection.data_received(SUBSCRIBE)
        transports.append(transport)
    await _drain()
    hub = server.router.hubs_by_id[APP.id]
    assert len(hub.channels[CHANNEL].subscribers) == subscribers
    for done in range(0, broadcasts, per_round):
        for _ in range(min(per_round, broadcasts - done)):
            hub.broadcast(CHANNEL, PAYLOAD)
        await _drain()
    return transports[-1]


def _instructions(args: argparse.Namespace, broadcasts: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "benchmarks.delivery_cost", "--inside"]
    command += ["--subscribers", str(args.subscribers), "--per-round", str(args.per_round)]
    command += ["--broadcasts", str(broadcasts)]
    environ = {**os.environ, "PYTHONHASHSEED": "0"}  # the same interpreter work in both runs
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environ)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if collected is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(collected.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delivery_cost", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=4)
    parser.add_argument("--broadcasts", type=int, default=100)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        last = uvloop.run(fan_out(args.subscribers, args.per_round, args.broadcasts))
        print(f"last socket: {last.writes} writes, {last.written} bytes")
        return
    base = _instructions(args, args.broadcasts)
    double = _instructions(args, 2 * args.broadcasts)
    deliveries = args.broadcasts * args.subscribers
    print(
        f"{(double - base) / deliveries:.0f} instructions per delivery "
        f"({args.subscribers} subscribers, {args.per_round} frames per write, "
        f"{args.broadcasts} more broadcasts: {double - base} instructions)"
    )


if __name__ == "__main__":
    main()
