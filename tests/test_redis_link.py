"""The pure bookkeeping of the Redis link: every operation applied once, every gap counted."""

from __future__ import annotations

import pytest

from reverb_py.config import RedisSettings
from reverb_py.scaling.cluster import Cluster
from reverb_py.scaling.ops import Heartbeat
from reverb_py.scaling.redis import RedisLink, SenderPositions

# Never connected to: these tests drive the link's bookkeeping only.
UNREACHABLE = RedisSettings(url="redis://127.0.0.1:1/0")


def test_entries_in_order_are_applied_whole() -> None:
    positions = SenderPositions()
    assert positions.accept("a", 0, 3) == (0, 0)
    assert positions.accept("a", 3, 2) == (0, 0)
    assert positions.accept("b", 40, 1) == (0, 0)  # a sender first heard mid-stream


def test_an_entry_written_twice_is_applied_once() -> None:
    positions = SenderPositions()
    positions.accept("a", 0, 3)
    assert positions.accept("a", 0, 3) == (3, 0)  # the retry of a write whose reply was lost
    assert positions.accept("a", 3, 1) == (0, 0)


def test_an_overlapping_entry_applies_only_what_is_new() -> None:
    positions = SenderPositions()
    positions.accept("a", 0, 4)
    assert positions.accept("a", 2, 5) == (2, 0)
    assert positions.accept("a", 7, 1) == (0, 0)


def test_a_gap_is_counted_in_operations() -> None:
    positions = SenderPositions()
    positions.accept("a", 0, 2)
    assert positions.accept("a", 10, 1) == (0, 8)  # operations 2..9 were trimmed or lost
    assert positions.accept("a", 11, 1) == (0, 0)


def test_departed_senders_are_forgotten() -> None:
    positions = SenderPositions()
    positions.accept("a", 0, 1)
    positions.accept("b", 0, 1)
    positions.retain({"b"})
    assert len(positions) == 1
    assert positions.accept("a", 5, 1) == (0, 0)  # known again from scratch, no false gap


def test_a_gap_is_counted_after_the_link_returns_even_for_a_reaped_sender() -> None:
    """A replica that was paused longer than the node timeout reaps the others as it resumes,
    and its reader reconnects; the operations it missed are still counted as lost."""
    link = RedisLink(UNREACHABLE, "s", Cluster("me"))
    link._receive([(b"1-0", {b"n": b"other", b"c": b"0", b"o": b"[]"})])
    link._link_up(0.0)  # "other" is not among the cluster's nodes: it was reaped meanwhile
    link._receive([(b"9-0", {b"n": b"other", b"c": b"40", b"o": b"[]"})])
    assert link.lost == 40


def test_a_full_backlog_drops_the_oldest_counts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    link = RedisLink(UNREACHABLE, "s", Cluster("node"), backlog_ops=3)
    for number in range(5):
        link.send(Heartbeat({"n": number}))
    assert link.dropped == 2
    assert link.backlog()[0] == 3
    assert [op.to_wire()[1]["n"] for _, op in link._outbox] == [2, 3, 4]  # the newest are kept
    assert caplog.text.count("dropped the oldest operation") == 1  # throttled, not one per op
    status = link.status(0.0)
    assert status["link"] == "down" and status["queued"] == 3 and status["dropped"] == 2


def test_operations_older_than_the_backlog_window_are_dropped_on_the_links_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    cluster = Cluster("node", clock=lambda: now[0])
    link = RedisLink(UNREACHABLE, "s", cluster, backlog_seconds=60.0)
    assert link.down_seconds(now[0]) == 0.0  # down since it was made, on the same clock
    link.send(Heartbeat({"1": 1}))
    now[0] += 30
    link.send(Heartbeat({"1": 2}))
    assert link.backlog() == (2, 100.0)
    now[0] += 31  # the first is 61 s old, the second 31 s
    batch = link._next_batch()
    assert batch is not None and [op.to_wire() for op in batch.ops] == [["hb", {"1": 2}]]
    assert batch.first == 0 and link.dropped == 1
    assert "dropped 1 operation queued longer than 60 s" in caplog.text
    assert link.down_seconds(now[0]) == 61.0
