"""The address file: the container health check finds the server however its port was set.

The server runs as a real process through the CLI, configured each way a deployment can set
the port (a flag, --env-file, --config, the environment); the health-check script runs as its
own process, as the container runtime runs it, seeing only REVERB_ADDRESS_FILE and a decoy
REVERB_SERVER_PORT that points nowhere. Without the address file it would probe the decoy and
report a healthy server unhealthy forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.replicas import ROOT, free_port, wait_for

HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "REDIS_"))}


def _start(tmp_path: Path, way: str, port: int, address_file: Path) -> subprocess.Popen[bytes]:
    env = {
        **_clean_env(),
        "REVERB_APP_ID": "1",
        "REVERB_APP_KEY": "key",
        "REVERB_APP_SECRET": "secret",
        "REVERB_SERVER_HOST": "127.0.0.1",
        "REVERB_DRAIN_SECONDS": "0",
        "REVERB_ADDRESS_FILE": str(address_file),
    }
    args = ["start"]
    if way == "flag":
        args += ["--port", str(port)]
    elif way == "env-file":
        (tmp_path / ".env").write_text(f'REVERB_SERVER_PORT="{port}"\n')
        args += ["--env-file", str(tmp_path / ".env")]
    elif way == "config":
        (tmp_path / "reverb.toml").write_text(f"[server]\nport = {port}\n")
        args += ["--config", str(tmp_path / "reverb.toml")]
    else:
        env["REVERB_SERVER_PORT"] = str(port)
    return subprocess.Popen(
        [sys.executable, "-m", "reverb_py", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _healthcheck(env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={**_clean_env(), **env}, timeout=30
    ).returncode


@pytest.mark.parametrize("way", ["flag", "env-file", "config", "environment"])
def test_health_check_finds_the_port_however_it_was_configured(tmp_path: Path, way: str) -> None:
    port, decoy = free_port(), free_port()
    address_file = tmp_path / "run" / "address.json"
    server = _start(tmp_path, way, port, address_file)
    try:
        wait_for(f"http://127.0.0.1:{port}/up")
        record = orjson.loads(address_file.read_bytes())
        assert record == {"host": "127.0.0.1", "port": port, "path": "", "tls": False}
        probe_env = {"REVERB_ADDRESS_FILE": str(address_file), "REVERB_SERVER_PORT": str(decoy)}
        assert _healthcheck(probe_env) == 0
        # A proxy meant for the container's outbound calls is not used for the loopback probe.
        dead_proxy = "http://127.0.0.1:9"
        assert _healthcheck({**probe_env, "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy}) == 0
        # The decoy alone (no address file) finds nothing: the file is what made it healthy.
        assert _healthcheck({"REVERB_SERVER_PORT": str(decoy)}) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
    assert not address_file.exists(), "the server removes its address file at exit"


def test_an_unwritable_address_file_does_not_stop_the_server(tmp_path: Path) -> None:
    port = free_port()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    server = _start(tmp_path, "flag", port, blocker / "address.json")
    try:
        wait_for(f"http://127.0.0.1:{port}/up")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
