"""The write coalescer's rounds: HTTP answers first, WebSocket writes in slices with the loop
running between them while writes back up, at once otherwise, one write per socket per round,
frames never reordered or lost."""

from __future__ import annotations

import asyncio
import json

from reverb_py.transport.connection import BUSY_GAP, MIN_SLICE, ROUND_SLICES, WriteCoalescer
from tests.clock import ManualClock
from tests.conftest import Running


class Queued:
    """The two things the coalescer uses of a connection: whether it speaks WebSocket, and
    `flush`, here recording when it was written and what it had queued."""

    def __init__(self, name: str, log: list[tuple[str, list[str]]], websocket: bool) -> None:
        self.name = name
        self.ws = object() if websocket else None
        self.pending: list[str] | None = None
        self._log = log

    def send(self, coalescer: WriteCoalescer, frame: str) -> None:
        if self.pending is None:
            self.pending = [frame]
            coalescer.mark(self)  # type: ignore[arg-type]
        else:
            self.pending.append(frame)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending:
            self._log.append((self.name, pending))


async def turn() -> None:
    """Let the loop run one iteration (callbacks scheduled now run in the next one)."""
    await asyncio.sleep(0)


async def busy_coalescer(log: list[tuple[str, list[str]]]) -> WriteCoalescer:
    """A coalescer whose previous round ended just now (its clock stands still)."""
    coalescer = WriteCoalescer(asyncio.get_running_loop(), clock=ManualClock())
    Queued("warm-up", log, True).send(coalescer, "w")
    await turn()
    log.clear()
    return coalescer


async def test_a_round_is_written_in_slices_and_answers_go_first() -> None:
    log: list[tuple[str, list[str]]] = []
    coalescer = await busy_coalescer(log)
    count = ROUND_SLICES * MIN_SLICE * 2
    sockets = [Queued(f"ws{i}", log, True) for i in range(count)]
    backend = Queued("http", log, False)
    for socket in sockets:
        socket.send(coalescer, "a")
    backend.send(coalescer, "{}")
    await turn()
    step = count // ROUND_SLICES
    assert [name for name, _ in log] == ["http"] + [f"ws{i}" for i in range(step)]

    # Between slices the loop runs: a second broadcast joins the writes of sockets whose turn
    # has not come, and waits for the next round on those already written.
    for socket in sockets:
        socket.send(coalescer, "b")
    backend.send(coalescer, "{}")
    log.clear()
    await turn()
    assert log[0] == ("http", ["{}"])
    assert log[1:] == [(f"ws{i}", ["a", "b"]) for i in range(step, 2 * step)]
    for _ in range(ROUND_SLICES):
        await turn()
    written: dict[str, list[str]] = {}
    for name, frames in log[1:]:
        written.setdefault(name, []).extend(frames)
    assert all(written[f"ws{i}"] == ["a", "b"] for i in range(step, count))
    assert all(written[f"ws{i}"] == ["b"] for i in range(step))  # the next round
    assert all(socket.pending is None for socket in sockets)


async def test_a_round_after_an_idle_gap_is_written_at_once() -> None:
    """Slicing only delays the last sockets of a broadcast that nothing else waits behind."""
    clock = ManualClock()
    coalescer = WriteCoalescer(asyncio.get_running_loop(), clock=clock)
    log: list[tuple[str, list[str]]] = []
    sockets = [Queued(f"ws{i}", log, True) for i in range(ROUND_SLICES * MIN_SLICE * 2)]
    for expected in ("a", "b"):  # the first round ever, then one begun well after the last
        for socket in sockets:
            socket.send(coalescer, expected)
        await turn()
        assert log == [(socket.name, [expected]) for socket in sockets]
        log.clear()
        clock.now += 2 * BUSY_GAP


async def test_small_rounds_are_written_at_once() -> None:
    log: list[tuple[str, list[str]]] = []
    coalescer = await busy_coalescer(log)
    sockets = [Queued(f"ws{i}", log, True) for i in range(MIN_SLICE)]
    for socket in sockets:
        socket.send(coalescer, "a")
        socket.send(coalescer, "b")
    await turn()
    assert log == [(f"ws{i}", ["a", "b"]) for i in range(MIN_SLICE)]


async def test_every_subscriber_gets_every_event_in_order(running: Running) -> None:
    """Enough subscribers for several slices per round, and triggers sent concurrently, so
    some arrive while a round is being written."""
    subscribers = [await running.connect() for _ in range(ROUND_SLICES * MIN_SLICE + 20)]
    for socket in subscribers:
        await socket.subscribe("rounds")
    sdk = running.sdk()
    events = 12
    await asyncio.gather(
        *(running.call(sdk.trigger, "rounds", "tick", {"n": n}) for n in range(events))
    )
    orders = []
    for socket in subscribers:
        orders.append(
            [json.loads((await socket.expect("tick"))["data"])["n"] for _ in range(events)]
        )
    await subscribers[-1].nothing(0.05)
    assert sorted(orders[0]) == list(range(events))
    assert all(order == orders[0] for order in orders)  # the order the server accepted them
    for socket in subscribers:
        await socket.close()
