"""What this node knows about the other replicas: pure bookkeeping, no I/O.

Every replica owns its own contribution (channel subscription counts, presence members,
connection counts) and announces changes on the bus; every replica mirrors everyone else's.
Presence is a user on a channel being present on at least one node, so a node reports a
cluster-wide transition (absent -> present, present -> absent) only when its own view flips.
Each node tells its own sockets about the transitions it sees, so every client hears one
member_added and one member_removed per user, however many replicas and tabs are involved.

Signed-in users are mirrored the same way for watchlist events: a user is online while at least
one node has a signed-in connection for it, and `Online` reports the flips of that fact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (app id, channel) -> user key -> (user_id as given, user_info)
Members = dict[str, tuple[Any, Any]]


@dataclass(slots=True)
class NodeState:
    """One remote node's contribution, as last announced."""

    last_seen: float
    connections: dict[str, int] = field(default_factory=dict)
    channels: dict[tuple[str, str], int] = field(default_factory=dict)
    members: dict[tuple[str, str], Members] = field(default_factory=dict)
    # app id -> signed-in user ids (only for apps with watchlist events)
    users: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    """A presence change that this node's view of the cluster just went through."""

    app_id: str
    channel: str
    user_id: Any
    user_info: Any
    joined: bool


@dataclass(frozen=True, slots=True)
class Online:
    """A signed-in user came online or went offline cluster-wide, as this node sees it."""

    app_id: str
    user_id: str
    online: bool


Change = Transition | Online

# Does the local node have this member? (app id, channel, user key) -> bool
LocalHas = Callable[[str, str, str], bool]
# Does the local node have a signed-in connection for this user? (app id, user id) -> bool
LocalOnline = Callable[[str, str], bool]


class ClusterState:
    """The mirror of every other replica's contribution, and the presence and online rules.

    It owns `nodes` (node id -> `NodeState`) and nothing else: it reads this node's own
    members and signed-in users through the two callables it is given, so that every rule
    ("present on at least one node") is decided here and nowhere else. Only `Cluster` updates
    it (as operations arrive, on reaping and on goodbye); the hubs and the metrics query it.
    Pure bookkeeping: no I/O, and time is always an argument. Each update returns the
    cluster-wide transitions it caused, for the caller to deliver.
    """

    def __init__(self, local_has: LocalHas, local_online: LocalOnline) -> None:
        self.nodes: dict[str, NodeState] = {}
        self._local_has = local_has
        self._local_online = local_online

    # Queries -----------------------------------------------------------------------------

    def remote_has(self, app_id: str, channel: str, key: str) -> bool:
        target = (app_id, channel)
        return any(key in node.members.get(target, ()) for node in self.nodes.values())

    def subscriptions(self, app_id: str, channel: str) -> int:
        target = (app_id, channel)
        return sum(node.channels.get(target, 0) for node in self.nodes.values())

    def channels(self, app_id: str) -> set[str]:
        return {
            channel
            for node in self.nodes.values()
            for (app, channel), count in node.channels.items()
            if app == app_id and count > 0
        }

    def members(self, app_id: str, channel: str) -> Members:
        merged: Members = {}
        target = (app_id, channel)
        for node in self.nodes.values():
            merged.update(node.members.get(target, {}))
        return merged

    def connections(self, app_id: str) -> int:
        return sum(node.connections.get(app_id, 0) for node in self.nodes.values())

    def user_online(self, app_id: str, user_id: str) -> bool:
        return any(user_id in node.users.get(app_id, ()) for node in self.nodes.values())

    # Updates: each returns the presence transitions the change caused ---------------------

    def seen(self, node_id: str, now: float) -> NodeState:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeState(last_seen=now)
        node.last_seen = now
        return node

    def member_added(
        self, node_id: str, app_id: str, channel: str, key: str, user_id: Any, info: Any, now: float
    ) -> list[Transition]:
        present = self._present(app_id, channel, key)
        self.seen(node_id, now).members.setdefault((app_id, channel), {})[key] = (user_id, info)
        return [] if present else [Transition(app_id, channel, user_id, info, joined=True)]

    def member_removed(
        self, node_id: str, app_id: str, channel: str, key: str, now: float
    ) -> list[Transition]:
        node = self.seen(node_id, now)
        members = node.members.get((app_id, channel))
        if not members or key not in members:
            return []
        user_id, info = members.pop(key)
        if not members:
            del node.members[(app_id, channel)]
        if self._present(app_id, channel, key):
            return []
        return [Transition(app_id, channel, user_id, info, joined=False)]

    def user_added(self, node_id: str, app_id: str, user_id: str, now: float) -> list[Change]:
        online = self._online(app_id, user_id)
        self.seen(node_id, now).users.setdefault(app_id, set()).add(user_id)
        return [] if online else [Online(app_id, user_id, online=True)]

    def user_removed(self, node_id: str, app_id: str, user_id: str, now: float) -> list[Change]:
        users = self.seen(node_id, now).users.get(app_id)
        if not users or user_id not in users:
            return []
        users.discard(user_id)
        return [] if self._online(app_id, user_id) else [Online(app_id, user_id, online=False)]

    def channel_counts(self, node_id: str, app_id: str, deltas: dict[str, int], now: float) -> None:
        channels = self.seen(node_id, now).channels
        for channel, delta in deltas.items():
            count = channels.get((app_id, channel), 0) + delta
            if count > 0:
                channels[(app_id, channel)] = count
            else:
                channels.pop((app_id, channel), None)

    def heartbeat(self, node_id: str, connections: dict[str, int], now: float) -> None:
        self.seen(node_id, now).connections = connections

    def replace(self, node_id: str, snapshot: NodeState, now: float) -> list[Change]:
        """A full snapshot of a node (on start, or after a Redis outage): adopt it and report
        what changed compared to what we believed."""
        was_present = {
            (target, key)
            for target, members in snapshot.members.items()
            for key in members
            if self._present(target[0], target[1], key)
        }
        was_online = {
            (app_id, user_id)
            for app_id, users in snapshot.users.items()
            for user_id in users
            if self._online(app_id, user_id)
        }
        old = self.nodes.pop(node_id, None)
        changes = self._removed(old, keep=snapshot) if old is not None else []
        snapshot.last_seen = now
        self.nodes[node_id] = snapshot
        for (app_id, channel), members in snapshot.members.items():
            for key, (user_id, info) in members.items():
                if ((app_id, channel), key) not in was_present:
                    changes.append(Transition(app_id, channel, user_id, info, joined=True))
        for app_id, users in snapshot.users.items():
            for user_id in users:
                if (app_id, user_id) not in was_online:
                    changes.append(Online(app_id, user_id, online=True))
        return changes

    def forget(self, node_id: str) -> list[Change]:
        """A node left (gracefully, or it stopped heartbeating): drop everything it had."""
        node = self.nodes.pop(node_id, None)
        return self._removed(node) if node is not None else []

    def expired(self, now: float, timeout: float) -> list[str]:
        return [node_id for node_id, node in self.nodes.items() if now - node.last_seen > timeout]

    def touch_all(self, now: float) -> None:
        """After our own reconnect we heard nothing for a while through no fault of theirs."""
        for node in self.nodes.values():
            node.last_seen = now

    # Internals ---------------------------------------------------------------------------

    def _present(self, app_id: str, channel: str, key: str) -> bool:
        return self._local_has(app_id, channel, key) or self.remote_has(app_id, channel, key)

    def _online(self, app_id: str, user_id: str) -> bool:
        return self._local_online(app_id, user_id) or self.user_online(app_id, user_id)

    def _removed(self, node: NodeState, keep: NodeState | None = None) -> list[Change]:
        """Members and users `node` had that are now present nowhere (it is already out of
        `nodes`)."""
        changes: list[Change] = []
        for (app_id, channel), members in node.members.items():
            kept = keep.members.get((app_id, channel), {}) if keep is not None else {}
            for key, (user_id, info) in members.items():
                if key not in kept and not self._present(app_id, channel, key):
                    changes.append(Transition(app_id, channel, user_id, info, joined=False))
        for app_id, users in node.users.items():
            kept_users = keep.users.get(app_id, set()) if keep is not None else set()
            for user_id in users:
                if user_id not in kept_users and not self._online(app_id, user_id):
                    changes.append(Online(app_id, user_id, online=False))
        return changes
