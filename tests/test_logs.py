"""ThrottledLog: one warning per key and interval, with the count of those held back."""

import logging

from reverb_py.logs import ThrottledLog, counted


def test_repeats_are_held_back_and_counted_on_the_next_line(caplog):
    now = [100.0]
    log = ThrottledLog(logging.getLogger("test.throttled"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        assert log.warning("bad", "bad request from %s", "a")
        assert not log.warning("bad", "bad request from %s", "b")
        assert not log.warning("bad", "bad request from %s", "c")
        assert log.warning("other", "another reason")
        now[0] += 10.0
        assert log.warning("bad", "bad request from %s", "d")
        now[0] += 10.0
        assert log.warning("bad", "bad request from %s", "e")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from a",
        "another reason",
        "bad request from d (and 2 more since the last such line)",
        "bad request from e",
    ]


def test_counts_read_as_sentences():
    assert counted(1, "client") == "1 client"
    assert counted(0, "client") == "0 clients"
    assert counted(2, "presence member") == "2 presence members"
    assert counted(3, "replica", "replicas") == "3 replicas"
