"""The house's import rule: no module of runner imports, directly or through others, a module
that imports it back — lazy imports inside functions included, since they only hide a cycle.
(The stage packages and their direction rules come with the restructuring issue; this guards the
flat layout meanwhile.)"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the runner modules it imports anywhere in its file (top level or in a function)."""
    modules = {".".join(p.relative_to(package.parent).with_suffix("").parts): p for p in package.rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges |= submodules or ({node.module} & modules.keys())
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names} & modules.keys()
        graph[name] = edges - {name, package.name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_runner_has_no_import_cycles() -> None:
    graph = import_graph(RUNNER)
    assert len(graph) > 30 and graph["runner.run"]  # the graph was read
    assert cycles(graph) == []


def planted(tmp_path: Path, module: str, code: str) -> dict[str, set[str]]:
    copy = tmp_path / "runner"
    shutil.copytree(RUNNER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / f"{module}.py"
    path.write_text(path.read_text() + code)
    return import_graph(copy)


def test_a_planted_lazy_import_that_closes_a_cycle_is_found(tmp_path: Path) -> None:
    graph = planted(tmp_path, "spec", "\n\ndef _planted():\n    from runner.run import run_experiment  # noqa\n")
    assert any({"runner.spec", "runner.run"} <= set(group) for group in cycles(graph))


def test_a_planted_top_level_cycle_is_found(tmp_path: Path) -> None:
    graph = planted(tmp_path, "sources", "\nfrom runner import model  # noqa\n")
    assert ["runner.model", "runner.sources"] in cycles(graph)
