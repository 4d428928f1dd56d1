"""pusher-js receives subscription_count and watchlist events from reverb-py.

These scenarios need app settings the shared fixtures leave off, so this module starts its own
server (with REVERB_APP_SUBSCRIPTION_COUNT and REVERB_APP_WATCHLIST_EVENTS) and its own backend
(whose user authentication puts a watchlist in user_data), and reuses the `node` fixture.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import APP
from tests.replicas import start_replica

from .conftest import NodeFactory
from .harness import Backend, Target

pytestmark = pytest.mark.interop

WATCHLISTS = {1: ["2", "3"]}


class WatchlistBackend(Backend):
    """Laravel's user-auth route, returning each user's watchlist as Pusher documents it."""

    def answer(self, path: str, user_id: int | None, params: dict[str, str]) -> tuple[int, Any]:
        if path != "/broadcasting/user-auth" or user_id is None:
            return super().answer(path, user_id, params)
        user = {"id": str(user_id), "watchlist": WATCHLISTS.get(user_id, [])}
        return 200, self.sdk.authenticate_user(params.get("socket_id", ""), user)


@pytest.fixture
def target() -> Iterator[Target]:
    server = start_replica(
        "redis://unused",
        REVERB_SCALING_ENABLED="false",
        REVERB_APP_SUBSCRIPTION_COUNT="true",
        REVERB_APP_WATCHLIST_EVENTS="true",
    )
    yield Target("127.0.0.1", server.port, APP.id, APP.key, APP.secret)
    server.stop()
    print(f"--- reverb-py log ---\n{server.logs()}")


@pytest.fixture
def backend(target: Target) -> Iterator[Backend]:
    master_key = base64.b64encode(os.urandom(32)).decode("ascii")
    with WatchlistBackend(target, encryption_master_key_base64=master_key) as app:
        yield app


def test_subscription_count_reaches_pusher_js(node: NodeFactory) -> None:
    first = node("pusher_subscription_count.mjs", "lobby")
    first.expect("subscribed")
    assert first.expect("count")["count"] == 1
    second = node("pusher_subscription_count.mjs", "lobby")
    second.expect("subscribed")
    assert second.expect("count") == {"type": "count", "count": 2, "channel_count": 2}
    assert first.expect("count") == {"type": "count", "count": 2, "channel_count": 2}
    second.quit()
    assert first.expect("count")["count"] == 1
    first.quit()


def test_watchlist_events_reach_pusher_js(node: NodeFactory) -> None:
    juan = node("pusher_watchlist.mjs", "1")  # watches users 2 and 3
    juan.expect("signed_in")
    juan.expect("watchlist", name="offline", user_ids=["2", "3"])
    ana = node("pusher_watchlist.mjs", "2")
    ana.expect("signed_in")
    juan.expect("watchlist", name="online", user_ids=["2"])
    ana.quit()
    juan.expect("watchlist", name="offline", user_ids=["2"])
    juan.quit()
