"""A bug while handling a message: the client is told to reconnect, the line has the stack."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from reverb_py.logs import ThrottledLog
from reverb_py.pusher.session import Session
from tests.conftest import Running


async def test_an_unexpected_error_is_logged_once_per_interval_with_its_traceback(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No client message is known to cause an internal error (the fuzz tests look for one),
    so a narrow monkeypatch makes unsubscribing raise: a fault no client can cause for real."""
    hub = running.server.router.hubs_by_id[running.app.id]
    now = [1000.0]
    hub.refusal_log = ThrottledLog(logging.getLogger("reverb_py.session"), clock=lambda: now[0])

    def broken_unsubscribe(self: Session, data: Any) -> None:
        raise RuntimeError(f"broken unsubscribe for {self.app}")

    monkeypatch.setattr(Session, "_unsubscribe", broken_unsubscribe)
    faulty, bystander = await running.connect(), await running.connect()
    assert (await bystander.subscribe("news"))["event"] == "pusher_internal:subscription_succeeded"

    with caplog.at_level(logging.WARNING, logger="reverb_py.session"):
        for _ in range(2):  # the second one within the interval: counted, not written
            await faulty.send("pusher:unsubscribe", {"channel": "news"})
            error = await faulty.expect("pusher:error")
            assert error["data"] == {"code": 4200, "message": "Internal server error"}
        lines = [r for r in caplog.records if r.name == "reverb_py.session"]
        assert len(lines) == 1
        assert lines[0].getMessage() == "unexpected RuntimeError handling a message for app 1234"
        assert lines[0].exc_info is not None
        assert "broken_unsubscribe" in caplog.text and "Traceback" in caplog.text

        # Both faults count; the one held back rides on the next line written.
        assert hub.stats.messages_rejected["internal_error"] == 2
        now[0] += 10.0
        await faulty.send("pusher:unsubscribe", {"channel": "news"})
        await faulty.expect("pusher:error")
        lines = [r for r in caplog.records if r.name == "reverb_py.session"]
        assert len(lines) == 2
        assert lines[1].getMessage().endswith("(and 1 more since the last such line)")
        assert lines[1].exc_info is not None
    assert running.app.secret not in caplog.text

    # The faulty socket still works, and the others never noticed.
    await faulty.send("pusher:ping")
    await faulty.expect("pusher:pong")
    await running.call(running.sdk().trigger, "news", "headline", {"n": 1})
    assert (await bystander.expect("headline"))["channel"] == "news"
    await bystander.nothing()
