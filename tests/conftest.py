"""Shared fixtures: the real server in-process on an ephemeral port, real clients against it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import hypothesis
import pusher
import pytest
import websockets

from reverb_py.config import App, Settings
from reverb_py.server import Server

APP = App(id="1234", key="test-key", secret="test-secret")


class PusherSocket:
    """A websockets client speaking Pusher, with the helpers tests need."""

    def __init__(self, ws: websockets.ClientConnection, socket_id: str) -> None:
        self.ws = ws
        self.socket_id = socket_id

    async def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event}
        if data is not None:
            message["data"] = data
        if channel is not None:
            message["channel"] = channel
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 2.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def expect(self, event: str, timeout: float = 2.0) -> dict[str, Any]:
        """The next frame, which must be `event`."""
        message = await self.recv(timeout)
        assert message["event"] == event, message
        return message

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert that no frame arrives within `wait` seconds."""
        try:
            message = await asyncio.wait_for(self.ws.recv(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {message}")

    async def subscribe(
        self, channel: str, auth: str | None = None, channel_data: str | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        if channel_data is not None:
            data["channel_data"] = channel_data
        await self.send("pusher:subscribe", data)
        return await self.recv()

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Running:
    server: Server
    app: App

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, key: str | None = None, query: str = "protocol=7&client=js&version=8.4.0") -> str:
        prefix = self.server.settings.path
        return f"ws://127.0.0.1:{self.port}{prefix}/app/{key or self.app.key}?{query}"

    async def connect(self, key: str | None = None, **kwargs: Any) -> PusherSocket:
        ws = await websockets.connect(self.url(key), **kwargs)
        established = json.loads(await asyncio.wait_for(ws.recv(), 2))
        assert established["event"] == "pusher:connection_established", established
        return PusherSocket(ws, json.loads(established["data"])["socket_id"])

    def sdk(self, **kwargs: Any) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=self.app.id,
            key=self.app.key,
            secret=self.app.secret,
            host="127.0.0.1",
            port=self.port,
            ssl=False,
            **kwargs,
        )

    def sweep_after(self, seconds: float) -> None:
        """Run the server's periodic sweep as if `seconds` more had passed: what it fires (pings,
        deadlines, throttled counts, delayed webhooks) fires now, without the test waiting. Later
        real sweeps read an earlier time and change nothing that this one did."""
        self.server.sweep(self.server.clock() + seconds, asyncio.get_running_loop().time())

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking SDK call off the event loop that serves it."""
        return await asyncio.to_thread(function, *args, **kwargs)


ServerFactory = Callable[..., Awaitable[Running]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """REVERB_TESTS_ALONE=skip leaves out the tests marked `alone` and =only keeps just them:
    scripts/test.sh runs the others in parallel, then these by themselves, so that no other
    test's load can break the time bounds they assert."""
    mode = os.environ.get("REVERB_TESTS_ALONE")
    if mode not in ("skip", "only"):
        return
    keep: list[pytest.Item] = []
    leave: list[pytest.Item] = []
    for item in items:
        alone = item.get_closest_marker("alone") is not None
        (keep if alone == (mode == "only") else leave).append(item)
    if leave:
        config.hook.pytest_deselected(items=leave)
        items[:] = keep


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    servers: list[Server] = []

    async def start(
        app: App = APP, clock: Callable[[], float] = time.monotonic, **settings: Any
    ) -> Running:
        server = Server(Settings(host="127.0.0.1", port=0, apps=(app,), **settings), clock)
        await server.start()
        servers.append(server)
        return Running(server, app)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def running(start_server: ServerFactory) -> Running:
    return await start_server()


def app_with(**changes: Any) -> App:
    return replace(APP, **changes)


# Fuzzing (hypothesis): a few seconds in the suite; `HYPOTHESIS_PROFILE=long` for a long run.
# No deadline: the machine running the suite may be loaded, and slowness is not a finding here
# (the adversarial tests measure the server's responsiveness instead).
hypothesis.settings.register_profile("default", max_examples=100, deadline=None)
hypothesis.settings.register_profile("long", max_examples=20_000, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
