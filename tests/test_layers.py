"""Imports run downwards only (docs/architecture.md): a module imports its own layer or lower ones.

Every module of the package must be placed in a layer here; an import that runs upward, or a cycle
between modules, fails this test.  Imports inside functions count: deferring an import does not make
a dependency go away."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "millionws"

# Lowest first.  A module may import modules of its layer or of a layer above it in this list.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"config", "jsonsafe", "ratelimit", "auth", "connection", "http", "wsproto_internals"})),
    ("core", frozenset({"reactor", "buffers", "transport"})),
    ("observability", frozenset({"metrics", "boundary"})),
    ("protocol", frozenset({"websocket"})),
    ("pubsub", frozenset({"bus", "records", "channels", "broker"})),
    ("apps", frozenset({"app"})),
    ("server", frozenset({"worker", "supervisor", "admission", "expiry"})),
    ("entry", frozenset({"cli", "__main__", "__init__"})),
    ("clients", frozenset({"client"})),  # outside the server: imports none of it
)
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}
LAYER_OF = {module: name for name, modules in LAYERS for module in modules}


def internal_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.split(".")[0] == "millionws":
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "millionws" and len(parts) > 1:
                    found.add(parts[1])
    return found


def graph() -> dict[str, set[str]]:
    return {path.stem: internal_imports(path) - {path.stem} for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    assert set(graph()) <= set(RANK), f"place these in LAYERS: {sorted(set(graph()) - set(RANK))}"


def test_no_import_runs_upward():
    upward = [f"{module} ({LAYER_OF[module]}) imports {target} ({LAYER_OF[target]})"
              for module, targets in graph().items() for target in targets
              if target in RANK and RANK[target] > RANK[module]]
    assert not upward, upward


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, module, target])}")
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_the_client_library_does_not_import_the_server():
    assert graph()["client"] == set()


def test_this_test_can_fail(tmp_path):
    (tmp_path / "low.py").write_text("from .high import thing\n")
    assert internal_imports(tmp_path / "low.py") == {"high"}
    (tmp_path / "lazy.py").write_text("def f():\n    from millionws.worker import Worker\n")
    assert internal_imports(tmp_path / "lazy.py") == {"worker"}
