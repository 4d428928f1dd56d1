"""`python -m benchmarks run|cluster|ceiling|list`: the one command that runs the whole comparison.

run: for each round, for each scenario, each server in turn (order alternating between rounds, so
neither server always goes first): start it fresh on the server CPU, drive it with the generator
on the load CPU, stop it. Results go to benchmarks/results/ as JSON (every run, raw) and Markdown
(medians, spread, ratios), and the table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import socket
import time
from pathlib import Path
from typing import Any

from benchmarks import cluster, loadgen, profile, report, servers, system
from benchmarks.scenarios import SCENARIOS, Scenario, select

RESULTS = Path(__file__).parent / "results"
GENERATOR_BUSY_LIMIT = 90.0  # % of the load core: above this the generator may be the bottleneck
FOREIGN_CPU_LIMIT = 10.0  # % of a core used by other processes during a run: numbers are noisy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="benchmark servers and write results")
    run.add_argument(
        "--server",
        default="both",
        help="reverb-py | soketi | both | reverb-py@REV | HOST:PORT, or a comma-separated list",
    )
    run.add_argument("--server-pid", type=int, default=0, help="pid of a HOST:PORT server")
    run.add_argument("--scenario", default="all", help="all, or comma-separated names")
    run.add_argument("--rounds", type=int, default=3)
    run.add_argument("--duration", type=float, help="override every scenario's run seconds")
    run.add_argument("--clients", type=int, help="cap sockets per scenario (quick looks, tests)")
    run.add_argument("--skip-ceiling", action="store_true", help="do not measure the generator")
    run.add_argument("--out", type=Path, help="results JSON path (default: results/<time>.json)")
    run.add_argument("--profile", action="store_true", help="sample reverb-py with py-spy")
    _pinning_arguments(run)

    cluster = commands.add_parser("cluster", help="one replica vs replicas sharing Redis")
    cluster.add_argument("--replicas", type=int, default=3)
    cluster.add_argument("--scenario", default="fanout-1000,latency-100")
    cluster.add_argument("--rounds", type=int, default=3)
    cluster.add_argument("--duration", type=float, help="override every scenario's run seconds")
    cluster.add_argument(
        "--clients", type=int, help="cap sockets per scenario (quick looks, tests)"
    )
    cluster.add_argument("--out", type=Path, help="results JSON path")
    _pinning_arguments(cluster)

    ceiling = commands.add_parser("ceiling", help="measure only the generator's own ceiling")
    _pinning_arguments(ceiling)
    commands.add_parser("list", help="list the scenarios")
    return parser


def _pinning_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin (one-CPU machines)")


def _cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    if args.no_pin:
        return None, None
    available = system.usable_cpus()
    if args.server_cpu not in available or args.load_cpu not in available:
        raise SystemExit(
            f"CPUs {args.server_cpu} and {args.load_cpu} are not both usable here "
            f"(have {available}); choose others or pass --no-pin"
        )
    if args.server_cpu == args.load_cpu:
        raise SystemExit("--server-cpu and --load-cpu must differ")
    return args.server_cpu, args.load_cpu


def _core_busy(result: dict[str, float], cpu: int | None) -> float:
    return result.get(f"cpu{cpu}_busy_pct", -1.0) if cpu is not None else -1.0


def _problems(result: dict[str, float], load_busy: float, foreign: float) -> list[str]:
    problems = []
    if result.get("aborted"):
        problems.append("generator aborted the run")
    for key in ("connections_failed", "disconnects", "trigger_errors", "triggers_unanswered"):
        if result.get(key):
            problems.append(f"{key}={result[key]:.0f}")
    if result.get("lost"):
        problems.append(f"lost={result['lost']:.0f}")
    if result.get("pusher_errors"):
        problems.append(f"pusher_errors={result['pusher_errors']:.0f}")
    if load_busy > GENERATOR_BUSY_LIMIT:
        problems.append(f"load core {load_busy:.0f}% busy: the generator may be the bottleneck")
    if foreign > FOREIGN_CPU_LIMIT:
        problems.append(f"other processes used {foreign:.0f}% of a core: noisy")
    return problems


def run_one(
    scenario: Scenario,
    target: servers.Target,
    round_no: int,
    server_cpu: int | None,
    load_cpu: int | None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Fresh server, one generator run, server stopped; never raises for a failed run.

    With profile_dir, a managed reverb-py is sampled by py-spy for the whole generator run.
    """
    record: dict[str, Any] = {"scenario": scenario.name, "server": target.name, "round": round_no}
    running = None
    profiler = None
    try:
        running = servers.start(target, server_cpu, dict(scenario.server_env), RESULTS / "logs")
        args = [*scenario.loadgen_args(), "--host", target.host, "--port", str(running.port)]
        args += ["--app-id", servers.APP_ID, "--key", servers.APP_KEY]
        args += ["--secret", servers.APP_SECRET, "--server-pid", str(running.pid)]
        if profile_dir is not None and target.name.startswith("reverb-py"):
            stacks = profile_dir / f"{scenario.name}-round{round_no}.txt"
            profiler = profile.Profiler(running.pid, stacks, load_cpu)
            if scenario.profile_connect:
                profiler.on_phase("measuring")
        others = system.ForeignLoad(running.pid)
        on_phase = profiler.on_phase if profiler is not None else None
        done = loadgen.run(args, load_cpu, scenario.timeout(), on_phase)
        foreign = others.pct_of_one_core(done.wall_s)
        if profiler is not None:
            record["profile"] = {"stacks": str(profiler.output), **profiler.stop()}
            profiler = None
        load_busy = _core_busy(done.result, load_cpu)
        record.update(
            result=done.result,
            foreign_cpu_pct=round(foreign, 1),
            load_core_busy_pct=load_busy,
            server_core_busy_pct=_core_busy(done.result, server_cpu),
            problems=_problems(done.result, load_busy, foreign),
        )
        if "profile" in record:
            record["problems"].append("profiled: py-spy shared the load core")
        if done.stderr:
            record["loadgen_log"] = done.stderr[-2000:]  # the first errors, for the second look
    except (servers.ServerError, loadgen.LoadgenError) as exc:
        record.update(error=str(exc), result={}, problems=[])
    finally:
        if profiler is not None:
            profiler.stop()
        if running is not None:
            servers.stop(running, keep_log=bool(record.get("error") or record.get("problems")))
            if running.log is not None and running.log.exists():
                record["server_log"] = str(running.log)
    return record


def _headline(record: dict[str, Any], scenario: Scenario) -> str:
    if record.get("error"):
        return f"ERROR {record['error'].splitlines()[0]}"
    result = record["result"]
    parts = [
        f"{metric.label}={report.fmt(result[metric.key])}"
        for metric in scenario.metrics
        if metric.key in result
    ]
    parts.append(f"load core {report.fmt(record['load_core_busy_pct'])}%")
    parts.append(f"foreign {report.fmt(record['foreign_cpu_pct'])}%")
    return "  ".join(parts)


def measure_ceiling(server_cpu: int | None, load_cpu: int | None) -> dict[str, Any]:
    """The generator against a trivial C source: how much it can take before it is the limit.

    With one frame per write the loopback send path limits the source about as much as the
    receive path limits the generator; with 16 frames per write (what a server that coalesces
    writes produces) the generator's own parsing is what runs out.
    """
    rows = {
        "fan-out, 1000 subscribers, 1 frame per write": (1, ["--conns", "1000"]),
        "fan-out, 1000 subscribers, 16 frames per write": (16, ["--conns", "1000"]),
        "signed triggers, 8 connections, no subscribers": (
            1,
            ["--conns", "0", "--http-conns", "8"],
        ),
    }
    ceiling: dict[str, Any] = {}
    for name, (batch, extra) in rows.items():
        port = servers.free_port()
        mock = loadgen.start_mock(port, batch, server_cpu)
        try:
            _wait_listening(port)
            args = ["--mode", "broadcast", "--port", str(port), "--duration", "5", *extra]
            result = loadgen.run([*args, "--server-pid", str(mock.pid)], load_cpu, 60).result
        finally:
            mock.terminate()
            mock.wait()
        triggers = "--http-conns" in extra
        ceiling[name] = {
            "rate": result["triggers_per_s" if triggers else "delivered_per_s"],
            "unit": "req/s" if triggers else "msg/s",
            "lost": result["lost"],
            "load_core_busy_pct": _core_busy(result, load_cpu),
            "server_core_busy_pct": _core_busy(result, server_cpu),
            "loadgen_cpu_pct": result["loadgen_cpu_pct"],
        }
    return ceiling


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise loadgen.LoadgenError(f"mock source did not listen on {port}")


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(document, indent=1))
    partial.replace(path)


def cmd_run(args: argparse.Namespace) -> int:
    server_cpu, load_cpu = _cpus(args)
    system.raise_fd_limit()
    system.pin_self(load_cpu)
    targets = servers.parse_targets(args.server, args.server_pid)
    names = [t.name for t in targets]
    scenarios = [s.scaled(args.clients, args.duration) for s in select(args.scenario)]
    loadgen.build()
    if args.profile and profile.find_py_spy() is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or RESULTS / f"{started:%Y%m%dT%H%M%SZ}-{'-vs-'.join(names)}.json"
    profile_dir = out.with_suffix("") if args.profile else None
    document: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "commit": system.git_commit(),
        "versions": servers.versions(targets),
        "host": system.host_info(),
        "pinning": {"server_cpu": server_cpu, "load_cpu": load_cpu},
        "scenarios": {s.name: dataclasses.asdict(s) for s in scenarios},
        "rounds": args.rounds,
        "ceiling": None,
        "runs": [],
    }
    if not args.skip_ceiling:
        print("measuring the generator's ceiling against a mock source ...", flush=True)
        document["ceiling"] = measure_ceiling(server_cpu, load_cpu)
        print(report.ceiling_text(document["ceiling"]), flush=True)
    for round_no in range(1, args.rounds + 1):
        order = targets if round_no % 2 else targets[::-1]
        for scenario in scenarios:
            for target in order:
                record = run_one(scenario, target, round_no, server_cpu, load_cpu, profile_dir)
                document["runs"].append(record)
                print(
                    f"[round {round_no}] {scenario.name:<14} {target.name:<10} "
                    f"{_headline(record, scenario)}",
                    flush=True,
                )
                if "profile" in record:
                    print(profile.text(record["profile"]), flush=True)
                _write(out, document)
    document["summary"] = report.summarize(document["runs"], scenarios, names)
    _write(out, document)
    text = "\n\n".join(
        [
            f"# reverb-py benchmarks {document['started']} (commit {document['commit']}, "
            f"soketi {document['versions']['soketi']}, {args.rounds} rounds, "
            f"server CPU {server_cpu}, load CPU {load_cpu})",
            report.table(document["summary"], scenarios, names),
            "Runs needing a second look:\n" + report.problems_text(document["runs"]),
            *([report.ceiling_text(document["ceiling"])] if document["ceiling"] else []),
        ]
    )
    out.with_suffix(".md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nresults: {out}")
    failed = any(run.get("error") for run in document["runs"])
    return 1 if failed else 0


def cmd_ceiling(args: argparse.Namespace) -> int:
    server_cpu, load_cpu = _cpus(args)
    system.raise_fd_limit()
    system.pin_self(load_cpu)
    print(report.ceiling_text(measure_ceiling(server_cpu, load_cpu)))
    return 0


def cmd_list() -> int:
    for scenario in SCENARIOS.values():
        print(f"{scenario.name:<14} {scenario.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "ceiling":
        return cmd_ceiling(args)
    if args.command == "cluster":
        return cluster.cmd_cluster(args, *_cpus(args))
    return cmd_list()
