"""A real HTTP receiver for webhook tests: records every request, can fail on purpose, and
checks each body with the official pusher SDK's webhook validation."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pusher

from tests.conftest import APP


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """`fail_first` requests are answered 500; every request is recorded either way."""

    def __init__(self, fail_first: int = 0, app_key: str = APP.key, secret: str = APP.secret):
        self.fail_first = fail_first
        self.requests: list[Request] = []
        self.accepted: list[Request] = []
        self.lock = threading.Lock()
        self.sdk = pusher.Pusher(app_id=APP.id, key=app_key, secret=secret)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Request({k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.requests.append(request)
                    failing = len(receiver.requests) <= receiver.fail_first
                    if not failing:
                        receiver.accepted.append(request)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # `close` waits for the serving loop to notice, which it checks every poll interval.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/pusher/webhooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        """Every event of every accepted request, each body validated as the SDK does."""
        with self.lock:
            accepted = list(self.accepted)
        found = []
        for request in accepted:
            body = self.sdk.validate_webhook(
                request.headers["x-pusher-key"], request.headers["x-pusher-signature"], request.body
            )
            assert body is not None, f"the pusher SDK rejected a webhook: {request}"
            found.extend(body["events"])
        return found

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `count` events arrived; returns all of them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events = self.events()
            if len(events) >= count:
                return events
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"expected {count} webhook events, got {events}")
            await asyncio.sleep(0.02)


def names(events: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Events as comparable tuples: (name, channel[, user_id])."""
    return [(e["name"], e["channel"], *([e["user_id"]] if "user_id" in e else [])) for e in events]
