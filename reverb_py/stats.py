"""Per-app traffic counters: plain integers bumped where things happen, read at scrape time.

The hot paths (every frame in, every broadcast out) pay one attribute increment and nothing
else: no label lookup, no lock, no per-subscriber work, whether metrics are enabled or not.
`reverb_py.metrics` turns these numbers into Prometheus counters only when it is scraped.
"""

from __future__ import annotations


class AppStats:
    """Counters for one app since the process started. Never reset: Prometheus counters."""

    __slots__ = (
        "api_requests",
        "client_events",
        "client_events_rejected",
        "closed",
        "message_bytes_received",
        "message_bytes_sent",
        "messages_received",
        "messages_rejected",
        "messages_sent",
        "opened",
        "refused",
        "subscriptions_refused",
    )

    def __init__(self) -> None:
        self.messages_received = 0
        self.message_bytes_received = 0
        self.messages_sent = 0
        self.message_bytes_sent = 0
        self.opened = 0
        self.client_events = 0
        # Rare events keyed by a short label; a dict update each, off the fan-out path.
        self.closed: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.client_events_rejected: dict[str, int] = {}
        self.subscriptions_refused: dict[str, int] = {}
        self.messages_rejected: dict[str, int] = {}
        self.api_requests: dict[tuple[str, int], int] = {}

    def sent(self, messages: int, payload_size: int) -> None:
        """`messages` copies of one payload went out (a broadcast counts once per subscriber)."""
        self.messages_sent += messages
        self.message_bytes_sent += messages * payload_size

    def connection_closed(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1

    def connection_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def client_event_rejected(self, reason: str) -> None:
        rejected = self.client_events_rejected
        rejected[reason] = rejected.get(reason, 0) + 1

    def subscription_refused(self, reason: str) -> None:
        refused = self.subscriptions_refused
        refused[reason] = refused.get(reason, 0) + 1

    def message_rejected(self, reason: str) -> None:
        rejected = self.messages_rejected
        rejected[reason] = rejected.get(reason, 0) + 1

    def api_request(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.api_requests[key] = self.api_requests.get(key, 0) + 1
