"""The import direction of docs/internals.md, checked on every module under src/visionstack.

Layers, bottom to top: ``errors`` <- ``core`` <- ``models`` | ``data`` <- ``engine`` <- ``tools`` <- ``cli``
(and ``demo``) <- the package ``__init__`` / ``__main__``. A module may import its own layer and the layers
below; ``models`` and ``data`` never import each other. Every import statement counts, also those inside
functions and under ``TYPE_CHECKING``. No group of modules may import each other around a loop.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "visionstack"

#: first name below ``visionstack`` -> layer number; models and data share a layer but are apart
LAYERS: dict[str, int] = {
    "errors": 0,
    "core": 1,
    "models": 2,
    "data": 2,
    "engine": 3,
    "tools": 4,
    "cli": 5,
    "demo": 5,
    "__main__": 6,
    "": 6,  # visionstack/__init__.py: the lazy public API
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _absolute(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its text (``from x import y`` names the
    submodule ``x.y`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, path.name == "__init__.py", node.level, node.module)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import visionstack.a.b`` of a name inside a module
                target = target.rpartition(".")[0]
            if target.split(".")[0] == PACKAGE and target != name:
                found.add(target)
    return found


def layer_of(module: str) -> tuple[int, str]:
    top = module.split(".")[1] if "." in module else ""
    return LAYERS[top], top


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def against_direction(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        (src_layer, src_top) = layer_of(source)
        for target in sorted(targets):
            (dst_layer, dst_top) = layer_of(target)
            apart = {src_top, dst_top} == {"models", "data"}
            if dst_layer > src_layer or apart:
                bad.append(f"{source} -> {target}")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_every_module_has_a_layer() -> None:
    unknown = sorted(m for m in all_modules() if m.split(".")[1:2] and m.split(".")[1] not in LAYERS)
    assert unknown == [], f"modules outside the known layers: {unknown}"


def test_imports_run_one_way() -> None:
    bad = against_direction(graph())
    assert bad == [], (
        "imports against the direction errors <- core <- models | data <- engine <- tools <- cli:\n"
        + "\n".join(bad)
    )


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert found == [], "modules that import each other (directly or around a loop):\n" + "\n".join(
        " <-> ".join(group) for group in found
    )


def test_the_checker_sees_edges_against_the_direction(tmp_path: Path) -> None:
    """The parser finds a function-level relative import and flags it (the test can fail)."""
    fake = {"visionstack.core.a": {"visionstack.engine.b"}, "visionstack.engine.b": {"visionstack.core.a"}}
    assert against_direction(fake) == ["visionstack.core.a -> visionstack.engine.b"]
    assert cycles(fake) == [["visionstack.core.a", "visionstack.engine.b"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..engine import trainer\n", encoding="utf-8")
    known = {"visionstack.engine", "visionstack.engine.trainer", "visionstack.core.m"}
    assert imports_of("visionstack.core.m", source, known) == {"visionstack.engine.trainer"}
    assert against_direction({"visionstack.data.x": {"visionstack.models.y"}}) == [
        "visionstack.data.x -> visionstack.models.y"
    ]


@pytest.mark.parametrize(
    "module",
    [
        "visionstack.core.registry",
        "visionstack.core.config",
        "visionstack.core.build",
        "visionstack.core.schema",
        "visionstack.core.io",
        "visionstack",
    ],
)
def test_core_and_the_package_import_without_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
