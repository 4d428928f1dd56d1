"""A clock the test moves by hand, for code that takes its time source as an argument."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ManualClock:
    """Call it for the time; pass `sleep` where the code takes an `asyncio.sleep`.

    A sleep returns only once `advance` has moved the clock past its end, so the test decides
    when each timer fires and nothing waits on real time. `sleeps` records every delay asked
    for, in order."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock to move."""
        return sum(1 for _, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        waiting = []
        for end, future in self._sleepers:
            if end > self.now:
                waiting.append((end, future))
            elif not future.done():
                future.set_result(None)
        self._sleepers = waiting


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for real work (a request, another task) to make `condition` true, up to `timeout`
    seconds of real time: for I/O, never for a timer, which the test drives itself."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {condition}")
        await asyncio.sleep(0.005)
