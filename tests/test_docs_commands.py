"""Every shell block marked runnable in README.md and docs/ runs, so a documented command cannot
silently break. The convention is in CONTRIBUTING.md ("Runnable examples in the docs").

Each document's runnable blocks run in order, in one temporary copy of the checkout, with every
port the docs use (8080, 6390, ...) replaced by a free loopback port, under a timeout. Whatever a
block starts runs in its own process group, which the test ends afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.replicas import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The ports the docs use; each is replaced by a free one, consistently within a document.
DOC_PORTS = ("8080", "8081", "8082", "8083", "6390", "9601")
# Ports among those on which a `serves` block's server answers HTTP (/up).
HTTP_PORTS = ("8080", "8081", "8082", "8083")
TIMEOUT = 300.0  # a block that installs the package into a fresh venv takes ~30 s here
NOT_COPIED = (".git", ".venv", "node_modules", "__pycache__", "*.egg-info", "build", "dist")

_FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    language: str
    options: dict[str, str]
    text: str

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def runnable_blocks(document: Path) -> list[Block]:
    """Fenced blocks whose info string holds the word `runnable`, e.g. "```sh runnable serves"
    or "```toml runnable file=reverb.toml"."""
    blocks: list[Block] = []
    lines = document.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        language, info = match.group(1), match.group(2).split()
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if "runnable" in info:
            options = dict(word.partition("=")[::2] for word in info if word != "runnable")
            text = "\n".join(lines[index + 1 : end]) + "\n"
            blocks.append(Block(document, index + 1, language, options, text))
        index = end + 1
    return blocks


def test_the_docs_have_runnable_blocks() -> None:
    """The reading above must find the blocks, or every test below passes by running nothing."""
    found = {block.document.name for doc in DOCUMENTS for block in runnable_blocks(doc)}
    assert {"README.md", "configuration.md", "scaling.md"} <= found, found
    readme = runnable_blocks(ROOT / "README.md")
    assert "serves" in readme[0].options, "README's first command is the one that must run"


def _checkout_copy(directory: Path, creates_venv: bool) -> None:
    shutil.copytree(ROOT, directory, ignore=shutil.ignore_patterns(*NOT_COPIED))
    if not creates_venv:  # blocks written as `.venv/bin/reverb-py` use the suite's venv
        (directory / ".venv").symlink_to(sys.prefix)


def _environment(ports: dict[str, int]) -> dict[str, str]:
    """The test's environment without its REVERB_*/REDIS_* settings; a server started without
    --port listens on the free port standing in for 8080, and only on loopback. The test stops
    what a block started with SIGTERM: a scaled-out server would drain for 10 s first, which
    only makes the test wait, so the drain is off."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REVERB_", "REDIS_"))}
    environ["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    environ["REVERB_SERVER_HOST"] = "127.0.0.1"
    environ["REVERB_SERVER_PORT"] = str(ports["8080"])
    environ["REVERB_DRAIN_SECONDS"] = "0"
    return environ


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/up", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_group(process: subprocess.Popen[str]) -> None:
    """End the block's process group: the shell and everything it started, `&` included."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 20
        try:
            os.killpg(process.pid, sig)
            while time.monotonic() < deadline:
                process.poll()  # reap the shell, or the group never empties
                os.killpg(process.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            return


def _run(block: Block, text: str, directory: Path, ports: dict[str, int]) -> None:
    log = directory / f".block-{block.line}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=directory,
            env=_environment(ports),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, ended below
        )
        try:
            _check(block, text, process, ports, log)
        finally:
            _stop_group(process)


def _check(
    block: Block,
    text: str,
    process: subprocess.Popen[str],
    ports: dict[str, int],
    log: Path,
) -> None:
    deadline = time.monotonic() + TIMEOUT
    if "serves" in block.options:
        # The ports the block names, or the default one it gets from the environment.
        http = [ports[p] for p in HTTP_PORTS if str(ports[p]) in text] or [ports["8080"]]
        while not all(_answers(port) for port in http):
            code = process.poll()
            assert code in (None, 0), f"{block} exited {code} before serving:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{block} did not serve:\n{log.read_text()}"
            time.sleep(0.2)
        return
    expected = int(block.options.get("exit", "0"))
    try:
        code = process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block} still running after {TIMEOUT} s:\n{log.read_text()}")
    assert code == expected, f"{block} exited {code}, expected {expected}:\n{log.read_text()}"


@pytest.mark.parametrize(
    "document",
    [doc for doc in DOCUMENTS if runnable_blocks(doc)],
    ids=lambda doc: doc.name,
)
def test_runnable_blocks(document: Path, tmp_path: Path) -> None:
    blocks = runnable_blocks(document)
    ports = {port: free_port() for port in DOC_PORTS}
    pattern = re.compile(rf"(?<!\d)({'|'.join(DOC_PORTS)})(?!\d)")

    def with_free_ports(text: str) -> str:
        return pattern.sub(lambda match: str(ports[match.group(1)]), text)

    directory = tmp_path / "checkout"
    _checkout_copy(directory, creates_venv=any("-m venv" in block.text for block in blocks))
    for block in blocks:
        text = with_free_ports(block.text)
        if "file" in block.options:
            (directory / block.options["file"]).write_text(text, encoding="utf-8")
        else:
            assert block.language in ("sh", "bash"), f"{block}: runnable needs sh or file=NAME"
            _run(block, text, directory, ports)


def _markdown_files() -> list[Path]:
    skipped = {"node_modules", ".venv", ".git", "results"}
    return [
        path
        for path in ROOT.rglob("*.md")
        if not skipped.intersection(path.relative_to(ROOT).parts)
    ]


def test_docs_point_only_at_files_in_the_repository() -> None:
    """Relative links resolve inside the checkout, and no doc names a path on the machine it
    was written on (a fresh clone has neither)."""
    broken = []
    for path in _markdown_files():
        text = path.read_text(encoding="utf-8")
        if "/work/" in text:
            broken.append(f"{path.relative_to(ROOT)}: names a path outside the repository")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):  # a URL or an anchor in the same page
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
                broken.append(f"{path.relative_to(ROOT)}: link to {target}")
    assert not broken, "\n".join(broken)
