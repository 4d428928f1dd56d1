"""Consistency checks for the deployment files: Dockerfile, .dockerignore and deploy/.

Nothing else in the suite runs these files, and this machine has no Docker engine or Kubernetes
cluster, so their mistakes would only show in production: a Service whose selector misses the
pods, an Ingress that routes /app but not /apps (the backend's broadcasts then 404), a drain
window longer than the grace period (clients are SIGKILLed instead of told to reconnect), or an
environment variable the server never reads. Each test here checks one such relation between
two files and fails, naming both, when they disagree.
"""

from __future__ import annotations

import ast
import http.server
import importlib.util
import json
import re
import socket
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"

# Names a deploy file may set although the server does not read them itself.
NOT_FOR_THE_SERVER = {"REDISCLI_AUTH"}  # read by redis-cli in the Redis container's probes

# After the drain window the server waits up to 5 s for the last close handshakes
# (reverb_py/server.py, STUCK_CLOSING_SECONDS), then flushes webhooks (2 s at most) and the
# operations queued for the other replicas (2 s at most) before it exits: the kill deadline
# must allow it.
SHUTDOWN_TAIL_SECONDS = 9


# ---------------------------------------------------------------------------------------------
# Loading helpers


def _yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomization deploys, keyed by (kind, name)."""
    kustomization = _yaml_docs(K8S / "kustomization.yaml")[0]
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in _yaml_docs(K8S / resource):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{resource}: {key} is defined twice"
            objects[key] = doc
    return objects


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return _k8s_objects()


def _one(k8s: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in k8s.items() if k == kind]
    assert found, f"deploy/kubernetes has no {kind}"
    return found[0]


def _server_deployment(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The Deployment that runs reverb-py (the one whose Service the Ingress routes to)."""
    deployment = k8s.get(("Deployment", "reverb-py"))
    assert deployment is not None, "deploy/kubernetes has no Deployment named reverb-py"
    return deployment


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: expected one container"
    return containers[0]


def _config(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The server's environment as the Deployment assembles it (envFrom ConfigMaps and Secrets
    in order, then plain env)."""
    container = _container(_server_deployment(k8s))
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            env.update(_secret_data(k8s[("Secret", source["secretRef"]["name"])]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def _secret_source(
    k8s: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any], name: str
) -> tuple[str, str] | None:
    """(Secret, key) that sets the variable `name` in the container, if a Secret does."""
    for item in container.get("env", []):
        if item["name"] == name:
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            return (ref["name"], ref["key"]) if ref else None
    found = None
    for source in container.get("envFrom", []):  # later sources win
        secret_name = source.get("secretRef", {}).get("name")
        if secret_name and name in _secret_data(k8s.get(("Secret", secret_name), {})):
            found = (secret_name, name)
    return found


def _path_prefix(config: dict[str, str]) -> str:
    """REVERB_SERVER_PATH as the server normalises it: "" or "/segment" without a trailing /."""
    prefix = config.get("REVERB_SERVER_PATH", "").strip().strip("/")
    return f"/{prefix}" if prefix else ""


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe's or Service's port (a number or a port name) to a container port."""
    for item in container.get("ports", []):
        if port in (item["containerPort"], item.get("name")):
            return item["containerPort"]
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def _compose() -> dict[str, Any]:
    return _yaml_docs(COMPOSE)[0]


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: str(value) for key, value in env.items()}


def _reverb_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Compose services that run the reverb-py image (built from the repository's Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict)
        and (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    }


def _seconds(duration: str | int) -> float:
    """A compose duration ("15s", "1m30s", 20) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _server_env_names() -> set[str]:
    """Every REVERB_* / REDIS_* name that appears as a string literal in the server's code.

    Read from the source rather than from a list kept here, so that renaming or dropping a
    setting in reverb_py/ makes this file fail until the deploy files follow.
    """
    names: set[str] = set()
    for path in (ROOT / "reverb_py").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"(REVERB|REDIS)_[A-Z0-9_]+", node.value)
            ):
                names.add(node.value)
    assert names, "found no REVERB_*/REDIS_* names in reverb_py/: is the config loader missing?"
    return names


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"expected JSON exec form, got {arguments!r}"
    return value


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :]


def _dockerignore_excludes(path: str) -> bool:
    """Whether Docker's .dockerignore rules leave `path` (relative, /-separated) out.

    Docker matches each pattern against the path and against each of its parent directories;
    the last matching pattern wins, and `!` re-includes.
    """
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            elif pattern[index] == "[":
                end = pattern.index("]", index)
                regex += pattern[index : end + 1]
                index = end + 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        rules.append((re.compile(regex), negate))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_is_multi_stage_on_a_slim_python_base() -> None:
    instructions = _dockerfile()
    froms = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "Dockerfile: build in one stage, copy into a runtime stage"
    args = dict(
        arguments.split("=", 1)
        for keyword, arguments in instructions
        if keyword == "ARG" and "=" in arguments
    )
    final_base = froms[-1].split()[0]
    for name, value in args.items():
        final_base = final_base.replace(f"${{{name}}}", value)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", final_base), final_base
    final = _final_stage(instructions)
    copies_from_builder = [a for k, a in final if k == "COPY" and a.startswith("--from=")]
    assert copies_from_builder, "runtime stage copies nothing from the builder stage"


def test_dockerfile_runs_reverb_py_start_as_non_root() -> None:
    final = _final_stage(_dockerfile())
    keywords = dict(final)
    user = keywords.get("USER", "")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {user!r}"
    command = _exec_form(keywords.get("ENTRYPOINT", "[]")) + _exec_form(keywords.get("CMD", "[]"))
    assert command[:2] == ["reverb-py", "start"], command
    assert keywords.get("STOPSIGNAL") == "SIGTERM"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^reverb-py\s*=\s*"reverb_py\.cli:main"', pyproject, re.M), (
        "the image runs the `reverb-py` console script, which pyproject.toml must define"
    )


def test_dockerfile_exposes_the_port_kubernetes_and_compose_use(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, arguments in _final_stage(_dockerfile())
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    container_port = _container_port(_container(_server_deployment(k8s)), "http")
    assert container_port in exposed, f"EXPOSE {exposed} vs containerPort {container_port}"
    for name, service in _reverb_services(_compose()).items():
        port = int(_compose_env(service).get("REVERB_SERVER_PORT", "8080"))
        assert port in exposed, f"compose {name} listens on {port}, image exposes {exposed}"


def test_dockerfile_healthcheck_runs_the_shipped_stdlib_script() -> None:
    final = _final_stage(_dockerfile())
    healthchecks = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1, "runtime stage needs exactly one HEALTHCHECK"
    command = _exec_form(healthchecks[0].split("CMD", 1)[1].strip())
    assert command[0] == "python", "slim images have no curl/wget: use python"
    copied = {}
    for keyword, arguments in final:
        if keyword == "COPY" and not arguments.startswith("--from="):
            source, destination = arguments.split()
            copied[destination] = source
    assert command[1] in copied, f"HEALTHCHECK runs {command[1]}, which no COPY puts there"
    assert ROOT / copied[command[1]] == HEALTHCHECK
    assert "/up" in HEALTHCHECK.read_text(encoding="utf-8")


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context() -> None:
    for keyword, arguments in _dockerfile():
        if keyword != "COPY" or arguments.startswith("--from="):
            continue
        *sources, _destination = arguments.split()
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"Dockerfile: COPY {source}: no such file in the repository"
            assert not _dockerignore_excludes(source), f".dockerignore excludes {source}"
            if path.is_dir():
                for file in path.rglob("*.py"):
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative:
                        assert not _dockerignore_excludes(relative), relative


@pytest.mark.parametrize(
    "path", [".env", ".git/config", ".venv/bin/python", "tests/test_x.py", "x/y.pem"]
)
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context(path: str) -> None:
    assert _dockerignore_excludes(path), f".dockerignore lets {path} into the build context"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher above is what the two tests before rely on; pin its behaviour."""
    assert _dockerignore_excludes("reverb_py/__pycache__/x.cpython-312.pyc")
    assert not _dockerignore_excludes("reverb_py/pusher/auth.py")
    assert not _dockerignore_excludes("deploy/docker/healthcheck.py")
    assert _dockerignore_excludes("deploy/kubernetes/secret.yaml")


# ---------------------------------------------------------------------------------------------
# The dependency locks the image and the test suite install


def _locked(path: Path) -> dict[str, str]:
    """name -> pinned version of a lock written by scripts/lock.sh (markers ignored)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ()), ("requirements-test.lock", ("test",))]
)
def test_locks_pin_every_dependency_of_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = list(pyproject["build-system"]["requires"]) + pyproject["project"]["dependencies"]
    for extra in extras:
        wanted += pyproject["project"]["optional-dependencies"][extra]
    pins = _locked(ROOT / lock)
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {name}: run `bash scripts/lock.sh`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, pyproject.toml wants {text}: "
            "run `bash scripts/lock.sh`"
        )


# ---------------------------------------------------------------------------------------------
# The health-check script the image runs


def _load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reverb_py_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_probes_where_the_server_listens() -> None:
    healthcheck = _load_healthcheck()

    def probe_url(env: dict[str, str], path: str = "/up") -> str:
        return healthcheck.probe_url(healthcheck.address_from_env(env), path)

    assert probe_url({}) == "http://127.0.0.1:8080/up"
    assert probe_url({"REVERB_SERVER_HOST": "0.0.0.0", "REVERB_SERVER_PORT": "9000"}) == (
        "http://127.0.0.1:9000/up"
    )
    assert probe_url({"REVERB_SERVER_HOST": "::"}) == "http://127.0.0.1:8080/up"
    assert probe_url({"REVERB_SERVER_HOST": "10.1.2.3"}) == "http://10.1.2.3:8080/up"
    assert probe_url({"REVERB_SERVER_HOST": "fd00::1"}) == "http://[fd00::1]:8080/up"
    assert probe_url({"REVERB_TLS_CERT": "/tls/tls.crt"}, "/ready") == (
        "https://127.0.0.1:8080/ready"
    )
    assert probe_url({"REVERB_SERVER_PATH": "/reverb/"}) == "http://127.0.0.1:8080/reverb/up"


def test_healthcheck_prefers_the_address_file_and_falls_back_to_the_environment(
    tmp_path: Path,
) -> None:
    healthcheck = _load_healthcheck()
    file = tmp_path / "address.json"
    env = {"REVERB_ADDRESS_FILE": str(file), "REVERB_SERVER_PORT": "9000"}
    assert healthcheck.probe_url(healthcheck.find_address(env)) == "http://127.0.0.1:9000/up"
    file.write_text('{"host": "::", "port": 9100, "path": "/reverb", "tls": true}')
    assert healthcheck.probe_url(healthcheck.find_address(env)) == (
        "https://127.0.0.1:9100/reverb/up"
    )
    # Anything else than the server's own record is ignored, never trusted half-way.
    for garbage in (
        "{",
        "[]",
        '{"host": "::", "port": "9100", "path": "", "tls": false}',
        "x" * 9000,
    ):
        file.write_text(garbage)
        assert healthcheck.find_address(env).port == 9000, garbage


@pytest.fixture
def fake_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A loopback HTTP server whose status for each path the test sets."""
    statuses: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = statuses.get(self.path, 404)
            body = b'{"health":"OK"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], statuses
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_exit_status_follows_the_http_status(
    fake_server: tuple[int, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, statuses = fake_server
    healthcheck = _load_healthcheck()
    monkeypatch.setenv("REVERB_SERVER_HOST", "0.0.0.0")
    monkeypatch.setenv("REVERB_SERVER_PORT", str(port))
    monkeypatch.delenv("REVERB_TLS_CERT", raising=False)
    statuses["/up"] = 200
    assert healthcheck.main(["healthcheck.py"]) == 0
    statuses["/up"] = 503  # /up never answers 503, but a wrong port might hit something that does
    assert healthcheck.main(["healthcheck.py"]) == 1
    statuses["/up"] = 204  # only 200 is the server's answer; anything else is something else
    assert healthcheck.main(["healthcheck.py"]) == 1
    statuses["/ready"] = 200
    assert healthcheck.main(["healthcheck.py", "/ready"]) == 0


def test_healthcheck_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    monkeypatch.setenv("REVERB_SERVER_PORT", str(free_port))
    monkeypatch.delenv("REVERB_SERVER_HOST", raising=False)
    monkeypatch.delenv("REVERB_TLS_CERT", raising=False)
    assert _load_healthcheck().main(["healthcheck.py"]) == 1


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert K8S / "kustomization.yaml" in files and COMPOSE in files
    for path in files:
        docs = _yaml_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            if path.parent == K8S and path.name != "kustomization.yaml":
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
                assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    kustomization = _yaml_docs(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk, f"kustomization resources {listed} vs files {on_disk}"
    image = _container(_server_deployment(_k8s_objects()))["image"]
    names = {entry["name"] for entry in kustomization.get("images", [])}
    assert image.split(":")[0] in names, f"kustomization images: does not rewrite {image}"


def test_service_selects_the_server_pods_and_only_them(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    service = k8s[("Service", "reverb-py")]
    selector = service["spec"]["selector"]
    deployment = _server_deployment(k8s)
    assert _selects(selector, _pod_labels(deployment)), "Service selector misses the pods"
    assert _selects(deployment["spec"]["selector"]["matchLabels"], _pod_labels(deployment))
    for (kind, name), doc in k8s.items():
        if kind == "Deployment" and name != "reverb-py":
            assert not _selects(selector, _pod_labels(doc)), f"Service also selects {name} pods"


def test_every_service_target_port_is_a_container_port(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for (kind, name), service in k8s.items():
        if kind != "Service":
            continue
        targets = [
            doc
            for (k, _), doc in k8s.items()
            if k == "Deployment" and _selects(service["spec"]["selector"], _pod_labels(doc))
        ]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        container = _container(targets[0])
        for port in service["spec"]["ports"]:
            _container_port(container, port.get("targetPort", port["port"]))


def test_server_listens_on_the_port_the_container_declares(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = _config(k8s)
    container = _container(_server_deployment(k8s))
    assert _container_port(container, "http") == int(config.get("REVERB_SERVER_PORT", "8080"))
    assert config.get("REVERB_SERVER_HOST", "0.0.0.0") in ("0.0.0.0", "::")


def test_probes_hit_the_health_endpoints_on_the_server_port(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    container = _container(_server_deployment(k8s))
    config = _config(k8s)
    server_port = int(config.get("REVERB_SERVER_PORT", "8080"))
    prefix = _path_prefix(config)  # the server serves /up and /ready under its path prefix
    expected = {
        "readinessProbe": f"{prefix}/ready",
        "livenessProbe": f"{prefix}/up",
        "startupProbe": f"{prefix}/up",
    }
    for probe_name, path in expected.items():
        probe = container.get(probe_name)
        if probe is None and probe_name == "startupProbe":
            continue
        assert probe is not None, f"Deployment has no {probe_name}"
        assert probe["httpGet"]["path"] == path, f"{probe_name} should GET {path}"
        assert _container_port(container, probe["httpGet"]["port"]) == server_port


def test_ingress_routes_websockets_and_the_http_api_to_the_service(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    ingress = _one(k8s, "Ingress")
    service = k8s[("Service", "reverb-py")]
    service_ports = {p["port"] for p in service["spec"]["ports"]} | {
        p["name"] for p in service["spec"]["ports"] if "name" in p
    }
    prefix = _path_prefix(_config(k8s))
    routed = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "reverb-py", f"Ingress path {path['path']} -> {backend}"
            port = backend["port"].get("number", backend["port"].get("name"))
            assert port in service_ports, (
                f"Ingress names port {port!r}, Service has {service_ports}"
            )
            assert path["pathType"] == "Prefix", path
            routed.add(path["path"])
    # Kubernetes Prefix matching is per path segment: /app does not cover /apps (and the
    # backend's broadcasts go to /apps/{id}/events), so both must be listed.
    assert {f"{prefix}/app", f"{prefix}/apps"} <= routed, routed


def test_ingress_host_is_the_public_hostname_and_has_tls(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    ingress = _one(k8s, "Ingress")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert _config(k8s).get("REVERB_HOST") in hosts, "REVERB_HOST differs from the Ingress host"
    tls_hosts = {host for entry in ingress["spec"].get("tls", []) for host in entry["hosts"]}
    assert hosts <= tls_hosts, "every Ingress host needs TLS (wss://)"


def test_ingress_timeouts_outlast_the_heartbeat(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """nginx closes a proxied socket after proxy-read-timeout of silence from the server."""
    annotations = _one(k8s, "Ingress")["metadata"]["annotations"]
    config = _config(k8s)
    # A healthy but quiet socket: the server pings after the ping interval of silence and waits
    # the pong timeout for an answer.
    heartbeat = float(config.get("REVERB_APP_PING_INTERVAL", "60")) + float(
        config.get("REVERB_APP_PONG_TIMEOUT", "30")
    )
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        value = annotations.get(f"nginx.ingress.kubernetes.io/{name}")
        assert value is not None, f"Ingress lacks {name} (ingress-nginx default is 60 s)"
        assert float(value) > 2 * heartbeat, f"{name}={value}s is too short for WebSockets"


def test_secret_and_configmap_references_resolve(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for (kind, name), doc in k8s.items():
        if kind != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                for ref_kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in source:
                        target = source[field]["name"]
                        assert (ref_kind, target) in k8s, f"{name}: envFrom {ref_kind} {target}"
            for item in container.get("env", []):
                value_from = item.get("valueFrom", {})
                for ref_kind, field, data_field in (
                    ("Secret", "secretKeyRef", "stringData"),
                    ("ConfigMap", "configMapKeyRef", "data"),
                ):
                    if field in value_from:
                        ref = value_from[field]
                        target = k8s.get((ref_kind, ref["name"]))
                        assert target is not None, f"{name}: {item['name']} -> {ref['name']}"
                        keys = set(target.get(data_field, {})) | set(target.get("data", {}))
                        assert ref["key"] in keys, f"{name}: {ref['name']} has no {ref['key']}"


def test_secret_values_are_marked_placeholders(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Credentials committed to the repository must be obviously fake, never real-looking."""
    for (kind, name), doc in k8s.items():
        if kind != "Secret":
            continue
        assert "data" not in doc, f"Secret {name}: use stringData placeholders, not base64 data"
        for key, value in doc["stringData"].items():
            assert "REPLACE_ME" in value, f"Secret {name}: {key} is not a marked placeholder"


def test_every_env_name_in_kubernetes_is_read_by_the_server(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    known = _server_env_names() | NOT_FOR_THE_SERVER
    deployment = _server_deployment(k8s)
    names = set(_config(k8s)) | {item["name"] for item in _container(deployment).get("env", [])}
    unknown = names - known
    assert not unknown, f"the server reads none of {sorted(unknown)}"
    required = {"REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET"}
    assert required <= names, f"Deployment lacks {sorted(required - names)}"


def test_replicas_are_linked_through_the_bundled_redis(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = _config(k8s)
    assert config.get("REVERB_SCALING_ENABLED") == "true", "replicas must share events via Redis"
    service = k8s.get(("Service", config.get("REDIS_HOST", "")))
    assert service is not None, f"REDIS_HOST={config.get('REDIS_HOST')} names no Service"
    assert int(config.get("REDIS_PORT", "6379")) in {p["port"] for p in service["spec"]["ports"]}
    redis = [
        doc
        for (kind, _), doc in k8s.items()
        if kind == "Deployment" and _selects(service["spec"]["selector"], _pod_labels(doc))
    ]
    assert len(redis) == 1, "the Redis Service must select exactly the Redis pods"
    # Both sides must use the same password: the server's REDIS_PASSWORD and redis-server's.
    server_ref = _secret_source(k8s, _container(_server_deployment(k8s)), "REDIS_PASSWORD")
    redis_container = _container(redis[0])
    redis_ref = _secret_source(k8s, redis_container, "REDIS_PASSWORD")
    assert server_ref is not None and server_ref == redis_ref, (server_ref, redis_ref)
    assert "--requirepass" in redis_container.get("args", []), "Redis must require the password"


def test_grace_period_covers_prestop_and_drain(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pod = _server_deployment(k8s)["spec"]["template"]["spec"]
    container = _container(_server_deployment(k8s))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    drain = float(_config(k8s).get("REVERB_DRAIN_SECONDS", "10"))
    grace = pod["terminationGracePeriodSeconds"]
    needed = pre_stop + drain + SHUTDOWN_TAIL_SECONDS
    assert grace > needed, (
        f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain} + "
        f"{SHUTDOWN_TAIL_SECONDS} s of shutdown tail: the kubelet would SIGKILL the pod "
        "before its clients were told to reconnect"
    )


def test_hpa_and_pdb_target_the_server_deployment(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = _server_deployment(k8s)
    hpa = _one(k8s, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] >= 2, "at least two replicas, so a drain has a fallback"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    metrics = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert "cpu" in metrics
    assert "cpu" in _container(deployment)["resources"]["requests"], "HPA CPU % needs a request"
    # spec.replicas would fight the HPA on every `kubectl apply` (dropping scaled-out pods).
    assert "replicas" not in deployment["spec"], "remove spec.replicas when an HPA owns it"

    pdb = _one(k8s, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(deployment))
    for (kind, name), doc in k8s.items():
        if kind == "Deployment" and name != deployment["metadata"]["name"]:
            assert not _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(doc))
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "PDB blocks all drains"
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1


def test_pods_run_non_root_on_a_read_only_filesystem(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = _server_deployment(k8s)
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    user = dict(_final_stage(_dockerfile()))["USER"].split(":")[0]
    assert str(pod_security["runAsUser"]) == user, "runAsUser differs from the image's USER"
    for (kind, name), doc in k8s.items():
        if kind != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                assert resource in resources["requests"], f"{name}: no {resource} request"
            assert "memory" in resources["limits"], f"{name}: no memory limit"


def test_metrics_port_annotations_and_container_port_agree(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = _config(k8s)
    deployment = _server_deployment(k8s)
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert config.get("REVERB_METRICS_ENABLED") == "true"
    metrics_port = int(config.get("REVERB_METRICS_PORT", config.get("REVERB_SERVER_PORT")))
    assert annotations.get("prometheus.io/scrape") == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations.get("prometheus.io/path") == "/metrics"
    assert _container_port(_container(deployment), metrics_port) == metrics_port


# ---------------------------------------------------------------------------------------------
# docker compose and its nginx


def test_compose_runs_three_replicas_redis_and_one_load_balancer() -> None:
    compose = _compose()
    replicas = _reverb_services(compose)
    assert len(replicas) >= 3, f"expected three reverb-py replicas, got {sorted(replicas)}"
    published = [
        (name, service["ports"])
        for name, service in compose["services"].items()
        if "ports" in service
    ]
    assert len(published) == 1, f"exactly one service should publish a port: {published}"
    lb_name, _ = published[0]
    lb = compose["services"][lb_name]
    mounts = [volume.split(":") for volume in lb.get("volumes", [])]
    assert any(
        (COMPOSE.parent / source).resolve() == NGINX_CONF and target == "/etc/nginx/nginx.conf"
        for source, target, *_ in mounts
    ), "the load balancer must mount deploy/nginx/nginx.conf"
    for name in replicas:
        depends = lb.get("depends_on", {})
        assert name in depends, f"{lb_name} must wait for {name} (nginx resolves it at start)"


def test_compose_env_names_are_read_by_the_server() -> None:
    known = _server_env_names()
    for name, service in _reverb_services(_compose()).items():
        env = _compose_env(service)
        unknown = set(env) - known
        assert not unknown, f"compose {name}: the server reads none of {sorted(unknown)}"
        assert {"REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET"} <= set(env), name


def test_compose_replicas_share_one_app_and_the_compose_redis() -> None:
    compose = _compose()
    replicas = _reverb_services(compose)
    envs = [_compose_env(service) for service in replicas.values()]
    assert all(env == envs[0] for env in envs), "replicas must run the same configuration"
    env = envs[0]
    assert env.get("REVERB_SCALING_ENABLED") == "true"
    redis_host = env.get("REDIS_HOST")
    assert redis_host in compose["services"], f"REDIS_HOST={redis_host} is no compose service"
    assert "redis" in compose["services"][redis_host]["image"]
    for name, service in replicas.items():
        assert redis_host in service.get("depends_on", {}), f"{name} must wait for Redis"


def test_compose_stop_grace_period_covers_the_drain() -> None:
    for name, service in _reverb_services(_compose()).items():
        drain = float(_compose_env(service).get("REVERB_DRAIN_SECONDS", "10"))
        grace = _seconds(service.get("stop_grace_period", "10s"))  # compose's default is 10 s
        needed = drain + SHUTDOWN_TAIL_SECONDS
        assert grace > needed, f"compose {name}: stop_grace_period {grace}s <= {needed}s"


def _nginx_upstreams() -> dict[str, list[str]]:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text(encoding="utf-8"))
    upstreams = {}
    for match in re.finditer(r"upstream\s+(\S+)\s*\{([^}]*)\}", text):
        upstreams[match.group(1)] = re.findall(r"^\s*server\s+(\S+?)[\s;]", match.group(2), re.M)
    return upstreams


def test_nginx_upstreams_are_the_compose_replicas() -> None:
    upstreams = _nginx_upstreams()
    assert len(upstreams) == 1, upstreams
    ((name, servers),) = upstreams.items()
    replicas = _reverb_services(_compose())
    expected = {
        f"{service}:{_compose_env(config).get('REVERB_SERVER_PORT', '8080')}"
        for service, config in replicas.items()
    }
    assert set(servers) == expected, f"nginx upstream {name}: {servers} vs compose {expected}"
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(rf"proxy_pass\s+http://{re.escape(name)}\s*;", text), "proxy_pass upstream"


def test_nginx_proxies_websocket_upgrades_with_long_timeouts() -> None:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text(encoding="utf-8"))
    assert re.search(r"proxy_http_version\s+1\.1\s*;", text), "WebSockets need HTTP/1.1"
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;", text)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade\s*;", text)
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", text)
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s?\s*;", text)
    assert timeout and int(timeout.group(1)) >= 300, "proxy_read_timeout too short (60 s default)"
    lb = next(s for s in _compose()["services"].values() if "ports" in s)
    listen = re.search(r"listen\s+(\d+)", text)
    assert listen, "nginx.conf has no listen port"
    container_ports = {str(port).split(":")[-1] for port in lb["ports"]}
    assert listen.group(1) in container_ports, f"nginx listens on {listen.group(1)}"


# ---------------------------------------------------------------------------------------------
# Secret keys the docs tell users to set reach the pods


def _documented_secret_keys() -> set[str]:
    """Names the docs and the Secret tell users to put in the Secret: `--from-literal=NAME=`
    anywhere, a name on a line that mentions the Secret, and the Secret's own keys (including
    the commented-out alternatives in secret.yaml)."""
    name = r"\b(?:REVERB|REDIS)_[A-Z0-9_]*[A-Z0-9]\b(?![_*])"
    keys: set[str] = set()
    texts = [path.read_text(encoding="utf-8") for path in (ROOT / "docs").glob("*.md")]
    texts += [(ROOT / "README.md").read_text(encoding="utf-8")]
    for text in texts:
        keys.update(re.findall(rf"--from-literal=({name})=", text))
        for line in text.splitlines():
            if "Secret" in line:
                keys.update(re.findall(name, line))
    secret_file = (K8S / "secret.yaml").read_text(encoding="utf-8")
    keys.update(re.findall(rf"^\s*#?\s*({name}):", secret_file, re.M))
    keys.update(re.findall(rf"--from-literal=({name})=", secret_file))
    return keys


def _kustomize(directory: Path) -> dict[tuple[str, str], dict[str, Any]] | None:
    """A kustomization as kustomize renders it (kubectl's built-in one, or the kustomize
    binary); None when neither is installed."""
    for command in (
        ["kubectl", "kustomize", str(directory)],
        ["kustomize", "build", str(directory)],
    ):
        try:
            output = subprocess.run(
                command, capture_output=True, text=True, check=True, timeout=60
            ).stdout
        except FileNotFoundError:
            continue
        docs = [doc for doc in yaml.safe_load_all(output) if doc is not None]
        return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    return None


def _rendered_k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """deploy/kubernetes rendered by kustomize, or, where it is not installed, as this file's
    own loader reads the kustomization."""
    return _kustomize(K8S) or _k8s_objects()


def test_every_secret_key_the_docs_name_reaches_the_server_pods() -> None:
    documented = _documented_secret_keys()
    # The names this test must find, or its reading of the docs has gone wrong.
    assert {"REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET", "REDIS_URL"} <= documented
    rendered = _rendered_k8s()
    secret_names = {name for kind, name in rendered if kind == "Secret"}
    container = _container(_server_deployment(rendered))
    from_all_keys = {
        source["secretRef"]["name"]
        for source in container.get("envFrom", [])
        if "secretRef" in source
    }
    from_one_key = {
        (ref["name"], ref["key"])
        for item in container.get("env", [])
        if (ref := item.get("valueFrom", {}).get("secretKeyRef"))
    }
    unwired = sorted(
        key
        for key in documented
        if not any(s in from_all_keys or (s, key) in from_one_key for s in secret_names)
    )
    assert not unwired, f"documented as Secret keys but never reach the server pods: {unwired}"


def test_cert_manager_overlay_issues_the_ingress_certificate() -> None:
    overlay = ROOT / "deploy" / "kubernetes-cert-manager"
    rendered = _kustomize(overlay)
    if rendered is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    ingress = _one(rendered, "Ingress")
    issuer_name = ingress["metadata"]["annotations"].get("cert-manager.io/cluster-issuer")
    issuer = rendered.get(("ClusterIssuer", issuer_name))
    assert issuer is not None, f"the Ingress names issuer {issuer_name!r}, the overlay has none"
    assert "namespace" not in issuer["metadata"], "a ClusterIssuer is cluster-scoped"
    solver = issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"]
    assert solver["ingressClassName"] == ingress["spec"]["ingressClassName"]
    assert all(entry.get("secretName") for entry in ingress["spec"]["tls"])
    # Everything else is the base, unchanged.
    base = set(_rendered_k8s())
    assert base <= set(rendered), sorted(base - set(rendered))
