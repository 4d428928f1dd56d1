"""Delivery latency: from a trigger accepted by the HTTP API to its frame handed to the last
local subscriber's socket.

The hot path pays one clock read per accepted trigger (`now`, before its fan-out)
and one per event-loop iteration that wrote such a broadcast (`flushed`, called by the write
coalescer after it has written every queued frame): never a clock read per subscriber. What is
observed is therefore the worst delivery of each broadcast, the number a panic alert is
judged by. A broadcast's frames are all queued in the iteration that accepted it and written
at its end, so the coalescer's next flush is the moment the last of them is handed over.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

# Upper bounds in seconds: from a fan-out to a few sockets (well under a millisecond) to a
# loop that is seconds behind.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Triggers remembered per loop iteration; a flood beyond this in one iteration is observed
# through the first ones (the oldest, so the worst delays are not the ones left out).
MAX_PENDING = 256


class DeliveryLatency:
    """A Prometheus-style histogram (counts per bucket, sum) and this iteration's triggers."""

    __slots__ = ("_clock", "_pending", "counts", "total")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: list[float] = []
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def now(self) -> float:
        return self._clock()

    def accepted(self, started: float) -> None:
        """A trigger accepted at `started` (`now()` before its fan-out) was queued on at least
        one local socket in this loop iteration."""
        if len(self._pending) < MAX_PENDING:
            self._pending.append(started)

    def flushed(self) -> None:
        """Every frame queued in this iteration was handed to its socket."""
        pending = self._pending
        if not pending:
            return
        now = self._clock()
        for started in pending:
            waited = now - started
            self.counts[bisect.bisect_left(BUCKETS, waited)] += 1
            self.total += waited
        pending.clear()

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), "+Inf" last: the exposition format."""
        buckets = []
        seen = 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            seen += count
            buckets.append((bound, seen))
        return buckets
