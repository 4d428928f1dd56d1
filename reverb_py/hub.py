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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from reverb_py.config import App
from reverb_py.pusher import messages
from reverb_py.pusher.channels import ChannelKind, ChannelType, channel_type, user_key
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.state import Members, Transition
from reverb_py.transport.connection import Connection, text_frame

if TYPE_CHECKING:
    from reverb_py.pusher.session import Session


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
        self.subscribers: dict[Session, Connection] = {}
        self.members: dict[str, Member] | None = {} if kind.kind is ChannelKind.PRESENCE else None


@dataclass(frozen=True, slots=True)
class CachedEvent:
    payload: bytes
    expires_at: float

    def event_and_data(self) -> tuple[str, Any]:
        message = orjson.loads(self.payload)
        return message.get("event"), message.get("data")


class AppHub:
    __slots__ = ("app", "cache", "channels", "cluster", "sessions", "users")

    def __init__(self, app: App, cluster: Cluster) -> None:
        self.app = app
        self.cluster = cluster
        self.channels: dict[str, Channel] = {}
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, dict[Session, None]] = {}
        self.cache: dict[str, CachedEvent] = {}

    # Sessions ----------------------------------------------------------------------------

    def add_session(self, session: Session) -> None:
        self.sessions[session.socket_id] = session

    def remove_session(self, session: Session) -> None:
        for name, member_key in list(session.channels.items()):
            self.leave(session, name, member_key)
        session.channels.clear()
        if session.user_id is not None:
            self.sign_out(session, session.user_id)
        self.sessions.pop(session.socket_id, None)

    def sign_in(self, session: Session, user_id: str) -> None:
        self.users.setdefault(user_id, {})[session] = None

    def sign_out(self, session: Session, user_id: str) -> None:
        sessions = self.users.get(user_id)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self.users[user_id]

    # Subscriptions -----------------------------------------------------------------------

    def join(self, session: Session, name: str, member: tuple[Any, Any] | None = None) -> None:
        """Subscribe; for presence, count the member, and tell the others with member_added
        when the user is new to the channel anywhere in the cluster."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, channel_type(name))
        channel.subscribers[session] = session.socket
        self.cluster.subscriptions_changed(self.app.id, name, 1)
        if member is None or channel.members is None:
            session.channels[name] = None
            return
        user_id, user_info = member
        key = user_key(user_id)
        session.channels[name] = key
        record = channel.members.get(key)
        if record is not None:
            record.sockets += 1
            return
        record = channel.members[key] = Member(user_id, user_info)
        record.sockets = 1
        if self.cluster.member_joined(self.app.id, name, key, user_id, user_info):
            payload = messages.encode_internal(
                "pusher_internal:member_added",
                {"user_id": user_id, "user_info": user_info},
                name,
            )
            self._publish_to(channel, payload, session)

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
        if not channel.subscribers:
            del self.channels[name]

    def deliver_member_event(self, transition: Transition) -> None:
        """A presence change seen through another replica, for this node's subscribers."""
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
    ) -> None:
        """An event published here: to local subscribers now, and to the other replicas."""
        if cache:
            self.remember(name, payload, None)
        self.publish(name, payload, except_socket_id)
        self.cluster.forward_event(self.app.id, name, payload, except_socket_id, cache)

    def publish(self, name: str, payload: bytes, except_socket_id: str | None = None) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            excluded = self.sessions.get(except_socket_id) if except_socket_id else None
            self._publish_to(channel, payload, excluded)

    def _publish_to(self, channel: Channel, payload: bytes, excluded: Session | None) -> None:
        frame = text_frame(payload)
        if excluded is None:
            for socket in channel.subscribers.values():
                socket.send(frame)
        else:
            for session, socket in channel.subscribers.items():
                if session is not excluded:
                    socket.send(frame)

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
        for session in sessions:
            if session.socket_id != except_socket_id:
                session.socket.send(frame)

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
        start = time.monotonic() if now is None else now
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
