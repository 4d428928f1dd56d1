"""The container image, built from the repository's Dockerfile and run with rootful podman.

Every container runs the way deploy/kubernetes runs the pods: as the image's non-root user,
with a read-only root filesystem and no capabilities. Clients reach it as real clients do,
through the port published on 127.0.0.1: the `pusher` SDK signs triggers, `websockets`
subscribes. Where podman cannot run at all, every test here is skipped with the reason.

The image is built on a stand-in for python:3.12-slim-bookworm (see tests/containers.py: no
registry is reachable); its size is printed, with the part reverb-py adds to the base.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pusher
import pytest
import websockets
import yaml

from tests import containers
from tests.conftest import PusherSocket
from tests.replicas import ROOT, free_port, wait_for

pytestmark = pytest.mark.container

# One tag per checkout: two checkouts testing at once on one machine never run each other's
# code under a shared name.
IMAGE = f"localhost/reverb-py:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]}"
APP_ID, APP_KEY, APP_SECRET = "100200", "container-key", "container-secret"
APP_ENV = {"REVERB_APP_ID": APP_ID, "REVERB_APP_KEY": APP_KEY, "REVERB_APP_SECRET": APP_SECRET}
# The posture of deploy/kubernetes/deployment.yaml and deploy/compose.yaml.
LOCKED_DOWN = ("--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges")
INSTALLED_VERSIONS = (
    "import importlib.metadata as m; "
    "print('\\n'.join(sorted(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())))"
)


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    reason = containers.unavailable_reason()
    if reason is not None:
        pytest.skip(f"podman cannot run containers here: {reason}")
    started = time.monotonic()
    # The builder stage gets a tag of its own, which keeps its pip layer cached between runs.
    containers.build_image(f"{IMAGE}-builder", "--target", "builder")
    containers.build_image(IMAGE)
    size = containers.image_size(IMAGE)
    base = containers.image_size(containers.BASE_IMAGE)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\ncontainer image {IMAGE}: {_megabytes(size)} (built in "
                f"{time.monotonic() - started:.0f} s); stand-in base {_megabytes(base)}; "
                f"reverb-py adds {_megabytes(size - base)} to the base"
            )
    return IMAGE


@dataclass
class Container:
    name: str
    port: int
    app_id: str = APP_ID
    key: str = APP_KEY
    secret: str = APP_SECRET

    def exec(self, *command: str) -> str:
        return containers.podman("exec", self.name, *command).stdout

    def healthcheck(self) -> tuple[int, str]:
        result = containers.podman("healthcheck", "run", self.name, check=False, timeout=60)
        return result.returncode, (result.stdout + result.stderr).strip()

    def inspect(self, template: str) -> str:
        return containers.podman("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = containers.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def sdk(self) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=self.app_id,
            key=self.key,
            secret=self.secret,
            host="127.0.0.1",
            port=self.port,
            ssl=False,
        )

    async def connect(self) -> PusherSocket:
        ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/app/{self.key}?protocol=7")
        established = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert established["event"] == "pusher:connection_established", established
        return PusherSocket(ws, json.loads(established["data"])["socket_id"])


class Runner:
    """Starts locked-down containers of the image and removes them after the test."""

    def __init__(self, image: str, tmp_path: Path) -> None:
        self.image = image
        self.tmp_path = tmp_path
        self.started: list[str] = []

    def run(
        self,
        *command: str,
        env: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        port: int = 8080,
    ) -> Container:
        """Run `reverb-py COMMAND...`; `files` are mounted read-only under /app."""
        name = f"reverb-py-test-{secrets.token_hex(4)}"
        host_port = free_port()
        args = ["run", "--detach", "--name", name, *LOCKED_DOWN]
        args += ["--publish", f"127.0.0.1:{host_port}:{port}"]
        for variable, value in (env or {}).items():
            args += ["--env", f"{variable}={value}"]
        for filename, text in (files or {}).items():
            source = self.tmp_path / filename
            source.write_text(text)
            args += ["--volume", f"{source}:/app/{filename}:ro"]
        containers.podman(*args, self.image, *command)
        self.started.append(name)
        container = Container(name, host_port)
        try:
            wait_for(f"http://127.0.0.1:{host_port}/ready", timeout=60)
        except TimeoutError:
            pytest.fail(f"container {name} never became ready:\n{container.logs()[-3000:]}")
        return container

    def remove_all(self) -> None:
        for name in self.started:
            containers.podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def runner(image: str, tmp_path: Path) -> Iterator[Runner]:
    runner = Runner(image, tmp_path)
    try:
        yield runner
    finally:
        runner.remove_all()


async def _trigger_reaches_a_subscriber(container: Container) -> None:
    """A signed trigger through the published port reaches a WebSocket subscriber there."""
    subscriber = await container.connect()
    try:
        answer = await subscriber.subscribe("alerts")
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer
        sdk = container.sdk()
        await asyncio.to_thread(sdk.trigger, "alerts", "panic", {"unit": "12B"})
        message = await subscriber.expect("panic", timeout=10)
        assert json.loads(message["data"]) == {"unit": "12B"}
    finally:
        await subscriber.close()


async def test_serves_health_and_triggers_as_a_locked_down_non_root_user(
    runner: Runner,
) -> None:
    container = runner.run("start", env=APP_ENV)
    for path, body in (("/up", {"health": "OK"}), ("/ready", {"ready": True})):
        with urllib.request.urlopen(f"http://127.0.0.1:{container.port}{path}") as response:
            assert response.status == 200
            assert json.loads(response.read()).items() >= body.items()
    assert container.exec("id", "-u").strip() == "10001"
    status = container.exec("cat", "/proc/1/status")
    capabilities = {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in status.splitlines()
        if line.startswith("Cap")
    }
    assert capabilities and not any(capabilities.values()), capabilities
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    write = containers.podman("exec", container.name, "touch", "/opt/venv/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    await _trigger_reaches_a_subscriber(container)


def test_healthcheck_is_healthy_and_unhealthy_when_the_server_does_not_answer(
    runner: Runner,
) -> None:
    container = runner.run("start", env=APP_ENV)
    assert container.healthcheck()[0] == 0
    # SIGSTOP from outside (signals from inside the container's PID namespace cannot stop its
    # init): the port still accepts connections, but nothing answers them.
    containers.podman("kill", "--signal", "STOP", container.name)
    try:
        status, output = container.healthcheck()
        assert status == 1 and "unhealthy" in output, output
    finally:
        containers.podman("kill", "--signal", "CONT", container.name)
    assert container.healthcheck()[0] == 0


LARAVEL_ENV = f"""APP_NAME="Tavira"
BROADCAST_CONNECTION=reverb
REVERB_APP_ID="{APP_ID}"
REVERB_APP_KEY="{APP_KEY}"
REVERB_APP_SECRET='{APP_SECRET}'
REVERB_SERVER_PORT="9001"
VITE_REVERB_APP_KEY="${{REVERB_APP_KEY}}"
"""


@pytest.mark.parametrize("way", ["flag", "env-file", "config", "environment"])
async def test_healthcheck_finds_the_port_however_it_was_configured(
    runner: Runner, way: str
) -> None:
    """Port 9001 set four ways. The env-file way is the documented way to run the image with
    a Laravel .env (quoted values, which `docker run --env-file` would keep as part of the
    value): mounted, and read by reverb-py's own --env-file."""
    if way == "flag":
        container = runner.run("start", "--port", "9001", env=APP_ENV, port=9001)
    elif way == "env-file":
        files = {".env": LARAVEL_ENV}
        container = runner.run("start", "--env-file", "/app/.env", files=files, port=9001)
    elif way == "config":
        toml = (
            "[server]\nport = 9001\n\n"
            f'[[apps]]\nid = "{APP_ID}"\nkey = "{APP_KEY}"\nsecret = "{APP_SECRET}"\n'
        )
        files = {"reverb.toml": toml}
        container = runner.run("start", "--config", "/app/reverb.toml", files=files, port=9001)
    else:
        container = runner.run("start", env={**APP_ENV, "REVERB_SERVER_PORT": "9001"}, port=9001)
    assert container.healthcheck()[0] == 0
    await _trigger_reaches_a_subscriber(container)


async def test_stop_drains_every_client_with_4200_and_exits_0(runner: Runner) -> None:
    container = runner.run("start", env={**APP_ENV, "REVERB_DRAIN_SECONDS": "2"})
    clients = [await container.connect() for _ in range(5)]
    # The grace period deploy/compose.yaml gives (15 s, more than the drain window plus the
    # close handshakes' 5 s): had the server not exited by then, SIGKILL would show as 137.
    stop = asyncio.create_task(
        asyncio.to_thread(containers.podman, "stop", "--time", "15", container.name)
    )
    codes = []
    for client in clients:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # a pusher:error frame with the same code comes first
                await asyncio.wait_for(client.ws.recv(), 30)
        assert closed.value.rcvd is not None, "closed without a close frame"
        codes.append(closed.value.rcvd.code)
    await stop
    assert codes == [4200] * len(clients)
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()[-3000:]
    assert "drain finished" in container.logs()


def test_the_image_installs_exactly_the_locked_versions(image: str) -> None:
    """Every package in the image is at its version in requirements.lock, so every build of
    one commit installs the same: the Dockerfile installs the lock with --require-hashes and
    --no-deps, and reverb-py itself offline. (A second build with --no-cache proved nothing
    more, at 25 s of CI.)"""
    installed = containers.podman(
        "run", "--rm", "--entrypoint", "python", image, "-c", INSTALLED_VERSIONS
    ).stdout.split()
    locked = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1].split()[0]
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith(" ")
    }
    assert any(line.startswith("reverb-py==") for line in installed), installed
    for line in installed:
        name, version = line.split("==")
        if name != "reverb-py":
            assert locked.get(name.lower().replace("_", "-")) == version, line


# ---------------------------------------------------------------------------------------------
# deploy/compose.yaml: three replicas behind nginx, linked through Redis

COMPOSE = ROOT / "deploy" / "compose.yaml"


def _render_compose(image: str, project: str, port: int) -> dict[str, Any]:
    """deploy/compose.yaml as it is, but for this host: the image built above instead of a
    build, stand-ins for the images no registry can give us here, the balancer published on a
    free loopback port, and the rlimits this host allows (open files: not 65536)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    compose = {key: value for key, value in compose.items() if not key.startswith("x-")}
    compose["name"] = project
    services = compose["services"]
    for name, service in services.items():
        if "ulimits" in service:
            nofile = containers.nofile_limit()
            service["ulimits"] = {
                "nofile": {"soft": nofile, "hard": nofile},
                "nproc": containers.NPROC_LIMIT,
            }
        if name.startswith("reverb-"):
            service.pop("build")
            service["image"] = image
    services["redis"]["image"] = containers.REDIS_IMAGE
    balancer = services["lb"]
    balancer["image"] = containers.NGINX_IMAGE
    balancer["ports"] = [f"127.0.0.1:{port}:8080"]
    balancer["volumes"] = [
        str(COMPOSE.parent / volume[2:]) if volume.startswith("./") else volume
        for volume in balancer["volumes"]
    ]
    return compose


def _local_connections(container: str) -> int:
    """reverb_connections of one replica, read inside it (compose enables /metrics)."""
    read = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/metrics').read().decode())"
    metrics = containers.podman("exec", container, "python", "-c", read).stdout
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("reverb_connections{")
    )


async def test_compose_replicas_behind_nginx_share_events_through_redis(
    image: str, tmp_path: Path
) -> None:
    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose is not installed (scripts/test.sh installs it)")
    containers.ensure_service_images()
    project = f"reverb-py-test-{secrets.token_hex(4)}"
    port = free_port()
    rendered = tmp_path / "compose.yaml"
    rendered.write_text(yaml.safe_dump(_render_compose(image, project, port)))
    compose = ["podman-compose", "--project-name", project, "--file", str(rendered)]
    environment = containers.podman_env()
    try:
        up = subprocess.run(
            [*compose, "up", "--detach"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        names = containers.podman(
            "ps",
            "--filter",
            f"label=io.podman.compose.project={project}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        replicas = sorted(name for name in names if "reverb-" in name.removeprefix(project))
        assert len(replicas) == 3, f"{names}\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        for replica in replicas:
            deadline = time.monotonic() + 60
            while containers.podman(
                "exec", replica, "python", "/opt/reverb-py/healthcheck.py", "/ready", check=False
            ).returncode:
                assert time.monotonic() < deadline, f"{replica} never became ready"
                await asyncio.sleep(0.5)
        wait_for(f"http://127.0.0.1:{port}/ready", timeout=60)
        credentials = yaml.safe_load(rendered.read_text())["services"]["reverb-1"]["environment"]
        balancer = Container(
            next(name for name in names if name not in replicas and "_lb_" in name),
            port,
            app_id=credentials["REVERB_APP_ID"],
            key=credentials["REVERB_APP_KEY"],
            secret=credentials["REVERB_APP_SECRET"],
        )
        subscribers: list[PusherSocket] = []
        # nginx spreads connections round-robin; connect until every replica holds one.
        while not all(_local_connections(replica) for replica in replicas):
            assert len(subscribers) < 12, [_local_connections(r) for r in replicas]
            subscribers.append(await balancer.connect())
            assert (await subscribers[-1].subscribe("alerts"))["event"].endswith("succeeded")
        sdk = balancer.sdk()
        # One trigger reaches one replica; every subscriber on the other two gets it through
        # Redis, each exactly once.
        await asyncio.to_thread(sdk.trigger, "alerts", "panic", {"unit": "7A"})
        for subscriber in subscribers:
            message = await subscriber.expect("panic", timeout=10)
            assert json.loads(message["data"]) == {"unit": "7A"}
            await subscriber.nothing(0.5)
            await subscriber.close()
    finally:
        subprocess.run(
            [*compose, "down", "--timeout", "1"], env=environment, capture_output=True, timeout=120
        )
        containers.podman("network", "rm", "--force", f"{project}_default", check=False)
