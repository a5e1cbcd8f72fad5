"""The layering rule of ``chainflow/`` (its package docstring): a module imports only
from its own layer or the layers below, and no modules import each other in a
circle.  Every import counts: module level, inside functions and under
``TYPE_CHECKING`` alike, since each is a dependency a reader must follow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "chainflow"
# rank of each layer; a module may import ranks <= its own
LAYERS = {"base": 0, "storage": 1, "chain": 2, "runtime": 3, "replay": 4, "client": 5, "entry": 6}
ENTRY = {"chainflow", "chainflow.cli", "chainflow.__main__", "chainflow.testing", "chainflow.ui"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in ENTRY or module.startswith(("chainflow.testing.", "chainflow.ui.")):
        return "entry"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    return "base"  # a module directly under chainflow/


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The chainflow modules ``module`` imports (a package import counts as its
    ``__init__``; ``from pkg import mod`` as the module when it is one)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_import_goes_down_or_sideways() -> None:
    back_edges = sorted(
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in graph().items() for t in targets
        if LAYERS[layer(t)] > LAYERS[layer(m)]
    )
    assert not back_edges, "imports against the layering:\n" + "\n".join(back_edges)


def test_no_import_circle() -> None:
    edges = graph()
    # the package __init__ re-exports the public names, so it imports everything;
    # Python runs it before any submodule, which is no dependency of theirs
    for targets in edges.values():
        targets.discard("chainflow")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_dashboard_is_an_entry_point_nothing_below_imports() -> None:
    """chainflow/ui reads through the client and the stores; no layer imports it."""
    edges = graph()
    assert all(layer(m) == "entry" for m in edges if m.startswith("chainflow.ui"))
    importers = sorted(m for m, targets in edges.items() for t in targets
                       if t.startswith("chainflow.ui") and not m.startswith("chainflow.ui") and m != "chainflow.cli")
    assert not importers, importers


def test_the_rule_catches_a_back_edge(tmp_path: Path) -> None:
    """The walker itself: a storage module importing the runtime is reported."""
    fake = tmp_path / "chainflow"
    (fake / "storage").mkdir(parents=True)
    (fake / "runtime").mkdir()
    (fake / "storage" / "bad.py").write_text("from ..runtime import worker\n")
    (fake / "runtime" / "worker.py").write_text("")
    known = {"chainflow.storage.bad", "chainflow.runtime.worker"}
    found = imports_of("chainflow.storage.bad", fake / "storage" / "bad.py", known)
    assert found == {"chainflow.runtime.worker"}
    assert LAYERS[layer("chainflow.runtime.worker")] > LAYERS[layer("chainflow.storage.bad")]
