"""The Python cost of one signed trigger, one connect+subscribe and one delivery, without sockets.

A loopback benchmark on a shared machine is noisy; the instructions the interpreter executes
for one request are not. This feeds the bytes the load generator sends (the same signed
`POST /apps/app-id/events`, the same upgrade and eleven `pusher:subscribe` frames) straight
into `Connection.data_received`, with a transport that only collects what is written, and
counts instructions with callgrind: the difference between a run of `--count N` and one of
`--count 2N`, divided by N, is the cost of one operation with start-up left out.

    .venv/bin/python -m benchmarks.harness trigger            # instructions per trigger
    .venv/bin/python -m benchmarks.harness connect --rev main # per connect+subscribe, at main
    .venv/bin/python -m benchmarks.harness connect --memory   # Python bytes held per connection
    .venv/bin/python -m benchmarks.harness delivery --subscribers 1000 --per-round 4

`delivery` subscribes `--subscribers` sockets to one channel and broadcasts `--count` events
through the app's hub, `--per-round` of them before the write coalescer runs (the frames one
socket write then carries), on uvloop; the difference is divided by the extra deliveries
(broadcasts times subscribers). The server's time on a real run is this plus the loopback send
per write (see benchmarks/README.md, "The generator's ceiling"), which no harness without
sockets can show.

`--rev` runs `reverb_py/` as it was at a git revision (extracted as `run --server
reverb-py@REV` does), so a change and its parent are counted on the same interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.fake_transport import CountingTransport, FakeTransport

APP_ID, KEY, SECRET = "app-id", "app-key", "app-secret"
CHANNELS_PER_SOCKET = 11
CHANNEL = "fanout"
_TOTAL = re.compile(rb"^summary:\s*(\d+)", re.MULTILINE)


class StatusTransport(FakeTransport):
    """Keeps only the answers' status lines: a trigger's answer is all its count checks."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[bytes] = []

    def write(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            self.statuses.append(data[9:12])


class Loop:
    """The one loop method the write coalescer uses; the harness runs what it scheduled."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.ready.append(callback)

    def run_ready(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def trigger_request(sequence: int) -> bytes:
    """What loadgen.c's http_send writes: signed, with body_md5, to one channel."""
    body = b'{"name":"bench","channels":["bench"],"data":"bt:%d:%d"}' % (
        time.monotonic_ns(),
        sequence,
    )
    md5 = hashlib.md5(body).hexdigest()
    query = f"auth_key={KEY}&auth_timestamp={int(time.time())}&auth_version=1.0&body_md5={md5}"
    signature = hmac.new(
        SECRET.encode(), f"POST\n/apps/{APP_ID}/events\n{query}".encode(), hashlib.sha256
    ).hexdigest()
    head = (
        f"POST /apps/{APP_ID}/events?{query}&auth_signature={signature} HTTP/1.1\r\n"
        "Host: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


UPGRADE = (
    f"GET /app/{KEY}?protocol=7&client=loadgen&version=1.0&flash=false HTTP/1.1\r\n"
    "Host: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


def _masked_text(payload: bytes) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])


SUBSCRIBE = _masked_text(b'{"event":"pusher:subscribe","data":{"channel":"%s"}}' % CHANNEL.encode())
# About the size of the generator's benchmark event (its send time and some padding).
PAYLOAD = (
    b'{"event":"bench","channel":"fanout","data":"{\\"t\\":1234567890123,\\"pad\\":\\"%s\\"}"}'
    % (b"x" * 16)
)


def subscribes(sequence: int) -> bytes:
    """The eleven subscribes of one `connections` socket, as one read."""
    return b"".join(
        _masked_text(
            b'{"event":"pusher:subscribe","data":{"channel":"hold-%d-%d"}}' % (j, sequence % 100)
        )
        for j in range(CHANNELS_PER_SOCKET)
    )


class Harness:
    """A router and a write coalescer for fake transports. The coalescer runs on `loop` when one
    is given (the delivery count runs on uvloop), else on the harness's own `Loop`, which
    `triggers` and `connects` turn themselves."""

    def __init__(self, loop: Any = None) -> None:
        from reverb_py.config import App, Settings
        from reverb_py.router import Router
        from reverb_py.scaling.cluster import Cluster
        from reverb_py.transport.connection import ConnectionLimits, WriteCoalescer
        from reverb_py.webhooks import Webhooks

        settings = Settings(host="127.0.0.1", port=0, apps=(App(APP_ID, KEY, SECRET),))
        self.router = Router(settings, Cluster("harness", 10.0), Webhooks(settings))
        self.loop = Loop() if loop is None else loop
        # the revisions before the delivery-latency histogram had no second argument
        latency = getattr(self.router.api, "delivery_latency", None)
        extra = () if latency is None else (latency,)
        self.coalescer = WriteCoalescer(self.loop, *extra)  # type: ignore[arg-type]
        self.limits = ConnectionLimits(
            max_body=settings.max_request_size,
            max_header=settings.max_header_size,
            write_buffer_limit=settings.write_buffer_limit,
        )
        self.registry: set[Any] = set()

    def connection(self, transport: FakeTransport) -> Any:
        from reverb_py.transport.connection import Connection

        connection = Connection(self.router, self.coalescer, self.limits, self.registry)
        connection.connection_made(transport)  # type: ignore[arg-type]
        return connection

    def triggers(self, count: int) -> list[bytes]:
        """`count` triggers on one keep-alive connection, one request per read as the
        generator's eight connections send them; the status of each answer. The same request each
        time, so that building requests costs the count nothing (the server keeps no memory of
        the triggers it has seen)."""
        request = trigger_request(0)
        transport = StatusTransport()
        connection = self.connection(transport)
        for _ in range(count):
            connection.data_received(request)
            self.loop.run_ready()
        return transport.statuses

    def connects(self, count: int) -> list[Any]:
        """`count` sockets upgraded and subscribed to eleven channels each, kept open."""
        variants = [subscribes(i) for i in range(100)]  # built once: not part of the count
        connections = []
        for i in range(count):
            connection = self.connection(StatusTransport())
            connection.data_received(UPGRADE)
            self.loop.run_ready()
            connection.data_received(variants[i % 100])
            self.loop.run_ready()
            connections.append(connection)
        return connections


async def _drain() -> None:
    """Loop turns until the coalescer has written every round (its slices, one per turn)."""
    for _ in range(16):
        await asyncio.sleep(0)


async def fan_out(subscribers: int, per_round: int, broadcasts: int) -> CountingTransport:
    """`broadcasts` events to `subscribers` sockets of CHANNEL; the last socket's transport."""
    harness = Harness(asyncio.get_running_loop())
    transports = [CountingTransport() for _ in range(subscribers)]
    for transport in transports:
        connection = harness.connection(transport)
        connection.data_received(UPGRADE)
        connection.data_received(SUBSCRIBE)
    await _drain()
    hub = harness.router.hubs_by_id[APP_ID]
    assert len(hub.channels[CHANNEL].subscribers) == subscribers
    for done in range(0, broadcasts, per_round):
        for _ in range(min(per_round, broadcasts - done)):
            hub.broadcast(CHANNEL, PAYLOAD)
        await _drain()
    return transports[-1]


def run(args: argparse.Namespace, count: int) -> None:
    """The counted child: `count` operations, checked so that a failing one is not counted."""
    if args.operation == "delivery":
        import uvloop

        last = uvloop.run(fan_out(args.subscribers, args.per_round, count))
        if last.writes == 0:
            raise SystemExit("the last subscriber was written nothing")
        return
    harness = Harness()
    if args.operation == "trigger":
        statuses = harness.triggers(count)
        if statuses != [b"200"] * count:
            raise SystemExit(f"not every trigger was answered 200: {set(statuses)}")
    else:
        connections = harness.connects(count)
        subscribed = sum(len(c.handler.channels) for c in connections)
        if subscribed != count * CHANNELS_PER_SOCKET:
            raise SystemExit(f"only {subscribed} subscriptions succeeded")


def memory(count: int) -> float:
    """Python bytes still allocated per open, subscribed connection (tracemalloc)."""
    harness = Harness()
    harness.connects(50)  # channels, caches and interned names settle first
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = harness.connects(count)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return (after - before) / count


def instructions(args: argparse.Namespace, count: int) -> int:
    """Callgrind's total for 2*count operations minus that for count."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    env = dict(os.environ, PYTHONHASHSEED="0")
    totals = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in (count, 2 * count):
            out = Path(scratch) / f"callgrind.{n}"
            command = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
            command += [sys.executable, "-m", "benchmarks.harness", args.operation, "--run", str(n)]
            command += ["--subscribers", str(args.subscribers), "--per-round", str(args.per_round)]
            command += ["--rev", args.rev] if args.rev else []
            subprocess.run(command, env=env, check=True, capture_output=True)
            match = _TOTAL.search(out.read_bytes())
            assert match is not None, "callgrind wrote no summary"
            totals.append(int(match.group(1)))
    return totals[1] - totals[0]


DEFAULT_COUNT = {"trigger": 2000, "connect": 500, "delivery": 100}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness")
    parser.add_argument("operation", choices=list(DEFAULT_COUNT))
    parser.add_argument(
        "--count", type=int, default=0, help="operations (for delivery: broadcasts) per run"
    )
    parser.add_argument("--rev", help="count reverb_py/ as it was at this git revision")
    parser.add_argument("--memory", action="store_true", help="bytes per connection instead")
    parser.add_argument("--subscribers", type=int, default=1000, help="delivery: sockets")
    parser.add_argument("--per-round", type=int, default=4, help="delivery: frames per write")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the counted child
    args = parser.parse_args()
    if args.rev:
        from benchmarks.servers import checkout

        sys.path.insert(0, str(checkout(args.rev)))
    if args.run is not None:
        run(args, args.run)
        return
    if args.memory:
        if args.operation != "connect":
            raise SystemExit("--memory measures connections")
        print(f"{memory(args.count or 2000):.0f} bytes of Python objects per connection")
        return
    count = args.count or DEFAULT_COUNT[args.operation]
    extra = instructions(args, count)
    if args.operation == "delivery":
        print(
            f"{extra / (count * args.subscribers):,.0f} instructions per delivery "
            f"({args.subscribers} subscribers, {args.per_round} frames per write, "
            f"{count} vs {2 * count} broadcasts, callgrind)"
        )
        return
    per = extra / count
    print(f"{per:,.0f} instructions per {args.operation} ({count} vs {2 * count}, callgrind)")


if __name__ == "__main__":
    main()
