"""One app's hub: who is subscribed where on this node, and fan-out.

The observers of that state each live in their own module: presence rules (`presence`), the
cache channels' last events (`cache`), subscription-count throttling (`counts`), signed-in
users and watchlists (`users`) and webhook decisions (`decisions`). The hub calls them as
subscriptions change; none of them changes a subscription.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from reverb_py.config import App
from reverb_py.hub.cache import CachedEvent, EventCache
from reverb_py.hub.counts import CountThrottle
from reverb_py.hub.decisions import HubHooks, WebhookDecisions
from reverb_py.hub.presence import Member, add_socket, merged, remove_socket, roster
from reverb_py.hub.users import Users
from reverb_py.logs import ThrottledLog
from reverb_py.pusher import messages
from reverb_py.pusher.channels import ChannelKind, ChannelType, channel_type, user_key
from reverb_py.pusher.ports import Socket
from reverb_py.pusher.session import Session
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.state import Members, NodeState, Transition
from reverb_py.stats import AppStats
from reverb_py.transport.websocket import text_frame


class Channel:
    """A channel with subscribers on this node (it exists while it has one)."""

    __slots__ = ("members", "name", "subscribers", "type")

    def __init__(self, name: str, kind: ChannelType) -> None:
        self.name = name
        self.type = kind
        self.subscribers: dict[Session, Socket] = {}
        self.members: dict[str, Member] | None = {} if kind.kind is ChannelKind.PRESENCE else None


class AppHub:
    """The state of one app on this node, and the one place that fans a message out.

    Owns `sessions` (socket id -> open session), `channels` (name -> its local subscribers and
    presence members) and its observers: `users`, `cache`, `counts`, `decisions`. A session's
    own index of its subscriptions (`Session.channels`) is the session's: the hub reads it.

    A broadcast is framed once (`text_frame`) and the same bytes are queued on every
    subscriber's socket. `broadcast`, `send_to_user` and `terminate_user` act locally at once
    and forward to the other replicas through the cluster; `publish`, `publish_to_user` and
    `terminate_local` are the local halves, which the cluster calls for operations arriving
    from other replicas. Queries merge local state with the cluster's mirror of the other
    replicas, so every replica answers the same without asking the others.

    Callers: sessions (join, leave, sign-in, watchlists, client events), the HTTP API
    (`pusher.ports.ApiHub`), the cluster (`scaling.cluster.Hub`), the router (sessions,
    `reconfigure`) and the server's sweep (`expire_cache`, `announce_throttled_counts`); all
    on the event loop. Time comes from `clock` or a `now` argument.
    """

    __slots__ = (
        "app",
        "cache",
        "channels",
        "clock",
        "cluster",
        "counts",
        "decisions",
        "hooks",
        "public_channels",
        "refusal_log",
        "sessions",
        "stats",
        "tracks_counts",
        "users",
    )

    def __init__(
        self,
        app: App,
        cluster: Cluster,
        hooks: HubHooks,
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
        self.stats = AppStats()
        self.users = Users(app, cluster, self.stats)
        self.cache = EventCache()
        self.counts = CountThrottle()
        self.decisions = WebhookDecisions(hooks, cluster, clock)
        self.reconfigure(app, hooks)
        # Warnings about refusals this app's clients can cause at will: one line per reason
        # every 10 s, with the count of those held back.
        self.refusal_log = ThrottledLog(logging.getLogger("reverb_py.session"), clock=clock)

    def reconfigure(self, app: App, hooks: HubHooks) -> None:
        """The app's settings changed (the database app store): every open session follows
        at once, so a rotated secret or a lowered limit applies to the next message."""
        self.app = app
        self.hooks = hooks
        self.users.app = app
        self.decisions.hooks = hooks
        # Whether subscription count changes matter at all; when not, joins and leaves skip
        # every count computation (the hot path stays as it was).
        self.tracks_counts = app.subscription_count or self.decisions.tracks_counts
        for session in self.sessions.values():
            session.app = app

    # Sessions ----------------------------------------------------------------------------

    def add_session(self, session: Session) -> None:
        self.sessions[session.socket_id] = session

    def remove_session(self, session: Session) -> None:
        """The session is gone: it leaves every channel, its watchlist and its user."""
        for name, member_key in list(session.channels.items()):
            self.leave(session, name, member_key)
        if session.watchlist:
            self.users.unwatch(session)
        if session.user_id is not None:
            self.users.sign_out(session, session.user_id)
        self.sessions.pop(session.socket_id, None)

    def sign_in(self, session: Session, user_id: str) -> None:
        self.users.sign_in(session, user_id)

    def watch(self, session: Session) -> None:
        self.users.watch(session)

    def unwatch(self, session: Session) -> None:
        self.users.unwatch(session)

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
            self.decisions.occupancy(name, count - 1, count, session.socket_id)
        if member is None or channel.members is None:
            return None
        user_id, user_info = member
        key = user_key(user_id)
        if add_socket(channel.members, key, user_id, user_info) and self.cluster.member_joined(
            self.app.id, name, key, user_id, user_info
        ):
            payload = messages.encode_internal(
                "pusher_internal:member_added",
                {"user_id": user_id, "user_info": user_info},
                name,
            )
            self._publish_to(channel, payload, session)
            self.decisions.member_added(name, user_id, session.socket_id)
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
            gone = remove_socket(channel.members, member_key)
            if gone is not None and self.cluster.member_left(self.app.id, name, member_key):
                payload = messages.encode_internal(
                    "pusher_internal:member_removed", {"user_id": gone.user_id}, name
                )
                self._publish_to(channel, payload, None)
                self.decisions.member_removed(name, gone.user_id, session.socket_id)
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
        self.decisions.occupancy(name, before, count, cause)
        self._count_is(name, count, cause)

    def _count_is(self, name: str, count: int, cause: str | None) -> None:
        if channel_type(name).kind is ChannelKind.PRESENCE:
            return  # Pusher counts subscriptions of non-presence channels only
        if self.counts.may_announce(name, count, self.clock()):
            self._announce_count(name, count, cause)

    def _announce_count(self, name: str, count: int, cause: str | None = None) -> None:
        if self.app.subscription_count:
            channel = self.channels.get(name)
            if channel is not None:
                payload = messages.encode_internal(
                    "pusher_internal:subscription_count", {"subscription_count": count}, name
                )
                self._publish_to(channel, payload, None)
        self.decisions.subscription_count(name, count, cause)

    def announce_throttled_counts(self, now: float) -> None:
        """From the server's periodic sweep: announce the large channels whose count changed
        while they were throttled."""
        for name in self.counts.due(now):
            self._announce_count(name, self.subscription_count(name))

    def deliver_member_event(self, transition: Transition) -> None:
        """A presence change seen through another replica, for this node's subscribers."""
        if transition.joined:
            self.decisions.member_added(transition.channel, transition.user_id)
        else:
            self.decisions.member_removed(transition.channel, transition.user_id)
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

    def deliver_online(self, user_id: str, online: bool) -> None:
        self.users.deliver_online(user_id, online)

    def members(self, name: str) -> Members:
        """Every member of a presence channel, on this node and on the others."""
        channel = self.channels.get(name)
        local = channel.members if channel is not None else None
        return merged(self.cluster.state.members(self.app.id, name), local)

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
        return roster(self.members(name))

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
        self.users.publish(user_id, payload, except_socket_id)
        self.cluster.forward_to_user(self.app.id, user_id, payload, except_socket_id)

    def publish_to_user(
        self, user_id: str, payload: bytes, except_socket_id: str | None = None
    ) -> None:
        self.users.publish(user_id, payload, except_socket_id)

    def terminate_user(self, user_id: str) -> None:
        self.terminate_local(user_id)
        self.cluster.forward_terminate(self.app.id, user_id)

    def terminate_local(self, user_id: str) -> None:
        """Close the user's signed-in sockets, and (as Reverb does) presence members with
        that id."""
        found: dict[Session, None] = dict.fromkeys(self.users.signed_in.get(user_id, ()))
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
        self.cache.remember(name, payload, start + lifetime)

    def cached(self, name: str, now: float) -> CachedEvent | None:
        return self.cache.get(name, now)

    def expire_cache(self, now: float) -> None:
        self.cache.expire(now)

    def cache_entries(self, now: float) -> dict[str, tuple[str, float]]:
        return self.cache.live(now)

    def adopt_cached(self, name: str, payload: bytes, now: float, ttl: float) -> None:
        self.cache.adopt(name, payload, now + ttl)

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

    # What this node has, for the cluster (`scaling.cluster.Hub`) ---------------------------

    def has_local_member(self, name: str, key: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and channel.members is not None and key in channel.members

    def has_local_user(self, user_id: str) -> bool:
        return user_id in self.users.signed_in

    def local_connections(self) -> int:
        return len(self.sessions)

    def describe(self, node: NodeState) -> None:
        """Add this app's local connections, subscriptions, members and (for watchlist apps)
        signed-in users to a snapshot of this node."""
        app_id = self.app.id
        node.connections[app_id] = len(self.sessions)
        for name, channel in self.channels.items():
            node.channels[(app_id, name)] = len(channel.subscribers)
            if channel.members:
                node.members[(app_id, name)] = {
                    key: (m.user_id, m.user_info) for key, m in channel.members.items()
                }
        if self.app.watchlist_events and self.users.signed_in:
            node.users[app_id] = set(self.users.signed_in)
