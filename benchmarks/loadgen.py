"""Builds the C load generator on demand and runs it, pinned, returning its JSON result.

The generator is C because the fan-out scenario must receive hundreds of thousands of frames per
second on one core; a per-message Python client measures itself instead of the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks import system

SOURCE = Path(__file__).with_name("loadgen.c")
BINARY = Path(__file__).parent / "build" / "loadgen"


class LoadgenError(RuntimeError):
    """The generator could not be built, or a run produced no result."""


def build() -> Path:
    """Compiles loadgen.c when the binary is missing or older than the source."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise LoadgenError("no C compiler found (set CC, or install gcc)")
    BINARY.parent.mkdir(exist_ok=True)
    # Built under a private name and renamed, so a concurrent build never runs half a file.
    partial = BINARY.with_name(f"loadgen.{os.getpid()}.partial")
    command = [compiler, "-O2", "-Wall", "-Wextra", "-o", str(partial), str(SOURCE), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LoadgenError(f"building loadgen failed:\n{done.stderr}")
    partial.replace(BINARY)
    return BINARY


@dataclass
class LoadgenRun:
    """One finished generator run: its JSON result and how long the process lived."""

    result: dict[str, float]
    stderr: str
    wall_s: float


def run(
    args: list[str],
    cpu: int | None,
    timeout: float,
    on_phase: Callable[[str], None] | None = None,
) -> LoadgenRun:
    """Runs the generator to completion; raises LoadgenError if it printed no JSON result.

    on_phase is called with "measuring" and "measured" as the generator enters and leaves its
    measurement window (the profiler samples only that window).
    """
    command = [str(build()), *args]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=system.pinning(cpu),
    )
    assert process.stdout is not None and process.stderr is not None
    log: list[str] = []
    reader = threading.Thread(target=_read_log, args=(process.stderr, log, on_phase), daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        reader.join()
        stderr = "".join(log)
        raise LoadgenError(f"loadgen did not finish within {timeout:.0f} s:\n{stderr}") from None
    wall = time.monotonic() - started
    reader.join()
    stderr = "".join(log)
    lines = [line for line in process.stdout.read().splitlines() if line.startswith("{")]
    process.stdout.close()
    if not lines:
        raise LoadgenError(f"loadgen exited {process.returncode} without a result:\n{stderr}")
    return LoadgenRun(json.loads(lines[-1]), stderr, wall)


def _read_log(stream: IO[str], log: list[str], on_phase: Callable[[str], None] | None) -> None:
    for line in stream:
        if line.startswith("loadgen: measur"):
            if on_phase is not None:
                on_phase(line.split(":", 1)[1].strip())
        else:
            log.append(line)
    stream.close()


def start_mock(port: int, batch: int, cpu: int | None) -> subprocess.Popen[bytes]:
    """The trivial fan-out source used to measure the generator's own ceiling."""
    command = [str(build()), "--mode", "mock", "--listen", str(port), "--batch", str(batch)]
    quiet = subprocess.DEVNULL
    return subprocess.Popen(command, stdout=quiet, stderr=quiet, preexec_fn=system.pinning(cpu))
