"""The webhook queue's bounds, driven without a server: per-connection shares, the bound on
delayed events, and that the share map never outlives the queue."""

from __future__ import annotations

from reverb_py.config import Settings, Webhook
from reverb_py.webhooks import AppWebhooks, Webhooks
from tests.conftest import app_with

HOOK = Webhook("http://127.0.0.1:9/hooks", ("channel_occupied", "channel_vacated"))


def hooks(**settings: object) -> AppWebhooks:
    app = app_with(webhooks=(HOOK,))
    return AppWebhooks(app, Settings(apps=(app,), **settings))  # type: ignore[arg-type]


def test_a_connection_over_its_share_loses_only_its_own_events() -> None:
    webhooks = hooks(webhook_queue_size=10, webhook_queue_share=3)
    (target,) = webhooks.targets
    for index in range(50):
        webhooks.channel_occupied(f"junk-{index}", cause="1.1")
    webhooks.channel_occupied("alerts", cause="2.2")
    webhooks.channel_occupied("from-another-replica")
    assert [item["channel"] for _, item, _ in target.queue] == [
        "junk-0",
        "junk-1",
        "junk-2",
        "alerts",
        "from-another-replica",
    ]
    assert target.dropped == {"connection_share": 47}
    # Sent events free the share again, and nothing is left behind in the count map.
    assert len(target.take(now=0.0, retry_for=300.0)) == 5
    assert target.held == {}
    webhooks.channel_occupied("junk-50", cause="1.1")
    assert target.held == {"1.1": 1}


def test_the_queue_bound_still_holds_for_many_connections() -> None:
    webhooks = hooks(webhook_queue_size=4, webhook_queue_share=3)
    (target,) = webhooks.targets
    for index in range(10):
        webhooks.channel_occupied(f"c-{index}", cause=f"{index}.1")
    assert len(target.queue) == 4
    assert target.dropped == {"queue_full": 6}


def test_delayed_events_are_bounded_and_released_early_not_lost() -> None:
    webhooks = hooks(webhook_queue_size=5, webhook_delay=3.0)
    (target,) = webhooks.targets
    for index in range(8):
        webhooks.channel_vacated(f"c-{index}", now=0.0, cause="1.1")
    assert len(webhooks.delayed) == 5
    assert [item["channel"] for _, item, _ in target.queue] == ["c-0", "c-1", "c-2"]
    assert len(target.take(now=0.0, retry_for=300.0)) == 3
    webhooks.tick(now=3.0)
    assert not webhooks.delayed
    assert [item["channel"] for _, item, _ in target.queue] == [f"c-{i}" for i in range(3, 8)]
    assert target.dropped == {}


def test_events_of_a_removed_app_are_counted_as_dropped() -> None:
    app = app_with(webhooks=(HOOK,))
    webhooks = Webhooks(Settings(apps=(app,)))
    (target,) = webhooks.apps[app.id].targets
    webhooks.apps[app.id].channel_occupied("news", cause="1.1")
    webhooks.remove(app.id)
    assert target.dropped == {"app_changed": 1}
    assert not target.queue and not target.held
