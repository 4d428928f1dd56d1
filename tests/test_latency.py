"""DeliveryLatency: triggers of one loop iteration observed when the coalescer has written them."""

from __future__ import annotations

from reverb_py.latency import BUCKETS, MAX_PENDING, DeliveryLatency
from tests.clock import ManualClock


def test_each_trigger_is_observed_once_at_the_flush_that_wrote_it() -> None:
    clock = ManualClock()
    latency = DeliveryLatency(clock)
    first = latency.now()
    latency.accepted(first)
    clock.now += 0.0023
    latency.accepted(latency.now())
    clock.now += 0.0007
    latency.flushed()
    latency.flushed()  # nothing queued since: no observation
    buckets = dict(latency.cumulative())
    assert buckets["+Inf"] == 2
    assert buckets["0.0005"] == 0
    assert buckets["0.001"] == 1  # the second trigger waited 0.7 ms
    assert buckets["0.0025"] == 1  # the first waited 3 ms
    assert buckets["0.005"] == 2
    assert abs(latency.total - 0.0037) < 1e-9


def test_a_flood_in_one_iteration_keeps_a_bounded_list() -> None:
    clock = ManualClock()
    latency = DeliveryLatency(clock)
    for _ in range(MAX_PENDING * 3):
        latency.accepted(clock.now)
    clock.now += 10.0  # slower than the last bucket
    latency.flushed()
    buckets = latency.cumulative()
    assert buckets[-1] == ("+Inf", MAX_PENDING)
    assert buckets[-2] == (str(BUCKETS[-1]), 0)
