"""The layers import downwards only (ARCHITECTURE.md: flows -> beam_jobs -> labse_core -> storage), the
two trainers never import each other, and no project modules import each other in a circle.

Read from the source with `ast`, nothing imported: every `import` statement of every module counts for
the layer rules (also those inside functions: a lazy import is still a dependency); the cycle check
counts the statements Python runs when the module is imported (module level, `if TYPE_CHECKING:`
blocks left out), where a circle means a half-initialised module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "labse_core", "beam_jobs", "flows")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(importer: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement names (`from a.b import c`: a.b.c when it is a module)."""
    known = modules()
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert not node.level, f"{importer}: a relative import (the project imports absolutely)"
        base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import a.b.c` of a name that is not a module: its package
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


@cache
def imports(module: str, module_level_only: bool = False) -> frozenset[str]:
    """Project modules `module` imports; with module_level_only, those its import runs."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if module_level_only and isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.update(_resolve(module, child))
            visit(child)

    visit(tree)
    found.discard(module)
    return frozenset(found)


def _runs(module: str) -> set[str]:
    """What importing `module` executes: its module-level imports and the __init__ of each package
    they live in (except the importer's own packages, already being imported)."""
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    out: set[str] = set()
    for name in imports(module, module_level_only=True):
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own - {module}
    return out


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m} imports {t}"
        for m in modules()
        if m == layer or m.startswith(layer + ".")
        for t in imports(m)
        if any(t == f or t.startswith(f + ".") for f in forbidden)
    )


def test_the_module_walk_sees_the_project():
    assert {"storage.layout", "labse_core.pretrain.train", "beam_jobs.shard", "flows.cli"} <= set(modules())
    assert "storage.schemas" in imports("storage.io")
    # `from package import module` is the module; a lazy import counts, except for the circle check
    assert "storage.tracking" in imports("flows.ablation", module_level_only=True)
    assert "labse_core.vocab" in imports("labse_core.export")
    assert "labse_core.vocab" not in imports("labse_core.export", module_level_only=True)


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("storage", ("labse_core", "beam_jobs", "flows")),  # the bottom: pyarrow, the file system, no stage
        ("labse_core", ("beam_jobs", "flows")),  # the logic: no engine, no orchestration
        ("beam_jobs", ("flows", "labse_core.pretrain", "labse_core.finetune")),  # a data job imports no trainer
        ("labse_core.training", ("labse_core.pretrain", "labse_core.finetune")),  # the runtime both trainers share
        ("labse_core.pretrain", ("labse_core.finetune",)),  # the trainers never import each other
        ("labse_core.finetune", ("labse_core.pretrain",)),
    ],
)
def test_layers_import_downwards_only(layer, forbidden):
    assert _violations(layer, forbidden) == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles a depth-first walk of `graph` meets (each as a path that ends where it starts)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                found.append(path[path.index(t) :] + [t])
            elif t not in state:
                walk(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    return found


def test_the_circle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_among_project_modules():
    found = cycles({m: _runs(m) for m in modules()})
    assert found == [], "\n".join(" -> ".join(c) for c in found)
