"""One client's Pusher session: the state machine behind a WebSocket connection.

The session validates what a client sends (subscriptions, auth, sign-in, client events), owns
the socket's own subscription index (`channels`: only the session changes it), and asks the hub
to fan messages out. It knows its socket, its hub and its webhooks only through Protocols
(`pusher.ports.Socket`, `SessionHub` below, `pusher.ports.Hooks`), so it imports no I/O and tests
drive it with fakes; time comes from the hub's clock or as an argument. Every rejection is an
error frame to this client; nothing here may raise into the transport.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson

from reverb_py.config import App
from reverb_py.logs import ThrottledLog
from reverb_py.pusher import auth, messages
from reverb_py.pusher.channels import (
    SERVER_TO_USER_PREFIX,
    ChannelKind,
    channel_type,
    valid_channel_name,
    valid_user_id,
)
from reverb_py.pusher.messages import ClientMessage, ErrorCode, ProtocolViolation
from reverb_py.pusher.ports import AppScope, Cached, Hooks, Socket

logger = logging.getLogger("reverb_py.session")
frame_logger = logging.getLogger("reverb_py.frames")

MAX_WATCHLIST = 100  # Pusher's limit; beyond it the first 100 ids are kept (error 4302)
# Containers the server may later wrap around a member's user_info (roster frame, Redis
# snapshot): a user_info nested deeper could not be encoded there (see encode_nested).
USER_INFO_HEADROOM = 16


class SessionHub(AppScope, Protocol):
    """What a session asks of its app's hub (`reverb_py.hub.AppHub` provides it)."""

    @property
    def hooks(self) -> Hooks: ...

    @property
    def refusal_log(self) -> ThrottledLog: ...

    def add_session(self, session: Session) -> None: ...

    def remove_session(self, session: Session) -> None: ...

    def would_exceed_public_channels(self, name: str) -> bool: ...

    def would_exceed_members(self, name: str, user_id: Any) -> bool: ...

    def join(self, session: Session, name: str, member: tuple[Any, Any] | None) -> str | None: ...

    def subscribed(self, name: str, cause: str) -> None: ...

    def leave(self, session: Session, name: str, member_key: str | None) -> None: ...

    def roster(self, name: str) -> dict[str, Any]: ...

    def member_user_id(self, name: str, member_key: str) -> Any: ...

    def cached(self, name: str, now: float) -> Cached | None: ...

    def sign_in(self, session: Session, user_id: str) -> None: ...

    def watch(self, session: Session) -> None: ...

    def unwatch(self, session: Session) -> None: ...

    def broadcast(
        self, name: str, payload: bytes, except_socket_id: str | None = None, cache: bool = False
    ) -> int: ...


class Session:
    """One client's protocol state. Called by the transport (through the router) for what
    arrives (`on_message`, `on_close`, `on_write_overflow`), by the server's sweep for time
    passing (`check_liveness`), and by the hub or the router to close it (`close`)."""

    __slots__ = (
        "answers_pusher_ping",
        "app",
        "channels",
        "clock",
        "closed",
        "debug",
        "event_count",
        "event_window",
        "hub",
        "idle_since",
        "message_count",
        "message_window",
        "pinged_at",
        "socket",
        "socket_id",
        "stats",
        "user_id",
        "watchlist",
    )

    def __init__(
        self, hub: SessionHub, socket: Socket, socket_id: str, debug: bool = False
    ) -> None:
        self.hub = hub
        self.app: App = hub.app
        self.clock = hub.clock
        self.socket = socket
        self.socket_id = socket_id
        self.debug = debug
        # channel name -> presence member key (None for other channel kinds)
        self.channels: dict[str, str | None] = {}
        self.user_id: str | None = None
        self.watchlist: tuple[str, ...] = ()
        self.closed = False
        self.idle_since = self.clock()
        self.pinged_at: float | None = None
        self.answers_pusher_ping = False
        self.event_window = 0.0
        self.event_count = 0
        self.message_window = 0.0
        self.message_count = 0
        self.stats = hub.stats

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.hub.add_session(self)
        self.stats.opened += 1
        self._send(messages.connection_established(self.socket_id, self.app.activity_timeout))

    def on_message(self, data: bytes, binary: bool) -> None:
        if self.closed:
            return
        stats = self.stats
        stats.messages_received += 1
        stats.message_bytes_received += len(data)
        if self.debug:
            frame_logger.debug("< %s %s", self.socket_id, data[:2048])
        if self.app.rate_limiting_enabled and self._over_message_rate():
            return
        try:
            if binary:
                raise ProtocolViolation("Binary frames are not supported; send JSON text frames")
            self._handle(messages.parse_client_message(data))
        except ProtocolViolation as violation:
            stats.message_rejected(violation.reason)
            self._send(messages.error(violation.code, violation.message))
        except Exception as exc:  # a bug; the client must not be able to turn it into a flood
            stats.message_rejected("internal_error")
            self.hub.refusal_log.warning(
                "internal_error",
                "unexpected %s handling a message for app %s",
                type(exc).__name__,
                self.app.id,
                exc_info=exc,
            )
            self._send(messages.error(ErrorCode.RECONNECT, "Internal server error"))

    def _over_message_rate(self) -> bool:
        """Reverb's optional limiter: every inbound message counts, `max_attempts` per
        `decay_seconds`; over it the message is refused with 4301 (and the socket closed when
        the app says terminate)."""
        app = self.app
        now = self.clock()
        if now - self.message_window >= app.rate_limit_decay_seconds:
            self.message_window = now
            self.message_count = 0
        if self.message_count >= app.rate_limit_max_attempts:
            if app.rate_limit_terminate:
                self.close(ErrorCode.CLIENT_EVENT_REJECTED, "Rate limit exceeded")
            else:
                self._send(messages.error(ErrorCode.CLIENT_EVENT_REJECTED, "Rate limit exceeded"))
            return True
        self.message_count += 1
        return False

    def on_write_overflow(self) -> None:
        logger.warning("closing %s: client is not reading, send buffer full", self.socket_id)
        self.close(ErrorCode.OVER_CAPACITY, "Client too slow: send buffer full")

    def on_close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stats.connection_closed("client")
            self.hub.remove_session(self)
            self.channels.clear()

    def close(self, code: ErrorCode, message: str) -> None:
        """Tell the client why (pusher:error) and close with the same code."""
        if self.closed:
            return
        self._send(messages.error(code, message))
        self.closed = True
        self.stats.connection_closed(code.name.lower())
        # Leave every channel now: a socket whose close is still flushing (or stuck behind a
        # client that stopped reading) must not receive, or count, any more.
        self.hub.remove_session(self)
        self.channels.clear()
        self.socket.close(int(code), message)

    def check_liveness(self, now: float, seen: bool) -> None:
        """Called by the server's periodic sweep: ping silent sockets, drop dead ones.

        `seen`: whether any frame arrived since the last sweep (the transport keeps and resets
        that flag itself, so the hot path pays nothing here); any inbound frame counts as life.
        Flutter and some Java clients answer WebSocket pings but not pusher:ping, so both kinds
        are sent until the client has answered a pusher:ping once; from then on pusher:ping
        alone (one frame back instead of two, which halves what 10 000 idle sockets cost to
        keep alive)."""
        if seen:
            self.idle_since = now
            self.pinged_at = None
        elif self.pinged_at is not None:
            if now - self.pinged_at >= self.app.pong_timeout:
                self.close(ErrorCode.PONG_TIMEOUT, "Pong reply not received in time")
        elif now - self.idle_since >= self.app.ping_interval:
            self.pinged_at = now
            self._send(messages.PING)
            if not self.answers_pusher_ping:
                self.socket.ping()

    def _send(self, payload: bytes) -> None:
        if self.debug:
            frame_logger.debug("> %s %s", self.socket_id, payload[:2048])
        self.stats.sent(1, len(payload))
        self.socket.send_text(payload)

    # Dispatch ----------------------------------------------------------------------------

    def _handle(self, message: ClientMessage) -> None:
        event = message.event
        if event == "pusher:ping":
            self._send(messages.PONG)
        elif event == "pusher:pong":
            self.answers_pusher_ping = True
        elif event == "pusher:subscribe":
            self._subscribe(message.data)
        elif event == "pusher:unsubscribe":
            self._unsubscribe(message.data)
        elif event == "pusher:signin":
            self._signin(message.data)
        elif event.startswith("client-"):
            self._client_event(message)
        elif event.startswith("pusher"):
            raise ProtocolViolation(f"Unsupported event: {event}")
        else:
            raise ProtocolViolation(
                "Client events must be named client-*", ErrorCode.CLIENT_EVENT_REJECTED
            )

    # Subscriptions -----------------------------------------------------------------------

    def _subscribe(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            raise ProtocolViolation("pusher:subscribe needs data.channel")
        name: str = data["channel"]
        app = self.app
        if not valid_channel_name(name, app.max_channel_name_length):
            self._refuse(
                name,
                "InvalidChannel",
                f"Invalid channel name: use at most {app.max_channel_name_length} characters "
                "from A-Z a-z 0-9 _ - = @ , . ;",
                4009,
                "invalid_channel",
            )
            return
        if name in self.channels:
            self._send(messages.error(None, f"Existing subscription to channel {name}"))
            return
        if len(self.channels) >= app.max_subscriptions_per_connection:
            self._limit_reached(
                name,
                "subscriptions_per_connection",
                "Subscription limit reached: at most "
                f"{app.max_subscriptions_per_connection} channels per connection",
            )
            return
        kind = channel_type(name)
        if not kind.needs_auth and self.hub.would_exceed_public_channels(name):
            self._limit_reached(
                name,
                "public_channels",
                f"Channel limit reached: at most {app.max_public_channels} public channels",
            )
            return
        if kind.kind is ChannelKind.SERVER_TO_USER:
            self._subscribe_user_channel(name)
            return
        member = None
        if kind.needs_auth:
            channel_data = data.get("channel_data")
            if kind.kind is ChannelKind.PRESENCE:
                member = self._presence_member(name, channel_data)
                if member is None:
                    return
            else:
                channel_data = None
            if not auth.channel_auth_valid(
                app.key, app.secret, self.socket_id, name, data.get("auth"), channel_data
            ):
                signed = f"{self.socket_id}:{name}" + (
                    f":{channel_data}" if channel_data is not None else ""
                )
                self._refuse(
                    name,
                    "AuthError",
                    f"Invalid signature: expected HMAC SHA256 hex digest of {signed}",
                    401,
                    "auth",
                )
                return
            if member is not None and self.hub.would_exceed_members(name, member[0]):
                self._limit_reached(
                    name,
                    "presence_members",
                    f"Presence channel is full ({app.max_presence_members} members)",
                )
                return
        self.channels[name] = self.hub.join(self, name, member)
        presence = self.hub.roster(name) if member is not None else None
        self._send(messages.subscription_succeeded(name, presence))
        if kind.cached:
            self._replay_cache(name)
        self.hub.subscribed(name, self.socket_id)

    def _presence_member(self, name: str, channel_data: Any) -> tuple[Any, Any] | None:
        """Validate presence channel_data; answers the refusal itself and returns None."""
        app = self.app
        if not isinstance(channel_data, str):
            self._refuse(name, "AuthError", "Presence channels need channel_data", 401, "auth")
            return None
        try:
            parsed = orjson.loads(channel_data)
        except orjson.JSONDecodeError:
            self._refuse(name, "InvalidData", "channel_data is not valid JSON", 400, "invalid_data")
            return None
        user_id = parsed.get("user_id") if isinstance(parsed, dict) else None
        if isinstance(user_id, bool) or not isinstance(user_id, str | int) or user_id == "":
            self._refuse(name, "InvalidData", "channel_data needs a user_id", 400, "invalid_data")
            return None
        if len(str(user_id)) > app.max_user_id_length:
            self._refuse(
                name,
                "LimitReached",
                f"user_id is longer than {app.max_user_id_length} characters",
                400,
                "user_id_length",
            )
            return None
        user_info = parsed.get("user_info")
        encoded = messages.encode_nested(user_info, USER_INFO_HEADROOM)
        if encoded is None or len(encoded) > app.max_presence_user_info_size:
            self._refuse(
                name,
                "LimitReached",
                f"user_info is larger than {app.max_presence_user_info_size} bytes "
                "or nested too deeply",
                400,
                "user_info_size",
            )
            return None
        return user_id, user_info

    def _subscribe_user_channel(self, name: str) -> None:
        user_id = name[len(SERVER_TO_USER_PREFIX) :]
        if self.user_id != user_id:
            self._refuse(name, "AuthError", "Sign in as this user to subscribe", 401, "auth")
            return
        self.channels[name] = None
        self._send(messages.subscription_succeeded(name))

    def _replay_cache(self, name: str) -> None:
        entry = self.hub.cached(name, self.clock())
        if entry is not None:
            self._send(entry.payload)
        else:
            self._send(messages.cache_miss(name))
            self.hub.hooks.cache_miss(name, self.socket_id)

    def _refuse(self, channel: str, kind: str, message: str, status: int, reason: str) -> None:
        """Refuse one subscription; `reason` is its metrics label (a short fixed name)."""
        self.stats.subscription_refused(reason)
        self._send(messages.subscription_error(channel, kind, message, int(status)))

    def _limit_reached(self, channel: str, reason: str, message: str) -> None:
        """A cap on what clients can make the server hold: refused with 4100 (back off, as
        pusher-js does for over-capacity) and logged, rate-limited per app and cap."""
        self.hub.refusal_log.warning(
            reason, "app %s: refused a subscription: %s", self.app.id, message
        )
        self._refuse(channel, "LimitReached", message, ErrorCode.OVER_CAPACITY, reason)

    def _unsubscribe(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            raise ProtocolViolation("pusher:unsubscribe needs data.channel")
        name = data["channel"]
        if name in self.channels:
            member_key = self.channels.pop(name)
            self.hub.leave(self, name, member_key)

    # User sign-in ------------------------------------------------------------------------

    def _signin(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ProtocolViolation("pusher:signin needs data.auth and data.user_data")
        user_data = data.get("user_data")
        app = self.app
        if not isinstance(user_data, str) or not auth.user_auth_valid(
            app.key, app.secret, self.socket_id, user_data, data.get("auth")
        ):
            self.close(ErrorCode.UNAUTHORIZED, "Connection not authorized: invalid sign-in")
            return
        try:
            parsed = orjson.loads(user_data)
        except orjson.JSONDecodeError:
            parsed = None
        user_id = parsed.get("id") if isinstance(parsed, dict) else None
        if not isinstance(user_id, str) or not valid_user_id(user_id, app.max_user_id_length):
            self.close(ErrorCode.UNAUTHORIZED, "The user data must contain a valid string id")
            return
        if self.user_id is not None and self.user_id != user_id:
            self._send(messages.error(ErrorCode.UNAUTHORIZED, "Already signed in as another user"))
            return
        if self.user_id is None:
            self.user_id = user_id
            self.hub.sign_in(self, user_id)
        self._send(messages.encode_event("pusher:signin_success", {"user_data": user_data}))
        if app.watchlist_events and "watchlist" in parsed:
            self._watch(parsed["watchlist"])

    def _watch(self, watchlist: Any) -> None:
        """Start watching the users listed at sign-in (a new sign-in replaces the list)."""
        if not isinstance(watchlist, list) or not all(
            isinstance(uid, str | int) and not isinstance(uid, bool) for uid in watchlist
        ):
            self._send(messages.error(None, "watchlist must be a list of user ids"))
            return
        if len(watchlist) > MAX_WATCHLIST:
            self._send(
                messages.error(
                    ErrorCode.WATCHLIST_LIMIT,
                    f"Watchlist limit exceeded: only the first {MAX_WATCHLIST} ids are watched",
                )
            )
        if self.watchlist:
            self.hub.unwatch(self)
        self.watchlist = tuple(dict.fromkeys(str(uid) for uid in watchlist[:MAX_WATCHLIST]))
        self.hub.watch(self)

    # Client events -----------------------------------------------------------------------

    def _client_event(self, message: ClientMessage) -> None:
        app = self.app
        if app.accept_client_events_from == "none":
            raise self._rejected("disabled", "The app does not have client messaging enabled.")
        name = message.channel
        if name is None:
            raise self._rejected("no_channel", "Client events need a channel")
        if not channel_type(name).accepts_client_events:
            raise self._rejected(
                "channel_type",
                "Client events are only accepted on private and presence channels",
            )
        if name not in self.channels:
            raise self._rejected(
                "not_subscribed",
                "The client is not a member of the specified channel.",
                ErrorCode.UNAUTHORIZED,
            )
        if len(message.event) > app.max_event_name_length:
            raise self._rejected(
                "name_too_long",
                f"Event name is longer than {app.max_event_name_length} characters",
            )
        limit = app.client_event_rate_limit
        if limit:
            now = self.clock()
            if now - self.event_window >= 1.0:
                self.event_window = now
                self.event_count = 0
            self.event_count += 1
            if self.event_count > limit:
                raise self._rejected(
                    "rate_limited", f"Client event rate limit exceeded ({limit} per second)"
                )
        member_key = self.channels[name]
        user_id = None
        if member_key is not None:
            user_id = self.hub.member_user_id(name, member_key)
        try:
            payload = messages.encode_event(message.event, message.data, name, user_id)
        except orjson.JSONEncodeError:
            raise self._rejected(
                "invalid_data", "Invalid message format: data is nested too deeply"
            ) from None
        self.stats.client_events += 1
        self.hub.broadcast(name, payload, except_socket_id=self.socket_id)
        hooks = self.hub.hooks
        if hooks.wants("client_event"):
            hooks.client_event(name, message.event, message.data, self.socket_id, user_id)

    def _rejected(
        self, reason: str, message: str, code: ErrorCode = ErrorCode.CLIENT_EVENT_REJECTED
    ) -> ProtocolViolation:
        """Count a refused client event by a short reason (a metrics label) and build the error
        the client gets."""
        self.stats.client_event_rejected(reason)
        return ProtocolViolation(message, code, "client_event")
