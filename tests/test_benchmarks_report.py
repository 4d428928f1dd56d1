"""The benchmark report compares the first server with every other one, however many."""

from __future__ import annotations

from benchmarks.report import summarize, table
from benchmarks.scenarios import SCENARIOS


def run(server: str, p99: float, round_: int) -> dict[str, object]:
    result = {"latency_p50_ms": 1.0, "latency_p99_ms": p99, "latency_max_ms": p99, "lost": 0}
    return {"scenario": "latency-25", "server": server, "round": round_, "result": result}


def test_three_servers_give_a_ratio_to_each_other_server() -> None:
    servers = ["reverb-py", "reverb-py@main", "soketi"]
    runs = [run(s, p99, r) for r in (1, 2) for s, p99 in zip(servers, (4.0, 8.0, 5.0), strict=True)]
    scenario = [SCENARIOS["latency-25"]]
    summary = summarize(runs, scenario, servers)
    p99 = summary["latency-25"]["latency_p99_ms"]
    assert p99["ratios"] == {"reverb-py@main": 0.5, "soketi": 0.8}
    assert "ratio" not in p99  # first/second only when there are two
    text = table(summary, scenario, servers)
    assert "| reverb-py / reverb-py@main | reverb-py / soketi |" in text
    row = "| latency-25 | latency p99 ms (lower better) | 4 | 8 | 5 | 0.50x better | 0.80x better |"
    assert row in text


def test_two_servers_keep_their_single_ratio() -> None:
    servers = ["reverb-py", "soketi"]
    runs = [run("reverb-py", 3.0, 1), run("soketi", 2.0, 1)]
    summary = summarize(runs, [SCENARIOS["latency-25"]], servers)
    assert summary["latency-25"]["latency_p99_ms"]["ratio"] == 1.5
