"""Starting and stopping the servers under test, each pinned to one CPU.

Every run gets a freshly started server, so that memory and CPU figures belong to that run alone.
Both servers use the same app credentials, so the generator needs no per-server settings.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks import system

APP_ID, APP_KEY, APP_SECRET = "app-id", "app-key", "app-secret"
SOKETI_SCRIPT = Path(
    os.environ.get("SOKETI_START", Path(__file__).resolve().parent / "soketi" / "start.sh")
)
SOKETI_WORKDIR = Path(os.environ.get("SOKETI_WORKDIR", "/tmp/soketi-peer"))
MANAGED = ("reverb-py", "soketi")
TREES = system.REPO / "benchmarks" / "build" / "trees"


class ServerError(RuntimeError):
    """A server did not come up."""


@dataclass
class Target:
    """A server to benchmark: one we start ourselves, or an address someone else runs."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    pid: int = 0  # for an external server: its pid, if known, for RSS and CPU figures

    @property
    def managed(self) -> bool:
        return self.name in MANAGED or self.revision is not None

    @property
    def revision(self) -> str | None:
        """`REV` of a `reverb-py@REV` target: reverb-py as it was at that git revision."""
        server, at, revision = self.name.partition("@")
        return revision if server == "reverb-py" and at else None


@dataclass
class Running:
    target: Target
    port: int
    pid: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    log_file: IO[bytes] | None = None

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def parse_targets(spec: str, external_pid: int) -> list[Target]:
    """`reverb-py`, `soketi`, `both`, `reverb-py@REV` (the server as it was at a git revision,
    for a same-run before/after comparison), `HOST:PORT` of a server that is already running,
    or several of these separated by commas."""
    targets: list[Target] = []
    for part in spec.split(","):
        if part == "both":
            targets += [Target("reverb-py"), Target("soketi")]
        elif part in MANAGED:
            targets.append(Target(part))
        elif part.startswith("reverb-py@"):
            target = Target(part)
            checkout(target.revision or "")
            targets.append(target)
        else:
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit():
                raise SystemExit(
                    "--server must be reverb-py, soketi, both, reverb-py@REV or HOST:PORT "
                    f"(comma-separated), not {part!r}"
                )
            targets.append(Target(part, host, int(port), external_pid))
    return targets


def resolve(revision: str) -> str:
    """The full commit id of a git revision of this repository."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
            cwd=system.REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"reverb-py@{revision}: not a commit of this repository") from None


def checkout(revision: str) -> Path:
    """`reverb_py/` as it was at `revision`, extracted once under benchmarks/build/trees.

    The server then runs from that folder with the current interpreter and its installed
    dependencies: a revision that needs other dependencies than the current one will not start.
    """
    commit = resolve(revision)
    tree = TREES / commit[:12]
    if not (tree / "reverb_py").is_dir():
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "reverb_py"],
            cwd=system.REPO,
            capture_output=True,
            check=True,
        ).stdout
        partial = tree.with_suffix(".partial")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        partial.replace(tree)
    return tree


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(target: Target, port: int) -> tuple[list[str], Path, str, float]:
    """The command line, its working folder, the readiness path and how long the first start
    may take. `python -m` puts the working folder first on the module path, so a
    `reverb-py@REV` server imports the package extracted for that revision."""
    if target.name == "reverb-py" or target.revision is not None:
        command = [sys.executable, "-m", "reverb_py", "start", "--host", "127.0.0.1"]
        folder = system.REPO if target.revision is None else checkout(target.revision)
        return [*command, "--port", str(port)], folder, "/up", 30.0
    if not SOKETI_SCRIPT.exists():
        raise ServerError(f"soketi start script not found: {SOKETI_SCRIPT} (set SOKETI_START)")
    # the first start installs soketi from npm
    return ["bash", str(SOKETI_SCRIPT), str(port)], system.REPO, "/", 240.0


def start(target: Target, cpu: int | None, env: dict[str, str], log_dir: Path) -> Running:
    """Starts a managed server pinned to `cpu` and waits until it answers HTTP."""
    if not target.managed:
        return Running(target, target.port, target.pid)
    port = free_port()
    command, folder, ready_path, timeout = _command(target, port)
    environ = {
        **os.environ,
        "REVERB_APP_ID": APP_ID,
        "REVERB_APP_KEY": APP_KEY,
        "REVERB_APP_SECRET": APP_SECRET,
        **env,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = target.name.replace("/", "_")
    log = Path(tempfile.mkstemp(prefix=f"{prefix}-", suffix=".log", dir=log_dir)[1])
    log_file = log.open("wb")
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        preexec_fn=system.pinning(cpu),
    )
    # taskset-style pinning and `exec node` in start.sh keep this pid the server's own
    running = Running(target, port, process.pid, process, log, log_file)
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{ready_path}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise ServerError(f"{target.name} exited with {code}:\n{running.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return running
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    stop(running, keep_log=True)
    raise ServerError(f"{target.name} not ready after {timeout:.0f} s:\n{running.log_tail()}")


def stop(running: Running, keep_log: bool = False) -> None:
    """SIGTERM, then SIGKILL after 15 s; only ever the process this module started.

    The server's log is deleted unless asked for: it only matters when a run went wrong.
    """
    process = running.process
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if running.log_file is not None:
        running.log_file.close()
    if running.log is not None and not keep_log:
        running.log.unlink(missing_ok=True)


def versions(targets: list[Target]) -> dict[str, str]:
    """What was measured: the reverb-py commits and the installed soketi version."""
    found = {"reverb-py": system.git_commit()}
    for target in targets:
        if target.revision is not None:
            found[target.name] = resolve(target.revision)[:12]
    package = SOKETI_WORKDIR / "node_modules" / "@soketi" / "soketi" / "package.json"
    try:
        found["soketi"] = json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        found["soketi"] = "not installed yet"
    return found
