"""`python -m benchmarks cluster`: what scaling out through Redis costs, measured.

Each round runs the chosen scenarios twice, in alternating order: against one reverb-py, and
against N replicas sharing a private redis-server, with the subscribers spread round-robin over
the replicas and every trigger sent to the first one (so all but a third of the deliveries cross
Redis). Every server process (replicas and Redis) is pinned to the server CPU, the generator to
the load CPU: on a two-core machine this measures the work scaling out adds per delivered
message and the latency of the Redis hop, not the capacity extra machines would bring.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import loadgen, report, servers, system
from benchmarks.scenarios import Metric, Scenario, select

SINGLE = "1 replica"
CLUSTER_CPU = Metric("cluster_cpu_pct", "CPU of all server processes, % of a core", False)
REDIS_CPU = Metric("redis_cpu_pct", "of which redis-server, % of a core", None)


class _Cpu:
    """utime+stime of a set of processes between the generator's measuring phase marks."""

    def __init__(self, pids: list[int], redis_pid: int | None) -> None:
        self._pids = pids
        self._redis_pid = redis_pid
        self._marks: dict[str, tuple[float, int, int]] = {}

    def _ticks(self) -> tuple[float, int, int]:
        total = sum(system.process_ticks(pid) for pid in self._pids)
        redis = system.process_ticks(self._redis_pid) if self._redis_pid else 0
        return time.monotonic(), total, redis

    def on_phase(self, phase: str) -> None:
        self._marks[phase] = self._ticks()

    def result(self) -> dict[str, float]:
        if "measuring" not in self._marks or "measured" not in self._marks:
            return {}
        (t0, total0, redis0), (t1, total1, redis1) = (
            self._marks["measuring"],
            self._marks["measured"],
        )
        per_core = 100.0 / system.CLOCK_TICKS / max(t1 - t0, 1e-9)
        return {
            "cluster_cpu_pct": (total1 - total0) * per_core,
            "redis_cpu_pct": (redis1 - redis0) * per_core,
        }


def _start_redis(cpu: int | None, log_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise servers.ServerError("redis-server is not installed (apt-get install redis-server)")
    port = servers.free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--logfile", str(log_dir / f"redis-{port}.log")]
    process = subprocess.Popen(command, preexec_fn=system.pinning(cpu))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise servers.ServerError(f"redis-server on {port} did not answer")


def _wait_ready(port: int) -> None:
    """/ready is 200 once the replica's Redis link is up."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise servers.ServerError(f"replica on {port} not ready (Redis link) within 15 s")


def run_setup(
    scenario: Scenario, replicas: int, round_no: int, server_cpu: int | None, load_cpu: int | None
) -> dict[str, Any]:
    """One generator run against one server (replicas=1) or a Redis-backed cluster."""
    name = SINGLE if replicas == 1 else f"{replicas} replicas + Redis"
    record: dict[str, Any] = {"scenario": scenario.name, "server": name, "round": round_no}
    log_dir = Path(__file__).parent / "results" / "logs"
    started: list[servers.Running] = []
    redis: subprocess.Popen[bytes] | None = None
    try:
        env = dict(scenario.server_env)
        if replicas > 1:
            redis, redis_port = _start_redis(server_cpu, log_dir)
            env |= {
                "REVERB_SCALING_ENABLED": "true",
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
                # A replica serves the HTTP API for the whole drain window: not worth waiting for.
                "REVERB_DRAIN_SECONDS": "0",
            }
        for _ in range(replicas):
            started.append(servers.start(servers.Target("reverb-py"), server_cpu, env, log_dir))
        for replica in started:
            if replicas > 1:
                _wait_ready(replica.port)
        first = started[0]
        args = [*scenario.loadgen_args(), "--port", str(first.port)]
        args += ["--ws-ports", ",".join(str(r.port) for r in started)]
        args += ["--app-id", servers.APP_ID, "--key", servers.APP_KEY]
        args += ["--secret", servers.APP_SECRET, "--server-pid", str(first.pid)]
        redis_pid = redis.pid if redis is not None else None
        cpu = _Cpu([r.pid for r in started] + ([redis_pid] if redis_pid else []), redis_pid)
        done = loadgen.run(args, load_cpu, scenario.timeout(), cpu.on_phase)
        record["result"] = {**done.result, **cpu.result()}
        if done.result.get("lost"):
            record["problems"] = [f"lost={done.result['lost']:.0f}"]
    except (servers.ServerError, loadgen.LoadgenError) as exc:
        record.update(error=str(exc), result={})
    finally:
        for replica in started:
            servers.stop(replica, keep_log=bool(record.get("error")))
        if redis is not None:
            redis.terminate()
            redis.wait()
    return record


def _with_cpu(scenario: Scenario) -> Scenario:
    """The scenario's metrics, with the CPU of every server process instead of the first's."""
    kept = tuple(m for m in scenario.metrics if m.key != "server_cpu_pct")
    return dataclasses.replace(scenario, metrics=(*kept, CLUSTER_CPU, REDIS_CPU))


def cmd_cluster(args: argparse.Namespace, server_cpu: int | None, load_cpu: int | None) -> int:
    system.raise_fd_limit()
    system.pin_self(load_cpu)
    loadgen.build()
    scenarios = [_with_cpu(s.scaled(args.clients, args.duration)) for s in select(args.scenario)]
    setups = [args.replicas, 1]
    names = [f"{args.replicas} replicas + Redis", SINGLE]  # the ratio column is cluster / single
    started = datetime.datetime.now(datetime.UTC)
    runs: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        order = setups if round_no % 2 else setups[::-1]
        for scenario in scenarios:
            for replicas in order:
                record = run_setup(scenario, replicas, round_no, server_cpu, load_cpu)
                runs.append(record)
                shown = record.get("error") or "  ".join(
                    f"{m.label}={report.fmt(record['result'][m.key])}"
                    for m in scenario.metrics
                    if m.key in record["result"]
                )
                print(f"[round {round_no}] {scenario.name:<12} {record['server']:<20} {shown}")
    summary = report.summarize(runs, scenarios, names)
    text = "\n\n".join(
        [
            f"# reverb-py scaling cost {started.isoformat(timespec='seconds')} "
            f"(commit {system.git_commit()}, {args.rounds} rounds, every server process on CPU "
            f"{server_cpu}, load CPU {load_cpu})",
            report.table(summary, scenarios, names),
            "Runs needing a second look:\n" + report.problems_text(runs),
        ]
    )
    out = args.out or Path(__file__).parent / "results" / f"{started:%Y%m%dT%H%M%SZ}-cluster.json"
    document = {"started": started.isoformat(), "commit": system.git_commit(), "runs": runs}
    document["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print("\n" + text + f"\n\nresults: {out}")
    return 1 if any(run.get("error") for run in runs) else 0
