"""What the Pusher protocol layer needs from the layers around it, as `typing.Protocol`s.

`pusher/` imports neither the transport, nor the hub, nor the webhook sender: a session and
the HTTP API are written against these interfaces, and the router hands them the real objects
(a transport `Connection`, an `AppHub`, an `AppWebhooks`). That keeps this package free of
asyncio and of import cycles, and lets tests drive it with small fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from reverb_py.config import App
from reverb_py.stats import AppStats


class Socket(Protocol):
    """A client's WebSocket as a session sees it: the transport's Connection provides it.

    `send` takes a whole frame already encoded (a broadcast is framed once for every
    subscriber); `send_text` frames one message for this socket alone."""

    def send(self, frame: bytes) -> None: ...

    def send_text(self, payload: bytes) -> None: ...

    def ping(self) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...


class Hooks(Protocol):
    """The webhook decisions the protocol layer makes itself (the hub makes the others)."""

    def wants(self, kind: str) -> bool: ...

    def cache_miss(self, channel: str, cause: str | None = None) -> None: ...

    def client_event(
        self, channel: str, event: str, data: Any, socket_id: str, user_id: Any
    ) -> None: ...


class Cached(Protocol):
    """The last event of a cache channel, as the hub keeps it."""

    @property
    def payload(self) -> bytes: ...

    @property
    def expires_at(self) -> float: ...

    def event_and_data(self) -> tuple[str, Any]: ...


class AppScope(Protocol):
    """What both a session and the HTTP API read of one app's hub: whose it is, where its
    counters go and what time it is. `ApiHub` and `session.SessionHub` extend it."""

    @property
    def app(self) -> App: ...

    @property
    def stats(self) -> AppStats: ...

    @property
    def clock(self) -> Callable[[], float]: ...


class ApiHub(AppScope, Protocol):
    """What the HTTP API reads and asks of one app's hub."""

    def broadcast(
        self, name: str, payload: bytes, except_socket_id: str | None = None, cache: bool = False
    ) -> int: ...

    def send_to_user(self, user_id: str, payload: bytes, except_socket_id: str | None) -> None: ...

    def terminate_user(self, user_id: str) -> None: ...

    def cached(self, name: str, now: float) -> Cached | None: ...

    def subscription_count(self, name: str) -> int: ...

    def user_count(self, name: str) -> int: ...

    def member_ids(self, name: str) -> list[Any]: ...

    def channel_names(self, prefix: str = "") -> list[str]: ...

    def connection_count(self) -> int: ...
