"""DeliveryLatency: each trigger observed once, when the coalescer has written the last of the
socket writes queued by the end of its fan-out."""

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
    latency.flushed(queued=10, written=10)
    latency.flushed(queued=10, written=10)  # nothing queued since: no observation
    buckets = dict(latency.cumulative())
    assert buckets["+Inf"] == 2
    assert buckets["0.0005"] == 0
    assert buckets["0.001"] == 1  # the second trigger waited 0.7 ms
    assert buckets["0.0025"] == 1  # the first waited 3 ms
    assert buckets["0.005"] == 2
    assert abs(latency.total - 0.0037) < 1e-9


def test_a_trigger_waits_for_the_slice_that_writes_its_last_socket() -> None:
    clock = ManualClock()
    latency = DeliveryLatency(clock)
    latency.accepted(clock.now)  # its fan-out queued writes up to position 1000
    clock.now += 0.001
    latency.flushed(queued=1000, written=250)  # the first slice of its round
    latency.accepted(clock.now)  # queued up to position 1600 (600 more sockets)
    clock.now += 0.001
    latency.flushed(queued=1600, written=500)
    latency.flushed(queued=1600, written=750)
    assert latency.cumulative()[-1] == ("+Inf", 0)
    clock.now += 0.001
    latency.flushed(queued=1600, written=1000)  # the first trigger's last write
    assert dict(latency.cumulative())["+Inf"] == 1
    assert abs(latency.total - 0.003) < 1e-9
    clock.now += 0.006
    latency.flushed(queued=1600, written=1600)
    buckets = dict(latency.cumulative())
    assert buckets["+Inf"] == 2
    assert buckets["0.005"] == 1
    assert buckets["0.01"] == 2  # the second waited 8 ms
    assert abs(latency.total - 0.011) < 1e-9


def test_a_flood_in_one_iteration_keeps_a_bounded_list() -> None:
    clock = ManualClock()
    latency = DeliveryLatency(clock)
    for _ in range(MAX_PENDING * 3):
        latency.accepted(clock.now)
    clock.now += 10.0  # slower than the last bucket
    latency.flushed(queued=5, written=5)
    buckets = latency.cumulative()
    assert buckets[-1] == ("+Inf", MAX_PENDING)
    assert buckets[-2] == (str(BUCKETS[-1]), 0)
