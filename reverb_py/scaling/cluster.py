"""The bridge between this node's hubs and the other replicas.

Without a link (the default, one process) the cluster is just this node: nothing is forwarded
and every query sees only local state. With a link (Redis), every change that other replicas
must know about is forwarded as an operation, and operations from other replicas are applied
to the local hubs and to the mirror of their state (`ClusterState`).

Operations on the wire (JSON arrays; `payload` is the Pusher frame as a string), each a type
in `scaling.ops` that encodes to exactly this array and that `ops.decode` reads back:
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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, assert_never

from reverb_py.logs import ThrottledLog, counted
from reverb_py.scaling import ops
from reverb_py.scaling.state import Change, ClusterState, NodeState, Online, Transition

logger = logging.getLogger("reverb_py.cluster")

LOG_INTERVAL_SECONDS = 10.0


class Link(Protocol):
    """Carries operations to every other replica, in order."""

    @property
    def connected(self) -> bool: ...

    def send(self, op: ops.Op) -> None: ...

    def status(self, now: float) -> dict[str, Any]: ...


class Hub(Protocol):
    """What the cluster calls on one app's hub (`reverb_py.hub.AppHub` provides it): exactly
    this, so that the scaling layer does not depend on the hub's insides."""

    @property
    def tracks_counts(self) -> bool: ...

    def has_local_member(self, name: str, key: str) -> bool: ...

    def has_local_user(self, user_id: str) -> bool: ...

    def local_connections(self) -> int: ...

    def describe(self, node: NodeState) -> None: ...

    def cache_entries(self, now: float) -> dict[str, tuple[str, float]]: ...

    def adopt_cached(self, name: str, payload: bytes, now: float, ttl: float) -> None: ...

    def remember(
        self, name: str, payload: bytes, now: float | None = None, ttl: float | None = None
    ) -> None: ...

    def publish(self, name: str, payload: bytes, except_socket_id: str | None = None) -> int: ...

    def publish_to_user(
        self, user_id: str, payload: bytes, except_socket_id: str | None = None
    ) -> None: ...

    def terminate_local(self, user_id: str) -> None: ...

    def subscription_count(self, name: str) -> int: ...

    def count_changed(self, name: str, before: int, cause: str | None = None) -> None: ...

    def deliver_online(self, user_id: str, online: bool) -> None: ...

    def deliver_member_event(self, transition: Transition) -> None: ...


class Cluster:
    """This node's side of the cluster: what it tells the other replicas, and what it does
    with what they tell it.

    It owns the mirror of the other replicas (`state`, a `ClusterState`), the choice of the
    webhook leader and the count of operations it refused. It does not own the local hubs:
    it sees them through `Hub` (`hubs`, set by the router) for snapshots and presence checks,
    and applies the other replicas' operations to them through it.

    Callers: the hubs call the outgoing methods (`forward_*`, `member_*`, `user_*`,
    `subscriptions_changed`) as their local state changes; the link calls `receive`,
    `link_up`, `link_down`, `announce` and `goodbye`; the server's periodic sweep calls
    `reap` and `heartbeat`. All of them run on the event loop, one at a time. Time comes from
    `clock` (or a `now` argument), so tests drive reaping and cache lifetimes without sleeping.
    """

    def __init__(
        self,
        node_id: str,
        node_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.node_timeout = node_timeout
        self.clock = clock
        self.hubs: Mapping[str, Hub] = {}
        self.state = ClusterState(self._local_has, self._local_online)
        self.link: Link | None = None
        self.malformed = 0  # operations from other replicas that could not be applied
        self._connected_since: float | None = None
        self._log = ThrottledLog(logger, LOG_INTERVAL_SECONDS, clock)

    def _local_has(self, app_id: str, channel: str, key: str) -> bool:
        hub = self.hubs.get(app_id)
        return hub is not None and hub.has_local_member(channel, key)

    def _local_online(self, app_id: str, user_id: str) -> bool:
        hub = self.hubs.get(app_id)
        return hub is not None and hub.has_local_user(user_id)

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

    def _send(self, op: ops.Op) -> None:
        link = self.link
        if link is not None:
            link.send(op)

    # Outgoing: called by the hubs ---------------------------------------------------------

    def forward_event(
        self, app_id: str, channel: str, payload: bytes, socket_id: str | None, cache: bool
    ) -> None:
        link = self.link
        if link is not None:
            link.send(ops.Event(app_id, channel, payload.decode(), socket_id, cache))

    def forward_to_user(
        self, app_id: str, user_id: str, payload: bytes, socket_id: str | None
    ) -> None:
        link = self.link
        if link is not None:
            link.send(ops.UserEvent(app_id, user_id, payload.decode(), socket_id))

    def forward_terminate(self, app_id: str, user_id: str) -> None:
        self._send(ops.Terminate(app_id, user_id))

    def member_joined(
        self, app_id: str, channel: str, key: str, user_id: Any, user_info: Any
    ) -> bool:
        """This node got its first socket for the user; True if the user is new cluster-wide."""
        self._send(ops.MemberAdded(app_id, channel, key, user_id, user_info))
        return not self.state.remote_has(app_id, channel, key)

    def member_left(self, app_id: str, channel: str, key: str) -> bool:
        """This node lost its last socket for the user; True if the user is gone everywhere."""
        self._send(ops.MemberRemoved(app_id, channel, key))
        return not self.state.remote_has(app_id, channel, key)

    def subscriptions_changed(self, app_id: str, channel: str, delta: int) -> None:
        link = self.link
        if link is not None:
            link.send(ops.CountChanged(app_id, channel, delta))

    def user_signed_in(self, app_id: str, user_id: str) -> bool:
        """This node got its first signed-in socket for the user; True if the user just came
        online cluster-wide."""
        self._send(ops.SignedIn(app_id, user_id))
        return not self.state.user_online(app_id, user_id)

    def user_signed_out(self, app_id: str, user_id: str) -> bool:
        """This node lost its last signed-in socket for the user; True if the user just went
        offline cluster-wide."""
        self._send(ops.SignedOut(app_id, user_id))
        return not self.state.user_online(app_id, user_id)

    # Membership of the cluster -------------------------------------------------------------

    def announce(self, reply: bool) -> None:
        """Send our whole state: on start and after every reconnect, it replaces whatever the
        others believed about us (deltas may have been lost while Redis was away)."""
        if self.link is not None:
            now = self.clock()
            self.link.send(ops.Snapshot(self._snapshot(now), self._cache_snapshot(now), reply))

    def heartbeat(self) -> None:
        connections = {app_id: hub.local_connections() for app_id, hub in self.hubs.items()}
        self._send(ops.Heartbeat(connections))

    def goodbye(self) -> None:
        self._send(ops.Goodbye())

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

    def receive(self, sender: str, raw_ops: list[Any]) -> None:
        """Apply operations another replica sent, as read from the wire (JSON arrays): one
        that cannot be decoded is counted, logged (throttled) and skipped, never raised."""
        if sender == self.node_id:
            return
        now = self.clock()
        joined = sender not in self.state.nodes
        self.state.seen(sender, now)
        if joined:
            logger.info("replica %s joined the cluster: %s", sender, counted(self.size, "replica"))
        for raw in raw_ops:
            try:
                op = ops.decode(raw)
            except ops.MalformedOp as exc:
                self.malformed += 1
                self._log.warning(
                    "malformed",
                    "ignoring an operation from replica %s that cannot be applied (%s): "
                    "%d ignored so far",
                    sender,
                    exc.reason,
                    self.malformed,
                )
                continue
            self._apply(sender, op, now)

    def _apply(self, sender: str, op: ops.Op, now: float) -> None:
        state = self.state
        match op:
            case ops.Event(app_id, channel, payload, socket_id, cache):
                hub = self.hubs.get(app_id)
                if hub is not None:
                    data = payload.encode()
                    if cache:
                        hub.remember(channel, data, now)
                    hub.publish(channel, data, socket_id)
            case ops.UserEvent(app_id, user_id, payload, socket_id):
                hub = self.hubs.get(app_id)
                if hub is not None:
                    hub.publish_to_user(user_id, payload.encode(), socket_id)
            case ops.Terminate(app_id, user_id):
                hub = self.hubs.get(app_id)
                if hub is not None:
                    hub.terminate_local(user_id)
            case ops.MemberAdded(app_id, channel, key, user_id, info):
                self._deliver(state.member_added(sender, app_id, channel, key, user_id, info, now))
            case ops.MemberRemoved(app_id, channel, key):
                self._deliver(state.member_removed(sender, app_id, channel, key, now))
            case ops.CountChanged(app_id, channel, delta):
                hub = self.hubs.get(app_id)
                if hub is None or not hub.tracks_counts:
                    state.channel_counts(sender, app_id, {channel: delta}, now)
                else:
                    count = hub.subscription_count(channel)
                    state.channel_counts(sender, app_id, {channel: delta}, now)
                    hub.count_changed(channel, count)
            case ops.SignedIn(app_id, user_id):
                self._deliver(state.user_added(sender, app_id, user_id, now))
            case ops.SignedOut(app_id, user_id):
                self._deliver(state.user_removed(sender, app_id, user_id, now))
            case ops.Heartbeat(connections):
                state.heartbeat(sender, connections, now)
            case ops.Snapshot(incoming, cache, reply):
                counts = self._counts_before(sender, incoming)
                self._deliver(state.replace(sender, incoming, now))
                self._counts_after(counts)
                self._adopt_cache(cache, now)
                if reply:
                    self.announce(reply=False)
            case ops.Goodbye():
                counts = self._counts_before(sender, None)
                self._deliver(state.forget(sender))
                self._counts_after(counts)
                logger.info(
                    "replica %s left the cluster: %s", sender, counted(self.size, "replica")
                )
            case _:  # every kind has its case: mypy checks it when one is added
                assert_never(op)

    def _deliver(self, changes: Iterable[Change]) -> None:
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
        touched = set(self.state.nodes[node_id].channels)  # known: seen before it is applied
        if incoming is not None:
            touched.update(incoming.channels)
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

    def _snapshot(self, now: float) -> NodeState:
        node = NodeState(last_seen=now)
        for hub in self.hubs.values():
            hub.describe(node)
        return node

    def _cache_snapshot(self, now: float) -> ops.CacheEntries:
        return {app_id: hub.cache_entries(now) for app_id, hub in self.hubs.items()}

    def _adopt_cache(self, cache: ops.CacheEntries, now: float) -> None:
        for app_id, entries in cache.items():
            hub = self.hubs.get(app_id)
            if hub is None:
                continue
            for name, (payload, ttl) in entries.items():
                hub.adopt_cached(name, payload.encode(), now, ttl)
