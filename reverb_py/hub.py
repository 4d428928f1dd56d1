"""Per-app state: channels and their local subscribers, presence rosters, signed-in users and
cached events. The hub is the single place that fans a message out to sockets.

A broadcast is framed once (`text_frame`) and the same bytes are queued on every subscriber's
connection. Every session indexes its own subscriptions, so a disconnect costs only that
socket's channels, never a scan of the app.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reverb_py.config import App
from reverb_py.pusher import messages
from reverb_py.pusher.channels import ChannelKind, ChannelType, channel_type, user_key
from reverb_py.transport.connection import Connection, text_frame

if TYPE_CHECKING:
    from reverb_py.pusher.session import Session


class Member:
    """One presence member: a user, however many of its sockets are subscribed."""

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
    event: str
    data: Any
    payload: bytes
    expires_at: float


class AppHub:
    __slots__ = ("app", "cache", "channels", "sessions", "users")

    def __init__(self, app: App) -> None:
        self.app = app
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

    def join(self, session: Session, name: str, member: tuple[Any, Any] | None = None) -> bool:
        """Subscribe; for presence, count the member. True when this user is new on the
        channel, in which case the others are told with member_added."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, channel_type(name))
        channel.subscribers[session] = session.socket
        if member is None or channel.members is None:
            session.channels[name] = None
            return False
        user_id, user_info = member
        key = user_key(user_id)
        session.channels[name] = key
        record = channel.members.get(key)
        is_new = record is None
        if record is None:
            record = channel.members[key] = Member(user_id, user_info)
        record.sockets += 1
        if is_new:
            payload = messages.encode_internal(
                "pusher_internal:member_added",
                {"user_id": user_id, "user_info": user_info},
                name,
            )
            self.publish(name, payload, except_session=session)
        return is_new

    def leave(self, session: Session, name: str, member_key: str | None) -> None:
        channel = self.channels.get(name)
        if channel is None or channel.subscribers.pop(session, None) is None:
            return
        if member_key is not None and channel.members is not None:
            record = channel.members.get(member_key)
            if record is not None:
                record.sockets -= 1
                if record.sockets <= 0:
                    del channel.members[member_key]
                    payload = messages.encode_internal(
                        "pusher_internal:member_removed", {"user_id": record.user_id}, name
                    )
                    self.publish(name, payload)
        if not channel.subscribers:
            del self.channels[name]

    def would_exceed_members(self, name: str, user_id: Any) -> bool:
        channel = self.channels.get(name)
        if channel is None or channel.members is None:
            return False
        return (
            user_key(user_id) not in channel.members
            and len(channel.members) >= self.app.max_presence_members
        )

    def roster(self, name: str) -> dict[str, Any]:
        channel = self.channels.get(name)
        members = channel.members if channel is not None and channel.members else {}
        return {
            "ids": [record.user_id for record in members.values()],
            "hash": {key: record.user_info for key, record in members.items()},
            "count": len(members),
        }

    # Fan-out -----------------------------------------------------------------------------

    def publish(self, name: str, payload: bytes, except_session: Session | None = None) -> None:
        channel = self.channels.get(name)
        if channel is None:
            return
        frame = text_frame(payload)
        if except_session is None:
            for socket in channel.subscribers.values():
                socket.send(frame)
        else:
            for session, socket in channel.subscribers.items():
                if session is not except_session:
                    socket.send(frame)

    def publish_to_user(
        self, user_id: str, payload: bytes, except_session: Session | None = None
    ) -> None:
        sessions = self.users.get(user_id)
        if not sessions:
            return
        frame = text_frame(payload)
        for session in sessions:
            if session is not except_session:
                session.socket.send(frame)

    def sessions_of_user(self, user_id: str) -> list[Session]:
        """Signed-in sockets of this user, plus (as Reverb does) presence members with this id."""
        found: dict[Session, None] = dict.fromkeys(self.users.get(user_id, ()))
        for channel in self.channels.values():
            if channel.members is not None and user_id in channel.members:
                for session in channel.subscribers:
                    if session.channels.get(channel.name) == user_id:
                        found[session] = None
        return list(found)

    # Cache channels ----------------------------------------------------------------------

    def remember(self, name: str, event: str, data: Any, payload: bytes, now: float) -> None:
        self.cache[name] = CachedEvent(event, data, payload, now + self.app.cache_ttl)

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

    # Queries -----------------------------------------------------------------------------

    def subscription_count(self, name: str) -> int:
        channel = self.channels.get(name)
        return len(channel.subscribers) if channel is not None else 0

    def user_count(self, name: str) -> int:
        channel = self.channels.get(name)
        return len(channel.members) if channel is not None and channel.members else 0

    def member_ids(self, name: str) -> list[Any]:
        channel = self.channels.get(name)
        if channel is None or channel.members is None:
            return []
        return [record.user_id for record in channel.members.values()]

    def occupied_channels(self, prefix: str = "") -> Iterator[Channel]:
        for name, channel in self.channels.items():
            if name.startswith(prefix):
                yield channel
