"""Real replicas as separate processes (through the CLI) and a real redis-server, for tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pusher
import websockets

from tests.conftest import APP, PusherSocket

ROOT = Path(__file__).resolve().parent.parent
STARTUP_DEADLINE = 60.0  # seconds for a replica process to listen, on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 15.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == status:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {status} within {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """A private redis-server on a free loopback port, nothing persisted."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test.sh installs it)")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[str]
    env: dict[str, str] = field(repr=False)
    log: IO[str] | None = field(default=None, repr=False)

    def logs(self) -> str:
        """What the replica wrote to stderr so far (its log lines)."""
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sdk(self) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=APP.id,
            key=APP.key,
            secret=APP.secret,
            host="127.0.0.1",
            port=self.port,
            ssl=False,
        )

    async def call(self, function: Any, *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)

    async def connect(self) -> PusherSocket:
        ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/app/{APP.key}?protocol=7")
        established = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert established["event"] == "pusher:connection_established", established
        return PusherSocket(ws, json.loads(established["data"])["socket_id"])

    def ready(self) -> bool:
        return self.readiness()[0] == 200

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The /ready status and JSON body (0 and {} when the replica does not answer)."""
        try:
            with urllib.request.urlopen(f"{self.base}/ready", timeout=1) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return 0, {}

    def link(self) -> str:
        """The replica's Redis link, "up" or "down", as its /ready body tells it."""
        return self.readiness()[1].get("cluster", {}).get("link", "")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def _bound_port(process: subprocess.Popen[str], address_file: Path, timeout: float) -> int:
    """The port the replica bound, from its address file (written once it listens); fails at
    once, not at the deadline, when the replica exits first."""
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the replica exited ({process.returncode}) before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replica did not listen within {timeout} s")
        time.sleep(0.05)
    port: int = json.loads(address_file.read_bytes())["port"]
    return port


def start_replica(redis_url: str, **env: str) -> Replica:
    """A replica on a port of its own choosing: it binds port 0 and names the port in its
    address file. A port picked free here and passed on could be taken before the replica
    binds it (on a shared machine any outgoing connection may get it as its local port), and
    the replica would exit at once while the test waited for it until its deadline."""
    address_file = Path(tempfile.mkdtemp(prefix="reverb-replica-")) / "address.json"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "REDIS_"))},
        "REVERB_APP_ID": APP.id,
        "REVERB_APP_KEY": APP.key,
        "REVERB_APP_SECRET": APP.secret,
        "REVERB_SCALING_ENABLED": "true",
        "REDIS_URL": redis_url,
        "REVERB_DRAIN_SECONDS": "0",
        "REVERB_ADDRESS_FILE": str(address_file),
        **env,
    }
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the replica; a pipe nobody reads could block it
    process = subprocess.Popen(
        [sys.executable, "-m", "reverb_py", "start", "--host", "127.0.0.1", "--port", "0"],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    try:
        # Measured 1.2-1.6 s at load 13 on 2 cores, 2.9-4.8 s with two busy loops on top: the
        # deadline is ten times that, and a replica that dies fails the wait at once.
        port = _bound_port(process, address_file, STARTUP_DEADLINE)
        replica = Replica(port, process, environment, log)
        wait_for(f"{replica.base}/ready")  # ready even while its Redis is unreachable
    except (RuntimeError, TimeoutError) as failure:
        process.kill()
        process.wait(10)
        log.seek(0)
        raise RuntimeError(f"{failure}; its log:\n{log.read()}") from None
    finally:
        shutil.rmtree(address_file.parent, ignore_errors=True)
    return replica
