"""The webhook senders' timers on a clock the test moves: the batch window, the back-off and
the retry window, the age limit of queued events and the shutdown flush, against a real HTTP
receiver, without waiting for any of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from reverb_py.config import Settings, Webhook
from reverb_py.webhooks import SHUTDOWN_FLUSH_SECONDS, AppWebhooks, Target, Webhooks
from tests.clock import ManualClock, eventually
from tests.conftest import app_with
from tests.webhook_receiver import Receiver, names

KINDS = ("channel_occupied", "channel_vacated")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def failing() -> Iterator[Receiver]:
    server = Receiver(fail_first=1_000)
    yield server
    server.close()


class Senders:
    """One app with one webhook URL, its sender started on the test's clock."""

    def __init__(self, clock: ManualClock, url: str, **settings: Any) -> None:
        app = app_with(webhooks=(Webhook(url, KINDS),))
        self.webhooks = Webhooks(Settings(apps=(app,), **settings), clock, clock.sleep)
        self.hooks: AppWebhooks = self.webhooks.apps[app.id]
        (self.target,) = self.hooks.targets
        self.clock = clock

    async def sender_waits(self) -> None:
        """Until the sender sleeps on the clock (a batch window or a back-off)."""
        await eventually(lambda: self.clock.sleeping == 1)

    async def idle(self) -> None:
        """Until the sender has nothing queued or in flight."""
        target: Target = self.target
        await eventually(lambda: not target.queue and not target.in_flight)


@pytest.fixture
async def senders() -> AsyncIterator[list[Senders]]:
    made: list[Senders] = []
    yield made
    for each in made:
        await close(each, step=SHUTDOWN_FLUSH_SECONDS)


async def close(senders: Senders, step: float) -> None:
    """`Webhooks.close` polls on the clock until the queues are empty or its deadline passed:
    move the clock by `step` each time it waits."""
    closing = asyncio.ensure_future(senders.webhooks.close())
    while not closing.done():
        await eventually(lambda: closing.done() or senders.clock.sleeping > 0)
        senders.clock.advance(step)
    await closing


def start(made: list[Senders], clock: ManualClock, url: str, **settings: Any) -> Senders:
    each = Senders(clock, url, **settings)
    each.webhooks.start()
    made.append(each)
    return each


async def test_events_of_one_batch_window_go_in_one_request(
    clock: ManualClock, receiver: Receiver, senders: list[Senders]
) -> None:
    hooks = start(senders, clock, receiver.url, webhook_batch_window=0.5)
    hooks.hooks.channel_occupied("alerts")
    await hooks.sender_waits()
    assert clock.sleeps == [0.5]
    hooks.hooks.channel_occupied("news")
    hooks.hooks.channel_occupied("ops")
    assert receiver.requests == []  # the window is not over
    clock.advance(0.5)
    await hooks.idle()
    assert len(receiver.requests) == 1
    assert names(receiver.events()) == [
        ("channel_occupied", "alerts"),
        ("channel_occupied", "news"),
        ("channel_occupied", "ops"),
    ]


async def test_a_failing_receiver_is_retried_with_exponential_back_off_then_given_up(
    clock: ManualClock, failing: Receiver, senders: list[Senders]
) -> None:
    """Back-off 1, 2, 4 s (each spread by +-25 %): a fourth wait of 8 s would end past the
    10 s retry window, so the fourth failure gives the batch up, counted and not lost silently."""
    hooks = start(
        senders,
        clock,
        failing.url,
        webhook_batch_window=0.0,
        webhook_retry_base=1.0,
        webhook_retry_for=10.0,
    )
    hooks.hooks.channel_occupied("alerts")
    for attempt in range(3):
        await hooks.sender_waits()
        assert len(failing.requests) == attempt + 1
        assert 0.75 * 2**attempt <= clock.sleeps[-1] <= 1.25 * 2**attempt
        clock.advance(clock.sleeps[-1])
    await hooks.idle()
    assert len(failing.requests) == 4
    assert len({request.body for request in failing.requests}) == 1  # the same body each time
    assert (hooks.target.failed_attempts, hooks.target.delivered) == (4, 0)
    assert hooks.target.dropped == {"receiver_failed": 1}


async def test_the_back_off_is_capped(
    clock: ManualClock, failing: Receiver, senders: list[Senders]
) -> None:
    hooks = start(
        senders,
        clock,
        failing.url,
        webhook_batch_window=0.0,
        webhook_retry_base=40.0,
        webhook_retry_for=1_000.0,
    )
    hooks.hooks.channel_occupied("alerts")
    for _ in range(3):
        await hooks.sender_waits()
        clock.advance(clock.sleeps[-1])
    assert 30.0 <= clock.sleeps[0] <= 50.0
    assert all(45.0 <= delay <= 75.0 for delay in clock.sleeps[1:])  # 60 s, spread


async def test_a_queued_event_expires_at_the_retry_window(
    clock: ManualClock, receiver: Receiver, senders: list[Senders]
) -> None:
    hooks = start(senders, clock, receiver.url, webhook_batch_window=20.0, webhook_retry_for=10.0)
    hooks.hooks.channel_occupied("alerts")
    await hooks.sender_waits()
    clock.advance(20.0)  # the event has waited 20 s when the window closes
    await hooks.idle()
    assert receiver.requests == []
    assert hooks.target.dropped == {"expired": 1}


async def test_shutdown_sends_what_is_queued_and_delayed(
    clock: ManualClock, receiver: Receiver
) -> None:
    hooks = Senders(clock, receiver.url, webhook_batch_window=0.0, webhook_delay=3.0)
    hooks.webhooks.start()
    hooks.hooks.channel_vacated("alerts", now=clock())
    assert hooks.hooks.delayed  # not due yet
    await close(hooks, step=0.001)  # the deadline is far: the flush is what ends the close
    assert names(receiver.events()) == [("channel_vacated", "alerts")]
    assert hooks.target.dropped == {}


async def test_shutdown_gives_up_on_a_failing_receiver_after_the_flush_deadline(
    clock: ManualClock, failing: Receiver
) -> None:
    hooks = Senders(
        clock, failing.url, webhook_batch_window=0.0, webhook_retry_base=1.0, webhook_retry_for=300
    )
    hooks.webhooks.start()
    hooks.hooks.channel_occupied("alerts")
    await hooks.sender_waits()  # failed once, backing off
    hooks.hooks.channel_occupied("news")
    started = clock()
    await close(hooks, step=0.5)
    assert clock() - started >= SHUTDOWN_FLUSH_SECONDS
    assert hooks.target.dropped == {"shutdown": 1}  # "news", queued behind the failing batch


def test_drop_warnings_are_throttled_by_the_same_clock(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with(webhooks=(Webhook("http://127.0.0.1:9/hooks", KINDS),))
    hooks = AppWebhooks(app, Settings(apps=(app,), webhook_queue_size=1), clock)
    with caplog.at_level(logging.WARNING, logger="reverb_py.webhooks"):
        for index in range(5):
            hooks.channel_occupied(f"c-{index}")  # the first is queued, the rest dropped
        clock.advance(10.0)
        hooks.channel_occupied("c-5")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert lines[1].endswith("(and 3 more since the last such line)")
    assert hooks.targets[0].dropped == {"queue_full": 5}
