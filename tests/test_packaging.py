"""The release wheel: `python -m build` makes one that installs into a fresh virtualenv (no
checkout, no test extras) and whose `reverb-py start` serves `/up`.

The README's install command (`pip install .` into a new venv, tests/test_docs_commands.py)
already builds in an isolated environment from `[build-system]` and bootstraps pip into a venv;
this test checks the wheel itself, so it builds with the suite's locked setuptools and installs
with the suite's pip into a venv made without one, which is much quicker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from reverb_py import __version__
from tests.replicas import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent

# What a build needs from the checkout, and nothing else: a wheel that only works next to the
# source tree would pass a test run from the tree.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "reverb_py")


def test_wheel_installs_and_starts_in_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    shutil.rmtree(source / "reverb_py" / "__pycache__", ignore_errors=True)
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    subprocess.run(
        [*build, "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"reverb_py-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"reverb_py-{__version__}.dist-info/METADATA").decode()
    assert f"reverb_py-{__version__}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]
    for field in ("License-Expression: MIT", "Requires-Python: >=3.11", "Author: "):
        assert field in metadata, field
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    subprocess.run(
        [*install, "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    executable = venv / "bin" / "reverb-py"
    version = subprocess.run(
        [str(executable), "--version"], check=True, capture_output=True, text=True, timeout=60
    )
    assert __version__ in version.stdout

    port = free_port()
    server = subprocess.Popen(
        [str(executable), "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,  # not the checkout: nothing may be imported from the source tree
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/up", timeout=30)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert str(venv) in _imported_from(venv)


def _imported_from(venv: Path) -> str:
    """Where the venv's interpreter finds the package (must be its site-packages)."""
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import reverb_py; print(reverb_py.__file__)"],
        cwd=venv,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
