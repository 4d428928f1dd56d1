"""The last event of every cache channel of one app, with its expiry.

Written by the hub when an event is published on a cache channel (here or on another replica),
read by a session that subscribes (the replay) and by the HTTP API (`info=cache`), shared with
the other replicas through the cluster's snapshots. Time is always an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class CachedEvent:
    payload: bytes
    expires_at: float

    def event_and_data(self) -> tuple[str, Any]:
        message = orjson.loads(self.payload)
        return message.get("event"), message.get("data")


class EventCache:
    """Channel name -> its last event, until it expires. The server's sweep calls `expire`."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, CachedEvent] = {}

    def remember(self, name: str, payload: bytes, expires_at: float) -> None:
        self.entries[name] = CachedEvent(payload, expires_at)

    def get(self, name: str, now: float) -> CachedEvent | None:
        entry = self.entries.get(name)
        if entry is not None and entry.expires_at <= now:
            del self.entries[name]
            return None
        return entry

    def expire(self, now: float) -> None:
        expired = [name for name, entry in self.entries.items() if entry.expires_at <= now]
        for name in expired:
            del self.entries[name]

    def live(self, now: float) -> dict[str, tuple[str, float]]:
        """The unexpired events and their remaining lifetimes, for a snapshot to the others."""
        return {
            name: (entry.payload.decode(), entry.expires_at - now)
            for name, entry in self.entries.items()
            if entry.expires_at > now
        }

    def adopt(self, name: str, payload: bytes, expires_at: float) -> None:
        """An event another replica has: kept unless ours outlives it."""
        current = self.entries.get(name)
        if current is None or current.expires_at < expires_at:
            self.entries[name] = CachedEvent(payload, expires_at)
