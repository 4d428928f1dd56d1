"""Fixtures for the interop tests: reverb-py as a subprocess, a Laravel-like backend, Node clients.

Set INTEROP_EXTERNAL_SERVER=APP_ID:KEY:SECRET@HOST:PORT to run the same tests against a server
that is already running (for instance the soketi reference peer) instead of starting reverb-py:
that is how these tests were checked to assert real Pusher behaviour and not reverb-py's.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import INTEROP_DIR, Backend, NodeClient, ReverbPy, Target

NodeFactory = Callable[..., NodeClient]


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """pusher-js and laravel-echo at the versions pinned by package-lock.json."""
    if shutil.which("node") is None:
        pytest.fail("the interop tests need Node.js (scripts/test.sh installs it)")
    modules = INTEROP_DIR / "node_modules"
    # Parallel test workers each ask for this: one installs, the others wait for it.
    with (INTEROP_DIR / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((modules / name).is_dir() for name in ("pusher-js", "laravel-echo")):
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=INTEROP_DIR,
                check=True,
            )
    return modules


@pytest.fixture
def reverb_py(tmp_path: Path) -> Iterator[ReverbPy | None]:
    """A fresh reverb-py per test, so that one scenario's channels never leak into another's.

    None when INTEROP_EXTERNAL_SERVER points the suite at a server it does not control.
    """
    if os.environ.get("INTEROP_EXTERNAL_SERVER"):
        yield None
        return
    server = ReverbPy(tmp_path / "reverb-py.log")
    server.start()
    yield server
    server.stop()
    # pytest shows captured teardown output only when the test failed: the server's side of it.
    print(f"--- reverb-py log ---\n{server.log()}")


@pytest.fixture
def target(reverb_py: ReverbPy | None) -> Target:
    if reverb_py is None:
        return Target.parse(os.environ["INTEROP_EXTERNAL_SERVER"])
    return reverb_py.target


@pytest.fixture
def backend(target: Target) -> Iterator[Backend]:
    master_key = base64.b64encode(os.urandom(32)).decode("ascii")
    with Backend(target, encryption_master_key_base64=master_key) as app:
        yield app


@pytest.fixture
def node(node_modules: Path, target: Target, backend: Backend) -> Iterator[NodeFactory]:
    """Starts Node client scripts against `target`; kills any still running at teardown."""
    started: list[NodeClient] = []
    env = {
        **os.environ,
        "INTEROP_HOST": target.host,
        "INTEROP_PORT": str(target.port),
        "INTEROP_KEY": target.key,
        "INTEROP_AUTH_URL": backend.url,
        "INTEROP_TIMEOUT_MS": "15000",
    }

    def start(script: str, *args: str, port: int | None = None) -> NodeClient:
        """`port` sends the client somewhere other than the server itself (an Ingress)."""
        client_env = env if port is None else {**env, "INTEROP_PORT": str(port)}
        client = NodeClient(script, list(args), client_env)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()
        # Shown by pytest only for a failed test: what every client saw, not just the one asserted.
        print(client.transcript("full transcript"))
