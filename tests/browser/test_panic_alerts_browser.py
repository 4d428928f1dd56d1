"""The seed's panic-alert flow end to end: reverb-py, the example backend and a real Chromium.

This is the check the seed's own checklist leaves open ("Testing E2E de notificaciones en tiempo
real"): a guard's page shows "🟢 En vivo", sees an alert raised by a resident within moments, sees
its status change, goes offline when the server restarts and comes back by itself, catching up on
the alert raised while it was away; a resident without `view_panic_alerts` is refused the channel.

The test starts `python -m reverb_py start` (or PANIC_ALERTS_SERVER_CMD, a command with `{port}`
that gets REVERB_APP_ID/KEY/SECRET in its environment, to run the same flow against another
Pusher-protocol server) and the example backend on free ports; tests/browser/driver.mjs holds the
browser. The trigger-to-screen latency is printed, not asserted: performance lives in benchmarks/.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "panic-alerts"
DRIVER = Path(__file__).with_name("driver.mjs")
SCREENSHOT = REPO / "test-artifacts" / "panic-alerts.png"
APP_ID = "881836"  # the official Python SDK only accepts numeric app ids
APP_KEY = "panic-alerts-key"
RESIDENT = "resident-demo-token"
# Generous for a loaded 2-core CI machine; every wait returns as soon as the page is ready.
PAGE_TIMEOUT_MS = 15_000
STARTUP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the process group we started (a wrapper script may have children), then KILL;
    returns the exit status (negative: killed by that signal)."""
    if process.poll() is not None:
        return process.returncode
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    return process.returncode


class PusherServer:
    """The WebSocket server under test, restartable on the same port."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        custom = os.environ.get("PANIC_ALERTS_SERVER_CMD")
        self.command = (
            shlex.split(custom.format(port=port))
            if custom
            else [
                sys.executable,
                "-m",
                "reverb_py",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
        )
        self.api = pusher.Pusher(
            app_id=env["REVERB_APP_ID"],
            key=env["REVERB_APP_KEY"],
            secret=env["REVERB_APP_SECRET"],
            host="127.0.0.1",
            port=port,
            ssl=False,
            timeout=2,
        )

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert self.process.poll() is None, f"server exited early:\n{tail(self.log)}"
            try:
                # A signed HTTP API call: proves the port is up and the credentials match.
                self.api.channels_info()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"server not ready on {self.port}:\n{tail(self.log)}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> int | None:
        return None if self.process is None else stop_group(self.process)


class Browser:
    """Client side of driver.mjs's line protocol; every call has a deadline."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.stderr = log.open("wb")
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        hello = self._next(STARTUP_TIMEOUT_S)
        assert hello.get("ready"), hello
        print(f"chromium {hello['browser']}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.replies.put(json.loads(line))

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            state = "exited" if self.process.poll() is not None else "is silent"
            raise AssertionError(
                f"browser driver {state} (waited {timeout} s):\n{tail(self.log)}"
            ) from None

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.process.stdin.flush()
        reply = self._next(PAGE_TIMEOUT_MS / 1000 + 10)
        if not reply["ok"]:
            console = "\n".join(reply["console"])
            raise AssertionError(f"{op} {args}: {reply['error']}\npage console:\n{console}")
        return reply["result"]

    def wait(self, page: str, selector: str) -> dict[str, Any]:
        return self.call("wait", page=page, selector=selector, timeout=PAGE_TIMEOUT_MS)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write(b'{"op": "quit"}\n')
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.stderr.close()


def tail(path: Path, lines: int = 30) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def backend_request(base: str, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_for_backend(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        assert process.poll() is None, f"example backend exited:\n{tail(log)}"
        try:
            urllib.request.urlopen(base + "/api/me", timeout=1)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and nobody signed in: as expected
                return
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"example backend not ready:\n{tail(log)}") from None
            time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[PusherServer, str, Browser]]:
    """reverb-py, the example backend wired to it through REVERB_* variables, and a browser."""
    server_port, backend_port = free_port(), free_port()
    env = {
        **os.environ,
        "REVERB_APP_ID": APP_ID,
        "REVERB_APP_KEY": APP_KEY,
        "REVERB_APP_SECRET": secrets.token_hex(16),
        "REVERB_HOST": "127.0.0.1",
        "REVERB_PORT": str(server_port),
        "REVERB_SCHEME": "http",
        # reverb-py spreads its 4200 closes over the drain window; one test page needs no 10 s.
        "REVERB_DRAIN_SECONDS": "1",
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "backend", "browser")}
    server = PusherServer(server_port, env, logs["server"])
    backend: subprocess.Popen[bytes] | None = None
    browser: Browser | None = None
    try:
        server.start()
        with logs["backend"].open("wb") as out:
            backend = subprocess.Popen(
                [sys.executable, str(EXAMPLE / "server.py"), "--port", str(backend_port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{backend_port}"
        wait_for_backend(base, backend, logs["backend"])
        browser = Browser(logs["browser"])
        yield server, base, browser
    finally:
        if browser is not None:
            browser.close()
        if backend is not None:
            stop_group(backend)
        server.stop()
        for name, log in logs.items():  # shown by pytest only when the test failed
            print(f"--- {name} log (tail) ---\n{tail(log)}")


def raise_alert(base: str, location: str) -> dict[str, Any]:
    return backend_request(base, "/api/alerts", {"location": location}, RESIDENT)


def test_guard_sees_alerts_live_across_a_server_restart(
    stack: tuple[PusherServer, str, Browser], capsys: pytest.CaptureFixture[str]
) -> None:
    server, base, browser = stack
    live = '#connection[data-live="true"]'
    subscribed = '#subscription[data-state="subscribed"]'
    # (to screen, of which the SDK's signed HTTP trigger call) in milliseconds, per live alert.
    latencies: list[tuple[float, float]] = []

    def expect_alert(raised: dict[str, Any], live_broadcast: bool = True) -> dict[str, Any]:
        item = browser.wait("guard", f'#alerts li[data-alert-id="{raised["data"]["alert_id"]}"]')
        assert "Juan Pérez" in item["text"] and "Apartamento 101" in item["text"], item
        if live_broadcast:
            broadcast = raised["broadcast"]
            to_screen = float(item["data"]["renderedAt"]) - broadcast["started_at_ms"]
            latencies.append((to_screen, broadcast["duration_ms"]))
        return item

    browser.call("open", page="guard", url=f"{base}/login/guard")
    assert browser.wait("guard", live)["text"] == "🟢 En vivo"
    browser.wait("guard", subscribed)
    browser.wait("guard", "#alerts-title")

    first = raise_alert(base, "Torre 2, parqueadero")
    assert first["broadcast"]["ok"], first
    item = expect_alert(first)
    assert "Torre 2, parqueadero" in item["text"]

    # The guard takes the alert from the page: panic-alert.updated comes back through the server.
    first_li = f'#alerts li[data-alert-id="{first["data"]["alert_id"]}"]'
    browser.call("click", page="guard", selector=f"{first_li} button.ack")
    browser.wait("guard", f'{first_li}[data-status="acknowledged"]')

    # A resident has no view_panic_alerts: /broadcasting/auth answers 403, Echo's .error() fires.
    browser.call("open", page="resident", url=f"{base}/login/resident")
    refused = browser.wait("resident", '#subscription[data-state="refused"]')
    assert "403" in refused["text"], refused

    # A rolling restart: SIGTERM drains (clients told to reconnect) and exits cleanly.
    assert server.stop() == 0, tail(server.log)
    offline = browser.wait("guard", '#connection[data-live="false"]')
    assert "Sin conexión" in offline["text"], offline
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.call(
        "screenshot", page="guard", path=str(SCREENSHOT.with_name("panic-alerts-offline.png"))
    )
    # Raised while the server is down: stored, not broadcast; the page catches up on reconnect.
    missed = raise_alert(base, "Portería norte")
    assert not missed["broadcast"]["ok"], missed
    server.start()
    browser.wait("guard", live)
    browser.wait("guard", subscribed)
    expect_alert(missed, live_broadcast=False)

    after = raise_alert(base, "Calle 123 #45-67")
    assert after["broadcast"]["ok"], after
    expect_alert(after)
    title = browser.wait("guard", "#alerts-title")["text"]
    assert title == "🚨 3 alertas de pánico activas", title

    browser.call("screenshot", page="guard", path=str(SCREENSHOT))
    browser.call(
        "screenshot", page="resident", path=str(SCREENSHOT.with_name("panic-alerts-resident.png"))
    )
    with capsys.disabled():  # a figure worth seeing on every run, not only on failure
        print(
            "\ntrigger-to-screen latency (backend starts the trigger -> DOM updated): "
            + ", ".join(f"{total:.1f} ms (HTTP trigger {http:.1f} ms)" for total, http in latencies)
        )
