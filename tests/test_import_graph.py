"""No import cycle inside ``procsup/``, counting the imports inside functions.

A lazy import (in a function, paid for only when it runs) is still an edge:
two modules that import each other, however late, are one concept split in
two, and the order they load in depends on which runs first. Imports under
``if TYPE_CHECKING:`` are left out: they never run. The graph is read from
the source with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
import functools
import itertools
from pathlib import Path

from support import ROOT

Edge = tuple[str, str]


def _modules() -> dict[str, Path]:
    """Every module of the package (and its subpackages), by dotted name."""
    found = {}
    for path in sorted((ROOT / "procsup").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """The import statements that can run, each with whether it is in a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    walk_one(other, in_function)
                continue
            walk_one(child, in_function)

    def walk_one(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, in_function))
        nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        walk(node, in_function or nested)

    walk(tree, False)
    return found


def _targets(
    module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: set[str]
) -> list[str]:
    """The dotted names ``node`` imports: ``from .x import y`` names the
    module ``x.y`` where there is one, else ``x``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    submodules = [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in submodules if name in modules] or [base]


@functools.cache  # parsed once per session
def import_graph() -> dict[Edge, str]:
    """Each edge (importer, imported) of the package, with where it is
    (``path:line``, and ``(in a function)`` for a lazy one)."""
    modules = _modules()
    edges: dict[Edge, str] = {}
    for module, path in modules.items():
        loaded_first = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{node.lineno}" + (
                " (in a function)" if in_function else ""
            )
            for name in _targets(module, path, node, set(modules)):
                # importing a.b.c runs the packages a and a.b first
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    target = ".".join(parts[:i])
                    if target in modules and target != module and target not in loaded_first:
                        edges.setdefault((module, target), where)
    return edges


def find_cycle(edges: dict[Edge, str]) -> list[str] | None:
    """A path ``[a, b, ..., a]`` through ``edges``, or None if there is none."""
    graph: dict[str, list[str]] = {}
    for source, target in sorted(edges):
        graph.setdefault(source, []).append(target)
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in graph.get(node, []):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_module_of_procsup_imports_itself_through_others() -> None:
    edges = import_graph()
    cycle = find_cycle(edges)
    if cycle is not None:
        hops = "\n".join(f"  {a} -> {b}   {edges[a, b]}" for a, b in itertools.pairwise(cycle))
        raise AssertionError(f"an import cycle inside procsup/:\n{hops}")


def test_the_graph_holds_lazy_and_module_level_imports() -> None:
    # What the cycle check reads, on imports that must stay where they are.
    edges = import_graph()
    assert edges["procsup._child", "procsup._child_loop"].endswith("(in a function)")
    assert not edges["procsup._shm", "procsup._child_core"].endswith("(in a function)")
    assert ("procsup._cli", "procsup._cli_common") in edges
    # a.b.c runs a.b's __init__: procsup.redis's
    assert ("procsup._cli_redis", "procsup.redis") in edges
    # not TYPE_CHECKING's
    assert ("procsup._child_core", "procsup._child") not in edges


def test_a_cycle_is_reported_with_its_path() -> None:
    edges = {("a", "b"): "a.py:1", ("b", "c"): "b.py:2 (in a function)", ("c", "a"): "c.py:3"}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"): "", ("b", "c"): ""}) is None


def _foreign_private_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name = ...`` (or ``+=``, ``del``) where ``x`` is not ``self`` or
    ``cls``: a write to another object's private attribute."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for part in ast.walk(target):
                if not isinstance(part, ast.Attribute) or part.ctx is ast.Load:
                    continue
                if not isinstance(part.ctx, ast.Store | ast.Del):
                    continue
                private = part.attr.startswith("_") and not part.attr.startswith("__")
                own = isinstance(part.value, ast.Name) and part.value.id in ("self", "cls")
                if private and not own:
                    found.append((part.lineno, ast.unparse(part)))
    return found


def test_no_module_writes_another_objects_private_attributes() -> None:
    writes = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in _modules().values()
        for line, text in _foreign_private_writes(ast.parse(path.read_text()))
    ]
    assert writes == [], "private state written from outside its owner:\n" + "\n".join(writes)
