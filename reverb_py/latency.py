"""Delivery latency: from a trigger accepted by the HTTP API to its frame handed to the last
local subscriber's socket.

The hot path pays one clock read per accepted trigger (`now`, before its fan-out) and one per
slice of the write coalescer that completes such a broadcast (`flushed`): never a clock read per
subscriber. What is observed is therefore the worst delivery of each broadcast, the number a
panic alert is judged by. The coalescer writes sockets in the order their frames were first
queued, so a broadcast is delivered once every write queued by the end of its fan-out is done.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable

# Upper bounds in seconds: from a fan-out to a few sockets (well under a millisecond) to a
# loop that is seconds behind.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Triggers remembered per slice of the coalescer; a flood beyond this between two slices is
# observed through the first ones (the oldest, so the worst delays are not the ones left out).
MAX_PENDING = 256


class DeliveryLatency:
    """A Prometheus-style histogram (counts per bucket, sum) and the triggers not yet written."""

    __slots__ = ("_batches", "_clock", "_pending", "counts", "total")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: list[float] = []
        self._batches: deque[tuple[int, list[float]]] = deque()
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def now(self) -> float:
        return self._clock()

    def accepted(self, started: float) -> None:
        """A trigger accepted at `started` (`now()` before its fan-out) was queued on at least
        one local socket."""
        if len(self._pending) < MAX_PENDING:
            self._pending.append(started)

    def flushed(self, queued: int, written: int) -> None:
        """The coalescer wrote a slice: `queued` socket writes had been queued when it began
        (the triggers accepted until then are among them) and `written` are done.

        Triggers wait in batches, one per slice that found some, each with the position of
        its last write; a batch's writes are done within two rounds of the coalescer, so at
        most a few batches per round are ever held."""
        batches = self._batches
        if self._pending:
            batches.append((queued, self._pending))
            self._pending = []
        if not batches or batches[0][0] > written:
            return
        now = self._clock()
        counts = self.counts
        while batches and batches[0][0] <= written:
            for started in batches.popleft()[1]:
                waited = now - started
                counts[bisect.bisect_left(BUCKETS, waited)] += 1
                self.total += waited

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), "+Inf" last: the exposition format."""
        buckets = []
        seen = 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            seen += count
            buckets.append((bound, seen))
        return buckets
