"""Smoke test of the benchmark suite: a tiny fan-out and latency run against reverb-py.

It starts the server through its CLI, as the suite's users do, runs `python -m benchmarks run`
for about a second per scenario with five subscribers, and asserts correctness only: every
message reached every subscriber and the results were written. Never a timing: a timed assertion
is not a benchmark, and CI machines are noisy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBSCRIBERS = 5

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="the benchmark load generator is C and needs a compiler (cc or gcc)",
)


@pytest.fixture
def reverb_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """reverb-py started by its CLI on a free port; yields (port, pid)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "REVERB_APP_ID": "app-id",
        "REVERB_APP_KEY": "app-key",
        "REVERB_APP_SECRET": "app-secret",
    }
    log = (tmp_path / "server.log").open("wb")
    command = [sys.executable, "-m", "reverb_py", "start", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/up", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "reverb-py did not answer /up in 10 s"
                time.sleep(0.05)
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def run_benchmarks(arguments: list[str], out: Path) -> dict:
    """`python -m benchmarks ...` for one one-second round, unpinned; its JSON results."""
    command = [sys.executable, "-m", "benchmarks", *arguments, "--rounds", "1", "--duration", "1"]
    done = subprocess.run(
        [*command, "--no-pin", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def test_fanout_and_latency_deliver_every_message(
    reverb_server: tuple[int, int], tmp_path: Path
) -> None:
    port, pid = reverb_server
    out = tmp_path / "smoke.json"
    command = ["run", "--server", f"127.0.0.1:{port}", "--server-pid", str(pid)]
    command += ["--scenario", "fanout-100,latency-50", "--clients", str(SUBSCRIBERS)]
    document = run_benchmarks([*command, "--skip-ceiling"], out)
    runs = {run["scenario"]: run for run in document["runs"]}
    assert set(runs) == {"fanout-100", "latency-50"}
    for run in runs.values():
        assert "error" not in run, run
        result = run["result"]
        assert result["aborted"] == 0
        assert result["connections_ready"] == SUBSCRIBERS
        assert result["triggers_ok"] > 0
        assert result["trigger_errors"] == result["triggers_unanswered"] == 0
        assert result["delivered"] == result["expected"] == result["triggers_ok"] * SUBSCRIBERS
        assert result["lost"] == 0
    assert runs["latency-50"]["result"]["latency_samples"] > 0
    assert "fanout-100" in document["summary"]
    assert out.with_suffix(".md").read_text().startswith("# reverb-py benchmarks")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_cluster_setup_delivers_across_replicas(tmp_path: Path) -> None:
    """Subscribers spread over three replicas, triggers to the first: two thirds of every
    delivery crosses Redis, and none may be missing."""
    out = tmp_path / "cluster.json"
    document = run_benchmarks(["cluster", "--scenario", "fanout-100", "--clients", "6"], out)
    runs = {run["server"]: run for run in document["runs"]}
    assert set(runs) == {"1 replica", "3 replicas + Redis"}
    for run in runs.values():
        result = run["result"]
        assert result["connections_ready"] == 6
        assert result["triggers_ok"] > 0
        assert result["delivered"] == result["expected"] == result["triggers_ok"] * 6
        assert result["lost"] == 0
    assert runs["3 replicas + Redis"]["result"]["redis_cpu_pct"] >= 0


def test_same_run_against_an_earlier_revision(tmp_path: Path) -> None:
    """`--server reverb-py,reverb-py@REV` runs the working tree and the package extracted at a
    revision in one session, so a change is compared with its parent under the same machine
    load. HEAD stands in for the parent here: a shallow clone may have no other commit."""
    out = tmp_path / "before-after.json"
    command = ["run", "--server", "reverb-py,reverb-py@HEAD", "--scenario", "fanout-100"]
    document = run_benchmarks([*command, "--clients", str(SUBSCRIBERS), "--skip-ceiling"], out)
    runs = {run["server"]: run for run in document["runs"]}
    assert set(runs) == {"reverb-py", "reverb-py@HEAD"}
    for run in runs.values():
        assert "error" not in run, run
        assert run["result"]["lost"] == 0
        assert run["result"]["delivered"] == run["result"]["triggers_ok"] * SUBSCRIBERS > 0
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert head.startswith(document["versions"]["reverb-py@HEAD"])
    assert "ratio" in document["summary"]["fanout-100"]["delivered_per_s"]
