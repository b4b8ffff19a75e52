"""Imports run downwards only (docs/architecture.md): a module imports its own layer or lower ones.

A layer is a subpackage (``core``, ``protocol``, ``pubsub``, ``apps``, ``server``) or one of the
top-level modules named below.  Every module of the package must fall in a layer; an import that runs
upward, or a cycle between modules, fails this test.  Imports inside functions count: deferring an
import does not make a dependency go away."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "millionws"

# Lowest first.  A module may import modules of its layer or of a layer above it in this list.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"config", "configfile", "namespaces", "jsonsafe", "ratelimit", "auth"})),
    ("core", frozenset({"core"})),
    ("protocol", frozenset({"protocol"})),
    ("observability", frozenset({"metrics", "boundary"})),
    ("pubsub", frozenset({"pubsub"})),
    ("apps", frozenset({"apps"})),
    ("server", frozenset({"server"})),
    ("entry", frozenset({"cli", "tools", "__main__", "__init__"})),
    ("clients", frozenset({"client"})),  # outside the server: imports none of it
)
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
LAYER_OF = {unit: name for name, units in LAYERS for unit in units}


def dotted(path: Path, root: Path = PACKAGE) -> str:
    """``core/reactor.py`` -> ``core.reactor``; a package's ``__init__`` is named by the package."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer unit of a module: its top-level subpackage, or the top-level module itself."""
    return module.split(".")[0]


def internal_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Modules of the package (dotted, from its root) that ``path`` imports, at any depth of its code."""
    here = dotted(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}: relative import above the package")
                prefix = [*base, *(node.module.split(".") if node.module else [])]
                if node.module:
                    found.add(".".join(prefix))
                else:  # from . import x, y
                    found.update(".".join([*prefix, alias.name]) for alias in node.names)
            elif node.module and node.module.split(".")[0] == "millionws":
                parts = node.module.split(".")[1:]
                if parts:
                    found.add(".".join(parts))
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "millionws" and len(parts) > 1:
                    found.add(".".join(parts[1:]))
    return {name for name in found if name}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {dotted(path) for path in paths}

    def resolve(name: str) -> str:
        """``from . import __version__`` names an attribute of a package, not a module: the package."""
        while name not in modules and "." in name:
            name = name.rpartition(".")[0]
        return name if name in modules else "__init__"

    return {dotted(path): {resolve(t) for t in internal_imports(path)} - {dotted(path)} for path in paths}


def test_every_module_has_a_layer():
    assert {unit(m) for m in graph()} <= set(RANK), \
        f"place these in LAYERS: {sorted({unit(m) for m in graph()} - set(RANK))}"


def test_no_import_runs_upward():
    upward = [f"{module} ({LAYER_OF[unit(module)]}) imports {target} ({LAYER_OF[unit(target)]})"
              for module, targets in graph().items() for target in targets
              if unit(target) in RANK and RANK[unit(target)] > RANK[unit(module)]]
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
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "low.py").write_text("from ..server.high import thing\nfrom . import sibling\n")
    assert internal_imports(tmp_path / "core" / "low.py", tmp_path) == {"server.high", "core.sibling"}
    (tmp_path / "lazy.py").write_text("def f():\n    from millionws.server.worker import Worker\n")
    assert internal_imports(tmp_path / "lazy.py", tmp_path) == {"server.worker"}
    assert RANK[unit("server.high")] > RANK[unit("core.low")]
