"""No two modules of the package import each other, directly or in a loop.

The graph is built with ``ast`` from every ``import`` statement in ``activestorage/**/*.py``,
module-level and function-level alike (a lazy import inside a function still ties the two modules
together). ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, to a compiled
extension (``_fused``) nothing, and to ``pkg`` otherwise. Importing a submodule also runs its
parent package's ``__init__``; that implicit edge is left out (it is how packages work, and every
submodule would otherwise form a loop with a package that re-exports it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "activestorage"

#: cycles known and being removed elsewhere (none left: issue 20 removed the last one)
ALLOWED_CYCLES: list[set[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: {modules of the package it imports}}``."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[mod].update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = base[:len(base) - (node.level - 1)]
                    target = ".".join(stem + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:
                        edges[mod].add(sub)
                    elif node.module is None and any(
                            (ROOT / sub.replace(".", "/")).parent.glob(alias.name + ".*")):
                        continue  # a compiled extension module of the package
                    elif target in mods:
                        edges[mod].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.add(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def test_the_graph_sees_imports_of_every_kind():
    edges = import_graph()
    assert "activestorage.formats.base" in edges["activestorage.formats.hdf5"]  # module level
    assert "activestorage.stores.fileobj" in edges["activestorage.formats.netcdf3"]  # function level
    assert "activestorage.fused" in edges["activestorage.kernel"]  # from . import submodule
    assert "activestorage" in edges["activestorage.cli"]  # from . import __version__
    assert not any("_fused" in m for e in edges.values() for m in e)  # the C extension


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}}, [{"a", "b"}]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_cycles_finds_loops(edges, expected):
    assert cycles(edges) == expected


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if c not in ALLOWED_CYCLES]
    assert not found, "modules that import each other (directly or in a loop): " + "; ".join(
        " <-> ".join(sorted(c)) for c in found)
