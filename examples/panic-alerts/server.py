"""The Laravel side of the panic-alerts story, in one stdlib file, for trying reverb-py by hand.

The seed app (a residential-security product) broadcasts `panic-alert.triggered` and
`panic-alert.updated` on the private channels `panic-alerts` and `security-dashboard`, authorizes
them at `POST /broadcasting/auth` for users with the `view_panic_alerts` permission, and keeps
`GET /api/security/alerts/active` as the polling fallback. This backend reproduces exactly that
contract with the official `pusher` SDK (the same HTTP API and signatures Laravel's Pusher/Reverb
broadcaster uses), so the browser page and reverb-py see what they would see next to Laravel.

Users are two fixed demo accounts; a session cookie (set by `GET /login/{guard|resident}`) or a
bearer token (as the seed's mobile apps send) identifies them. Alerts live in memory.

Run: `python examples/panic-alerts/server.py` with REVERB_APP_ID/KEY/SECRET/HOST/PORT/SCHEME in
the environment, as in a Laravel `.env`. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pusher

HERE = Path(__file__).resolve().parent
PUBLIC = HERE / "public"
# Browser builds straight from the pinned npm packages: no bundler, nothing vendored by hand.
VENDOR = {
    "/vendor/pusher.min.js": HERE / "node_modules/pusher-js/dist/web/pusher.min.js",
    "/vendor/echo.iife.js": HERE / "node_modules/laravel-echo/dist/echo.iife.js",
}

PERMISSION = "view_panic_alerts"
# Laravel's PrivateChannel('panic-alerts') and PrivateChannel('security-dashboard').
ALERT_CHANNELS = ["private-panic-alerts", "private-security-dashboard"]
TRIGGERED_EVENT = "panic-alert.triggered"
UPDATED_EVENT = "panic-alert.updated"
STATUSES = ("triggered", "acknowledged", "resolved")
ACTIVE_STATUSES = frozenset({"triggered", "acknowledged"})
# The seed's fallback endpoint returns the newest ten active alerts.
ACTIVE_LIMIT = 10
SESSION_COOKIE = "panic_alerts_session"


@dataclass(frozen=True, slots=True)
class Apartment:
    id: int
    address: str


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: str
    token: str
    permissions: frozenset[str]
    apartment: Apartment

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "permissions": sorted(self.permissions),
        }


USERS: dict[str, User] = {
    "guard": User(
        1,
        "Carlos Rodríguez",
        "vigilante",
        "guard-demo-token",
        frozenset({PERMISSION}),
        Apartment(1, "Portería principal"),
    ),
    "resident": User(
        456,
        "Juan Pérez",
        "residente",
        "resident-demo-token",
        frozenset(),
        Apartment(789, "Apartamento 101"),
    ),
}

# routes/channels.php: channel name (without the private- prefix) -> who may join.
CHANNEL_RULES: dict[str, Callable[[User], bool]] = {
    "panic-alerts": lambda user: user.can(PERMISSION),
    "security-dashboard": lambda user: user.can(PERMISSION),
}


def time_ago(moment: datetime, now: datetime) -> str:
    """Carbon's Spanish diffForHumans(), which the seed's payload carries as `time_ago`."""
    seconds = max(0, int((now - moment).total_seconds()))
    for unit_seconds, singular, plural in (
        (86400, "día", "días"),
        (3600, "hora", "horas"),
        (60, "minuto", "minutos"),
        (1, "segundo", "segundos"),
    ):
        if seconds >= unit_seconds:
            count = seconds // unit_seconds
            return f"hace {count} {singular if count == 1 else plural}"
    return "hace unos instantes"


@dataclass(slots=True)
class Alert:
    id: int
    user: User
    lat: float
    lng: float
    location: str
    status: str
    created_at: datetime

    def payload(self, now: datetime) -> dict[str, Any]:
        """The broadcastWith() shape documented in the seed (section 'Estructura del Evento')."""
        return {
            "alert_id": self.id,
            "user": {"id": self.user.id, "name": self.user.name},
            "apartment": {"id": self.user.apartment.id, "address": self.user.apartment.address},
            "location": {"lat": self.lat, "lng": self.lng, "string": self.location},
            "status": self.status,
            "timestamp": self.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "time_ago": time_ago(self.created_at, now),
        }


class AlertStore:
    """In-memory stand-in for the PanicAlert model; a lock because the HTTP server is threaded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: dict[int, Alert] = {}
        self._next_id = 1

    def create(self, user: User, lat: float, lng: float, location: str) -> Alert:
        with self._lock:
            alert = Alert(self._next_id, user, lat, lng, location, "triggered", datetime.now(UTC))
            self._alerts[alert.id] = alert
            self._next_id += 1
            return alert

    def set_status(self, alert_id: int, status: str) -> Alert | None:
        with self._lock:
            alert = self._alerts.get(alert_id)
            if alert is not None:
                alert.status = status
            return alert

    def active(self) -> list[Alert]:
        with self._lock:
            alerts = [a for a in self._alerts.values() if a.status in ACTIVE_STATUSES]
        return sorted(alerts, key=lambda a: a.created_at, reverse=True)[:ACTIVE_LIMIT]


@dataclass(frozen=True, slots=True)
class ReverbConfig:
    """The REVERB_* variables of a Laravel `.env`: where the app and browser reach the server."""

    app_id: str
    key: str
    secret: str
    host: str
    port: int
    scheme: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReverbConfig:
        missing = [
            n for n in ("REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET") if not env.get(n)
        ]
        if missing:
            raise SystemExit(
                f"panic-alerts example: set {', '.join(missing)} (as in Laravel's .env)"
            )
        return cls(
            app_id=env["REVERB_APP_ID"],
            key=env["REVERB_APP_KEY"],
            secret=env["REVERB_APP_SECRET"],
            host=env.get("REVERB_HOST", "127.0.0.1"),
            port=int(env.get("REVERB_PORT", "8080")),
            scheme=env.get("REVERB_SCHEME", "http"),
        )

    def client(self) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=self.app_id,
            key=self.key,
            secret=self.secret,
            host=self.host,
            port=self.port,
            ssl=self.scheme == "https",
        )

    def echo_options(self) -> dict[str, Any]:
        """What resources/js/echo.js builds from the VITE_REVERB_* variables."""
        return {
            "broadcaster": "reverb",
            "key": self.key,
            "wsHost": self.host,
            "wsPort": self.port,
            "wssPort": self.port,
            "forceTLS": self.scheme == "https",
            "enabledTransports": ["ws", "wss"],
        }


class Broadcaster:
    """event(new PanicAlertTriggered($alert)) with ShouldBroadcastNow: one signed HTTP trigger."""

    def __init__(self, client: pusher.Pusher) -> None:
        self._client = client

    def broadcast(self, event: str, alert: Alert) -> dict[str, Any]:
        """Triggers on both seed channels; reports the wall-clock start so latency can be measured
        from the moment the backend hands the event to the server until the page shows it."""
        payload = alert.payload(datetime.now(UTC))
        started_at_ms = time.time() * 1000
        begin = time.perf_counter()
        try:
            self._client.trigger(ALERT_CHANNELS, event, payload)
        except Exception as exc:  # the SDK raises requests' and its own errors alike
            # The alert is stored anyway: clients catch up from the fallback endpoint on reconnect.
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "ok": True,
            "event": event,
            "started_at_ms": started_at_ms,
            "duration_ms": (time.perf_counter() - begin) * 1000,
        }


class PanicAlertsApp:
    """Everything a request handler needs; one instance per server."""

    def __init__(self, config: ReverbConfig) -> None:
        self.config = config
        self.store = AlertStore()
        self.client = config.client()
        self.broadcaster = Broadcaster(self.client)

    def authorize_channel(
        self, user: User | None, socket_id: str, channel_name: str
    ) -> dict[str, str] | None:
        """Laravel's Broadcast::auth(): None means 403 (no user, unknown channel, rule says no)."""
        if user is None or not channel_name.startswith("private-"):
            return None
        rule = CHANNEL_RULES.get(channel_name.removeprefix("private-"))
        if rule is None or not rule(user):
            return None
        return self.client.authenticate(channel=channel_name, socket_id=socket_id)

    def user_for(self, authorization: str | None, cookie_header: str | None) -> User | None:
        token = None
        if authorization and authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        elif cookie_header:
            morsel = SimpleCookie(cookie_header).get(SESSION_COOKIE)
            token = morsel.value if morsel else None
        return next((u for u in USERS.values() if token and u.token == token), None)


ALERT_PATH = re.compile(r"^/api/alerts/(\d+)$")


class Handler(BaseHTTPRequestHandler):
    """The example's routes: JSON like a Laravel API, form data for /broadcasting/auth."""

    app: PanicAlertsApp
    server_version = "panic-alerts-example"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._file(PUBLIC / "index.html")
        elif path in ("/app.js", "/style.css"):
            self._file(PUBLIC / path.lstrip("/"))
        elif path in VENDOR:
            self._file(VENDOR[path])
        elif path == "/config.js":
            body = f"window.REVERB_CONFIG = {json.dumps(self.app.config.echo_options())};\n"
            self._send(HTTPStatus.OK, body.encode(), "text/javascript; charset=utf-8")
        elif path.startswith("/login/") and path.removeprefix("/login/") in USERS:
            token = USERS[path.removeprefix("/login/")].token
            self._redirect(f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax")
        elif path == "/logout":
            self._redirect(f"{SESSION_COOKIE}=; Path=/; Max-Age=0")
        elif path == "/api/me":
            user = self._user()
            if user is None:
                self._json(HTTPStatus.UNAUTHORIZED, {"message": "Unauthenticated."})
            else:
                self._json(HTTPStatus.OK, {"data": user.public()})
        elif path == "/api/security/alerts/active":
            if self._require(PERMISSION):
                now = datetime.now(UTC)
                self._json(
                    HTTPStatus.OK, {"data": [a.payload(now) for a in self.app.store.active()]}
                )
        else:
            self._json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/broadcasting/auth":
            self._broadcasting_auth()
        elif path == "/api/alerts":
            self._raise_alert()
        elif match := ALERT_PATH.match(path):
            self._update_alert(int(match.group(1)))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"message": "Not Found"})

    def _broadcasting_auth(self) -> None:
        form = parse_qs(self._body().decode())
        socket_id = form.get("socket_id", [""])[0]
        channel_name = form.get("channel_name", [""])[0]
        try:
            auth = self.app.authorize_channel(self._user(), socket_id, channel_name)
        except ValueError:  # the SDK rejects malformed socket ids and channel names
            self._json(
                HTTPStatus.UNPROCESSABLE_ENTITY, {"message": "Invalid socket_id or channel."}
            )
            return
        if auth is None:
            self._json(HTTPStatus.FORBIDDEN, {"message": "This action is unauthorized."})
        else:
            self._json(HTTPStatus.OK, auth)

    def _raise_alert(self) -> None:
        user = self._user()
        if user is None:
            self._json(HTTPStatus.UNAUTHORIZED, {"message": "Unauthenticated."})
            return
        data = self._json_body()
        if data is None:
            return
        try:
            lat, lng = float(data.get("lat", 4.6097)), float(data.get("lng", -74.0817))
        except (TypeError, ValueError):
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"message": "lat and lng must be numbers."})
            return
        location = str(data.get("location") or "Calle 123 #45-67")
        alert = self.app.store.create(user, lat, lng, location)
        broadcast = self.app.broadcaster.broadcast(TRIGGERED_EVENT, alert)
        now = datetime.now(UTC)
        self._json(HTTPStatus.CREATED, {"data": alert.payload(now), "broadcast": broadcast})

    def _update_alert(self, alert_id: int) -> None:
        if not self._require(PERMISSION):
            return
        data = self._json_body()
        if data is None:
            return
        status = data.get("status")
        if status not in STATUSES:
            self._json(
                HTTPStatus.UNPROCESSABLE_ENTITY, {"message": f"status must be one of {STATUSES}"}
            )
            return
        alert = self.app.store.set_status(alert_id, status)
        if alert is None:
            self._json(
                HTTPStatus.NOT_FOUND, {"message": "No query results for model [PanicAlert]."}
            )
            return
        broadcast = self.app.broadcaster.broadcast(UPDATED_EVENT, alert)
        now = datetime.now(UTC)
        self._json(HTTPStatus.OK, {"data": alert.payload(now), "broadcast": broadcast})

    def _user(self) -> User | None:
        return self.app.user_for(self.headers.get("Authorization"), self.headers.get("Cookie"))

    def _require(self, permission: str) -> bool:
        """401 without a user, 403 without the permission, like Laravel's auth + can middleware."""
        user = self._user()
        if user is None:
            self._json(HTTPStatus.UNAUTHORIZED, {"message": "Unauthenticated."})
            return False
        if not user.can(permission):
            self._json(HTTPStatus.FORBIDDEN, {"message": "This action is unauthorized."})
            return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict[str, Any] | None:
        """The request's JSON object ({} when empty); answers 400 itself and returns None if bad."""
        raw = self._body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"message": "Body must be a JSON object."})
            return None
        return data

    def _file(self, path: Path) -> None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        self._send(HTTPStatus.OK, path.read_bytes(), content_type)

    def _redirect(self, cookie: str) -> None:
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, status: HTTPStatus, body: Any) -> None:
        self._send(status, json.dumps(body, ensure_ascii=False).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"panic-alerts: {self.address_string()} {format % args}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    missing = [str(p) for p in VENDOR.values() if not p.is_file()]
    if missing:
        raise SystemExit(
            f"panic-alerts example: {missing[0]} is missing; run `npm ci --prefix {HERE}` first"
        )
    config = ReverbConfig.from_env(os.environ)
    Handler.app = PanicAlertsApp(config)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(
        f"panic-alerts example on http://{args.host}:{server.server_port}/ "
        f"(broadcasting to {config.scheme}://{config.host}:{config.port}, app {config.app_id})",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
