"""Maps requests on the one listening port to the WebSocket endpoint, the HTTP API and health.

Routes, all under the optional path prefix (Reverb's REVERB_SERVER_PATH):
`GET {path}/app/{key}` upgrades to a Pusher WebSocket; `{path}/apps/{id}/...` is the HTTP API;
`GET {path}/up` is liveness and `GET {path}/ready` readiness; `GET {path}/metrics` is Prometheus
text when metrics are enabled on the main port.
"""

from __future__ import annotations

import fnmatch
import logging
import secrets
import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from reverb_py.apps.store import AppStore
from reverb_py.config import App, Settings
from reverb_py.http_types import HttpRequest, HttpResponse, error_response, json_response
from reverb_py.hub import AppHub
from reverb_py.logs import ThrottledLog
from reverb_py.pusher import messages
from reverb_py.pusher.http_api import HttpApi
from reverb_py.pusher.messages import ErrorCode
from reverb_py.pusher.session import Session
from reverb_py.ratelimit import (
    ClientAddress,
    ConnectionsPerAddress,
    NewConnectionLimiter,
    parse_networks,
)
from reverb_py.scaling.cluster import Cluster
from reverb_py.stats import AppStats
from reverb_py.transport.connection import Connection, WebSocketHandler
from reverb_py.transport.refusals import TransportRefusals
from reverb_py.webhooks import Webhooks

logger = logging.getLogger("reverb_py.router")

SUPPORTED_PROTOCOLS = range(5, 8)
_UP = HttpResponse(200, b'{"health":"OK"}', static=True)
_READY = HttpResponse(200, b'{"ready":true}', static=True)
_DRAINING = error_response(503, "Draining: connect to another replica", (("Retry-After", "1"),))
# A refusal that repeats (a full app, clients in a reconnect loop) is logged at most this often
# per reason and app: one line tells the operator, a thousand would bury everything else.
REFUSAL_LOG_INTERVAL = 10.0


class Refusal(NamedTuple):
    """Why an upgrade is refused: the Pusher code and message the client gets, and a short
    reason for metrics and logs."""

    code: ErrorCode
    message: str
    reason: str


class Refused:
    """A WebSocket that is accepted only to be told why it cannot stay (Pusher sends errors
    after the upgrade, and pusher-js acts on the close code)."""

    __slots__ = ()

    def on_message(self, data: bytes, binary: bool) -> None:
        return None

    def on_write_overflow(self) -> None:
        return None

    def on_close(self) -> None:
        return None

    def check_liveness(self, now: float, seen: bool) -> None:
        return None


_REFUSED = Refused()


class PusherEndpoint:
    """The result of routing an upgrade: opens a Session, or refuses with a Pusher code."""

    __slots__ = ("address", "app", "hub", "refusal", "router")

    def __init__(
        self, router: Router, hub: AppHub | None, refusal: Refusal | None, address: str = ""
    ) -> None:
        self.router = router
        self.hub = hub
        self.refusal = refusal
        self.address = address  # the client's address, when connections per address are capped
        self.app: App | None = hub.app if hub is not None else None

    @property
    def max_message_size(self) -> int:
        return self.app.max_message_size if self.app is not None else 10_000

    def open(self, socket: Connection) -> WebSocketHandler:
        per_address = self.router.per_address
        if self.refusal is None and self.hub is not None and per_address is not None:
            # Taken only now that the socket is surely a WebSocket, and given back when it goes.
            if per_address.acquire(self.address):
                socket.on_lost = lambda: per_address.release(self.address)
            else:
                self.refusal = self.router.over_address_cap(self.address)
        if self.refusal is not None or self.hub is None:
            code, message, reason = self.refusal or _APP_NOT_FOUND
            stats = self.hub.stats if self.hub is not None else self.router.unknown_app_stats
            stats.connection_refused(reason)
            socket.send_text(messages.error(code, message))
            socket.close(int(code), message)
            return _REFUSED
        session = Session(self.hub, socket, self.router.new_socket_id(), self.router.debug)
        session.start()
        return session


_APP_NOT_FOUND = Refusal(ErrorCode.APP_NOT_FOUND, "Application does not exist", "app_not_found")
_APP_DISABLED = Refusal(ErrorCode.APP_DISABLED, "The app is not enabled.", "app_disabled")


class Router:
    """Routes requests to the hub of each app the store knows (one per app, disabled ones
    included, so that they are refused with 4003 / 403 rather than "unknown")."""

    def __init__(
        self,
        settings: Settings,
        cluster: Cluster,
        webhooks: Webhooks,
        store: AppStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock  # the hubs', the rate limiter's and readiness's time
        self.prefix = settings.path
        self.debug = settings.debug
        self.cluster = cluster
        self.webhooks = webhooks
        # Changed in place by `apply` only: the cluster and the HTTP API share these maps.
        self.hubs_by_id: dict[str, AppHub] = {}
        self.hubs_by_key: dict[str, AppHub] = {}
        cluster.hubs = self.hubs_by_id
        self.store = store if store is not None else AppStore(settings.apps)
        for app in self.store.apps.values():
            self.apply(None, app)
        self.store.listener = self.apply
        self.api = HttpApi(self.hubs_by_id, self.hubs_by_key, self.prefix)
        self.draining = False
        # Upgrades with a key no app has: counted under app_id "" (a client with a stale key).
        self.unknown_app_stats = AppStats()
        self.client_address = ClientAddress(
            parse_networks("trusted_proxies", settings.trusted_proxies)
        )
        per_ip = settings.max_connections_per_ip_per_second
        self.limiter = NewConnectionLimiter(per_ip) if per_ip else None
        cap = settings.max_connections_per_ip
        self.per_address = ConnectionsPerAddress(cap) if cap else None
        # What the transport refused (malformed, too large, too slow...), for /metrics.
        self.transport_refusals = TransportRefusals()
        # Set by the server when metrics are served on this port: renders the exposition.
        self.metrics: Callable[[], HttpResponse] | None = None
        self._refusal_log = ThrottledLog(logger, REFUSAL_LOG_INTERVAL)

    def apply(self, old: App | None, new: App | None) -> None:
        """An app was added, changed or removed (by the app store, while serving).

        A disabled app keeps its hub and is refused from then on, its connections closed with
        4003 as Pusher closes them; a removed one's are closed with 4001. A changed app takes
        effect at once, for every open connection too (a rotated secret signs the next
        subscription), so the old secret stops working: there is no grace period."""
        if new is None:
            assert old is not None
            hub = self.hubs_by_id.pop(old.id, None)
            if hub is not None:
                if self.hubs_by_key.get(hub.app.key) is hub:
                    del self.hubs_by_key[hub.app.key]
                self._close_all(hub, _APP_NOT_FOUND)
            self.webhooks.remove(old.id)
            return
        hub = self.hubs_by_id.get(new.id)
        if hub is None:
            hub = self.hubs_by_id[new.id] = AppHub(
                new, self.cluster, self.webhooks.update(new), self.clock
            )
        else:
            if self.hubs_by_key.get(hub.app.key) is hub:
                del self.hubs_by_key[hub.app.key]
            hub.reconfigure(new, self.webhooks.update(new))
        self.hubs_by_key[new.key] = hub
        if not new.enabled:
            self._close_all(hub, _APP_DISABLED)

    @staticmethod
    def _close_all(hub: AppHub, refusal: Refusal) -> None:
        for session in list(hub.sessions.values()):
            session.close(refusal.code, refusal.message)

    def new_socket_id(self) -> str:
        sessions = [hub.sessions for hub in self.hubs_by_id.values()]
        while True:
            bits = secrets.randbits(60)  # one read of the system's randomness, not two
            socket_id = f"{(bits >> 30) % 10**9 + 1}.{(bits & 0x3FFFFFFF) % 10**9 + 1}"
            if not any(socket_id in known for known in sessions):
                return socket_id

    # HTTP --------------------------------------------------------------------------------

    def handle_http(self, request: HttpRequest) -> HttpResponse:
        # Health answers at the root too, so probes need not know the path prefix.
        path = (
            request.path if request.path in ("/up", "/ready") else self._strip_prefix(request.path)
        )
        if path is None:
            return error_response(404, "Not found")
        if path.startswith("/apps/"):
            return self.api.handle(request, path)
        if path.startswith("/users/"):
            return self.api.handle_without_app_id(request, path)
        if path in ("/up", "/ready"):
            if request.method not in ("GET", "HEAD"):
                return error_response(405, "Method not allowed", (("Allow", "GET"),))
            if path == "/up":
                return _UP
            return self._readiness()
        if path.startswith("/app/"):
            return error_response(426, "This endpoint needs a WebSocket upgrade")
        if path == "/metrics" and self.metrics is not None:
            if request.method not in ("GET", "HEAD"):
                return error_response(405, "Method not allowed", (("Allow", "GET"),))
            return self.metrics()
        return error_response(404, "Not found")

    def answer_post(self, target: bytes, body: bytes) -> HttpResponse | None:
        """`POST {path}/apps/{id}/events`, the backend's trigger, from its target and body
        alone (the transport then builds no request object); any other POST goes the
        general way, through `handle_http`, which would route this one the same."""
        raw_path, _, query = target.partition(b"?")
        full = raw_path.decode("latin-1")
        path = self._strip_prefix(full)
        if path is None or not path.startswith("/apps/") or not path.endswith("/events"):
            return None
        return self.api.answer_events(full, path, query.decode("latin-1"), body)

    def _readiness(self) -> HttpResponse:
        """Ready means "can serve": only a drain fails it. A replica whose link to the others
        is down still serves its clients and the HTTP API, so it says so in the body instead."""
        if self.draining:
            return _DRAINING
        status = self.cluster.status(self.clock())
        if not status:
            return _READY
        return json_response(200, {"ready": True, **status})

    def _strip_prefix(self, path: str) -> str | None:
        if not self.prefix:
            return path
        if path == self.prefix or path.startswith(self.prefix + "/"):
            return path[len(self.prefix) :] or "/"
        return None

    # WebSocket ---------------------------------------------------------------------------

    def route_websocket(self, request: HttpRequest) -> PusherEndpoint | HttpResponse:
        path = self._strip_prefix(request.path)
        if path is None or not path.startswith("/app/") or request.method != "GET":
            return error_response(404, "Not found")
        key = path[len("/app/") :]
        hub = self.hubs_by_key.get(key)
        if self.draining:
            # Refused before the upgrade, so the balancer or the client tries another replica;
            # the HTTP API on this replica keeps working until the drain ends.
            (hub.stats if hub is not None else self.unknown_app_stats).connection_refused(
                "draining"
            )
            return _DRAINING
        address = self.client_ip(request) if self.per_address is not None else ""
        return PusherEndpoint(self, hub, self._refusal(request, hub), address)

    def over_address_cap(self, address: str) -> Refusal:
        assert self.per_address is not None
        self._log_refusal(
            "address_cap",
            "refusing a connection from %s: it has %d open, the most allowed (4100)",
            address,
            self.per_address.limit,
        )
        return Refusal(
            ErrorCode.OVER_CAPACITY,
            "Too many connections from this address; retry shortly",
            "address_cap",
        )

    def _refusal(self, request: HttpRequest, hub: AppHub | None) -> Refusal | None:
        if self.limiter is not None:
            ip = self.client_ip(request)
            opened = self.limiter.hit(ip, self.clock())
            if opened > self.limiter.limit:
                if opened == self.limiter.limit + 1:  # the first refusal of this IP's window
                    self._log_refusal(
                        "rate_limited",
                        "refusing new connections from %s: over %d per second (4100)",
                        ip,
                        self.limiter.limit,
                    )
                return Refusal(
                    ErrorCode.OVER_CAPACITY,
                    "Too many new connections from this address; retry shortly",
                    "rate_limited",
                )
        if hub is None:
            return _APP_NOT_FOUND
        if not hub.app.enabled:
            self._log_refusal(
                f"disabled:{hub.app.id}", "app %s is disabled: refusing (4003)", hub.app.id
            )
            return _APP_DISABLED
        protocol = dict(request.query()).get("protocol")
        if protocol is not None:
            # isdigit() alone lets through '²' (int() refuses it) and 5 000 digits (so does int())
            if not (protocol.isascii() and protocol.isdigit() and len(protocol) <= 9):
                return Refusal(
                    ErrorCode.INVALID_VERSION, "Invalid version string format", "protocol"
                )
            if int(protocol) not in SUPPORTED_PROTOCOLS:
                return Refusal(
                    ErrorCode.UNSUPPORTED_PROTOCOL,
                    f"Unsupported protocol version {protocol}",
                    "protocol",
                )
        app = hub.app
        origin = request.headers.get("origin")
        if not origin_allowed(app, origin):
            self._log_refusal(
                f"origin:{app.id}", "app %s refused origin %r (4009)", app.id, (origin or "")[:200]
            )
            return Refusal(ErrorCode.UNAUTHORIZED, "Origin not allowed", "origin")
        if app.max_connections is not None and hub.connection_count() >= app.max_connections:
            self._log_refusal(
                f"quota:{app.id}",
                "app %s is at its limit of %d connections: refusing more (4004)",
                app.id,
                app.max_connections,
            )
            return Refusal(
                ErrorCode.OVER_CONNECTION_QUOTA, "Application is over connection quota", "quota"
            )
        return None

    def client_ip(self, request: HttpRequest) -> str:
        """The client's address: the peer, or the one trusted proxies forwarded for."""
        if not self.client_address.networks:
            return request.client_ip
        forwarded = [v for k, v in request.raw_headers if k.lower() == "x-forwarded-for"]
        return self.client_address.resolve(request.client_ip, forwarded)

    def _log_refusal(self, key: str, message: str, *args: object) -> None:
        """A warning, at most once per REFUSAL_LOG_INTERVAL for each key (reason and app);
        the metrics count every refusal."""
        self._refusal_log.warning(key, message, *args)


def origin_allowed(app: App, origin: str | None) -> bool:
    """Reverb's allowed_origins: host globs, `*` allows all; a missing Origin (native apps)
    is allowed unless the app says otherwise."""
    if "*" in app.allowed_origins:
        return True
    if not origin:
        return app.allow_missing_origin
    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:  # "http://[::1", a port that is not a number: matches no pattern
        return False
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in app.allowed_origins)
