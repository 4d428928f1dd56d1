"""The layering the architecture promises (docs/architecture.md), checked on the source.

The Pusher protocol layer loads nothing of the I/O stack, and no module of `reverb_py` imports
another that imports it back, not even for type checking or from inside a function: a cycle
is a dependency in both directions, whatever the runtime makes of it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reverb_py"
IO_STACK = ("asyncio", "httptools", "uvloop")
OTHER_LAYERS = ("reverb_py.transport", "reverb_py.hub", "reverb_py.webhooks")


def test_the_protocol_layer_loads_no_io_transport_hub_or_webhook_sender() -> None:
    probe = (
        "import sys, reverb_py.pusher.session, reverb_py.pusher.http_api\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert "reverb_py.pusher.session" in loaded  # the probe did import something
    forbidden = [
        name
        for name in loaded
        if name.split(".")[0] in IO_STACK
        or any(name == layer or name.startswith(layer + ".") for layer in OTHER_LAYERS)
    ]
    assert forbidden == []


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of `reverb_py` that `path` imports anywhere in its text: at the top, under
    TYPE_CHECKING, inside functions. `from pkg import name` is an import of the module
    `pkg.name` when there is one, else of `pkg`. The package imports absolutely only: a
    relative import would slip past this graph, so it fails here."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}:{node.lineno}: import absolutely"
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        branches = [iter(sorted(graph[start]))]
        while branches:
            target = next(branches[-1], None)
            if target is None:
                done.add(path.pop())
                branches.pop()
            elif target in path:
                return [*path[path.index(target) :], target]
            elif target not in done:
                path.append(target)
                branches.append(iter(sorted(graph[target])))
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_type_checking_and_function_local_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from reverb_py.hub import AppHub\n"
        "def later():\n    import reverb_py.server\n"
        "from reverb_py.pusher import messages\n"
    )
    modules = set(import_graph())
    assert imports_of(source, modules) == {
        "reverb_py.hub",
        "reverb_py.server",
        "reverb_py.pusher.messages",
    }


def test_no_import_cycle_between_modules_of_the_package() -> None:
    assert find_cycle(import_graph()) is None


# docs/architecture.md, "Who may import whom": a layer reaches these only through Protocols.
FORBIDDEN = {
    "reverb_py.pusher": (
        "reverb_py.transport",
        "reverb_py.hub",
        "reverb_py.webhooks",
        "reverb_py.scaling",
    ),
    "reverb_py.hub": ("reverb_py.transport.connection", "reverb_py.webhooks", "reverb_py.router"),
    "reverb_py.scaling": ("reverb_py.hub", "reverb_py.pusher"),
    "reverb_py.transport": ("reverb_py.pusher", "reverb_py.hub", "reverb_py.router"),
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_each_layer_imports_only_what_the_architecture_page_allows() -> None:
    crossings = sorted(
        (module, imported)
        for module, imports in import_graph().items()
        for imported in imports
        for layer, forbidden in FORBIDDEN.items()
        if within(module, layer) and any(within(imported, f) for f in forbidden)
    )
    assert crossings == []
