"""Which webhooks a change of one app's state sends, and which replica sends them.

Facts about the whole cluster (a channel occupied or vacated, a member added or removed, a
subscription count) are sent by the leader replica only (see `scaling.cluster`), so each is
sent once however many replicas saw it. The hub reports every change here; sending (queues,
retries, HTTP) is `webhooks.AppWebhooks`'s job, seen through `HubHooks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from reverb_py.pusher.ports import Hooks


class HubHooks(Hooks, Protocol):
    """The webhook sender of one app, as the hub and the session use it."""

    @property
    def tracks_occupancy(self) -> bool: ...

    @property
    def tracks_members(self) -> bool: ...

    def channel_occupied(self, channel: str, cause: str | None = None) -> None: ...

    def channel_vacated(self, channel: str, now: float, cause: str | None = None) -> None: ...

    def member_added(self, channel: str, user_id: Any, cause: str | None = None) -> None: ...

    def member_removed(
        self, channel: str, user_id: Any, now: float, cause: str | None = None
    ) -> None: ...

    def subscription_count(self, channel: str, count: int, cause: str | None = None) -> None: ...


class Leadership(Protocol):
    """Whether this replica sends the cluster-wide webhooks (`scaling.cluster.Cluster`)."""

    @property
    def leader(self) -> bool: ...


class WebhookDecisions:
    """Turns the hub's changes into webhook events. Called by the hub only; `cause` is the
    socket id whose action caused the change (None: the server or another replica)."""

    __slots__ = ("clock", "cluster", "hooks")

    def __init__(self, hooks: HubHooks, cluster: Leadership, clock: Callable[[], float]) -> None:
        self.hooks = hooks
        self.cluster = cluster
        self.clock = clock

    @property
    def tracks_counts(self) -> bool:
        """Whether any webhook depends on subscription counts."""
        hooks = self.hooks
        return hooks.tracks_occupancy or hooks.wants("subscription_count")

    def member_added(self, channel: str, user_id: Any, cause: str | None = None) -> None:
        if self.hooks.tracks_members and self.cluster.leader:
            self.hooks.member_added(channel, user_id, cause)

    def member_removed(self, channel: str, user_id: Any, cause: str | None = None) -> None:
        if self.hooks.tracks_members and self.cluster.leader:
            self.hooks.member_removed(channel, user_id, self.clock(), cause)

    def occupancy(self, channel: str, before: int, after: int, cause: str | None) -> None:
        """The cluster-wide count went from `before` to `after` subscriptions."""
        if (before == 0) == (after == 0) or not self.hooks.tracks_occupancy:
            return
        if not self.cluster.leader:
            return
        if after:
            self.hooks.channel_occupied(channel, cause)
        else:
            self.hooks.channel_vacated(channel, self.clock(), cause)

    def subscription_count(self, channel: str, count: int, cause: str | None) -> None:
        if self.hooks.wants("subscription_count") and self.cluster.leader:
            self.hooks.subscription_count(channel, count, cause)
