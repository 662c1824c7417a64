"""The house's floors: imports only point down, and no module imports itself back.

Every import in every project module is read from its AST (function-level
imports included, since a lazy import is still a dependency), mapped to the
project's top-level packages, and compared with the floor order of
shared/DESIGN.md. A package may import itself (modules within it), a lower
floor, never a higher floor nor a neighbour on its own floor. Within and
across packages the module import graph must have no cycle.
"""
from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top to bottom. Packages on one floor must not import each other.
FLOORS = [
    ("benchmarks",),
    ("experiments",),
    ("inference",),
    ("train",),          # the thin CLI script
    ("trainer",),
    ("tasks",),
    ("clip", "moe"),
    ("models",),
    ("attention",),
    ("kernels", "sharding", "data"),
    ("nn",),
]
FLOOR = {pkg: len(FLOORS) - i for i, floor in enumerate(FLOORS) for pkg in floor}
SKIP_DIRS = {"tests", "notebooks", "docs", ".venv", ".git", "build", "runs"}


def project_modules() -> dict[str, str]:
    """{dotted module name: file path} for every .py file of the project's packages."""
    out = {}
    for pkg in FLOOR:
        if os.path.isfile(os.path.join(ROOT, f"{pkg}.py")):
            out[pkg] = os.path.join(ROOT, f"{pkg}.py")
            continue
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, pkg)):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return out


def imports_of(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """Project modules `name` imports (`from pkg import submodule` resolves to the submodule)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                parent = parts if is_pkg else parts[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a non-module attribute: its nearest module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_import_points_down():
    bad = []
    for mod, targets in graph().items():
        src = mod.split(".")[0]
        for t in targets:
            dst = t.split(".")[0]
            if dst != src and FLOOR[dst] >= FLOOR[src]:
                bad.append(f"{mod} imports {t} ({src} is not above {dst})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    sys.setrecursionlimit(10_000)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_planted_upward_import_and_cycle(tmp_path, monkeypatch):
    """The two tests above can fail: a fake tree with one upward import and one cycle trips both."""
    for pkg, body in {"nn": "import models\n", "models": "from models import b\n"}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    (tmp_path / "models" / "b.py").write_text("import models\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "FLOOR", {"nn": 1, "models": 2})
    g = graph()
    assert g["nn"] == {"models"} and g["models"] == {"models.b"} and g["models.b"] == {"models"}
    try:
        test_every_import_points_down()
    except AssertionError as e:
        assert "nn imports models" in str(e)
    else:
        raise AssertionError("the upward import nn -> models was not reported")
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "models.b" in str(e)
    else:
        raise AssertionError("the cycle models <-> models.b was not reported")
