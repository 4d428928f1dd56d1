"""An attacker process: one socket asks for `count` subscriptions to fresh public channels as
fast as it can, reads every answer, and prints a JSON tally of them. Run as
`python -m tests.subscription_flood WS_URL COUNT` (a separate process, so that its own work
does not slow the test's measurements). It sends in bursts of BURST frames and reads the
answers of each burst before the next: a client that never reads is closed by the server for
filling its send buffer, which is a different defence from the one measured here."""

from __future__ import annotations

import asyncio
import json
import sys

import websockets

BURST = 1000


async def flood(url: str, count: int) -> dict[str, int]:
    tally: dict[str, int] = {}
    async with websockets.connect(url, max_queue=None) as ws:
        await ws.recv()  # pusher:connection_established
        for start in range(0, count, BURST):
            burst = range(start, min(start + BURST, count))
            for index in burst:
                await ws.send(f'{{"event":"pusher:subscribe","data":{{"channel":"junk-{index}"}}}}')
            for _ in burst:
                message = json.loads(await ws.recv())
                data = message.get("data")
                status = data.get("status") if isinstance(data, dict) else None
                key = message["event"] + (f":{status}" if status is not None else "")
                tally[key] = tally.get(key, 0) + 1
    return tally


if __name__ == "__main__":
    print(json.dumps(asyncio.run(flood(sys.argv[1], int(sys.argv[2])))))
