"""The package's import graph: no circle, and no import that runs up the layers.

Layers, each importing only those below it (a package may import itself):
``idip.engine -> idip.evaluation, idip.modeling -> idip.data -> idip.config, idip.ops ->
idip.utils``. idip.evaluation and idip.modeling are side by side and do not import each other.
Every import counts, also one inside a function (a deferred import is still a dependency).
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "idip")

LAYER = {"utils": 0, "config": 1, "ops": 1, "data": 2, "modeling": 3, "evaluation": 3, "engine": 4}


def _module_files() -> dict[str, str]:
    """Dotted module name -> file, for every .py under idip/."""
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            files[".".join(rel)] = os.path.join(folder, name)
    return files


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The idip modules that ``module`` imports (anywhere in the file)."""
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found.update(n for n in names if n == "idip" or n.startswith("idip."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "idip" or target.startswith("idip.")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    subpackages = {m.split(".")[1] for m in _module_files() if m.count(".") >= 1}
    subpackages = {s for s in subpackages if not s.startswith("_")}
    assert subpackages == set(LAYER), "add the new subpackage to LAYER (and to docs/design.md)"


def test_no_import_runs_up_or_sideways_between_layers():
    wrong = []
    for module, targets in _graph().items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here is None or there is None or module.split(".")[1] == target.split(".")[1]:
                continue
            if there >= here:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_checker_sees_circles_and_upward_imports():
    # The checks above must be able to fail: a planted circle and the real graph's known arrows.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _graph()
    assert "idip.utils.distributed" in graph["idip.data.build"]
    assert "idip.modeling.build" in graph["idip.modeling.condinst.condinst"]
    assert "idip.modeling.condinst" in graph["idip.modeling"]  # a package's own __init__ imports
