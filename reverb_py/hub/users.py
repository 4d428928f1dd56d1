"""Signed-in users of one app on this node, and the sessions that watch them.

`pusher:signin` makes a socket its user's; events for `#server-to-user-{id}` and terminations
reach every socket of the user. With watchlist events, a user going online or offline anywhere
in the cluster (its first or last signed-in socket) is told to the sessions watching it.
Called by the hub (sign-in, watch, delivery) and, through the hub, by the cluster.
"""

from __future__ import annotations

from reverb_py.config import App
from reverb_py.pusher import messages
from reverb_py.pusher.session import Session
from reverb_py.scaling.cluster import Cluster
from reverb_py.stats import AppStats
from reverb_py.transport.websocket import text_frame


class Users:
    """Owns `signed_in` (user id -> its sessions here) and `watchers` (watched user id -> the
    sessions watching it). Changed only through the hub, as sessions sign in, watch and close;
    read by the cluster (through the hub) to know which users this node has online."""

    __slots__ = ("app", "cluster", "signed_in", "stats", "watchers")

    def __init__(self, app: App, cluster: Cluster, stats: AppStats) -> None:
        self.app = app
        self.cluster = cluster
        self.stats = stats
        # user id -> its signed-in sessions on this node
        self.signed_in: dict[str, dict[Session, None]] = {}
        # watched user id -> the signed-in sessions watching it
        self.watchers: dict[str, dict[Session, None]] = {}

    def sign_in(self, session: Session, user_id: str) -> None:
        sessions = self.signed_in.get(user_id)
        if sessions is None:
            sessions = self.signed_in[user_id] = {}
            if self.app.watchlist_events and self.cluster.user_signed_in(self.app.id, user_id):
                self.deliver_online(user_id, True)
        sessions[session] = None

    def sign_out(self, session: Session, user_id: str) -> None:
        sessions = self.signed_in.get(user_id)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self.signed_in[user_id]
                if self.app.watchlist_events and self.cluster.user_signed_out(self.app.id, user_id):
                    self.deliver_online(user_id, False)

    def online(self, user_id: str) -> bool:
        """A user is online while it has a signed-in connection on any replica."""
        return user_id in self.signed_in or self.cluster.state.user_online(self.app.id, user_id)

    def watch(self, session: Session) -> None:
        """Index the session's watchlist and send it the current status of every user in
        it (Pusher sends the initial state right after sign-in)."""
        for user_id in session.watchlist:
            self.watchers.setdefault(user_id, {})[session] = None
        online: list[str] = []
        offline: list[str] = []
        for user_id in session.watchlist:  # one pass: a list-membership test was O(n^2)
            (online if self.online(user_id) else offline).append(user_id)
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

    def publish(self, user_id: str, payload: bytes, except_socket_id: str | None) -> None:
        """An event for `#server-to-user-{user_id}`, to the user's sockets on this node."""
        sessions = self.signed_in.get(user_id)
        if not sessions:
            return
        frame = text_frame(payload)
        delivered = 0
        for session in sessions:
            if session.socket_id != except_socket_id:
                session.socket.send(frame)
                delivered += 1
        self.stats.sent(delivered, len(payload))
