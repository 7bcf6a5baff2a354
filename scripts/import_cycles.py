"""Checks the import graph of ``vhtool``: no cycle between its modules, and the file world never imports models.

    python scripts/import_cycles.py [--root DIR]

Every ``import`` / ``from ... import`` counts, at any level (module, function, ``TYPE_CHECKING`` block): a
function-level import is a cycle waiting for the day it moves up. ``from a.b import c`` is an edge to the module
``a.b.c`` when that is a module, else to ``a.b``; importing a module is not counted as importing its parent
packages (a package's ``__init__`` re-exporting its own modules is not a cycle).

Prints each cycle (a strongly connected component, with one concrete loop through it) and each import of
``vhtool.models`` from ``vhtool/checkpoint/``; exits 1 when there is any, else 0. Not a test itself:
``tests/test_architecture.py`` runs it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "vhtool"
FILE_WORLD = "vhtool.checkpoint"
TORCH_WORLD = "vhtool.models"


def module_name(path: Path, root: Path) -> str:
    """``vhtool/models/scoring/run.py`` -> ``vhtool.models.scoring.run`` (``__init__.py`` -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, target, names)`` for every import in ``tree``; relative imports resolved against ``module``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]


def build_graph(root: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """The import graph of the package under ``root``: ``{module: {imported vhtool modules}}`` and edge lines."""
    files = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    lines: dict[tuple[str, str], int] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target, names in imported_names(tree, module, path.name == "__init__.py"):
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            if len(targets) < len(names) or not names:
                targets.append(target)  # names that are not modules come from the module itself
            for t in targets:
                if t in files and t != module:
                    graph[module].add(t)
                    lines.setdefault((module, t), line)
    return graph, lines


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def one_loop(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete loop through ``component``'s first module (breadth-first, so a shortest one)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the repository root")
    args = parser.parse_args(argv)
    graph, lines = build_graph(args.root)
    problems = 0
    for component in strongly_connected(graph):
        loop = one_loop(graph, component)
        steps = " -> ".join(
            f"{a} (line {lines[(a, b)]})" if (a, b) in lines else a for a, b in zip(loop, loop[1:], strict=False)
        )
        print(f"cycle among {len(component)} modules: {', '.join(component)}\n  e.g. {steps} -> {loop[-1]}")
        problems += 1
    for module in sorted(graph):
        if module == FILE_WORLD or module.startswith(FILE_WORLD + "."):
            for target in sorted(graph[module]):
                if target == TORCH_WORLD or target.startswith(TORCH_WORLD + "."):
                    where = f"{module} (line {lines[(module, target)]})"
                    print(f"{where} imports {target}: checkpoint/ never imports models/")
                    problems += 1
    if problems:
        return 1
    edges = sum(len(t) for t in graph.values())
    print(f"{len(graph)} modules, {edges} imports: no cycle, checkpoint/ imports no models/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
