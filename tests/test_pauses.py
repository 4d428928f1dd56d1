"""The pause diagnostics: GC pauses per generation and loop stalls, and the start-up freeze."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from reverb_py import pauses
from reverb_py.pauses import PauseProbe, PauseRecorder
from reverb_py.server import freeze_startup_objects
from tests.clock import ManualClock
from tests.conftest import ServerFactory


def test_gc_pauses_are_tallied_per_generation_and_reset_by_the_report() -> None:
    clock = ManualClock()
    recorder = PauseRecorder(clock)
    for generation, pause in ((0, 0.0002), (0, 0.0004), (2, 0.021)):
        recorder.on_gc("start", {"generation": generation})
        clock.now += pause
        recorder.on_gc("stop", {"generation": generation})
    recorder.on_probe(0.001)  # below the stall threshold
    recorder.on_probe(0.058)
    line = recorder.report()
    assert "gen0 2 (0.6 ms, max 0.40 ms)" in line
    assert "gen1 0 (0.0 ms, max 0.00 ms)" in line
    assert "gen2 1 (21.0 ms, max 21.00 ms)" in line
    assert "loop stalls >= 2 ms: 1 (58.0 ms, max 58.00 ms)" in line
    assert "gen2 0 " in recorder.report()


async def test_the_probe_hooks_the_collector_and_logs_a_summary(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pauses, "REPORT_INTERVAL", 0.02)
    recorder = PauseRecorder()
    probe = PauseProbe(asyncio.get_running_loop(), recorder)
    with caplog.at_level(logging.INFO, logger="reverb_py.pauses"):
        probe.start()
        try:
            gc.collect(0)
            await asyncio.sleep(0.1)
        finally:
            probe.stop()
    assert recorder.on_gc not in gc.callbacks
    assert any("gc collections: gen0" in r.getMessage() for r in caplog.records)


def test_start_up_objects_are_frozen_out_of_the_collector() -> None:
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def test_the_server_runs_the_probe_only_when_asked(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hooked() -> int:
        return sum(isinstance(getattr(c, "__self__", None), PauseRecorder) for c in gc.callbacks)

    before = hooked()
    quiet = await start_server()
    assert hooked() == before
    monkeypatch.setenv("REVERB_DEBUG_PAUSES", "1")
    probed = await start_server()
    assert hooked() == before + 1
    await probed.server.close()
    assert hooked() == before
    await quiet.server.close()
