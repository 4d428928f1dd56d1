"""Where the latency tail comes from: garbage-collector pauses and event-loop stalls.

A delivery is late when the loop was busy with something else: a collection of the cyclic
garbage collector (which stops everything while it walks the tracked objects of a generation)
or a long callback. This recorder measures both, so a tail can be attributed with numbers
instead of guesses. It is a diagnostic, off by default (`REVERB_DEBUG_PAUSES=1`): the GC hook
costs two clock reads per collection and the stall probe one timer every PROBE_INTERVAL.

Every REPORT_INTERVAL it logs one line: collections per generation with their total and
longest pause, and the probe's lateness (how long the loop could not run a due timer).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("reverb_py.pauses")

PROBE_INTERVAL = 0.005
REPORT_INTERVAL = 10.0
STALL_THRESHOLD = 0.002  # probe lateness counted as a stall


class Tally:
    """Count, total and maximum of a series of durations (seconds)."""

    __slots__ = ("count", "longest", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.longest = 0.0

    def add(self, duration: float) -> None:
        self.count += 1
        self.total += duration
        if duration > self.longest:
            self.longest = duration

    def describe(self) -> str:
        return f"{self.count} ({self.total * 1e3:.1f} ms, max {self.longest * 1e3:.2f} ms)"


class PauseRecorder:
    """GC pauses per generation and loop stalls since the last report."""

    __slots__ = ("_clock", "_gc_started", "collections", "stalls")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._gc_started = 0.0
        self.collections = [Tally(), Tally(), Tally()]
        self.stalls = Tally()

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A `gc.callbacks` hook: the time between "start" and "stop" is the pause."""
        if phase == "start":
            self._gc_started = self._clock()
        else:
            self.collections[info["generation"]].add(self._clock() - self._gc_started)

    def on_probe(self, lateness: float) -> None:
        if lateness >= STALL_THRESHOLD:
            self.stalls.add(lateness)

    def report(self) -> str:
        """The summary line since the last report; starts the next period."""
        gens = ", ".join(f"gen{n} {tally.describe()}" for n, tally in enumerate(self.collections))
        line = f"gc collections: {gens}; loop stalls >= 2 ms: {self.stalls.describe()}"
        self.collections = [Tally(), Tally(), Tally()]
        self.stalls = Tally()
        return line


class PauseProbe:
    """Runs a PauseRecorder on the event loop: installs the GC hook, schedules the probe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: PauseRecorder) -> None:
        self._loop = loop
        self._recorder = recorder
        self._timer: asyncio.TimerHandle | None = None
        self._next_report = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._recorder.on_gc)
        now = self._loop.time()
        self._next_report = now + REPORT_INTERVAL
        self._schedule(now)

    def stop(self) -> None:
        if self._recorder.on_gc in gc.callbacks:
            gc.callbacks.remove(self._recorder.on_gc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, now: float) -> None:
        due = now + PROBE_INTERVAL
        self._timer = self._loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        now = self._loop.time()
        self._recorder.on_probe(now - due)
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            logger.info("%s", self._recorder.report())
        self._schedule(now)
