"""Rootful podman for the container tests: stand-in base images, building and running.

No container registry is reachable from the machines this suite runs on, so the images that
the Dockerfile and deploy/compose.yaml name (python:3.12-slim-bookworm, redis, nginx) cannot be
pulled. The stand-ins are built here instead: a Debian bookworm root filesystem made with
`debootstrap --variant=minbase` (python3, python3-venv, python-is-python3, ca-certificates),
imported into podman's storage, and Redis / nginx images built on top of it from Debian's
packages. They stay in podman's storage between runs, so only the first run on a machine pays
for them (about a minute and a half); `podman rmi` one of them to rebuild it.

Facts of these machines that the podman set-up works around: crun refuses the host's cgroup
layout (runc is used), podman's default open-files limit cannot be raised here (the default
is the host's hard limit instead), and without `--format docker` podman drops HEALTHCHECK.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/reverb-py-standin/python:bookworm"
REDIS_IMAGE = "localhost/reverb-py-standin/redis:bookworm"
NGINX_IMAGE = "localhost/reverb-py-standin/nginx:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")

_CONF_DIR = Path(tempfile.gettempdir()) / "reverb-py-podman"


# podman's default rlimits (1048576 open files, 4194304 processes) are above what runc may set
# here. Open files: the host's hard limit. Processes: a modest number (the server is one
# process, and conmon here is itself capped at 32768). A container given any --ulimit loses
# the defaults below, so compose services with `ulimits:` need both.
NPROC_LIMIT = 4096


def nofile_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1_048_576 if hard == resource.RLIM_INFINITY else hard


def containers_conf() -> Path:
    """A containers.conf for this host: runc, and rlimits the host allows."""
    nofile = nofile_limit()
    _CONF_DIR.mkdir(exist_ok=True)
    path = _CONF_DIR / "containers.conf"
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={NPROC_LIMIT}:{NPROC_LIMIT}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    return path


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def unavailable_reason() -> str | None:
    """Why rootful podman cannot run containers here, or None when it can."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.sh installs podman, runc, debootstrap)"
    if os.geteuid() != 0:
        return "the container tests use rootful podman: run them as root"
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman info did not answer: {exc}"
    if info.returncode != 0:
        return f"podman info failed: {info.stderr.strip()[-500:]}"
    return None


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (only package registries are reachable)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for source in sources:
        if not source.is_file():
            continue
        for line in source.read_text(errors="replace").splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                for word in words[1:]:
                    if word.startswith("http") and word.rstrip("/").endswith("/debian"):
                        return word
    return DEFAULT_MIRROR


def ensure_base_image() -> None:
    """The stand-in for python:3.12-slim-bookworm: Debian's own Python 3.11 on minbase.

    It trusts the extra CA certificates the host trusts (a machine may reach PyPI through a
    proxy with its own CA), so that pip in the build reaches the index the host's pip reaches.
    The official base needs none of this."""
    if image_exists(BASE_IMAGE):
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="reverb-py-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={DEBIAN_PACKAGES}",
                DEBIAN_SUITE,
                str(rootfs),
                debian_mirror(),
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        extra = list(HOST_EXTRA_CAS.glob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []
        if extra:
            target = rootfs / "usr/local/share/ca-certificates"
            target.mkdir(parents=True, exist_ok=True)
            for certificate in extra:
                shutil.copy(certificate, target / certificate.name)
            subprocess.run(
                ["chroot", str(rootfs), "update-ca-certificates"],
                check=True,
                capture_output=True,
                timeout=120,
            )
        # Like the slim images: no package cache or lists (apt-get update brings them back).
        for leftover in ("var/cache/apt", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
            (rootfs / leftover).mkdir(parents=True)
        tarball = Path(scratch) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
            check=True,
            timeout=300,
        )
        podman(
            "import",
            "--change",
            'CMD ["python3"]',
            "--change",
            "ENV LANG=C.UTF-8",
            str(tarball),
            BASE_IMAGE,
            timeout=300,
        )


def ensure_service_images() -> None:
    """Stand-ins for the redis and nginx images compose.yaml names, from Debian's packages."""
    ensure_base_image()
    # Like the official redis image, whose entrypoint turns protected mode off when redis-server
    # runs without a configuration file (compose's network is private; the replicas are not on
    # loopback).
    redis_entrypoint = (
        '["sh", "-c", "[ \\"$1\\" = redis-server ] && set -- \\"$@\\" --protected-mode no;'
        ' exec \\"$@\\"", "entrypoint"]'
    )
    recipes = {
        REDIS_IMAGE: ("redis-server", f'ENTRYPOINT {redis_entrypoint}\nCMD ["redis-server"]'),
        NGINX_IMAGE: ("nginx-light", 'CMD ["nginx", "-g", "daemon off;"]'),
    }
    for image, (package, run) in recipes.items():
        if image_exists(image):
            continue
        with tempfile.TemporaryDirectory() as context:
            (Path(context) / "Containerfile").write_text(
                f"FROM {BASE_IMAGE}\n"
                "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
                f" --no-install-recommends {package} >/dev/null && rm -rf /var/lib/apt/lists/*\n"
                f"{run}\n"
            )
            podman("build", "--format", "docker", "-t", image, context, timeout=600)


def host_index_url() -> str | None:
    """The package index the host's pip uses, when it is not PyPI itself."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    result = subprocess.run(
        ["python3", "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def image_id(name: str) -> str | None:
    result = podman("image", "inspect", "--format", "{{.Id}}", name, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def build_image(tag: str, *extra: str) -> None:
    """Build the repository's Dockerfile, unchanged, on the stand-in base. The image the tag
    named before is removed when the build replaced it, so that runs do not pile up images."""
    ensure_base_image()
    previous = image_id(tag)
    args = ["build", "--format", "docker", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"]
    index = host_index_url()
    if index:
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    podman(*args, *extra, "-t", tag, str(ROOT), timeout=900)
    if previous is not None and previous != image_id(tag):
        podman("rmi", previous, check=False)


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
