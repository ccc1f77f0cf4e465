"""Data flows one way, and so do imports: no module of `sweeper` imports, at load time, one that imports it back."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sweeper"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path, known: set[str]) -> set[str]:
    """The sweeper modules `path` imports when it is loaded: module-level imports, not those inside
    functions (deferred on purpose) or under `if TYPE_CHECKING:` (annotations only)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sweeper"):
            for alias in node.names:  # `from sweeper.backends import base` names a module too
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sweeper")}
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    return {m: _load_time_imports(p, set(files)) - {m} for m, p in files.items()}


def test_no_sweeper_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert "sweeper.record" in graph and "sweeper.engines.local" in graph
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_marketgpt_and_the_records_stand_below_the_backends_and_the_sweep() -> None:
    """MarketGPT's model and training do not reach into `backends/` (the backend wraps them); the config
    record and the stores do not import the sweep that writes them."""
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for m in graph[todo.pop()] - seen:
                seen.add(m)
                todo.append(m)
        return seen

    for m in (m for m in graph if m.startswith("sweeper.marketgpt")):
        assert not {r for r in reach(m) if r.startswith("sweeper.backends")}, m
    for m in ("sweeper.record", "sweeper.store"):
        assert "sweeper.sweep" not in reach(m) and "sweeper.cli" not in reach(m), m
