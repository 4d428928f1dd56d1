"""Optional py-spy sampling of reverb-py during a run (`run --profile`): where its CPU goes.

py-spy is not a project dependency: `pip install py-spy` into the virtualenv to use this. It runs
on the load CPU and reads the server's memory without stopping it (--nonblocking), so the server
is barely slowed, but the generator shares its core: profiled runs are flagged and their numbers
are for finding hot spots, not for the comparison.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import system

TOP = 15
_LINE = re.compile(r":\d+\)$")
_LOOP = "Runner.run (asyncio/runners.py)"


def find_py_spy() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy on one process during the generator's measurement window, then the hottest frames.

    `on_phase` is the generator's phase callback: sampling starts at "measuring" and stops at
    "measured", so connection set-up does not drown the steady state.
    """

    def __init__(self, pid: int, output: Path, cpu: int | None) -> None:
        py_spy = find_py_spy()
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self._command = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
        self._command += ["--format", "raw", "--output", str(output)]
        self._cpu = cpu
        self._process: subprocess.Popen[str] | None = None

    def on_phase(self, phase: str) -> None:
        if phase == "measuring" and self._process is None:
            self._process = subprocess.Popen(
                self._command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=system.pinning(self._cpu),
            )
        elif phase == "measured":
            self._interrupt()

    def _interrupt(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT

    def stop(self) -> dict[str, Any]:
        """Ends sampling if it still runs and summarises the stacks."""
        if self._process is None:
            return {"error": "the generator never reached its measurement window"}
        self._interrupt()
        try:
            _, stderr = self._process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, stderr = self._process.communicate()
        if not self.output.exists():
            return {"error": f"py-spy wrote nothing: {stderr.strip()[-500:]}"}
        return summarize(self.output.read_text())


def summarize(collapsed: str) -> dict[str, Any]:
    """Top frames by own time and by inclusive time, from py-spy's collapsed stacks.

    Line numbers are dropped so that one function is one row.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        # inclusive time counts from the event loop down: the frames above it (runpy, click,
        # the loop itself) are in every sample and would only crowd the list
        if _LOOP in frames:
            frames = frames[len(frames) - frames[::-1].index(_LOOP) :]
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}

    def top(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(TOP)]

    return {"samples": total, "self": top(own), "inclusive": top(inclusive)}


def text(profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"  profile: {profile['error']}"
    lines = [f"  py-spy: {profile['samples']} samples; top own time:"]
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in profile["self"][:8]]
    return "\n".join(lines)
