"""The package's layers: read every ``import`` in ``src/neuralcodes`` (ast: module level,
inside functions and under ``TYPE_CHECKING`` alike) and check the rules below.

The rules, in words:

1. No import cycle between modules, nor between the package's parts (a top-level module such as
   ``runs`` or ``evaluation``, or a subpackage such as ``training/``): whatever a part imports
   never imports it back.
2. The foundation (configuration, errors, files, the run directory, datasets, data, model,
   kernels) never imports the stages (training, evaluation, retrieval, report), what plans and
   drives them, or the entry points built on it.
3. The entry points are imported by nobody but themselves: ``cli/`` by ``__main__`` only,
   ``web/`` by ``cli/`` only; and only ``cli/`` parses arguments (``argparse``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neuralcodes"

#: Rule 2: the foundation's parts ...
FOUNDATION = ("config", "errors", "files", "runs", "datasets", "data", "model", "kernels")
#: ... never import these: the stages, what drives them, and the entry points.
ABOVE_FOUNDATION = ("training", "evaluation", "retrieval", "report", "estimate", "plan",
                    "pipeline", "web", "cli")
#: Rule 3: an entry point -> the only parts (besides itself) that may import it.
ENTRY_POINTS = {"cli": ("__main__",), "web": ("cli",)}
#: Rule 3: modules only the command line may import.
CLI_ONLY_IMPORTS = ("argparse",)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(the package's modules that ``name`` imports, the other top-level modules it imports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from a import b`: the module a.b if there is one, else a
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "neuralcodes":
                others.add(target.split(".")[0])
                continue
            while target not in known:  # `import neuralcodes.x.y` of a name inside x
                target = target.rpartition(".")[0]
            if target != name:
                ours.add(target)
    return ours, others


def part(module: str) -> str:
    """The part of the package a module belongs to: its top-level module or subpackage
    (``neuralcodes.training.loop`` -> ``training``; the package itself -> ``neuralcodes``)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

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


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the package's modules it imports, module -> other top-level modules)."""
    mods = modules()
    known = set(mods)
    found = {name: imports_of(name, path, known) for name, path in mods.items()}
    return {m: ours for m, (ours, _) in found.items()}, {m: o for m, (_, o) in found.items()}


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(part(module), set()).update(
            part(t) for t in targets if part(t) != part(module))
    return out


def edges(graph: dict[str, set[str]], sources: set[str], targets: set[str]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, ts in graph.items() for t in ts
                  if part(m) in sources and part(t) in targets)


def test_the_rules_name_parts_that_exist(graph):
    parts = {part(m) for m in graph[0]}
    named = {*FOUNDATION, *ABOVE_FOUNDATION, *ENTRY_POINTS,
             *(p for allowed in ENTRY_POINTS.values() for p in allowed)}
    assert named <= parts, f"rules name parts the package lacks: {sorted(named - parts)}"


def test_no_import_cycle_between_modules(graph):
    assert cycles(graph[0]) == []


def test_no_import_cycle_between_parts(graph):
    parts = part_graph(graph[0])
    found = cycles(parts)
    detail = [edges(graph[0], set(c), set(c)) for c in found]
    assert found == [], detail


def test_the_foundation_imports_no_stage_and_no_entry_point(graph):
    assert edges(graph[0], set(FOUNDATION), set(ABOVE_FOUNDATION)) == []


def test_entry_points_are_imported_by_nobody_else(graph):
    for entry, allowed in ENTRY_POINTS.items():
        others = {part(m) for m in graph[0]} - {entry, *allowed}
        assert edges(graph[0], others, {entry}) == [], entry


def test_only_the_command_line_parses_arguments(graph):
    found = sorted(f"{m} imports {name}" for m, names in graph[1].items()
                   for name in names & set(CLI_ONLY_IMPORTS) if part(m) != "cli")
    assert found == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The walker sees imports inside functions, relative and TYPE_CHECKING ones, and the cycle
    finder reports a cycle (the rules above would pass vacuously otherwise)."""
    pkg = tmp_path / "neuralcodes"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .low import X\n")
    (pkg / "sub" / "low.py").write_text("from typing import TYPE_CHECKING\nX = 1\n"
                                        "if TYPE_CHECKING:\n    from neuralcodes import top\n")
    (pkg / "top.py").write_text("def f():\n    import argparse\n"
                                "    from neuralcodes.sub import low\n")
    mods = modules(pkg)
    found = {n: imports_of(n, p, set(mods)) for n, p in mods.items()}
    g = {n: ours for n, (ours, _) in found.items()}
    assert g == {"neuralcodes": set(), "neuralcodes.sub": {"neuralcodes.sub.low"},
                 "neuralcodes.sub.low": {"neuralcodes.top"},
                 "neuralcodes.top": {"neuralcodes.sub.low"}}
    assert found["neuralcodes.top"][1] == {"argparse"}
    assert cycles(g) == [["neuralcodes.sub.low", "neuralcodes.top"]]
    assert cycles(part_graph(g)) == [["sub", "top"]]
