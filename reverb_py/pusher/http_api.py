"""The Pusher REST API (`/apps/{app_id}/...`), signed and validated.

Triggering is the backend-facing hot path: the signature is verified once, the event is
encoded once per channel, fanned out locally, and `{}` is answered without waiting on anything.
Every refusal is a 4xx with a JSON body `{"error": ..., "code": ...}`. Each app's hub is seen
through `pusher.ports.ApiHub`, so this module imports neither the hub nor the transport.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote

import orjson

from reverb_py.config import App
from reverb_py.http_types import (
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    parse_query,
)
from reverb_py.latency import DeliveryLatency
from reverb_py.pusher import auth, messages
from reverb_py.pusher.channels import (
    SERVER_TO_USER_PREFIX,
    ChannelKind,
    channel_type,
    valid_channel_name,
)
from reverb_py.pusher.ports import ApiHub

_SOCKET_ID = re.compile(r"\d+\.\d+")
_EMPTY = HttpResponse(200, b"{}", static=True)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Event(NamedTuple):
    """One event to publish; a NamedTuple because one is built per trigger (a frozen dataclass
    costs several times as much to construct)."""

    name: str
    data: str
    channels: tuple[str, ...]
    socket_id: str | None
    info: tuple[str, ...]


class HttpApi:
    """Routes `{prefix}/apps/{id}/...`; `hubs` maps app id, `hubs_by_key` app key, to that
    app's hub (the router's maps, kept current as apps change). Called by the router only, one
    request at a time; it owns nothing but the delivery latency histogram."""

    def __init__(
        self,
        hubs: Mapping[str, ApiHub],
        hubs_by_key: Mapping[str, ApiHub],
        prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hubs = hubs
        self.hubs_by_key = hubs_by_key
        self.prefix = prefix
        self.clock = clock
        self.delivery_latency = DeliveryLatency()

    def handle(self, request: HttpRequest, path: str) -> HttpResponse:
        """`path` is the request path with the server prefix removed, starting `/apps/`."""
        parts = path.split("/")  # ['', 'apps', id, ...]
        if len(parts) < 4 or not parts[2]:
            return error_response(404, "Not found")
        hub = self.hubs.get(parts[2])
        if hub is None:
            return error_response(404, f"Unknown app id {parts[2]}")
        return self._handle_for(hub, request, parts[3:])

    def handle_without_app_id(self, request: HttpRequest, path: str) -> HttpResponse:
        """`/users/{id}/terminate_connections`, as the official Python SDK (3.3) spells it:
        the app is the one whose key signed the request."""
        key = dict(request.query()).get("auth_key")
        hub = self.hubs_by_key.get(key) if key is not None else None
        if hub is None:
            return error_response(401, "Unknown auth_key")
        return self._handle_for(hub, request, path.split("/")[1:])

    def answer_events(self, full: str, path: str, query: str, body: bytes) -> HttpResponse | None:
        """`POST .../apps/{id}/events` from the parts of the request it uses: `full` is the
        path as sent, `path` that without the server prefix. The same checks, in the same
        order and with the same answers, as `handle` gives it, without a request object or
        the routing of the other endpoints; None if `path` is not that of a known app's
        events (`handle` then answers)."""
        parts = path.split("/")  # ['', 'apps', id, 'events']
        hub = self.hubs.get(parts[2]) if len(parts) == 4 and parts[3] == "events" else None
        if hub is None:
            return None
        try:
            self._verify(hub, "POST", full, parse_query(query), body)
            response = self._trigger(hub, body)
        except ApiError as exc:
            response = error_response(exc.status, exc.message)
        hub.stats.api_request("events", response.status)
        return response

    def _handle_for(self, hub: ApiHub, request: HttpRequest, route: list[str]) -> HttpResponse:
        endpoint = "unknown"
        try:
            handler, method = self._route(route)
            endpoint = handler.__name__.lstrip("_")
            if request.method != method:
                response = error_response(405, "Method not allowed", (("Allow", method),))
            else:
                self._verify(hub, method, request.path, request.query(), request.body)
                response = handler(hub, request, route)
        except ApiError as exc:
            response = error_response(exc.status, exc.message)
        hub.stats.api_request(endpoint, response.status)
        return response

    def _route(
        self, route: list[str]
    ) -> tuple[Callable[[ApiHub, HttpRequest, list[str]], HttpResponse], str]:
        match route:
            case ["events"]:
                return self._events, "POST"
            case ["batch_events"]:
                return self._batch_events, "POST"
            case ["channels"]:
                return self._channels, "GET"
            case ["channels", _]:
                return self._channel, "GET"
            case ["channels", _, "users"]:
                return self._channel_users, "GET"
            case ["connections"]:
                return self._connections, "GET"
            case ["users", _, "terminate_connections"]:
                return self._terminate, "POST"
        raise ApiError(404, "Not found")

    def _verify(
        self, hub: ApiHub, method: str, path: str, params: list[tuple[str, str]], body: bytes
    ) -> None:
        """The signature, then whether the app is enabled: strangers learn nothing."""
        app = hub.app
        try:
            auth.verify_api_request(
                key=app.key,
                secret=app.secret,
                method=method,
                paths=self._signed_paths(path),
                params=params,
                body=body,
                now=self.clock(),
            )
        except auth.ApiAuthError as exc:
            raise ApiError(401, str(exc)) from None
        if not app.enabled:
            raise ApiError(403, "Application is disabled")

    def _signed_paths(self, full: str) -> Iterator[str]:
        """The path as sent first; the other spellings are only computed if that fails."""
        yield full
        bare = full[len(self.prefix) :] if self.prefix and full.startswith(self.prefix) else full
        yield from dict.fromkeys(p for p in (unquote(full), bare, unquote(bare)) if p != full)

    # Publishing --------------------------------------------------------------------------

    def _events(self, hub: ApiHub, request: HttpRequest, _: list[str]) -> HttpResponse:
        return self._trigger(hub, request.body)

    def _trigger(self, hub: ApiHub, body: bytes) -> HttpResponse:
        event = parse_event(hub.app, _json_body(body), allow_channels=True)
        self._publish(hub, event)
        if not event.info:
            return _EMPTY
        return json_response(
            200, {"channels": {c: self._info(hub, c, event.info) for c in event.channels}}
        )

    def _batch_events(self, hub: ApiHub, request: HttpRequest, _: list[str]) -> HttpResponse:
        events = parse_batch(hub.app, _json_body(request.body))
        for event in events:
            self._publish(hub, event)
        if not any(event.info for event in events):
            return _EMPTY
        return json_response(
            200,
            {"batch": [self._info(hub, e.channels[0], e.info) if e.info else {} for e in events]},
        )

    def _publish(self, hub: ApiHub, event: Event) -> None:
        latency = self.delivery_latency
        started = latency.now()
        delivered = 0
        for channel in event.channels:
            payload = messages.encode_event(event.name, event.data, channel)
            if channel.startswith(SERVER_TO_USER_PREFIX):
                user_id = channel[len(SERVER_TO_USER_PREFIX) :]
                hub.send_to_user(user_id, payload, event.socket_id)
            else:
                cached = channel_type(channel).cached
                delivered += hub.broadcast(channel, payload, event.socket_id, cached)
        if delivered:
            latency.accepted(started)

    # Queries -----------------------------------------------------------------------------

    def _info(self, hub: ApiHub, channel: str, attributes: tuple[str, ...]) -> dict[str, Any]:
        """The requested attributes that apply to this channel; the others are left out.

        Pusher's docs answer 400 to an attribute that does not apply (`user_count` on a public
        channel, `cache` on a non-cache one); Reverb answers 200 without it, and Laravel
        dashboards written against Reverb ask for `user_count,subscription_count` on every
        channel. A client written for Pusher never depends on the 400, so Reverb's way wins.
        """
        info: dict[str, Any] = {}
        ctype = channel_type(channel)
        presence = ctype.kind is ChannelKind.PRESENCE
        if "user_count" in attributes and presence:
            info["user_count"] = hub.user_count(channel)
        if "subscription_count" in attributes and not presence:
            info["subscription_count"] = hub.subscription_count(channel)
        if "cache" in attributes and ctype.cached:
            info["cache"] = self._cache_info(hub, channel)
        return info

    def _cache_info(self, hub: ApiHub, channel: str) -> dict[str, Any] | None:
        now = hub.clock()
        entry = hub.cached(channel, now)
        if entry is None:
            return None
        event, data = entry.event_and_data()
        return {"event": event, "data": data, "ttl": int(entry.expires_at - now)}

    def _channels(self, hub: ApiHub, request: HttpRequest, _: list[str]) -> HttpResponse:
        params = dict(request.query())
        attributes = _attributes(params)
        names = hub.channel_names(params.get("filter_by_prefix", ""))
        return json_response(200, {"channels": {n: self._info(hub, n, attributes) for n in names}})

    def _channel(self, hub: ApiHub, request: HttpRequest, route: list[str]) -> HttpResponse:
        name = _channel_from_path(route[1])
        body: dict[str, Any] = {"occupied": hub.subscription_count(name) > 0}
        body.update(self._info(hub, name, _attributes(dict(request.query()))))
        return json_response(200, body)

    def _channel_users(self, hub: ApiHub, _: HttpRequest, route: list[str]) -> HttpResponse:
        name = _channel_from_path(route[1])
        if channel_type(name).kind is not ChannelKind.PRESENCE:
            raise ApiError(400, "Users are only available for presence channels")
        return json_response(200, {"users": [{"id": uid} for uid in hub.member_ids(name)]})

    def _connections(self, hub: ApiHub, _: HttpRequest, __: list[str]) -> HttpResponse:
        return json_response(200, {"connections": hub.connection_count()})

    def _terminate(self, hub: ApiHub, _: HttpRequest, route: list[str]) -> HttpResponse:
        hub.terminate_user(unquote(route[1]))
        return _EMPTY


def parse_batch(app: App, body: Any) -> list[Event]:
    """The events of a `batch_events` body (any decoded JSON); ApiError if it is not valid."""
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "batch must be a non-empty list of events")
    if len(batch) > app.max_batch_size:
        raise ApiError(400, f"Cannot batch more than {app.max_batch_size} events")
    return [parse_event(app, item, allow_channels=False) for item in batch]


def parse_event(app: App, body: Any, *, allow_channels: bool) -> Event:
    """One event of a trigger body (any decoded JSON); ApiError if it is not valid.

    Pure, so that every shape a backend could send is fuzzed without a server. `data` may be
    any JSON value, as soketi accepts (Pusher and Reverb want a string): a non-string is sent
    as its JSON text."""
    if not isinstance(body, dict):
        raise ApiError(400, "Each event must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "name is required and must be a string")
    if len(name) > app.max_event_name_length:
        raise ApiError(400, f"Event name is longer than {app.max_event_name_length}")
    if "data" not in body:
        raise ApiError(400, "data is required")
    data = body["data"]
    if not isinstance(data, str):
        encoded = messages.encode_nested(data, 0)
        if encoded is None:
            raise ApiError(400, "data is nested too deeply")
        data = encoded.decode()
    size = len(data) if data.isascii() else len(data.encode("utf-8", "replace"))  # O(1) if ASCII
    if size > app.max_event_data_size:
        raise ApiError(413, f"Event data is larger than {app.max_event_data_size} bytes")
    channels = body.get("channels") if allow_channels else None
    if channels is None:
        channel = body.get("channel")
        if not isinstance(channel, str):
            raise ApiError(400, "channel or channels is required")
        channels = [channel]
    if not isinstance(channels, list) or not channels:
        raise ApiError(400, "channels must be a non-empty list")
    if len(channels) > app.max_event_channels:
        raise ApiError(400, f"Cannot trigger on more than {app.max_event_channels} channels")
    for channel in channels:
        if not isinstance(channel, str):
            raise ApiError(400, "channels must be a list of channel names (strings)")
        if not valid_channel_name(channel, app.max_channel_name_length):
            raise ApiError(400, f"Invalid channel name: {channel[:200]!r}")
    if len(channels) > 1 and any(channel_type(c).kind is ChannelKind.ENCRYPTED for c in channels):
        raise ApiError(400, "Encrypted channels cannot be triggered with other channels")
    socket_id = body.get("socket_id")
    if socket_id is not None and (
        not isinstance(socket_id, str) or not _SOCKET_ID.fullmatch(socket_id)
    ):
        raise ApiError(400, "socket_id must look like 123.456")
    info = body.get("info")
    if info is not None and not isinstance(info, str):
        raise ApiError(400, "info must be a comma-separated string")
    attributes = tuple(a.strip() for a in info.split(",") if a.strip()) if info else ()
    return Event(name, data, tuple(channels), socket_id, attributes)


def _json_body(body: bytes) -> Any:
    try:
        return orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON") from None


def _attributes(params: dict[str, str]) -> tuple[str, ...]:
    return tuple(a.strip() for a in params.get("info", "").split(",") if a.strip())


def _channel_from_path(segment: str) -> str:
    return unquote(segment)
