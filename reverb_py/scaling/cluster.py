"""The bridge between this node's hubs and the other replicas.

Without a link (the default, one process) the cluster is just this node: nothing is forwarded
and every query sees only local state. With a link (Redis), every change that other replicas
must know about is forwarded as an operation, and operations from other replicas are applied
to the local hubs and to the mirror of their state (`ClusterState`).

Operations on the wire (JSON arrays; `payload` is the Pusher frame as a string):
  ["e", app, channel, payload, socket_id|null, cache]  an event for a channel
  ["u", app, user_id, payload, socket_id|null]        an event for a signed-in user
  ["t", app, user_id]                                  terminate that user's connections
  ["p+", app, channel, key, user_id, user_info]        this node gained a presence member
  ["p-", app, channel, key]                            this node lost a presence member
  ["c", app, channel, delta]                           subscription count change
  ["s+", app, user_id] / ["s-", app, user_id]          this node's first / last signed-in
                                                       connection of a user (watchlist apps)
  ["hb", {app: connections}]                           heartbeat
  ["snap", state, cache, reply]                        a node's full state (reply: send yours)
  ["bye"]                                              the node is stopping

Webhooks about cluster-wide facts (channel occupied/vacated, member added/removed,
subscription count) are sent by one replica only, the leader: the live node with the smallest
node id that this node knows of, itself included. Node ids start with the start time, so the
leader is the oldest replica and a replica that joins never takes over; the next one does when
the leader says goodbye or is reaped. Every node mirrors the same transitions, so the new
leader decides from the same view. docs/webhooks.md spells out what can be lost or doubled
around a change of leader.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from reverb_py.logs import counted
from reverb_py.scaling.state import (
    Change,
    ClusterState,
    NodeState,
    Online,
    snapshot_from_wire,
    snapshot_to_wire,
)

if TYPE_CHECKING:
    from reverb_py.hub import AppHub

logger = logging.getLogger("reverb_py.cluster")

Op = list[Any]


class Link(Protocol):
    """Carries operations to every other replica, in order."""

    connected: bool

    def send(self, op: Op) -> None: ...

    def status(self, now: float) -> dict[str, Any]: ...


class Cluster:
    def __init__(self, node_id: str, node_timeout: float = 10.0) -> None:
        self.node_id = node_id
        self.node_timeout = node_timeout
        self.hubs: dict[str, AppHub] = {}
        self.state = ClusterState(self._local_has, self._local_online)
        self.link: Link | None = None
        self._connected_since: float | None = None

    def _local_has(self, app_id: str, channel: str, key: str) -> bool:
        hub = self.hubs.get(app_id)
        found = hub.channels.get(channel) if hub is not None else None
        return found is not None and found.members is not None and key in found.members

    def _local_online(self, app_id: str, user_id: str) -> bool:
        hub = self.hubs.get(app_id)
        return hub is not None and user_id in hub.users

    @property
    def leader(self) -> bool:
        """Whether this node sends the webhooks about cluster-wide facts (see the module
        docstring)."""
        nodes = self.state.nodes
        return not nodes or self.node_id < min(nodes)

    @property
    def size(self) -> int:
        """Replicas this node knows of, itself included."""
        return len(self.state.nodes) + 1

    def status(self, now: float) -> dict[str, Any]:
        """The link to the other replicas, for the /ready body (empty on a single node): a
        replica whose link is down is degraded, not unready, since it still serves its own
        clients and the HTTP API."""
        return {} if self.link is None else {"cluster": self.link.status(now)}

    def _send(self, op: Op) -> None:
        link = self.link
        if link is not None:
            link.send(op)

    # Outgoing: called by the hubs ---------------------------------------------------------

    def forward_event(
        self, app_id: str, channel: str, payload: bytes, socket_id: str | None, cache: bool
    ) -> None:
        if self.link is not None:
            self.link.send(["e", app_id, channel, payload.decode(), socket_id, cache])

    def forward_to_user(
        self, app_id: str, user_id: str, payload: bytes, socket_id: str | None
    ) -> None:
        if self.link is not None:
            self.link.send(["u", app_id, user_id, payload.decode(), socket_id])

    def forward_terminate(self, app_id: str, user_id: str) -> None:
        self._send(["t", app_id, user_id])

    def member_joined(
        self, app_id: str, channel: str, key: str, user_id: Any, user_info: Any
    ) -> bool:
        """This node got its first socket for the user; True if the user is new cluster-wide."""
        self._send(["p+", app_id, channel, key, user_id, user_info])
        return not self.state.remote_has(app_id, channel, key)

    def member_left(self, app_id: str, channel: str, key: str) -> bool:
        """This node lost its last socket for the user; True if the user is gone everywhere."""
        self._send(["p-", app_id, channel, key])
        return not self.state.remote_has(app_id, channel, key)

    def subscriptions_changed(self, app_id: str, channel: str, delta: int) -> None:
        if self.link is not None:
            self.link.send(["c", app_id, channel, delta])

    def user_signed_in(self, app_id: str, user_id: str) -> bool:
        """This node got its first signed-in socket for the user; True if the user just came
        online cluster-wide."""
        self._send(["s+", app_id, user_id])
        return not self.state.user_online(app_id, user_id)

    def user_signed_out(self, app_id: str, user_id: str) -> bool:
        """This node lost its last signed-in socket for the user; True if the user just went
        offline cluster-wide."""
        self._send(["s-", app_id, user_id])
        return not self.state.user_online(app_id, user_id)

    # Membership of the cluster -------------------------------------------------------------

    def announce(self, reply: bool) -> None:
        """Send our whole state: on start and after every reconnect, it replaces whatever the
        others believed about us (deltas may have been lost while Redis was away)."""
        self._send(["snap", self._snapshot(), self._cache_snapshot(), reply])

    def heartbeat(self) -> None:
        self._send(["hb", {app_id: len(hub.sessions) for app_id, hub in self.hubs.items()}])

    def goodbye(self) -> None:
        self._send(["bye"])

    def link_up(self, now: float) -> None:
        self._connected_since = now
        self.state.touch_all(now)
        self.announce(reply=True)

    def link_down(self) -> None:
        self._connected_since = None

    def reap(self, now: float) -> None:
        """Forget replicas that stopped heartbeating (killed, partitioned). Only while our own
        link has been up for a full timeout: if we cannot hear anyone, it is not their fault."""
        since = self._connected_since
        if since is None or now - since < self.node_timeout:
            return
        for node_id in self.state.expired(now, self.node_timeout):
            before = self._counts_before(node_id, None)
            changes = self.state.forget(node_id)
            logger.warning(
                "replica %s stopped heartbeating: removed it (%s gone); cluster of %s",
                node_id,
                counted(sum(1 for c in changes if not isinstance(c, Online)), "presence member"),
                counted(self.size, "replica"),
            )
            self._deliver(changes)
            self._counts_after(before)

    # Incoming: operations from other replicas --------------------------------------------

    def receive(self, sender: str, ops: list[Op], now: float | None = None) -> None:
        if sender == self.node_id:
            return
        now = time.monotonic() if now is None else now
        joined = sender not in self.state.nodes
        self.state.seen(sender, now)
        if joined:
            logger.info("replica %s joined the cluster: %s", sender, counted(self.size, "replica"))
        for op in ops:
            try:
                self._apply(sender, op, now)
            except (IndexError, KeyError, TypeError, ValueError, AttributeError):
                logger.warning("ignoring a malformed operation from replica %s", sender)

    def _apply(self, sender: str, op: Op, now: float) -> None:
        kind = op[0]
        state = self.state
        if kind == "e":
            _, app_id, channel, payload, socket_id, cache = op
            hub = self.hubs.get(app_id)
            if hub is not None:
                data = payload.encode()
                if cache:
                    hub.remember(channel, data, now)
                hub.publish(channel, data, socket_id)
        elif kind == "u":
            _, app_id, user_id, payload, socket_id = op
            hub = self.hubs.get(app_id)
            if hub is not None:
                hub.publish_to_user(user_id, payload.encode(), socket_id)
        elif kind == "t":
            hub = self.hubs.get(op[1])
            if hub is not None:
                hub.terminate_local(op[2])
        elif kind == "p+":
            _, app_id, channel, key, user_id, info = op
            self._deliver(state.member_added(sender, app_id, channel, key, user_id, info, now))
        elif kind == "p-":
            _, app_id, channel, key = op
            self._deliver(state.member_removed(sender, app_id, channel, key, now))
        elif kind == "c":
            _, app_id, channel, delta = op
            hub = self.hubs.get(app_id)
            tracked = hub is not None and hub.tracks_counts
            before = hub.subscription_count(channel) if tracked else 0
            state.channel_counts(sender, app_id, {channel: int(delta)}, now)
            if tracked:
                hub.count_changed(channel, before)
        elif kind == "s+":
            self._deliver(state.user_added(sender, op[1], op[2], now))
        elif kind == "s-":
            self._deliver(state.user_removed(sender, op[1], op[2], now))
        elif kind == "hb":
            state.heartbeat(sender, {k: int(v) for k, v in op[1].items()}, now)
        elif kind == "snap":
            _, snapshot, cache, reply = op
            incoming = snapshot_from_wire(snapshot, now)
            before = self._counts_before(sender, incoming)
            self._deliver(state.replace(sender, incoming, now))
            self._counts_after(before)
            self._adopt_cache(cache, now)
            if reply:
                self.announce(reply=False)
        elif kind == "bye":
            before = self._counts_before(sender, None)
            self._deliver(state.forget(sender))
            self._counts_after(before)
            logger.info("replica %s left the cluster: %s", sender, counted(self.size, "replica"))

    def _deliver(self, changes: list[Change]) -> None:
        for change in changes:
            hub = self.hubs.get(change.app_id)
            if hub is None:
                continue
            if isinstance(change, Online):
                hub.deliver_online(change.user_id, change.online)
            else:
                hub.deliver_member_event(change)

    def _counts_before(
        self, node_id: str, incoming: NodeState | None
    ) -> dict[tuple[str, str], int]:
        """Cluster-wide counts of the channels a whole-node change (snapshot, departure) is
        about to touch, for the apps that act on count changes."""
        touched = set(incoming.channels) if incoming is not None else set()
        node = self.state.nodes.get(node_id)
        if node is not None:
            touched.update(node.channels)
        counts = {}
        for app_id, channel in touched:
            hub = self.hubs.get(app_id)
            if hub is not None and hub.tracks_counts:
                counts[(app_id, channel)] = hub.subscription_count(channel)
        return counts

    def _counts_after(self, before: dict[tuple[str, str], int]) -> None:
        for (app_id, channel), count in before.items():
            hub = self.hubs[app_id]
            if hub.subscription_count(channel) != count:
                hub.count_changed(channel, count)

    # Snapshots ---------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return snapshot_to_wire(
            (
                app_id,
                len(hub.sessions),
                {name: len(channel.subscribers) for name, channel in hub.channels.items()},
                {
                    name: {key: (m.user_id, m.user_info) for key, m in channel.members.items()}
                    for name, channel in hub.channels.items()
                    if channel.members
                },
                hub.users if hub.app.watchlist_events else (),
            )
            for app_id, hub in self.hubs.items()
        )

    def _cache_snapshot(self) -> dict[str, dict[str, list[Any]]]:
        now = time.monotonic()
        return {
            app_id: {
                name: [entry.payload.decode(), entry.expires_at - now]
                for name, entry in hub.cache.items()
                if entry.expires_at > now
            }
            for app_id, hub in self.hubs.items()
        }

    def _adopt_cache(self, cache: dict[str, dict[str, list[Any]]], now: float) -> None:
        for app_id, entries in cache.items():
            hub = self.hubs.get(app_id)
            if hub is None:
                continue
            for name, (payload, ttl) in entries.items():
                current = hub.cache.get(name)
                if current is None or current.expires_at < now + float(ttl):
                    hub.remember(name, payload.encode(), now, ttl=float(ttl))
