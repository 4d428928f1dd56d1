"""Harness for the interop tests: the server under test, a Laravel-like backend, Node clients.

The point of these tests is to prove compatibility with the clients real apps ship (pusher-js,
Laravel Echo) and the signing a real backend does (the official `pusher` SDK), so every piece here
plays one of those real roles instead of speaking the protocol itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pusher

INTEROP_DIR = Path(__file__).resolve().parent
REPO = INTEROP_DIR.parents[1]
# Real Laravel users have names outside ASCII; presence rosters must carry them intact.
USER_NAMES = {1: "Juan Pérez", 2: "Ana María Núñez", 3: "Zoë 🚨 Ødegård"}


@dataclass(frozen=True)
class Target:
    """Where the Pusher-protocol server under test listens, and the app it serves."""

    host: str
    port: int
    app_id: str
    key: str
    secret: str

    def sdk(self, **options: Any) -> pusher.Pusher:
        """The official server SDK pointed at this server, as a Laravel backend would be."""
        return pusher.Pusher(
            app_id=self.app_id,
            key=self.key,
            secret=self.secret,
            host=self.host,
            port=self.port,
            ssl=False,
            **options,
        )

    @classmethod
    def parse(cls, spec: str) -> Target:
        """`APP_ID:KEY:SECRET@HOST:PORT`, for pointing the suite at an already running server."""
        credentials, _, address = spec.rpartition("@")
        app_id, key, secret = credentials.split(":")
        host, _, port = address.rpartition(":")
        return cls(host=host, port=int(port), app_id=app_id, key=key, secret=secret)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _is_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/up", timeout=1) as response:
            return response.status == 200 and json.loads(response.read()) == {"health": "OK"}
    except OSError:
        return False


class ReverbPy:
    """`python -m reverb_py start`, run exactly as an operator would, stopped with SIGTERM.

    The server is a separate process (not in-process) so that the clients see the real CLI,
    configuration loading and event loop, and so that a crash shows up as a failed test. It can
    be stopped and started again on the same port, as a rolling update replaces a pod.
    """

    def __init__(self, log_path: Path, drain_seconds: int = 1) -> None:
        self.target = Target("127.0.0.1", free_port(), "4242", "interop-key", "interop-secret")
        self.log_path = log_path
        # Short, so that a SIGTERM with clients still connected does not stall the suite.
        self.drain_seconds = drain_seconds
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts the server and returns once /up answers."""
        # The developer's own REVERB_* settings (a scaling flag, say) must not change the scenario.
        inherited = {name: value for name, value in os.environ.items() if name[:7] != "REVERB_"}
        env = {
            **inherited,
            "REVERB_APP_ID": self.target.app_id,
            "REVERB_APP_KEY": self.target.key,
            "REVERB_APP_SECRET": self.target.secret,
        }
        command = [sys.executable, "-m", "reverb_py", "start", "--host", "127.0.0.1"]
        command += ["--port", str(self.target.port), "--drain-seconds", str(self.drain_seconds)]
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        self._process = process
        deadline = time.monotonic() + 15
        while not _is_up(self.target.port):
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"reverb-py did not come up:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes sends; returns the exit code (None if it had to be killed)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return None
        return process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Ingress:
    """A TCP relay standing in for a Kubernetes Service in front of the server's pods.

    New connections go to whichever port it routes to at the time; established ones stay where
    they are. That is what makes a rolling update testable on one machine: the replacement is up
    and routed to before the old server gets SIGTERM, as Kubernetes orders it.
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def route_to(self, backend_port: int) -> None:
        self.backend_port = backend_port

    def __enter__(self) -> Ingress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join()
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backend_port))
            except OSError:
                downstream.close()
                continue
            self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=_relay, args=(source, sink), daemon=True).start()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    """Copies one direction until EOF, then passes the EOF on (half-close, as a proxy does)."""
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@dataclass(frozen=True)
class AuthRequest:
    """One request the backend's auth routes answered, for assertions and failure messages."""

    path: str
    user_id: int | None
    params: dict[str, str]
    status: int


class Backend:
    """The Laravel app's side: `/broadcasting/auth`, `/broadcasting/user-auth`, and broadcasting.

    The routes behave like Laravel's `Broadcast::routes()` with a `routes/channels.php` of:
    private `security-dashboard`, `chat.*` and `encrypted-*` allowed for any signed-in user,
    `refused-*` denied (403, as a channel callback returning false does), `forged-*` answered
    with a signature made with the wrong app secret (a stale REVERB_APP_SECRET), and `presence-*`
    joined with Laravel's channel data (an integer `user_id`, as Laravel sends the model key).
    The user is identified by a Sanctum-style `Authorization: Bearer <user id>` header.
    """

    def __init__(self, target: Target, encryption_master_key_base64: str) -> None:
        self.target = target
        self.sdk = target.sdk(encryption_master_key_base64=encryption_master_key_base64)
        self._stale_secret_sdk = pusher.Pusher(
            app_id=target.app_id,
            key=target.key,
            secret="stale-secret-from-an-old-env-file",
            host=target.host,
            port=target.port,
            ssl=False,
        )
        self.requests: list[AuthRequest] = []
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def answer(self, path: str, user_id: int | None, params: dict[str, str]) -> tuple[int, Any]:
        """The HTTP status and JSON body Laravel would answer to an auth request."""
        if user_id is None:
            return 403, {"message": "Unauthenticated."}
        socket_id = params.get("socket_id", "")
        if path == "/broadcasting/user-auth":
            user = {"id": str(user_id), "user_info": {"name": USER_NAMES.get(user_id, "")}}
            return 200, self.sdk.authenticate_user(socket_id, user)
        if path != "/broadcasting/auth":
            return 404, {"message": "Not Found"}
        channel = params.get("channel_name", "")
        if channel.startswith("private-refused-"):
            return 403, {"message": "This action is unauthorized."}
        if channel.startswith("private-forged-"):
            return 200, self._stale_secret_sdk.authenticate(channel, socket_id)
        if channel.startswith("presence-"):
            member = {"id": user_id, "name": USER_NAMES.get(user_id, f"User {user_id}")}
            channel_data = {"user_id": user_id, "user_info": member}
            return 200, self.sdk.authenticate(channel, socket_id, channel_data)
        if channel.startswith("private-"):
            auth = self.sdk.authenticate(channel, socket_id)
            if isinstance(auth.get("shared_secret"), bytes):
                # The SDK hands the key over as base64 bytes; a JSON response needs text.
                auth["shared_secret"] = auth["shared_secret"].decode("ascii")
            return 200, auth
        return 403, {"message": "This action is unauthorized."}

    def _record(self, request: AuthRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("utf-8"))
                params = {name: values[0] for name, values in form.items()}
                bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                user_id = int(bearer) if bearer.isdigit() else None
                status, body = backend.answer(self.path, user_id, params)
                backend._record(AuthRequest(self.path, user_id, params, status))
                payload = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Silenced: the requests are kept in `backend.requests` instead."""

        return Handler


class NodeClient:
    """One Node client script, its JSON-line output collected on a reader thread.

    `expect()` hands out each matching line once, so a test that expects an event twice needs
    two deliveries, and `lines()` lets a test count everything a client saw. Any failure message
    carries the full transcript (every frame pusher-js received, every state change, stderr).
    """

    def __init__(self, script: str, args: list[str], env: dict[str, str]) -> None:
        self.script = script
        self.args = args
        self.process = subprocess.Popen(
            ["node", str(INTEROP_DIR / script), *args],
            cwd=INTEROP_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self._lines: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"type": "unparsed", "text": raw.rstrip("\n")}
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self._stderr.append(raw.rstrip("\n"))

    def expect(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Waits for a not yet expected line of this type whose fields equal `fields`."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index, line in enumerate(self._lines):
                    if index in self._taken or line.get("type") != kind:
                        continue
                    if all(line.get(name) == value for name, value in fields.items()):
                        self._taken.add(index)
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reading()):
                    raise AssertionError(self.transcript(f"no {kind!r} line with {fields}"))
                self._changed.wait(min(remaining, 0.1))

    def _reading(self) -> bool:
        return self._readers[0].is_alive()

    def lines(self, kind: str) -> list[dict[str, Any]]:
        """Every line of this type received so far."""
        with self._changed:
            return [line for line in self._lines if line.get("type") == kind]

    def frames(self) -> list[dict[str, Any]]:
        """Every protocol frame pusher-js received so far."""
        return [line["frame"] for line in self.lines("frame")]

    def send(self, command: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": command, **fields}) + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 10.0) -> None:
        """Waits for the script to end on its own and asserts it ended well."""
        __tracebackhide__ = True
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(self.transcript("the script did not exit")) from None
        for reader in self._readers:
            reader.join(timeout=5)
        if code != 0:
            raise AssertionError(self.transcript(f"the script exited with code {code}"))

    def quit(self) -> None:
        """Asks a command-driven script to disconnect, then waits for it to end."""
        self.send("quit")
        self.finish()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with suppress(OSError):
                    stream.close()

    def transcript(self, headline: str) -> str:
        with self._changed:
            lines = [json.dumps(line, ensure_ascii=False) for line in self._lines]
        stderr = "\n".join(self._stderr[-40:])
        command = " ".join([self.script, *self.args])
        return (
            f"{command}: {headline}\n--- stdout ({len(lines)} lines) ---\n"
            + "\n".join(lines)
            + f"\n--- stderr ---\n{stderr}"
        )
