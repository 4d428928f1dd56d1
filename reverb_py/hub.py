"""Per-app state: channels and their local subscribers, presence rosters, signed-in users and
cached events. The hub is the single place that fans a message out to sockets.

A broadcast is framed once (`text_frame`) and the same bytes are queued on every subscriber's
connection. Every session indexes its own subscriptions, so a disconnect costs only that
socket's channels, never a scan of the app.

`broadcast`, `send_to_user` and `terminate_user` act locally at once and forward to the other
replicas through the cluster; `publish`, `publish_to_user` and `terminate_local` are the local
halves, which the cluster also calls for operations arriving from other replicas. Queries
merge local state with the cluster's mirror of the other replicas, so every replica answers
the same without asking the others.

The hub also notices the Pusher features built on those facts: webhooks (decided here, sent by
`webhooks.Webhooks`; facts about the whole cluster only by the leader replica),
`pusher_internal:subscription_count` for every node's own subscribers (throttled for channels
above SUBSCRIPTION_COUNT_THROTTLE_ABOVE subscribers by the server's periodic sweep), and
watchlist events for signed-in sockets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from reverb_py.config import App
from reverb_py.logs import ThrottledLog
from reverb_py.pusher import messages
from reverb_py.pusher.channels import ChannelKind, ChannelType, channel_type, user_key
from reverb_py.pusher.ports import Socket
from reverb_py.pusher.session import Session
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.state import Members, Transition
from reverb_py.stats import AppStats
from reverb_py.transport.websocket import text_frame
from reverb_py.webhooks import AppWebhooks

# Pusher: subscription_count goes out on every change, at most every 5 s above 100 subscribers.
SUBSCRIPTION_COUNT_THROTTLE_ABOVE = 100
SUBSCRIPTION_COUNT_INTERVAL = 5.0


class Member:
    """One presence member on this node: a user, however many of its sockets are here."""

    __slots__ = ("sockets", "user_id", "user_info")

    def __init__(self, user_id: Any, user_info: Any) -> None:
        self.user_id = user_id
        self.user_info = user_info
        self.sockets = 0


class Channel:
    __slots__ = ("members", "name", "subscribers", "type")

    def __init__(self, name: str, kind: ChannelType) -> None:
        self.name = name
        self.type = kind
        self.subscribers: dict[Session, Socket] = {}
        self.members: dict[str, Member] | None = {} if kind.kind is ChannelKind.PRESENCE else None


@dataclass(frozen=True, slots=True)
class CachedEvent:
    payload: bytes
    expires_at: float

    def event_and_data(self) -> tuple[str, Any]:
        message = orjson.loads(self.payload)
        return message.get("event"), message.get("data")


class AppHub:
    __slots__ = (
        "app",
        "cache",
        "channels",
        "clock",
        "cluster",
        "count_dirty",
        "count_sent",
        "hooks",
        "public_channels",
        "refusal_log",
        "sessions",
        "stats",
        "tracks_counts",
        "users",
        "watchers",
    )

    def __init__(
        self,
        app: App,
        cluster: Cluster,
        hooks: AppWebhooks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        # The one source of time for this app's sessions and for the hub's own timers.
        self.clock = clock
        self.channels: dict[str, Channel] = {}
        # Channels in `channels` that anyone may create (no auth): a counter, so the cap check
        # on every subscribe is O(1).
        self.public_channels = 0
        self.sessions: dict[str, Session] = {}
        self.reconfigure(app, hooks)
        self.users: dict[str, dict[Session, None]] = {}
        self.cache: dict[str, CachedEvent] = {}
        # watched user id -> the signed-in sessions watching it
        self.watchers: dict[str, dict[Session, None]] = {}
        # subscription_count throttling: when each large channel was last announced, and
        # the large channels whose change waits for the sweep.
        self.count_sent: dict[str, float] = {}
        self.count_dirty: dict[str, None] = {}
        self.stats = AppStats()
        # Warnings about refusals this app's clients can cause at will: one line per reason
        # every 10 s, with the count of those held back.
        self.refusal_log = ThrottledLog(logging.getLogger("reverb_py.session"))

    def reconfigure(self, app: App, hooks: AppWebhooks) -> None:
        """The app's settings changed (the database app store): every open session follows
        at once, so a rotated secret or a lowered limit applies to the next message."""
        self.app = app
        self.hooks = hooks
        # Whether subscription count changes matter at all; when not, joins and leaves skip
        # every count computation (the hot path stays as it was).
        self.tracks_counts = (
            app.subscription_count or hooks.tracks_occupancy or hooks.wants("subscription_count")
        )
        for session in self.sessions.values():
            session.app = app

    # Sessions ----------------------------------------------------------------------------

    def add_session(self, session: Session) -> None:
        self.sessions[session.socket_id] = session

    def remove_session(self, session: Session) -> None:
        for name, member_key in list(session.channels.items()):
            self.leave(session, name, member_key)
        if session.watchlist:
            self.unwatch(session)
        if session.user_id is not None:
            self.sign_out(session, session.user_id)
        self.sessions.pop(session.socket_id, None)

    def sign_in(self, session: Session, user_id: str) -> None:
        sessions = self.users.get(user_id)
        if sessions is None:
            sessions = self.users[user_id] = {}
            if self.app.watchlist_events and self.cluster.user_signed_in(self.app.id, user_id):
                self.deliver_online(user_id, True)
        sessions[session] = None

    def sign_out(self, session: Session, user_id: str) -> None:
        sessions = self.users.get(user_id)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self.users[user_id]
                if self.app.watchlist_events and self.cluster.user_signed_out(self.app.id, user_id):
                    self.deliver_online(user_id, False)

    # Watchlists --------------------------------------------------------------------------

    def watch(self, session: Session) -> None:
        """Index the session's watchlist and send it the current status of every user in
        it (Pusher sends the initial state right after sign-in)."""
        for user_id in session.watchlist:
            self.watchers.setdefault(user_id, {})[session] = None
        online: list[str] = []
        offline: list[str] = []
        for user_id in session.watchlist:  # one pass: a list-membership test was O(n^2)
            (online if self.user_online(user_id) else offline).append(user_id)
        events = [
            {"name": name, "user_ids": ids}
            for name, ids in (("online", online), ("offline", offline))
            if ids
        ]
        if events:
            payload = messages.encode_internal(
                "pusher_internal:watchlist_events", {"events": events}
            )
            self.stats.sent(1, len(payload))
            session.socket.send_text(payload)

    def unwatch(self, session: Session) -> None:
        for user_id in session.watchlist:
            watching = self.watchers.get(user_id)
            if watching is not None:
                watching.pop(session, None)
                if not watching:
                    del self.watchers[user_id]

    def user_online(self, user_id: str) -> bool:
        """A user is online while it has a signed-in connection on any replica."""
        return user_id in self.users or self.cluster.state.user_online(self.app.id, user_id)

    def deliver_online(self, user_id: str, online: bool) -> None:
        """A watched user came online or went offline (here or on another replica)."""
        watching = self.watchers.get(user_id)
        if not watching:
            return
        event = {"name": "online" if online else "offline", "user_ids": [user_id]}
        payload = messages.encode_internal("pusher_internal:watchlist_events", {"events": [event]})
        frame = text_frame(payload)
        for session in watching:
            session.socket.send(frame)
        self.stats.sent(len(watching), len(payload))

    # Subscriptions -----------------------------------------------------------------------

    def join(
        self, session: Session, name: str, member: tuple[Any, Any] | None = None
    ) -> str | None:
        """Subscribe; for presence, count the member, and tell the others with member_added
        when the user is new to the channel anywhere in the cluster. Returns the member key
        (None outside presence channels), which the session keeps in its `channels`."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, channel_type(name))
            if not channel.type.needs_auth:
                self.public_channels += 1
        channel.subscribers[session] = session.socket
        self.cluster.subscriptions_changed(self.app.id, name, 1)
        if self.tracks_counts:
            count = self.subscription_count(name)
            self._occupancy_changed(name, count - 1, count, session.socket_id)
        if member is None or channel.members is None:
            return None
        user_id, user_info = member
        key = user_key(user_id)
        record = channel.members.get(key)
        if record is not None:
            record.sockets += 1
            return key
        record = channel.members[key] = Member(user_id, user_info)
        record.sockets = 1
        if self.cluster.member_joined(self.app.id, name, key, user_id, user_info):
            payload = messages.encode_internal(
                "pusher_internal:member_added",
                {"user_id": user_id, "user_info": user_info},
                name,
            )
            self._publish_to(channel, payload, session)
            if self.hooks.tracks_members and self.cluster.leader:
                self.hooks.member_added(name, user_id, session.socket_id)
        return key

    def subscribed(self, name: str, cause: str) -> None:
        """Announce the new count once the subscriber (socket id `cause`) has its
        subscription_succeeded (its own pusher_internal:subscription_count must come after)."""
        if self.tracks_counts:
            self._count_is(name, self.subscription_count(name), cause)

    def leave(self, session: Session, name: str, member_key: str | None) -> None:
        channel = self.channels.get(name)
        if channel is None or channel.subscribers.pop(session, None) is None:
            return
        self.cluster.subscriptions_changed(self.app.id, name, -1)
        if member_key is not None and channel.members is not None:
            record = channel.members.get(member_key)
            if record is not None:
                record.sockets -= 1
                if record.sockets <= 0:
                    del channel.members[member_key]
                    if self.cluster.member_left(self.app.id, name, member_key):
                        payload = messages.encode_internal(
                            "pusher_internal:member_removed", {"user_id": record.user_id}, name
                        )
                        self._publish_to(channel, payload, None)
                        if self.hooks.tracks_members and self.cluster.leader:
                            self.hooks.member_removed(
                                name, record.user_id, self.clock(), session.socket_id
                            )
        if not channel.subscribers:
            del self.channels[name]
            if not channel.type.needs_auth:
                self.public_channels -= 1
        if self.tracks_counts:
            self.count_changed(name, self.subscription_count(name) + 1, session.socket_id)

    def count_changed(self, name: str, before: int, cause: str | None = None) -> None:
        """The cluster-wide subscription count of `name` changed from `before` (here by the
        connection `cause`, or on another replica)."""
        count = self.subscription_count(name)
        self._occupancy_changed(name, before, count, cause)
        self._count_is(name, count, cause)

    def _occupancy_changed(self, name: str, before: int, after: int, cause: str | None) -> None:
        if (before == 0) == (after == 0) or not self.hooks.tracks_occupancy:
            return
        if not self.cluster.leader:
            return
        if after:
            self.hooks.channel_occupied(name, cause)
        else:
            self.hooks.channel_vacated(name, self.clock(), cause)

    def _count_is(self, name: str, count: int, cause: str | None) -> None:
        if channel_type(name).kind is ChannelKind.PRESENCE:
            return  # Pusher counts subscriptions of non-presence channels only
        if count > SUBSCRIPTION_COUNT_THROTTLE_ABOVE or name in self.count_dirty:
            now = self.clock()
            if now - self.count_sent.get(name, -SUBSCRIPTION_COUNT_INTERVAL) < (
                SUBSCRIPTION_COUNT_INTERVAL
            ):
                self.count_dirty[name] = None
                return
            self.count_sent[name] = now
            self.count_dirty.pop(name, None)
        self._announce_count(name, count, cause)

    def _announce_count(self, name: str, count: int, cause: str | None = None) -> None:
        if self.app.subscription_count:
            channel = self.channels.get(name)
            if channel is not None:
                payload = messages.encode_internal(
                    "pusher_internal:subscription_count", {"subscription_count": count}, name
                )
                self._publish_to(channel, payload, None)
        if self.hooks.wants("subscription_count") and self.cluster.leader:
            self.hooks.subscription_count(name, count, cause)

    def announce_throttled_counts(self, now: float) -> None:
        """From the server's periodic sweep: announce the large channels whose count changed
        while they were throttled, and forget announcements older than the interval."""
        for name in list(self.count_dirty):
            if now - self.count_sent.get(name, 0.0) >= SUBSCRIPTION_COUNT_INTERVAL:
                del self.count_dirty[name]
                self.count_sent[name] = now
                self._announce_count(name, self.subscription_count(name))
        stale = [
            name
            for name, sent in self.count_sent.items()
            if now - sent >= SUBSCRIPTION_COUNT_INTERVAL and name not in self.count_dirty
        ]
        for name in stale:
            del self.count_sent[name]

    def deliver_member_event(self, transition: Transition) -> None:
        """A presence change seen through another replica, for this node's subscribers."""
        if self.hooks.tracks_members and self.cluster.leader:
            if transition.joined:
                self.hooks.member_added(transition.channel, transition.user_id)
            else:
                self.hooks.member_removed(transition.channel, transition.user_id, self.clock())
        channel = self.channels.get(transition.channel)
        if channel is None:
            return
        if transition.joined:
            event = "pusher_internal:member_added"
            data = {"user_id": transition.user_id, "user_info": transition.user_info}
        else:
            event = "pusher_internal:member_removed"
            data = {"user_id": transition.user_id}
        self._publish_to(channel, messages.encode_internal(event, data, channel.name), None)

    def members(self, name: str) -> Members:
        """Every member of a presence channel, on this node and on the others."""
        merged = self.cluster.state.members(self.app.id, name)
        channel = self.channels.get(name)
        if channel is not None and channel.members:
            for key, record in channel.members.items():
                merged[key] = (record.user_id, record.user_info)
        return merged

    def member_user_id(self, name: str, member_key: str) -> Any:
        """The user id a presence member joined with (its key is that id as a string)."""
        channel = self.channels.get(name)
        record = channel.members.get(member_key) if channel and channel.members else None
        return record.user_id if record is not None else member_key

    def would_exceed_public_channels(self, name: str) -> bool:
        """Whether subscribing to public channel `name` would create one channel too many on
        this node. Channels that need auth are never capped here: the backend decides those."""
        return self.public_channels >= self.app.max_public_channels and name not in self.channels

    def would_exceed_members(self, name: str, user_id: Any) -> bool:
        members = self.members(name)
        return user_key(user_id) not in members and len(members) >= self.app.max_presence_members

    def roster(self, name: str) -> dict[str, Any]:
        members = self.members(name)
        return {
            "ids": [user_id for user_id, _ in members.values()],
            "hash": {key: info for key, (_, info) in members.items()},
            "count": len(members),
        }

    # Fan-out -----------------------------------------------------------------------------

    def broadcast(
        self, name: str, payload: bytes, except_socket_id: str | None = None, cache: bool = False
    ) -> int:
        """An event published here: to local subscribers now, and to the other replicas; how
        many local sockets it was queued on."""
        if cache:
            self.remember(name, payload, None)
        delivered = self.publish(name, payload, except_socket_id)
        self.cluster.forward_event(self.app.id, name, payload, except_socket_id, cache)
        return delivered

    def publish(self, name: str, payload: bytes, except_socket_id: str | None = None) -> int:
        """Deliver to this node's subscribers; how many sockets it was queued on."""
        channel = self.channels.get(name)
        if channel is None:
            return 0
        excluded = self.sessions.get(except_socket_id) if except_socket_id else None
        return self._publish_to(channel, payload, excluded)

    def _publish_to(self, channel: Channel, payload: bytes, excluded: Session | None) -> int:
        frame = text_frame(payload)
        subscribers = channel.subscribers
        if excluded is None:
            for socket in subscribers.values():
                socket.send(frame)
            delivered = len(subscribers)
        else:
            for session, socket in subscribers.items():
                if session is not excluded:
                    socket.send(frame)
            delivered = len(subscribers) - (excluded in subscribers)
        self.stats.sent(delivered, len(payload))
        return delivered

    def send_to_user(self, user_id: str, payload: bytes, except_socket_id: str | None) -> None:
        self.publish_to_user(user_id, payload, except_socket_id)
        self.cluster.forward_to_user(self.app.id, user_id, payload, except_socket_id)

    def publish_to_user(
        self, user_id: str, payload: bytes, except_socket_id: str | None = None
    ) -> None:
        sessions = self.users.get(user_id)
        if not sessions:
            return
        frame = text_frame(payload)
        delivered = 0
        for session in sessions:
            if session.socket_id != except_socket_id:
                session.socket.send(frame)
                delivered += 1
        self.stats.sent(delivered, len(payload))

    def terminate_user(self, user_id: str) -> None:
        self.terminate_local(user_id)
        self.cluster.forward_terminate(self.app.id, user_id)

    def terminate_local(self, user_id: str) -> None:
        """Close the user's signed-in sockets, and (as Reverb does) presence members with
        that id."""
        found: dict[Session, None] = dict.fromkeys(self.users.get(user_id, ()))
        for channel in self.channels.values():
            if channel.members is not None and user_id in channel.members:
                for session in channel.subscribers:
                    if session.channels.get(channel.name) == user_id:
                        found[session] = None
        for session in found:
            session.close(messages.ErrorCode.UNAUTHORIZED, "You got disconnected by the app.")

    # Cache channels ----------------------------------------------------------------------

    def remember(
        self, name: str, payload: bytes, now: float | None = None, ttl: float | None = None
    ) -> None:
        start = self.clock() if now is None else now
        lifetime = self.app.cache_ttl if ttl is None else ttl
        self.cache[name] = CachedEvent(payload, start + lifetime)

    def cached(self, name: str, now: float) -> CachedEvent | None:
        entry = self.cache.get(name)
        if entry is not None and entry.expires_at <= now:
            del self.cache[name]
            return None
        return entry

    def expire_cache(self, now: float) -> None:
        expired = [name for name, entry in self.cache.items() if entry.expires_at <= now]
        for name in expired:
            del self.cache[name]

    # Queries (cluster-wide) ----------------------------------------------------------------

    def subscription_count(self, name: str) -> int:
        channel = self.channels.get(name)
        local = len(channel.subscribers) if channel is not None else 0
        return local + self.cluster.state.subscriptions(self.app.id, name)

    def user_count(self, name: str) -> int:
        return len(self.members(name))

    def member_ids(self, name: str) -> list[Any]:
        return [user_id for user_id, _ in self.members(name).values()]

    def channel_names(self, prefix: str = "") -> list[str]:
        names = set(self.channels) | self.cluster.state.channels(self.app.id)
        return sorted(name for name in names if name.startswith(prefix))

    def connection_count(self) -> int:
        return len(self.sessions) + self.cluster.state.connections(self.app.id)
