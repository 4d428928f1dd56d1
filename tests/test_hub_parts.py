"""The hub's pure parts on their own (presence rules, count throttling, the event cache), and a
session driven on a manual clock through a real hub: no server, no sleeping."""

from __future__ import annotations

import orjson

from reverb_py.config import App, Settings
from reverb_py.hub import AppHub
from reverb_py.hub.cache import EventCache
from reverb_py.hub.counts import SUBSCRIPTION_COUNT_INTERVAL, CountThrottle
from reverb_py.hub.presence import Member, add_socket, merged, remove_socket, roster
from reverb_py.pusher.auth import sign
from reverb_py.pusher.session import Session
from reverb_py.scaling.cluster import Cluster
from reverb_py.webhooks import AppWebhooks
from tests.clock import ManualClock
from tests.test_session_liveness import RecordingSocket


def test_a_member_is_added_with_its_first_socket_and_removed_with_its_last() -> None:
    members: dict[str, Member] = {}
    assert add_socket(members, "7", 7, {"name": "first"})
    assert not add_socket(members, "7", "7", {"name": "second"})
    assert members["7"].user_id == 7 and members["7"].user_info == {"name": "first"}
    assert remove_socket(members, "7") is None
    gone = remove_socket(members, "7")
    assert gone is not None and gone.user_id == 7 and members == {}
    assert remove_socket(members, "7") is None  # a user never added is not counted below 0


def test_local_members_win_over_the_other_replicas_view_in_the_roster() -> None:
    local: dict[str, Member] = {}
    add_socket(local, "1", 1, "here")
    everyone = merged({"1": (1, "there"), "2": (2, None)}, local)
    assert everyone == {"1": (1, "here"), "2": (2, None)}
    assert roster(everyone) == {"ids": [1, 2], "hash": {"1": "here", "2": None}, "count": 2}


def test_small_channels_announce_every_change_large_ones_once_per_interval() -> None:
    throttle = CountThrottle()
    assert throttle.may_announce("small", 3, now=0.0) and throttle.may_announce("small", 4, 0.1)
    assert throttle.may_announce("big", 101, now=0.0)
    assert not throttle.may_announce("big", 102, now=1.0)
    assert not throttle.may_announce("big", 99, now=2.0)  # still held: it is waiting
    assert throttle.due(now=SUBSCRIPTION_COUNT_INTERVAL - 0.1) == []
    assert throttle.due(now=SUBSCRIPTION_COUNT_INTERVAL) == ["big"]
    assert throttle.due(now=3 * SUBSCRIPTION_COUNT_INTERVAL) == [] and throttle.sent == {}


def test_the_cache_keeps_the_longer_lived_event_and_forgets_expired_ones() -> None:
    cache = EventCache()
    cache.remember("cache-a", b'{"event":"old"}', expires_at=10.0)
    cache.adopt("cache-a", b'{"event":"shorter"}', expires_at=5.0)
    cache.adopt("cache-b", b'{"event":"b"}', expires_at=20.0)
    entry = cache.get("cache-a", now=1.0)
    assert entry is not None and entry.event_and_data() == ("old", None)
    assert cache.live(now=8.0) == {
        "cache-a": ('{"event":"old"}', 2.0),
        "cache-b": ('{"event":"b"}', 12.0),
    }
    assert cache.get("cache-a", now=10.0) is None
    cache.expire(now=20.0)
    assert cache.entries == {}


def test_the_client_event_rate_limit_follows_the_hubs_clock() -> None:
    app = App(id="1", key="key", secret="secret", client_event_rate_limit=2)
    clock = ManualClock()
    hub = AppHub(app, Cluster("node"), AppWebhooks(app, Settings()), clock)
    socket = RecordingSocket()
    session = Session(hub, socket, "1.1")
    session.start()
    auth = sign("secret", "1.1:private-room")
    subscribe = {
        "event": "pusher:subscribe",
        "data": {"channel": "private-room", "auth": f"key:{auth}"},
    }
    session.on_message(orjson.dumps(subscribe), binary=False)
    event = orjson.dumps({"event": "client-x", "channel": "private-room", "data": {}})

    def refused() -> int:
        return hub.stats.client_events_rejected.get("rate_limited", 0)

    for _ in range(3):
        session.on_message(event, binary=False)
    assert refused() == 1
    clock.now += 0.99
    session.on_message(event, binary=False)
    assert refused() == 2
    clock.now += 0.01  # a new one-second window, with no time slept
    session.on_message(event, binary=False)
    assert refused() == 2 and hub.stats.client_events == 3
