"""When a channel's new subscription count may be announced: Pusher sends
`pusher_internal:subscription_count` (and the subscription_count webhook) on every change, and
at most every SUBSCRIPTION_COUNT_INTERVAL seconds for channels above
SUBSCRIPTION_COUNT_THROTTLE_ABOVE subscribers. Pure: the caller passes the time and announces.
"""

from __future__ import annotations

SUBSCRIPTION_COUNT_THROTTLE_ABOVE = 100
SUBSCRIPTION_COUNT_INTERVAL = 5.0


class CountThrottle:
    """The throttling state of one app: when each large channel was last announced (`sent`),
    and the channels whose change waits for the sweep (`dirty`)."""

    __slots__ = ("dirty", "sent")

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.dirty: dict[str, None] = {}

    def may_announce(self, name: str, count: int, now: float) -> bool:
        """Whether `name`'s new count goes out now; if not, it waits for `due`."""
        if count <= SUBSCRIPTION_COUNT_THROTTLE_ABOVE and name not in self.dirty:
            return True
        if now - self.sent.get(name, -SUBSCRIPTION_COUNT_INTERVAL) < SUBSCRIPTION_COUNT_INTERVAL:
            self.dirty[name] = None
            return False
        self.sent[name] = now
        self.dirty.pop(name, None)
        return True

    def due(self, now: float) -> list[str]:
        """From the periodic sweep: the held-back channels to announce now (marked as sent);
        announcements older than the interval are forgotten."""
        ready = []
        for name in list(self.dirty):
            if now - self.sent.get(name, 0.0) >= SUBSCRIPTION_COUNT_INTERVAL:
                del self.dirty[name]
                self.sent[name] = now
                ready.append(name)
        stale = [
            name
            for name, sent in self.sent.items()
            if now - sent >= SUBSCRIPTION_COUNT_INTERVAL and name not in self.dirty
        ]
        for name in stale:
            del self.sent[name]
        return ready
