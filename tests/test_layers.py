"""The package's import graph — every import, deferred ones inside functions and type-only ones included —
runs one way, down ../shared/ARCHITECTURE.md's layers, and has no circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nbfinetune"

# Lowest first. A module may import its own layer and the ones below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    # config: stdlib-only contracts and helpers every process shares
    ("_version", "events", "config", "metrics", "tail", "event_writer", "ownership", "pricing", "failures",
     "fuzzdata"),
    ("data",),
    ("core", "rewards", "planner", "testing"),
    ("worker",),
    ("runs", "run_state"),
    ("backends", "serving", "serve"),
    ("settings", "launch_checks"),  # a config resolved and checked before launch
    ("widgets",),
    ("api", "sweep", "evals"),  # the Python API: the product; magics and widgets are its views
    ("magics", "cli", "server", "server_extension"),
    ("__init__",),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif (node.module or "").startswith("nbfinetune"):
                base = []
                node_module = node.module.removeprefix("nbfinetune").lstrip(".")
                candidates = [f"{node_module}.{a.name}".strip(".") for a in node.names]
                targets |= {_known(c, modules) for c in candidates} - {None}
                continue
            else:
                continue
            stem = ".".join(base + ([node.module] if node.module else []))
            targets |= {_known(f"{stem}.{a.name}".strip("."), modules) for a in node.names} - {None}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nbfinetune."):
                    targets |= {_known(alias.name.removeprefix("nbfinetune."), modules)} - {None}
    return targets - {name}


def _known(dotted: str, modules: dict[str, Path]) -> str | None:
    while dotted:
        if dotted in modules:
            return dotted
        dotted = dotted.rpartition(".")[0]
    return "__init__" if "__init__" in modules else None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int:
    top = name.split(".")[0]
    for rank, members in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"nbfinetune.{name} is in no layer: add it to LAYERS in {__file__}")


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_imports_run_down_the_layers():
    upward = sorted(
        f"nbfinetune.{name} imports nbfinetune.{target}"
        for name, targets in _graph().items() for target in targets
        if target != "__init__" and _layer(target) > _layer(name))
    assert upward == []


def test_the_rest_api_reads_the_store_only():
    """ARCHITECTURE.md: the server's handlers import `runs` (and the event contract) only; the entry point
    (server_extension) hands them the backends' cancel."""
    assert {t.split(".")[0] for t in _graph()["server"]} <= {"runs", "events"}


def test_no_import_circles():
    graph = _graph()
    cycles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_check_sees_deferred_imports(tmp_path):
    """The graph includes imports inside functions: a circle made of them is a circle."""
    graph = _graph()
    assert "core.trainer" in graph["worker"]  # imported inside the worker's functions only
