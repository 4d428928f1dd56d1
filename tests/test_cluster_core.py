"""The scaling core without Redis or real time: two or three `Cluster`s, each with a real
`AppHub`, wired together through an in-memory stream, with one fake clock.

Each node's link is a real `RedisLink` that never connects: what the cluster sends goes into
its real outbox and batches (`_next_batch`), and the `Stream` below carries the batches to the
other links' real reader (`_receive`), which does the per-sender positions and gap detection
as it does with Redis. Only the Redis I/O is replaced. Subscribers are fake sessions whose
socket records the frames the hub writes, so a test reads what each client would receive.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from reverb_py.config import App, RedisSettings, Settings, Webhook
from reverb_py.hub import AppHub
from reverb_py.pusher.channels import user_key
from reverb_py.scaling import ops
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.redis import RedisLink
from reverb_py.scaling.state import NodeState
from reverb_py.webhooks import AppWebhooks

NODE_TIMEOUT = 10.0
HOOK_EVENTS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "subscription_count",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Socket:
    """Records the text frames the hub queues for one client, as parsed messages."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, frame: bytes) -> None:
        assert frame[0] == 0x81
        length, start = frame[1], 2
        if length == 126:
            length, start = int.from_bytes(frame[2:4]), 4
        self.send_text(frame[start : start + length])

    def send_text(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if isinstance(message.get("data"), str) and message["event"].startswith("pusher"):
            message["data"] = orjson.loads(message["data"])
        self.messages.append(message)

    def events(self, name: str) -> list[Any]:
        return [m["data"] for m in self.messages if m["event"] == name]


class Session:
    """The part of `pusher.session.Session` the hub uses."""

    def __init__(self, socket_id: str, user_id: str | None, watchlist: list[str]) -> None:
        self.socket_id = socket_id
        self.socket = Socket()
        self.channels: dict[str, str | None] = {}
        self.user_id = user_id
        self.watchlist = watchlist
        self.closed: tuple[Any, str] | None = None

    def close(self, code: Any, reason: str) -> None:
        self.closed = (code, reason)


class Node:
    """One replica: a cluster, its hub for the one app, and its (never connected) link."""

    def __init__(self, node_id: str, app: App, clock: Clock) -> None:
        self.cluster = Cluster(node_id, NODE_TIMEOUT, clock=clock)
        self.hooks = AppWebhooks(app, Settings(webhook_delay=0))
        self.hub = AppHub(app, self.cluster, self.hooks)
        self.cluster.hubs = {app.id: self.hub}
        self.link = RedisLink(RedisSettings(url="redis://127.0.0.1:1/0"), "stream", self.cluster)
        self.cluster.link = self.link
        self._sockets = 0

    @property
    def id(self) -> str:
        return self.cluster.node_id

    def connect(self, user_id: str | None = None, watchlist: tuple[str, ...] = ()) -> Session:
        self._sockets += 1
        session = Session(f"{self.id}.{self._sockets}", user_id, list(watchlist))
        self.hub.add_session(session)  # type: ignore[arg-type]
        if user_id is not None:
            self.hub.sign_in(session, user_id)  # type: ignore[arg-type]
            if watchlist:
                self.hub.watch(session)  # type: ignore[arg-type]
        return session

    def subscribe(self, session: Session, channel: str, member: tuple[Any, Any] | None = None):
        session.channels[channel] = self.hub.join(session, channel, member)  # type: ignore[arg-type]
        self.hub.subscribed(channel, session.socket_id)

    def unsubscribe(self, session: Session, channel: str) -> None:
        self.hub.leave(session, channel, session.channels.pop(channel))  # type: ignore[arg-type]

    def disconnect(self, session: Session) -> None:
        self.hub.remove_session(session)  # type: ignore[arg-type]
        session.channels.clear()  # as the real session does: it owns its index

    def webhooks(self) -> list[dict[str, Any]]:
        return [queued[1] for target in self.hooks.targets for queued in target.queue]


class Stream:
    """The Redis stream, in memory: every node reads every batch, in the order appended."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.clock = Clock()
        self.nodes: list[Node] = []
        self._entries = 0

    def start(self, node_id: str) -> Node:
        node = Node(node_id, self.app, self.clock)
        self.nodes.append(node)
        node.link._position = "0-0"
        node.link._link_up(self.clock.now)
        return node

    def stop(self, node: Node) -> None:
        """A node that stops without a word (killed, partitioned): its queue is lost."""
        self.nodes.remove(node)

    def flush(self, lose: Node | None = None) -> None:
        """Carry every queued batch to every other node until nothing is left to carry; the
        first batch of `lose` is lost on the way (trimmed from the stream unread)."""
        moved = True
        while moved:
            moved = False
            for sender in list(self.nodes):
                batch = sender.link._next_batch()
                if batch is None:
                    continue
                moved = True
                if sender is lose:
                    lose = None
                    continue
                self._entries += 1
                entry = (
                    f"{self._entries}-0".encode(),
                    {
                        b"n": sender.id.encode(),
                        b"c": str(batch.first).encode(),
                        b"o": orjson.dumps([op.to_wire() for op in batch.ops]),
                    },
                )
                for reader in self.nodes:
                    reader.link._receive([entry])


def app_with(**options: Any) -> App:
    hooks = (Webhook("http://127.0.0.1:1/hook", event_types=HOOK_EVENTS),)
    return App(id="1", key="key", secret="secret", webhooks=hooks, **options)


@pytest.fixture
def stream() -> Stream:
    return Stream(app_with(subscription_count=True, watchlist_events=True))


def three(stream: Stream) -> tuple[Node, Node, Node]:
    """Node ids order by age, as real ones do: `a` is the oldest, so the leader."""
    a, b, c = stream.start("a"), stream.start("b"), stream.start("c")
    stream.flush()
    return a, b, c


# The operations: wire form unchanged, one decoder ---------------------------------------------

STATE = NodeState(
    last_seen=0.0,
    connections={"1": 3, "2": 0},
    channels={("1", "presence-room"): 2, ("1", "news"): 1},
    members={("1", "presence-room"): {"7": (7, {"name": "Ann"})}},
    users={"1": {"u1"}},
)

WIRE_FORMS: list[tuple[ops.Op, list[Any]]] = [
    (
        ops.Event("1", "news", '{"event":"x"}', None, False),
        ["e", "1", "news", '{"event":"x"}', None, False],
    ),
    (ops.Event("1", "news", "{}", "1.2", True), ["e", "1", "news", "{}", "1.2", True]),
    (ops.UserEvent("1", "u1", "{}", None), ["u", "1", "u1", "{}", None]),
    (ops.Terminate("1", "u1"), ["t", "1", "u1"]),
    (
        ops.MemberAdded("1", "presence-room", "7", 7, {"name": "Ann"}),
        ["p+", "1", "presence-room", "7", 7, {"name": "Ann"}],
    ),
    (ops.MemberRemoved("1", "presence-room", "7"), ["p-", "1", "presence-room", "7"]),
    (ops.CountChanged("1", "news", -1), ["c", "1", "news", -1]),
    (ops.SignedIn("1", "u1"), ["s+", "1", "u1"]),
    (ops.SignedOut("1", "u1"), ["s-", "1", "u1"]),
    (ops.Heartbeat({"1": 3}), ["hb", {"1": 3}]),
    (
        ops.Snapshot(STATE, {"1": {"cached-news": ("{}", 12.5)}, "2": {}}, True),
        [
            "snap",
            {
                "1": {
                    "connections": 3,
                    "channels": {"presence-room": 2, "news": 1},
                    "members": {"presence-room": {"7": [7, {"name": "Ann"}]}},
                    "users": ["u1"],
                },
                "2": {"connections": 0, "channels": {}, "members": {}, "users": []},
            },
            {"1": {"cached-news": ["{}", 12.5]}, "2": {}},
            True,
        ],
    ),
    (ops.Goodbye(), ["bye"]),
]


@pytest.mark.parametrize(("op", "wire"), WIRE_FORMS, ids=lambda v: getattr(v, "KIND", ""))
def test_each_operation_encodes_as_the_previous_release_and_decodes_back(
    op: ops.Op, wire: list[Any]
) -> None:
    assert op.to_wire() == wire
    assert ops.decode(orjson.loads(orjson.dumps(op.to_wire()))) == op


def test_a_snapshot_of_the_previous_release_without_optional_keys_decodes() -> None:
    snapshot = ops.decode(["snap", {"1": {}}, {}, False])
    assert snapshot == ops.Snapshot(NodeState(0.0, connections={"1": 0}), {}, False)


MALFORMED: list[object] = [
    {"e": 1},
    [],
    [1, 2],
    ["zz", "1"],
    ["e", "1", "news", "{}", None],
    ["e", "1", "news", "{}", None, "yes"],
    ["e", "1", 5, "{}", None, False],
    ["e", "1", "news", "{}", 3, False],
    ["c", "1", "news", "1"],
    ["c", "1", "news", True],
    ["hb", []],
    ["hb", {"1": "3"}],
    ["snap", [], {}, False],
    ["snap", {"1": []}, {}, False],
    ["snap", {"1": {"members": {"room": {"7": [7]}}}}, {}, False],
    ["snap", {"1": {"users": "u1"}}, {}, False],
    ["snap", {"1": {"users": [1]}}, {}, False],
    ["snap", {}, {"1": {"c": ["{}", "12"]}}, False],
    ["snap", {}, {"1": {"c": ["{}", False]}}, False],
    ["snap", {}, {}, None],
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_the_decoder_refuses_what_it_cannot_apply(raw: object) -> None:
    with pytest.raises(ops.MalformedOp):
        ops.decode(raw)


def test_malformed_operations_are_counted_logged_once_and_skipped(
    stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    b = stream.start("b")
    stream.flush()
    listener = b.connect()
    b.subscribe(listener, "news")
    with caplog.at_level(logging.WARNING, "reverb_py.cluster"):
        b.cluster.receive("a", [["zz"], ["c", "1", "news", "x"], ["e", "1", "news", "{}", None, 1]])
        b.cluster.receive("a", [["e", "1", "news", '{"event":"ok"}', None, False]])
    assert b.cluster.malformed == 3
    assert caplog.text.count("cannot be applied") == 1  # throttled: one line, not three
    assert [m["event"] for m in listener.socket.messages][-1] == "ok"  # the next op applied
    assert "a" in b.cluster.state.nodes


# Events, users, counts ---------------------------------------------------------------------


def test_an_event_reaches_the_subscribers_of_every_other_node_except_the_sender(
    stream: Stream,
) -> None:
    a, b, c = three(stream)
    on_b, sender_on_a = b.connect(), a.connect()
    b.subscribe(on_b, "news")
    a.subscribe(sender_on_a, "news")
    stream.flush()
    a.hub.broadcast(
        "news", b'{"event":"alert","channel":"news","data":"{}"}', sender_on_a.socket_id
    )
    a.hub.broadcast("cache-news", b'{"event":"cached"}', None, cache=True)
    stream.flush()
    assert [m["event"] for m in on_b.socket.messages].count("alert") == 1
    assert "alert" not in [m["event"] for m in sender_on_a.socket.messages]
    assert c.hub.cached("cache-news", stream.clock.now) is not None
    assert c.hub.cache.entries["cache-news"].expires_at == stream.clock.now + stream.app.cache_ttl


def test_user_events_and_terminations_reach_the_users_sockets_on_other_nodes(
    stream: Stream,
) -> None:
    a, b, _ = three(stream)
    tab_on_b = b.connect(user_id="u1")
    a.hub.send_to_user("u1", b'{"event":"for-you"}', None)
    stream.flush()
    assert tab_on_b.socket.messages == [{"event": "for-you"}]
    a.hub.terminate_user("u1")
    stream.flush()
    assert tab_on_b.closed is not None


def test_subscription_counts_are_cluster_wide_and_follow_departures(stream: Stream) -> None:
    a, b, c = three(stream)
    sessions = [(node, node.connect()) for node in (a, b, b, c)]
    for node, session in sessions:
        node.subscribe(session, "news")
        stream.flush()
    assert [node.hub.subscription_count("news") for node in (a, b, c)] == [4, 4, 4]
    first = sessions[0][1]
    assert first.socket.events("pusher_internal:subscription_count")[-1] == {
        "subscription_count": 4
    }
    b.cluster.goodbye()
    stream.flush()
    stream.stop(b)
    assert a.hub.subscription_count("news") == 2
    assert first.socket.events("pusher_internal:subscription_count")[-1] == {
        "subscription_count": 2
    }
    a.cluster.heartbeat()
    c.cluster.heartbeat()
    stream.flush()
    assert a.hub.connection_count() == 2
    assert a.hub.channel_names() == ["news"]


def test_occupancy_webhooks_come_from_the_leader_only(stream: Stream) -> None:
    a, b, c = three(stream)
    on_c = c.connect()
    c.subscribe(on_c, "news")
    stream.flush()
    c.unsubscribe(on_c, "news")
    stream.flush()
    names = [hook["name"] for hook in a.webhooks()]
    assert names.count("channel_occupied") == 1 and names.count("channel_vacated") == 1
    assert b.webhooks() == [] and c.webhooks() == []


# Presence ----------------------------------------------------------------------------------


def test_a_member_on_several_nodes_and_tabs_is_added_and_removed_once_for_everyone(
    stream: Stream,
) -> None:
    a, b, c = three(stream)
    watchers = [(node, node.connect()) for node in (a, b, c)]
    for node, watcher in watchers:
        node.subscribe(watcher, "presence-room", ("w-" + node.id, None))
    stream.flush()
    tabs = [(node, node.connect()) for node in (a, a, b)]
    for node, tab in tabs:
        node.subscribe(tab, "presence-room", (42, {"name": "Ann"}))
        stream.flush()
    for _, watcher in watchers:
        added = watcher.socket.events("pusher_internal:member_added")
        assert added.count({"user_id": 42, "user_info": {"name": "Ann"}}) == 1
    assert [node.hub.user_count("presence-room") for node in (a, b, c)] == [4, 4, 4]
    for node, tab in tabs:
        node.disconnect(tab)
        stream.flush()
    for _, watcher in watchers:
        assert watcher.socket.events("pusher_internal:member_removed").count({"user_id": 42}) == 1
    hooks = [(h["name"], h.get("user_id")) for h in a.webhooks()]
    assert hooks.count(("member_added", "42")) == 1 and hooks.count(("member_removed", "42")) == 1
    assert not any(h["name"].startswith("member") for h in b.webhooks() + c.webhooks())


def snapshot_ops(node: Node, reply: bool = False) -> list[Any]:
    """The snapshot `node` would announce, in wire form."""
    now = node.cluster.clock()
    snapshot = ops.Snapshot(node.cluster._snapshot(now), node.cluster._cache_snapshot(now), reply)
    return [snapshot.to_wire()]


def take_queued(node: Node) -> list[Any]:
    """What `node` has queued for the stream, in wire form, taken out of its link: the test
    hands it to the other node in the order it chooses."""
    queued = [op.to_wire() for _, op in node.link._outbox]
    node.link._outbox.clear()
    return queued


def member_joins_on_a(stream: Stream) -> tuple[Node, Node, Session, Session]:
    """`b` has a presence subscriber; user 42 joins on `a`, whose operations are not sent."""
    a, b = stream.start("a"), stream.start("b")
    stream.flush()
    watcher = b.connect()
    b.subscribe(watcher, "presence-room", ("w", None))
    tab = a.connect()
    a.subscribe(tab, "presence-room", (42, None))
    return a, b, watcher, tab


def test_a_delta_that_arrives_before_the_snapshot_including_it_is_not_repeated(
    stream: Stream,
) -> None:
    a, b, watcher, _ = member_joins_on_a(stream)
    b.cluster.receive("a", take_queued(a))
    b.cluster.receive("a", snapshot_ops(a))
    assert watcher.socket.events("pusher_internal:member_added") == [
        {"user_id": 42, "user_info": None}
    ]
    assert b.hub.subscription_count("presence-room") == 2


def test_a_delta_that_arrives_after_the_snapshot_including_it_is_not_repeated(
    stream: Stream,
) -> None:
    """Presence operations are idempotent against snapshots in both orders. (Count deltas are
    not, and need not be: a sender's operations reach every reader in the order it made them,
    and an entry read twice is applied once, so a snapshot never overtakes its own deltas.)"""
    a, b, watcher, tab = member_joins_on_a(stream)
    delta = take_queued(a)
    b.cluster.receive("a", snapshot_ops(a))
    b.cluster.receive("a", [op for op in delta if op[0] == "p+"])
    assert watcher.socket.events("pusher_internal:member_added") == [
        {"user_id": 42, "user_info": None}
    ]
    # ...and a removal the snapshot already reflects is not announced again.
    a.unsubscribe(tab, "presence-room")
    removal = take_queued(a)
    b.cluster.receive("a", snapshot_ops(a))
    b.cluster.receive("a", removal)
    assert watcher.socket.events("pusher_internal:member_removed") == [{"user_id": 42}]


def test_a_snapshot_replaces_what_was_believed_and_reports_only_the_differences(
    stream: Stream,
) -> None:
    b = stream.start("b")
    watcher = b.connect()
    b.subscribe(watcher, "presence-room", ("w", None))
    stream.flush()
    b.cluster.receive("a", [["p+", "1", "presence-room", "1", 1, None]])
    b.cluster.receive("a", [["p+", "1", "presence-room", "2", 2, None]])
    b.cluster.receive("a", [["s+", "1", "u1"], ["s+", "1", "u2"]])
    # Redis was away: a lost member 1 and user u1 meanwhile, and gained member 3 and user u3.
    b.cluster.receive(
        "a",
        [
            [
                "snap",
                {
                    "1": {
                        "connections": 2,
                        "channels": {"presence-room": 2},
                        "members": {"presence-room": {"2": [2, None], "3": [3, None]}},
                        "users": ["u2", "u3"],
                    }
                },
                {},
                False,
            ]
        ],
    )
    added = watcher.socket.events("pusher_internal:member_added")
    assert added == [{"user_id": u, "user_info": None} for u in (1, 2, 3)]
    assert watcher.socket.events("pusher_internal:member_removed") == [{"user_id": 1}]
    assert b.hub.users.online("u3") and not b.hub.users.online("u1")


def test_a_member_present_here_too_is_not_removed_when_another_node_leaves(
    stream: Stream,
) -> None:
    a, b = stream.start("a"), stream.start("b")
    stream.flush()
    here, there = b.connect(), a.connect()
    b.subscribe(here, "presence-room", (42, None))
    a.subscribe(there, "presence-room", (42, None))
    stream.flush()
    a.unsubscribe(there, "presence-room")
    stream.flush()
    assert here.socket.events("pusher_internal:member_removed") == []
    a.subscribe(there, "presence-room", (42, None))
    stream.flush()
    a.cluster.goodbye()
    stream.flush()
    assert here.socket.events("pusher_internal:member_removed") == []
    b.cluster.receive("a", [["p-", "1", "presence-room", "99"]])  # never had it: nothing
    assert here.socket.events("pusher_internal:member_removed") == []


# Watchlists ----------------------------------------------------------------------------------


def test_a_watched_user_comes_online_and_goes_offline_once_across_nodes(stream: Stream) -> None:
    a, b, c = three(stream)
    watcher = a.connect(user_id="boss", watchlist=("u2",))
    assert watcher.socket.events("pusher_internal:watchlist_events") == [
        {"events": [{"name": "offline", "user_ids": ["u2"]}]}
    ]
    tabs = [(node, node.connect(user_id="u2")) for node in (b, c, c)]
    stream.flush()
    for node, tab in tabs:
        node.disconnect(tab)
        stream.flush()
    events = watcher.socket.events("pusher_internal:watchlist_events")[1:]
    assert events == [
        {"events": [{"name": "online", "user_ids": ["u2"]}]},
        {"events": [{"name": "offline", "user_ids": ["u2"]}]},
    ]
    b.cluster.receive("c", [["s-", "1", "nobody"]])  # not signed in there: nothing
    assert len(watcher.socket.events("pusher_internal:watchlist_events")) == 3


# Membership: goodbye, reaping, leader, gaps, cache --------------------------------------------


def test_goodbye_removes_the_nodes_members_users_and_counts_at_once(stream: Stream) -> None:
    a, b = stream.start("a"), stream.start("b")
    watcher = a.connect(user_id="boss", watchlist=("u2",))
    a.subscribe(watcher, "presence-room", ("boss", None))
    tab = b.connect(user_id="u2")
    b.subscribe(tab, "presence-room", ("u2", None))
    stream.flush()
    assert a.cluster.size == 2
    b.cluster.goodbye()
    stream.flush()
    assert a.cluster.size == 1 and a.cluster.leader
    assert watcher.socket.events("pusher_internal:member_removed") == [{"user_id": "u2"}]
    assert watcher.socket.events("pusher_internal:watchlist_events")[-1] == {
        "events": [{"name": "offline", "user_ids": ["u2"]}]
    }
    assert a.hub.subscription_count("presence-room") == 1


def test_a_silent_node_is_reaped_after_the_timeout_and_only_then(stream: Stream) -> None:
    a, b = stream.start("a"), stream.start("b")
    watcher = a.connect()
    a.subscribe(watcher, "presence-room", ("w", None))
    tab = b.connect()
    b.subscribe(tab, "presence-room", (42, None))
    stream.flush()
    clock = stream.clock
    stream.stop(b)
    clock.now += NODE_TIMEOUT / 2
    a.cluster.reap(clock.now)
    assert "b" in a.cluster.state.nodes
    clock.now += NODE_TIMEOUT / 2 + 0.1
    a.cluster.reap(clock.now)
    assert a.cluster.state.nodes == {}
    assert watcher.socket.events("pusher_internal:member_removed") == [{"user_id": 42}]
    assert a.hub.subscription_count("presence-room") == 1


def test_nobody_is_reaped_while_our_own_link_is_down_or_just_came_back(stream: Stream) -> None:
    a, b = stream.start("a"), stream.start("b")
    stream.flush()
    clock = stream.clock
    a.link._link_lost("test")
    clock.now += 3 * NODE_TIMEOUT
    a.cluster.reap(clock.now)
    assert "b" in a.cluster.state.nodes  # we heard nobody: not their fault
    a.link._link_up(clock.now)  # every node's silence counts from now
    clock.now += NODE_TIMEOUT - 1
    a.cluster.reap(clock.now)
    assert "b" in a.cluster.state.nodes
    b.cluster.heartbeat()
    stream.flush()
    clock.now += 2
    a.cluster.reap(clock.now)
    assert "b" in a.cluster.state.nodes  # heard 2 s ago


def test_the_next_oldest_node_leads_when_the_leader_leaves(stream: Stream) -> None:
    a, b, c = three(stream)
    assert [node.cluster.leader for node in (a, b, c)] == [True, False, False]
    a.cluster.goodbye()
    stream.flush()
    stream.stop(a)
    assert [node.cluster.leader for node in (b, c)] == [True, False]
    tab = c.connect()
    c.subscribe(tab, "presence-room", (7, None))
    stream.flush()
    assert [h["name"] for h in b.webhooks()] == ["channel_occupied", "member_added"]
    assert c.webhooks() == []
    # The leader is killed: once the others reap it, the next one takes over.
    stream.stop(b)
    stream.clock.now += NODE_TIMEOUT + 1
    c.cluster.reap(stream.clock.now)
    assert c.cluster.leader
    c.disconnect(tab)
    assert [h["name"] for h in c.webhooks()] == ["member_removed", "channel_vacated"]


def test_a_joining_node_never_takes_the_lead(stream: Stream) -> None:
    b = stream.start("b")
    assert b.cluster.leader
    late = stream.start("c")
    stream.flush()
    assert b.cluster.leader and not late.cluster.leader


def test_a_gap_in_a_senders_operations_is_counted_and_repaired_by_snapshots(
    stream: Stream,
) -> None:
    a, b = stream.start("a"), stream.start("b")
    stream.flush()
    watcher = b.connect()
    b.subscribe(watcher, "presence-room", ("w", None))
    stream.flush()
    tab = a.connect()
    a.subscribe(tab, "presence-room", (42, None))
    a.subscribe(tab, "news")
    stream.flush(lose=a)  # the member's operations are trimmed before b reads them
    assert watcher.socket.events("pusher_internal:member_added") == []
    a.cluster.heartbeat()
    stream.flush()  # b sees the jump in a's count, asks for snapshots, gets a's
    assert b.link.lost == 3
    assert watcher.socket.events("pusher_internal:member_added") == [
        {"user_id": 42, "user_info": None}
    ]
    assert b.hub.subscription_count("presence-room") == 2
    assert b.hub.channel_names() == ["news", "presence-room"]
    assert b.link.duplicates == 0


def test_a_new_node_adopts_the_cache_of_the_others_with_the_time_left(stream: Stream) -> None:
    a = stream.start("a")
    stream.flush()
    clock = stream.clock
    a.hub.remember("cache-old", b'{"event":"old"}', clock.now)
    clock.now += 100
    a.hub.remember("cache-new", b'{"event":"new"}', clock.now)
    a.hub.remember("cache-gone", b'{"event":"gone"}', clock.now, ttl=5)
    clock.now += 10
    late = stream.start("b")
    late.hub.remember("cache-new", b'{"event":"mine"}', clock.now, ttl=stream.app.cache_ttl)
    stream.flush()
    ttl = stream.app.cache_ttl
    assert late.hub.cache.entries["cache-old"].expires_at == pytest.approx(clock.now + ttl - 110)
    assert late.hub.cache.entries["cache-new"].payload == b'{"event":"mine"}'  # lives longer: kept
    assert "cache-gone" not in late.hub.cache.entries


def test_operations_for_an_unknown_app_are_ignored(stream: Stream) -> None:
    _, b = stream.start("a"), stream.start("b")
    stream.flush()
    b.cluster.receive(
        "a",
        [
            ["e", "9", "news", "{}", None, True],
            ["u", "9", "u1", "{}", None],
            ["t", "9", "u1"],
            ["c", "9", "news", 1],
            ["p+", "9", "presence-room", "1", 1, None],
            ["snap", {"9": {"connections": 1}}, {"9": {"cache-x": ["{}", 5]}}, False],
        ],
    )
    assert b.cluster.malformed == 0 and b.hub.cache.entries == {}
    assert b.cluster.state.connections("9") == 1


def test_a_node_ignores_its_own_operations_and_reports_its_link(stream: Stream) -> None:
    a = stream.start("a")
    a.cluster.receive("a", [["bye"]])
    assert a.cluster.state.nodes == {}
    assert a.cluster.status(0.0)["cluster"]["replicas"] == 1
    alone = Cluster("solo", clock=stream.clock)
    assert alone.status(0.0) == {}
    alone.forward_event("1", "news", b"{}", None, False)  # no link: nothing to do, no error
    alone.forward_to_user("1", "u1", b"{}", None)
    alone.subscriptions_changed("1", "news", 1)
    alone.announce(reply=True)
    assert alone.member_joined("1", "presence-room", user_key(1), 1, None)
