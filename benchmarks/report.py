"""Turns the runs of a session into medians, spreads and ratios, and into a Markdown table.

Medians over alternating rounds, with the min-max spread next to them: a single number from a
shared two-core machine says little, a ratio of medians with its spread says what we need.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.scenarios import Scenario

Run = dict[str, Any]


def _values(runs: list[Run], scenario: str, server: str, key: str) -> list[float]:
    values = []
    for run in runs:
        if run["scenario"] != scenario or run["server"] != server or run.get("error"):
            continue
        result = run["result"]
        value = result.get(key)
        # CPU and RSS figures are -1 when the server's pid was unknown
        if value is not None and not result.get("aborted") and value >= 0:
            values.append(float(value))
    return values


def summarize(runs: list[Run], scenarios: list[Scenario], servers: list[str]) -> dict[str, Any]:
    """{scenario: {metric key: {server: {median, min, max, n}, "ratios": {other: first/other}}}}
    with "ratio" (first/second) too when there are exactly two servers."""
    summary: dict[str, Any] = {}
    for scenario in scenarios:
        metrics: dict[str, Any] = {}
        for metric in scenario.metrics:
            entry: dict[str, Any] = {}
            for server in servers:
                values = _values(runs, scenario.name, server, metric.key)
                if values:
                    entry[server] = {
                        "median": statistics.median(values),
                        "min": min(values),
                        "max": max(values),
                        "n": len(values),
                    }
            first = entry.get(servers[0], {}).get("median")
            ratios = {
                other: first / entry[other]["median"] if entry[other]["median"] else None
                for other in servers[1:]
                if first is not None and other in entry
            }
            if ratios:
                entry["ratios"] = ratios
            if len(servers) == 2 and servers[1] in ratios:
                entry["ratio"] = ratios[servers[1]]
            metrics[metric.key] = entry
        summary[scenario.name] = metrics
    return summary


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _cell(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    if stats["n"] == 1 or stats["min"] == stats["max"]:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} [{fmt(stats['min'])}-{fmt(stats['max'])}]"


def _verdict(ratio: float | None, higher_is_better: bool | None, both_zero: bool) -> str:
    if both_zero:
        return "= (both 0)"
    if ratio is None:
        return "-"
    text = f"{ratio:.2f}x"
    if higher_is_better is None or abs(ratio - 1) < 0.02:
        return text
    better = ratio > 1 if higher_is_better else ratio < 1
    return f"{text} {'better' if better else 'worse'}"


def table(summary: dict[str, Any], scenarios: list[Scenario], servers: list[str]) -> str:
    """Markdown: one row per scenario metric, median [min-max] per server, and the ratio of the
    first server's median to each other's."""
    header = ["scenario", "metric", *servers]
    header += [f"{servers[0]} / {other}" for other in servers[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in scenarios:
        for metric in scenario.metrics:
            entry = summary[scenario.name][metric.key]
            arrow = {True: " (higher better)", False: " (lower better)", None: ""}
            row = [scenario.name, metric.label + arrow[metric.higher_is_better]]
            row += [_cell(entry.get(server)) for server in servers]
            for other in servers[1:]:
                both_zero = all(entry.get(s, {}).get("median") == 0 for s in (servers[0], other))
                ratio = entry.get("ratios", {}).get(other)
                row.append(_verdict(ratio, metric.higher_is_better, both_zero))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def problems_text(runs: list[Run]) -> str:
    """The runs whose numbers need a second look (errors, losses, a busy generator, noise)."""
    lines = [
        f"- {run['scenario']} / {run['server']} / round {run['round']}: " + "; ".join(problems)
        for run in runs
        if (problems := ([run["error"]] if run.get("error") else []) + run.get("problems", []))
    ]
    return "\n".join(lines) if lines else "- none"


def ceiling_text(ceiling: dict[str, Any]) -> str:
    lines = [
        "| generator ceiling (mock source) | rate | generator core busy | source core busy |",
        "|---|---|---|---|",
    ]
    for name, row in ceiling.items():
        lines.append(
            f"| {name} | {fmt(row['rate'])} {row['unit']} | {fmt(row['load_core_busy_pct'])} % "
            f"| {fmt(row['server_core_busy_pct'])} % |"
        )
    return "\n".join(lines)
