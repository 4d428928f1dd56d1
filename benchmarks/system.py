"""Host plumbing: CPU pinning, file-descriptor limits, and noticing other load on the machine.

Numbers from a shared machine are only comparable if nothing else ran meanwhile, so every run
records how much CPU processes other than the server and the generator used (`foreign_cpu_pct`).
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit; children (servers, generator) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinning(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to one CPU (what `taskset -c CPU` does), or None."""
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def pin_self(cpu: int | None) -> None:
    """Keeps the runner itself off the server's core."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _busy_ticks() -> int:
    """user + nice + system over all CPUs: what processes ran, without irq/softirq time."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def process_ticks(pid: int) -> int:
    """utime + stime of a live process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _own_ticks() -> int:
    times = os.times()  # this runner plus its reaped children (the generator)
    total = times.user + times.system + times.children_user + times.children_system
    return round(total * CLOCK_TICKS)


class ForeignLoad:
    """CPU that neither the server, nor the generator, nor this runner used during a run.

    Machine-wide user+system time minus ours, so that short-lived processes of other users are
    counted too; irq and softirq time (where loopback TCP work lands) is left out on both sides.
    """

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self._start = self._sample()

    def _sample(self) -> tuple[int, int, int]:
        return _busy_ticks(), process_ticks(self._server_pid), _own_ticks()

    def pct_of_one_core(self, seconds: float) -> float:
        """Call after the generator has been reaped."""
        total, server, own = (b - a for a, b in zip(self._start, self._sample(), strict=True))
        if seconds <= 0:
            return 0.0
        return max(0.0, 100.0 * (total - server - own) / CLOCK_TICKS / seconds)


def git_commit() -> str:
    """The checked-out commit, with "+dirty" when the server or the suite has local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "reverb_py", "benchmarks"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def host_info() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
