"""The package's structure: no import cycles between assoc_lib's modules, and the import contracts hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def _cycles(graph, modules: set[str]) -> list[list[str]]:
    """Every cycle found by a depth-first search over direct imports (imports inside functions included)."""
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.find_modules_directly_imported_by(m) & modules):
            if state.get(n) == "open":
                found.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycles_between_modules():
    import grimp

    graph = grimp.build_graph("assoc_lib", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("assoc_lib")}
    assert len(modules) > 20
    packages = {m.rsplit(".", 1)[0] for m in modules if m.count(".") > 1}
    # a package's __init__ is imported by each of its modules: only real module-to-module edges count
    assert _cycles(graph, modules - packages) == []


def test_cycle_finder_finds_a_planted_cycle():
    class Graph:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph(), {"a", "b", "c", "d"}) == [["a", "b", "c", "a"]]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout
