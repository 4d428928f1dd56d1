"""How much of one read the transport handles per loop turn, counted rather than timed.

The adversarial tests time bystanders while an attack runs, but a kernel read on loopback is
at most about 64 KiB, so without the per-read caps one read of pipelined requests stalls the
loop for tens of milliseconds here: less than a timed bound can tell apart from a loaded
machine. Counting the answers written before the loop gets its turn back can.
"""

from __future__ import annotations

import asyncio

from benchmarks.fake_transport import FakeTransport
from benchmarks.harness import Harness
from reverb_py.transport.connection import _FEED_SLICE, MAX_REQUESTS_PER_READ

UP = b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n"


def answered(transport: FakeTransport) -> int:
    return bytes(transport.written).count(b"HTTP/1.1 200 ")


async def test_a_read_of_pipelined_requests_is_answered_a_bounded_number_per_turn() -> None:
    harness = Harness()
    transport = FakeTransport()
    connection = harness.connection(transport)
    count = 262144 // len(UP)  # 256 KiB in one read: about 9 000 requests

    connection.data_received(UP * count)
    harness.loop.run_ready()  # the coalescer writes what this turn answered
    per_turn = [answered(transport)]
    while per_turn[-1] < count and len(per_turn) < count:
        await asyncio.sleep(0)  # one loop turn: the connection goes on with the rest
        harness.loop.run_ready()
        per_turn.append(answered(transport))

    assert per_turn[-1] == count  # every request answered, in the end
    steps = [b - a for a, b in zip([0, *per_turn], per_turn, strict=False)]
    # The cap is checked between slices of _FEED_SLICE bytes: one slice may pass it.
    assert max(steps) <= MAX_REQUESTS_PER_READ + _FEED_SLICE // len(UP)
