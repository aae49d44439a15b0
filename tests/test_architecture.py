"""The import arrows of the tree point down, and no modules import each other in a circle.

Layers, from the bottom: `models/` (PyTorch modules: torch only) and `service/` (the
runtime: never torch, never models/ or training/); `training/` on both; `tests/`,
`benchmarks/` and `scripts/` on top, imported by nothing. Inside `training/` the
sub-layers are ranked in LAYERS, and an import may only go to a lower rank (or within
its own sub-package). Every import counts, including the ones inside functions: a lazy
import is still an arrow, and hiding a circle inside a function does not end it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "service", "training", "benchmarks", "scripts")

# What each top-level package may import from the project's other packages.
ALLOWED = {
    "models": set(),
    "service": set(),
    "training": {"models", "service"},
    "benchmarks": {"models", "service", "training"},
    "scripts": {"models", "service", "training"},
}

# training/ from the bottom up: a module imports only from lower ranks or its own.
LAYERS = {
    "training.data": 0, "training.checkpoint": 0,
    "training.runs": 1, "training.callbacks": 1,
    "training.metrics": 2, "training.trainer": 2,
    "training.export": 3,
    "training.tasks": 4, "training.index": 4,
    "training.evaluate": 5,
    "training.cli": 6, "training": 6,
}


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imported_names(path: Path) -> set[str]:
    """Every absolute import of the file, anywhere in it, except under `if TYPE_CHECKING:`
    (annotations only, never executed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a name resolves to the longest
    module that it starts with: `from a.b import c` is an arrow to a.b.c if that is a
    module, else to a.b)."""
    files = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        for name in imported_names(path):
            target = resolve(name)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def training_layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_module_imports_another_in_a_circle():
    assert circles(import_graph()) == []


def test_packages_import_only_the_layers_below():
    wrong = sorted((m, t) for m, targets in import_graph().items() for t in targets
                   if t.split(".")[0] != m.split(".")[0]
                   and t.split(".")[0] not in ALLOWED[m.split(".")[0]])
    assert wrong == []


def test_every_training_module_has_a_layer():
    unranked = {training_layer(m) for m in module_files() if m.split(".")[0] == "training"}
    assert unranked - set(LAYERS) == set(), "give each new training/ module a rank in LAYERS"


def test_training_imports_point_down():
    upward = sorted(
        (m, t) for m, targets in import_graph().items() for t in targets
        if m.startswith("training") and t.startswith("training")
        and training_layer(m) != training_layer(t)
        and LAYERS[training_layer(t)] >= LAYERS[training_layer(m)])
    assert upward == []


def test_service_never_imports_torch():
    files = module_files()
    offenders = sorted(m for m, path in files.items() if m.split(".")[0] == "service"
                       and any(n == "torch" or n.startswith("torch.")
                               for n in imported_names(path)))
    assert offenders == []


def test_the_checks_see_a_circle_and_an_upward_arrow():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert LAYERS["training.tasks"] > LAYERS["training.export"] > LAYERS["training.data"]
