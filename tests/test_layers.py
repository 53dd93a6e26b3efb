"""The package's layering, read from the source with ``ast`` (nothing is imported).

Layers, lower never imports higher (module-level and function-level imports alike): 0 ``core``; 1 ``nets``, ``data``,
``teachers``, ``methods``, ``metrics``; 2 ``rewards``, ``config``; 3 ``export``; 4 ``train``; 5 ``eval``; 6 ``apps``,
``bench``; 7 ``cli``. Nothing but ``fdistill.__main__`` imports ``fdistill.cli``; module-level imports form no cycle.
``fdistill/__init__.py``, ``__main__.py`` and the compatibility re-exports ``divergences.py`` / ``pipeline.py`` are
outside the order (a library module importing a re-export is checked against what it re-exports). No module in
``fdistill/`` is over 500 lines.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fdistill"
LAYERS = {
    "core": 0,
    **dict.fromkeys(("nets", "data", "teachers", "methods", "metrics"), 1),
    "rewards": 2,
    "config": 2,
    "export": 3,
    "train": 4,
    "eval": 5,
    "apps": 6,
    "bench": 6,
    "cli": 7,
}
SHIMS = ("fdistill.divergences", "fdistill.pipeline")  # compatibility re-exports
UNORDERED = ("fdistill", "fdistill.__main__", *SHIMS)
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported fdistill module
    line: int
    module_level: bool  # executed on import (not inside a function, not under ``if TYPE_CHECKING:``)

    def where(self) -> str:
        kind = "module level" if self.module_level else "in a function"
        return f"{self.source} (line {self.line}, {kind}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <node.module> import ...`` (relative levels resolved against ``source``)."""
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _targets(source: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The fdistill modules one import statement names (``from pkg import sub`` names the submodule ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        mod = _resolve(source, is_package, node)
        names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
    return sorted({n for n in names if n == "fdistill" or n.startswith("fdistill.")})


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports_in(source: str, text: str, is_package: bool = False) -> list[Import]:
    """Every fdistill import of the module ``source`` whose code is ``text``."""
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend(Import(source, t, child.lineno, module_level) for t in _targets(source, is_package, child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), module_level)
            else:
                visit(child, module_level)

    visit(ast.parse(text, source), True)
    return found


def imports_of(source: str) -> list[Import]:
    path = MODULES[source]
    return imports_in(source, path.read_text(), path.name == "__init__.py")


IMPORTS = [imp for mod in MODULES for imp in imports_of(mod)]


def layer_of(module: str) -> int | None:
    """The layer of a module; ``None`` for the top-level modules outside the order."""
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and module not in UNORDERED else None


def effective_targets(target: str) -> list[str]:
    """A compatibility re-export stands for the modules it re-exports; any other module for itself."""
    if target in SHIMS:
        return [imp.target for imp in IMPORTS if imp.source == target]
    return [target]


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m not in UNORDERED and layer_of(m) is None]
    if unplaced:
        pytest.fail(f"modules in no layer (add their package to LAYERS here): {', '.join(unplaced)}", pytrace=False)


def layer_violations(package: str | None = None) -> list[str]:
    out = []
    for imp in IMPORTS:
        lo = layer_of(imp.source)
        if lo is None or (package is not None and package_of(imp.source) != package):
            continue
        for target in effective_targets(imp.target):
            hi = layer_of(target)
            if hi is not None and hi > lo:
                via = f" (via {imp.target})" if target != imp.target else ""
                out.append(f"{imp.where()}{via}: layer {lo} -> layer {hi}")
    return out


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_from_a_lower_layer_to_a_higher_one(package):
    bad = layer_violations(package)
    if bad:
        pytest.fail(f"{len(bad)} import(s) from a lower layer to a higher one:\n  " + "\n  ".join(bad), pytrace=False)


def test_nothing_imports_the_cli():
    bad = [
        imp.where()
        for imp in IMPORTS
        if (imp.target == "fdistill.cli" or imp.target.startswith("fdistill.cli."))
        and imp.source != "fdistill.__main__"
        and not imp.source.startswith("fdistill.cli")
    ]
    if bad:
        pytest.fail("fdistill.cli is imported outside fdistill.__main__:\n  " + "\n  ".join(bad), pytrace=False)


def module_level_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.module_level and imp.target in MODULES and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    return graph


def cycles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each strongly connected component (of more than one node) of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(_cycle_in(sorted(comp), graph))

    for m in sorted(graph):
        if m not in index:
            connect(m)
    return components


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module (breadth-first, so the shortest)."""
    members, start = set(component), component[0]
    paths = {w: [start, w] for w in graph[start] if w in members}
    frontier = list(paths)
    while start not in paths:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return paths[start]


def test_no_import_cycles():
    cycles = cycles_of(module_level_graph())
    if cycles:
        pytest.fail("module-level import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles), pytrace=False)


def package_of(module: str) -> str:
    """``fdistill.<package>`` for a subpackage's modules, ``fdistill`` for the top-level ones."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "fdistill"


@pytest.mark.parametrize("package", sorted({package_of(m) for m in MODULES}))
def test_no_module_over_500_lines(package):
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items() if package_of(m) == package}
    long = [f"{MODULES[m].relative_to(PACKAGE.parent)}: {n} lines" for m, n in sizes.items() if n > MAX_LINES]
    if long:
        pytest.fail(f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(long), pytrace=False)


def test_the_walk_sees_relative_function_level_and_type_checking_imports():
    """The checker itself: relative imports resolve; function-level and TYPE_CHECKING imports are not module level."""
    src = (
        "from typing import TYPE_CHECKING\n"
        "import torch\n"
        "from . import noise\n"
        "from ..nets.unet import EDMUNet\n"
        "if TYPE_CHECKING:\n"
        "    from fdistill.train import distill\n"
        "class A:\n"
        "    from fdistill.core import guidance\n"
        "    def f(self):\n"
        "        import fdistill.cli\n"
    )
    got = {(i.target, i.module_level) for i in imports_in("fdistill.core.sampling", src)}
    assert got == {
        ("fdistill.core.noise", True),
        ("fdistill.nets.unet", True),
        ("fdistill.train.distill", False),
        ("fdistill.core.guidance", True),
        ("fdistill.cli", False),
    }
    pkg = {i.target for i in imports_in("fdistill.core", "from .noise import x\nfrom .. import config", True)}
    assert pkg == {"fdistill.core.noise", "fdistill.config"}


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert cycles_of(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles_of({"a": {"b"}, "b": set()}) == []
    assert len(IMPORTS) > 100 and any(not i.module_level for i in IMPORTS)  # the walk sees the package
