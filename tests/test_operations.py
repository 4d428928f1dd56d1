"""Running in production: graceful drain on signals, readiness, TLS, connection-storm limits,
the fd limit and logs that are useful and never leak a secret.

The signal tests run `python -m reverb_py start` as a real process, as an orchestrator would.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pusher
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pusher.pusher_client import PusherClient

from reverb_py.ratelimit import ClientAddress, NewConnectionLimiter, parse_networks
from reverb_py.server import raise_fd_limit
from tests.clock import ManualClock, eventually
from tests.conftest import APP, PusherSocket, Running, ServerFactory, app_with
from tests.redis_topologies import write_pem
from tests.replicas import ROOT, free_port, wait_for
from tests.test_websocket_protocol import closed_with

SECRET = "s3cret-never-logged-4f9a"
REDIS_PASSWORD = "redis-pw-never-logged-77c1"


# ---------------------------------------------------------------------------------------------
# A server process started through the CLI


class Process:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "REDIS_"))},
            "REVERB_APP_ID": APP.id,
            "REVERB_APP_KEY": APP.key,
            "REVERB_APP_SECRET": SECRET,
            **(env or {}),
        }
        self.log: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "reverb_py", "start", "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *args],
            env=environment,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            text=True,
        )
        wait_for(f"http://127.0.0.1:{self.port}/up")

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()

    async def connect(self) -> PusherSocket:
        url = f"ws://127.0.0.1:{self.port}/app/{APP.key}?protocol=7"
        ws = await websockets.connect(url)
        established = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert established["event"] == "pusher:connection_established", established
        return PusherSocket(ws, json.loads(established["data"])["socket_id"])


async def http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, bytes]:
    """One request on an open keep-alive connection: the status and the body."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


# ---------------------------------------------------------------------------------------------
# Graceful shutdown


@pytest.mark.alone
async def test_sigterm_drains_every_client_with_4200_and_exits_0() -> None:
    drain = 2.0
    server = Process("--drain-seconds", str(int(drain)))
    try:
        clients = [await server.connect() for _ in range(6)]
        # A load balancer's health checker keeps its connection open: it must see the flip.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert (await http_get(reader, writer, "/ready"))[0] == 200

        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status, body = await http_get(reader, writer, "/ready")
        for _ in range(50):
            if status == 503:
                break
            await asyncio.sleep(0.02)
            status, body = await http_get(reader, writer, "/ready")
        assert status == 503, body
        assert (await http_get(reader, writer, "/up"))[0] == 200  # alive, just not ready
        # Readiness failed before the drain was over: some clients were still connected.
        assert sum(1 for client in clients if client.ws.protocol.close_rcvd is None) >= 2
        # New WebSockets are refused before the upgrade; the HTTP API is still served.
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{server.port}/app/{APP.key}")
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["code"] == 503
        backend = pusher.Pusher(
            app_id=APP.id, key=APP.key, secret=SECRET, host="127.0.0.1", port=server.port, ssl=False
        )
        assert await asyncio.to_thread(backend.trigger, "alerts", "late", {}) == {}

        async def told_to_reconnect(client: PusherSocket) -> float:
            error = await client.expect("pusher:error", timeout=drain + 2)
            received = time.monotonic()
            assert error["data"]["code"] == 4200
            assert (await closed_with(client.ws, timeout=2)).code == 4200
            return received

        closed_at = await asyncio.gather(*(told_to_reconnect(client) for client in clients))

        code = await asyncio.to_thread(server.process.wait, drain + 5)
        exited = time.monotonic() - signalled
        assert code == 0
        assert exited < drain + 2.5, f"took {exited:.1f} s to exit"
        # The closes were spread over the window, not sent all at once.
        assert max(closed_at) - min(closed_at) > drain / 2
        logs = server.logs()
        assert "SIGTERM received" in logs
        assert "telling 6 clients to reconnect (4200) over 2.0 s" in logs
        assert "drain finished" in logs
        writer.close()
    finally:
        server.stop()


async def test_sigint_also_drains_and_exits_0() -> None:
    server = Process("--drain-seconds", "0")
    try:
        client = await server.connect()
        server.process.send_signal(signal.SIGINT)
        assert (await client.expect("pusher:error", timeout=3))["data"]["code"] == 4200
        assert await asyncio.to_thread(server.process.wait, 10) == 0
        assert "SIGINT received" in server.logs()
    finally:
        server.stop()


async def test_a_second_signal_cuts_the_drain_short() -> None:
    server = Process("--drain-seconds", "60")
    try:
        for _ in range(20):
            await server.connect()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # well into a drain that would take a minute
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(server.process.wait, 15) == 0
        assert time.monotonic() - signalled < 5
        logs = server.logs()
        assert "SIGINT received again: stopped draining" in logs, logs
        assert "stopped" in logs
    finally:
        server.stop()


async def test_a_failing_drain_still_closes_everything(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the drain (a fault no client can cause, hence the monkeypatch) must not leave
    the listener open, the webhooks unflushed or the other replicas without a goodbye."""
    running = await start_server()
    server, port = running.server, running.port
    closed: list[str] = []

    async def broken_drain() -> None:
        raise RuntimeError("drain bug")

    async def webhooks_close() -> None:
        closed.append("webhooks")

    monkeypatch.setattr(server, "drain", broken_drain)
    monkeypatch.setattr(server.webhooks, "close", webhooks_close)
    serving = asyncio.create_task(server.run_until_signalled())
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(RuntimeError, match="drain bug"):
        await asyncio.wait_for(serving, 10)
    assert closed == ["webhooks"]
    assert server._stopped.is_set()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_upgrade_on_a_kept_alive_connection_during_drain_gets_503(
    start_server: ServerFactory,
) -> None:
    """An HTTP connection opened before the drain can still ask to upgrade: it must be told to
    go elsewhere, not be served."""
    running = await start_server(drain_seconds=1)
    holder = await running.connect()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    drain = asyncio.create_task(running.server.drain())
    await holder.expect("pusher:error")
    writer.write(
        f"GET /app/{APP.key}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 3)
    assert data.startswith(b"HTTP/1.1 503 "), data
    assert b"Retry-After: 1" in data
    assert data.endswith(b'{"error":"Draining: connect to another replica","code":503}')
    writer.close()
    await drain


async def finish_drain(drain: asyncio.Task[None], clock: ManualClock, step: float) -> None:
    """Move the clock by `step` whenever the drain waits on it, until it is done."""
    while not drain.done():
        await eventually(lambda: drain.done() or clock.sleeping > 0)
        clock.advance(step)
    await drain


async def test_a_drain_spreads_the_4200_closes_over_its_window(
    start_server: ServerFactory,
) -> None:
    """Ten clients, a 2 s window: one is told to reconnect every 0.2 s, by the server's clock."""
    clock = ManualClock()
    running = await start_server(drain_seconds=2, clock=clock)
    clients = [await running.connect() for _ in range(10)]
    told = [asyncio.ensure_future(client.expect("pusher:error", timeout=10)) for client in clients]
    drain = asyncio.create_task(running.server.drain(clock.sleep))

    def told_so_far() -> int:
        return sum(each.done() for each in told)

    for step in range(1, 11):
        await eventually(lambda n=step: told_so_far() == n)
        if step < 10:
            await eventually(lambda: clock.sleeping == 1)
            assert told_so_far() == step  # the next one waits for the clock
            assert clock.sleeps[-1] == pytest.approx(0.2)
            clock.advance(0.2)
    assert {(await each)["data"]["code"] for each in told} == {4200}
    await finish_drain(drain, clock, 0.05)
    assert clock.now - 100.0 == pytest.approx(1.8, abs=0.2)  # no waiting past the last close


async def test_drain_log_counts_one_client_in_the_singular(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(drain_seconds=0)
    await running.connect()
    with caplog.at_level(logging.INFO, logger="reverb_py"):
        await running.server.drain()
    assert "telling 1 client to reconnect" in caplog.text
    assert "1 client told to reconnect, 0 unanswered closes aborted" in caplog.text


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificate() -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reverb-py test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        write_pem(cert, key, cert_path, key_path)
        yield cert_path, key_path


async def test_tls_serves_wss_and_https_on_one_port(
    start_server: ServerFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    running = await start_server(tls_cert=str(cert), tls_key=str(key))
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{running.port}/app/{APP.key}?protocol=7"
    async with websockets.connect(url, ssl=trust) as ws:
        established = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert established["event"] == "pusher:connection_established"
        socket_id = json.loads(established["data"])["socket_id"]
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "news"}}))
        await asyncio.wait_for(ws.recv(), 2)

        def https(path: str, body: bytes | None = None) -> bytes:
            request = urllib.request.Request(f"https://127.0.0.1:{running.port}{path}", body)
            with urllib.request.urlopen(request, timeout=5, context=trust) as response:
                return response.read()

        assert await asyncio.to_thread(https, "/up") == b'{"health":"OK"}'
        # The HTTP API over https, signed as the SDK signs it.
        sdk = PusherClient(app_id=APP.id, key=APP.key, secret=APP.secret)
        signed = sdk.trigger.make_request("news", "tls-event", {"over": "https"})
        await asyncio.to_thread(https, signed.signed_path, signed.body)
        event = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert event["event"] == "tls-event" and socket_id

    with pytest.raises((OSError, websockets.InvalidMessage, websockets.InvalidHandshake)):
        await websockets.connect(f"ws://127.0.0.1:{running.port}/app/{APP.key}", open_timeout=2)


# ---------------------------------------------------------------------------------------------
# Connection limits


async def refused_with(running: Running, code: int, headers: dict[str, str] | None = None) -> None:
    async with websockets.connect(running.url(), additional_headers=headers) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert message["event"] == "pusher:error", message
        assert message["data"]["code"] == code, message
        assert (await closed_with(ws)).code == code


async def test_app_connection_limit_refuses_with_4004(start_server: ServerFactory) -> None:
    running = await start_server(app_with(max_connections=2))
    first = await running.connect()
    await running.connect()
    await refused_with(running, 4004)
    await first.close()
    await asyncio.sleep(0.1)
    await running.connect()  # room again


async def test_per_ip_new_connection_rate_limit(start_server: ServerFactory) -> None:
    """Over the limit the socket is refused with 4100 (pusher-js waits a second and retries);
    a second later the same address may connect again."""
    running = await start_server(max_connections_per_ip_per_second=3, metrics_enabled=True)
    for _ in range(3):
        await running.connect()
    await refused_with(running, 4100)
    await refused_with(running, 4100)
    running.sweep_after(1.0)  # the window is over: the sweep forgets it
    await running.connect()
    assert running.server.metrics is not None
    body = running.server.metrics.render().decode()
    assert f'reverb_connections_refused_total{{app_id="{APP.id}",reason="rate_limited"}} 2.0' in (
        body
    )


async def test_per_ip_limit_uses_forwarded_for_only_from_trusted_proxies(
    start_server: ServerFactory,
) -> None:
    trusting = await start_server(
        max_connections_per_ip_per_second=1, trusted_proxies=("127.0.0.0/8",)
    )
    alice = {"X-Forwarded-For": "203.0.113.7"}
    await trusting.connect(additional_headers=alice)
    await refused_with(trusting, 4100, alice)
    # A client cannot dodge the limit by prepending addresses: only the proxy's hop counts.
    await refused_with(trusting, 4100, {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    await trusting.connect(additional_headers={"X-Forwarded-For": "203.0.113.8"})

    untrusting = await start_server(max_connections_per_ip_per_second=1)
    await untrusting.connect(additional_headers=alice)
    await refused_with(untrusting, 4100, {"X-Forwarded-For": "203.0.113.8"})


def test_client_address_from_forwarded_for() -> None:
    address = ClientAddress(parse_networks("test", ["10.0.0.0/8", "192.168.1.1"]))
    assert address.resolve("10.1.2.3", ["1.2.3.4"]) == "1.2.3.4"
    assert address.resolve("10.1.2.3", ["6.6.6.6, 1.2.3.4, 10.9.9.9"]) == "1.2.3.4"
    assert address.resolve("10.1.2.3", ["6.6.6.6", "1.2.3.4"]) == "1.2.3.4"  # repeated header
    assert address.resolve("::ffff:10.1.2.3", ["1.2.3.4"]) == "1.2.3.4"  # dual-stack peer
    assert address.resolve("8.8.8.8", ["1.2.3.4"]) == "8.8.8.8"  # untrusted peer
    assert address.resolve("10.1.2.3", []) == "10.1.2.3"
    assert address.resolve("10.1.2.3", ["10.0.0.9, 192.168.1.1"]) == "10.0.0.9"
    assert ClientAddress(()).resolve("10.1.2.3", ["1.2.3.4"]) == "10.1.2.3"
    with pytest.raises(ValueError, match="not-an-ip"):
        parse_networks("REVERB_TRUSTED_PROXIES", ["not-an-ip"])


def test_rate_limiter_windows_and_bounded_memory() -> None:
    limiter = NewConnectionLimiter(2, max_tracked=3)
    assert [limiter.hit("a", 0.0) for _ in range(3)] == [1, 2, 3]
    assert limiter.hit("a", 1.0) == 1  # a new window
    for ip in ("b", "c"):
        limiter.hit(ip, 1.0)
    assert limiter.hit("d", 1.0) == 1  # beyond max_tracked: not tracked (fail open) ...
    assert "d" not in limiter.windows
    limiter.sweep(2.5)  # ... until the sweep forgets finished windows
    assert limiter.windows == {}


def test_fd_soft_limit_raised_to_hard_limit() -> None:
    limit = raise_fd_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit == soft
    assert soft == hard or hard == resource.RLIM_INFINITY


# ---------------------------------------------------------------------------------------------
# Logs


async def test_json_logs_and_secrets_never_logged() -> None:
    """Start with a known secret and a Redis password, with frame logging on, make traffic that
    fails authentication in every way, and find neither secret in any log line, metric or
    error body."""
    server = Process(
        "--log-format",
        "json",
        "--debug",
        "--metrics",
        "--drain-seconds",  # scaled out, a drain serves the HTTP API for all of it: not tested here
        "0",
        env={
            "REVERB_SCALING_ENABLED": "true",
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        },
    )
    bodies: list[bytes] = []
    try:
        client = await server.connect()
        await client.subscribe("private-orders", f"{APP.key}:{'0' * 64}")  # bad signature
        await client.subscribe(
            "presence-room", f"{APP.key}:{'0' * 64}", json.dumps({"user_id": "1"})
        )
        await client.send("pusher:signin", {"auth": f"{APP.key}:{'0' * 64}", "user_data": "{}"})
        good = pusher.Pusher(
            app_id=APP.id, key=APP.key, secret=SECRET, host="127.0.0.1", port=server.port, ssl=False
        )
        bad = pusher.Pusher(
            app_id=APP.id,
            key=APP.key,
            secret="wrong",
            host="127.0.0.1",
            port=server.port,
            ssl=False,
        )
        await asyncio.to_thread(good.trigger, "news", "ok", {})
        with pytest.raises(pusher.errors.PusherBadAuth) as refused:
            await asyncio.to_thread(bad.trigger, "news", "nope", {})
        bodies.append(str(refused.value).encode())

        def get(path: str) -> bytes:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}") as reply:
                    return reply.read()
            except urllib.error.HTTPError as error:
                return error.read()

        for path in ("/metrics", "/ready", f"/apps/{APP.id}/channels", "/nope"):
            bodies.append(await asyncio.to_thread(get, path))
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 15) == 0
        logs = server.logs()
    finally:
        server.stop()

    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]  # all JSON
    messages = [line["message"] for line in lines]
    start = next(m for m in messages if "listening on" in m)
    assert f"apps={APP.id}(key={APP.key})" in start
    assert "scaling=redis(redis://127.0.0.1:1, channel=reverb)" in start
    assert "metrics=/metrics" in start
    assert any(m.startswith("< ") for m in messages), "--debug logs frames"
    for text in [logs, *(body.decode() for body in bodies)]:
        assert SECRET not in text
        assert REDIS_PASSWORD not in text
    assert {"time", "level", "logger", "message"} <= set(lines[0])
