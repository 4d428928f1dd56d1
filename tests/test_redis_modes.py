"""Replicas linked through Redis Sentinel, Redis Cluster and a TLS-only Redis, all real
processes on free loopback ports: an alert triggered on one replica reaches a subscriber on
each, exactly once, before and after the Redis master is killed (and when it is triggered while
there is no master), without restarting reverb-py. Sentinel runs plain and over TLS, Cluster
over TLS; TLS always with a private CA and client certificates. Passwords are random per test
and must never appear in the replicas' logs."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisError

from reverb_py.config import RedisSettings
from reverb_py.scaling.connect import connect
from tests.conftest import PusherSocket
from tests.redis_topologies import ClusterSetup, SentinelSetup, TlsServer
from tests.replicas import RedisServer, Replica, start_replica

pytestmark = pytest.mark.redis

CHANNEL = "alarms"
SCALING_CHANNEL = "reverb-modes"
# From the kill to both links back: the failover itself (about 2 s with the test's 1 s
# timeouts) plus the link's reconnect back-off (at most 5 s); a generous margin on top.
AFTER_FAILOVER_SECONDS = 20.0

StartReplicas = Callable[..., list[Replica]]


@pytest.fixture
def replicas() -> Iterator[StartReplicas]:
    started: list[Replica] = []

    def start(count: int, **env: str) -> list[Replica]:
        for _ in range(count):
            started.append(start_replica("", REVERB_SCALING_CHANNEL=SCALING_CHANNEL, **env))
        return started[-count:]

    yield start
    for replica in started:
        replica.stop(signal.SIGKILL)


@pytest.fixture(params=["plain", "TLS"])
def sentinel_setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelSetup]:
    """Passwords on the servers and the sentinels; with TLS (and client certificates) for
    every connection, the sentinels' included."""
    password, sentinel_password = secrets.token_hex(12), secrets.token_hex(12)
    setup = SentinelSetup(tmp_path, password, sentinel_password, tls=request.param == "TLS")
    try:
        setup.start_all()
        yield setup
    finally:
        setup.stop()


@pytest.fixture(params=["stream's master, TLS", "another master"])
def cluster_setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterSetup]:
    """A cluster whose `kill_master()` kills the master holding the link's stream (over TLS,
    with client certificates), or another master."""
    tls = request.param.endswith("TLS")
    setup = ClusterSetup(tmp_path, secrets.token_hex(12), key=SCALING_CHANNEL, tls=tls)
    try:
        setup.start_all()
        if request.param == "another master":
            setup.key = setup.key_elsewhere(SCALING_CHANNEL)
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path, secrets.token_hex(12))
    try:
        server.start_tls()
        yield server
    finally:
        server.stop()


async def subscribed(replicas: list[Replica]) -> list[PusherSocket]:
    clients = []
    for replica in replicas:
        client = await replica.connect()
        answer = await client.subscribe(CHANNEL)
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer
        clients.append(client)
    return clients


async def arrivals(client: PusherSocket, event: str, first: float, more: float) -> list[Any]:
    """The data of every `event` frame: waits up to `first` seconds for one, then `more`
    seconds for any duplicate; other events (pings, late probes) are skipped."""
    loop = asyncio.get_running_loop()
    got: list[Any] = []
    deadline = loop.time() + first
    while (left := deadline - loop.time()) > 0:
        try:
            message = await client.recv(left)
        except TimeoutError:
            break
        if message["event"] == event:
            got.append(message["data"])
            deadline = min(deadline, loop.time() + more)
    return got


async def until_linked(sender: Replica, clients: list[PusherSocket]) -> None:
    """Trigger probes until every client has heard one: the replicas have found each other
    (they start independently, and each link connects in its own time)."""
    heard: set[int] = set()
    for attempt in range(40):
        await sender.call(sender.sdk().trigger, CHANNEL, "probe", {"attempt": attempt})
        for index, client in enumerate(clients):
            if await arrivals(client, "probe", 0.5, 0):
                heard.add(index)
        if len(heard) == len(clients):
            return
    raise AssertionError(f"only clients {sorted(heard)} heard a probe")


async def trigger(sender: Replica, number: int) -> None:
    response = await sender.call(sender.sdk().trigger, CHANNEL, "panic", {"alert": number})
    assert response == {}, response  # the SDK's answer to a 200


async def everyone_got_once(
    clients: list[PusherSocket], number: int, within: float, last: bool = True
) -> None:
    """Every client got alert `number`, once. Only a test's last check waits a second for a
    duplicate: a duplicate of an earlier alert is what the next check reads first, and fails."""
    duplicates = 1.0 if last else 0.0
    received = await asyncio.gather(*(arrivals(c, "panic", within, duplicates) for c in clients))
    got = [[json.loads(data) for data in each] for each in received]
    assert got == [[{"alert": number}]] * len(clients)


def assert_secrets_not_logged(replicas: list[Replica], *passwords: str) -> None:
    for replica in replicas:
        logs = replica.logs()
        assert all(password not in logs for password in passwords), logs


async def survive_master_loss(
    setup: SentinelSetup | ClusterSetup, start: StartReplicas, *passwords: str
) -> None:
    a, b = start(2, **setup.env())
    clients = await subscribed([a, b])
    await until_linked(a, clients)
    await trigger(a, 1)
    await everyone_got_once(clients, 1, within=5, last=False)

    await asyncio.to_thread(setup.kill_master)
    await trigger(a, 2)  # accepted while Redis has no master: queued, not lost
    await asyncio.to_thread(setup.wait_for_new_master)
    await everyone_got_once(clients, 2, within=AFTER_FAILOVER_SECONDS, last=False)
    await trigger(b, 3)
    await everyone_got_once(clients, 3, within=5)

    assert a.process.poll() is None and b.process.poll() is None  # never restarted
    assert_secrets_not_logged([a, b], *passwords)


async def test_sentinel_failover_loses_nothing(
    sentinel_setup: SentinelSetup, replicas: StartReplicas
) -> None:
    await survive_master_loss(
        sentinel_setup, replicas, sentinel_setup.password, sentinel_setup.sentinel_password
    )


async def test_cluster_master_loss_loses_nothing(
    cluster_setup: ClusterSetup, replicas: StartReplicas
) -> None:
    await survive_master_loss(cluster_setup, replicas, cluster_setup.password)


async def test_tls_with_ca_and_client_certificate(
    tls_server: TlsServer, replicas: StartReplicas
) -> None:
    tls = tls_server.tls
    env = {
        "REDIS_URL": f"rediss://:{tls_server.password}@127.0.0.1:{tls_server.port}/0",
        "REDIS_CA_FILE": str(tls.ca),
        "REDIS_CERT_FILE": str(tls.client_cert),
        "REDIS_KEY_FILE": str(tls.client_key),
    }
    a, b = replicas(2, **env)
    clients = await subscribed([a, b])
    await until_linked(a, clients)
    await trigger(b, 1)
    await everyone_got_once(clients, 1, within=5)
    assert_secrets_not_logged([a, b], tls_server.password)


@pytest.mark.parametrize(
    ("mistake", "logged"),
    [("no CA file", "certificate verify failed"), ("wrong password", "invalid username-password")],
)
async def test_refused_link_says_why_without_the_secret(
    tls_server: TlsServer, replicas: StartReplicas, mistake: str, logged: str
) -> None:
    tls = tls_server.tls
    wrong = secrets.token_hex(12)
    password = wrong if mistake == "wrong password" else tls_server.password
    env = {"REDIS_URL": f"rediss://:{password}@127.0.0.1:{tls_server.port}/0"}
    if mistake != "no CA file":
        env |= {
            "REDIS_CA_FILE": str(tls.ca),
            "REDIS_CERT_FILE": str(tls.client_cert),
            "REDIS_KEY_FILE": str(tls.client_key),
        }
    (replica,) = replicas(1, **env)
    for _ in range(100):
        if logged in replica.logs().lower():
            break
        await asyncio.sleep(0.1)
    logs = replica.logs()
    assert logged in logs.lower(), logs
    assert password not in logs and tls_server.password not in logs


async def test_sentinel_client_closes_its_sentinel_connections() -> None:
    """The link builds a new client on every reconnect: closing it must close the
    connections to the sentinels too, or each reconnect would leak them."""
    server = RedisServer()  # a plain server stands in for a sentinel: it accepts, then errs
    server.start()
    try:
        client = connect(RedisSettings(sentinels=(("127.0.0.1", server.port),)))
        with pytest.raises(RedisError):
            await client.ping()
        assert await asyncio.to_thread(clients_of, server) == 2  # ours and redis-cli's
        await client.aclose()
        assert await asyncio.to_thread(clients_of, server) == 1
    finally:
        server.stop()


def clients_of(server: RedisServer) -> int:
    listing = subprocess.run(
        ["redis-cli", "-p", str(server.port), "CLIENT", "LIST"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(listing.stdout.splitlines())
