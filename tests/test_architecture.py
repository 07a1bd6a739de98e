"""The package's shape: no import cycle, and no layer importing a layer above it.

The import graph is read with ``ast`` from every module of labkit/, function-level imports included (an
import inside a function is still a dependency; hiding one there to dodge a cycle is what this forbids).
The layers are those of docs/architecture.md, from the bottom up.
"""
from __future__ import annotations

import ast
import os
import re

import pytest

import labkit

PKG = os.path.dirname(labkit.__file__)

#: lowest first; a module may import its own layer and those below it, never one above
LAYERS: list[tuple[str, ...]] = [
    ("labkit.errors", "labkit.units", "labkit.config", "labkit.version", "labkit._db", "labkit._sys"),
    ("labkit.thin",),
    ("labkit.snapshots",),
    ("labkit.images", "labkit.containers", "labkit.vm"),
    ("labkit.gc",),
    ("labkit.lab",),
    ("labkit.plots", "labkit.experiments"),
    ("labkit.widgets",),
    ("labkit.cli", "labkit.cli_lab", "labkit.cli_info", "labkit.cli_format", "labkit"),
]

#: layer-internal exceptions: (importer, imported) pairs that are allowed though they cross sideways
SIDEWAYS_OK: set[tuple[str, str]] = set()


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> labkit modules it imports (anywhere in the file, TYPE_CHECKING blocks excluded)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        typing_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                typing_only |= {id(n) for n in ast.walk(node)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.endswith("__init__.py"), node)
                # `from pkg import mod` depends on pkg.mod (and on pkg's __init__ only for names that are not modules)
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "import_module"):
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    names = [node.args[0].value]
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n.startswith("labkit") and n != mod:
                    deps.add(n)
        graph[mod] = deps
    return graph


def _layer(mod: str) -> int:
    best, at = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or (p != "labkit" and mod.startswith(p + "."))) and len(p) > best:
                best, at = len(p), i
    return at


def _top(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else mod


def test_every_module_has_a_layer() -> None:
    missing = [m for m in import_graph() if _layer(m) < 0]
    assert not missing, f"modules outside every layer of docs/architecture.md: {missing}"


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = [0]

    def strong(v: str) -> None:   # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    # a package's __init__ re-exporting its own modules is not a cycle of design
    cycles = [c for c in cycles if not all(m == _top(c[0]) or m.startswith(_top(c[0]) + ".") for m in c)
              or not any(m == _top(c[0]) for m in c)]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_layer_imports_upward() -> None:
    bad = []
    for mod, deps in import_graph().items():
        for d in deps:
            if _layer(d) > _layer(mod) and (_top(mod), _top(d)) not in SIDEWAYS_OK:
                bad.append(f"{mod} -> {d}")
    assert not bad, "upward imports (see docs/architecture.md): " + ", ".join(sorted(bad))


def test_no_private_reach_across_packages() -> None:
    """No module uses another package's private name (``pkg._name`` / ``from pkg.mod import _name``);
    labkit._sys is the shared private toolbox and may be used by everyone."""
    bad = []
    for mod, path in _modules().items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.endswith("__init__.py"), node)
                if not target.startswith("labkit") or _top(target) == _top(mod):
                    continue
                for a in node.names:
                    private_mod = any(p.startswith("_") and p not in ("__init__",) for p in target.split(".")[1:])
                    dunder = a.name.startswith("__") and a.name.endswith("__")
                    private = (a.name.startswith("_") and not dunder) or private_mod
                    if private and not target.startswith("labkit._sys") and target not in ("labkit._db",):
                        bad.append(f"{mod}: from {target} import {a.name}")
    assert not bad, "private names used across packages: " + "; ".join(bad)


def test_backend_knowledge_stays_in_the_backend() -> None:
    pat = re.compile(r'name == "thin"|client\.call\(|\._get\(')
    bad = []
    roots = [PKG, os.path.join(os.path.dirname(PKG), "notebooks")]
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            rel = os.path.relpath(dirpath, os.path.dirname(PKG))
            if rel.startswith(("labkit/snapshots", "labkit/thin")) or ".ipynb_checkpoints" in rel:
                continue
            for f in files:
                if f.endswith((".py", ".ipynb")):
                    text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                    bad += [f"{rel}/{f}: {m.group(0)}" for m in pat.finditer(text)]
    assert not bad, "backend specifics outside labkit/snapshots and labkit/thin: " + ", ".join(bad)


@pytest.mark.parametrize("mod", ["labkit.lab", "labkit.images", "labkit.containers"])
def test_layers_named_in_the_doc(mod: str) -> None:
    doc = os.path.join(os.path.dirname(PKG), "docs", "architecture.md")
    assert mod.split(".")[1] in open(doc, encoding="utf-8").read()
