"""The house's rules, read from the code itself: no import cycles (lazy imports inside functions
included, since they only hide one); the flows (one per command) are imported by the CLI alone;
the report reads results, never model or training code; modules and functions stay short."""

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


FLOWS = "runner.flows"
# An experiment trains its runs with the run flow: the one flow another flow calls.
FLOW_CALLS_FLOW = {("runner.flows.experiment", "runner.flows.run")}
# The report renders typed results: it never needs a model, a trainer or the scoring code.
NOT_FOR_REPORT = ("runner.model", "runner.training", "runner.evaluation")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_BY_NATURE = {"runner.cli.build_parser"}  # an argparse table: one line per option


def rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the house's direction rules."""
    breaks = []
    for module, imports in sorted(graph.items()):
        for target in sorted(imports):
            if target.startswith(FLOWS) and module != "runner.cli" and (module, target) not in FLOW_CALLS_FLOW:
                breaks.append(f"{module} imports the flow {target}; only the CLI may")
            if module.startswith("runner.report") and target.startswith(NOT_FOR_REPORT):
                breaks.append(f"{module} imports {target}; the report reads results only")
    return breaks


def test_runner_has_no_import_cycles() -> None:
    graph = import_graph(RUNNER)
    assert len(graph) > 40 and graph["runner.flows.run"]  # the graph was read
    assert cycles(graph) == []


def test_only_the_cli_imports_flows_and_the_report_reads_results_only() -> None:
    assert rule_breaks(import_graph(RUNNER)) == []


def planted(tmp_path: Path, module: str, code: str) -> dict[str, set[str]]:
    copy = tmp_path / "runner"
    shutil.copytree(RUNNER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / f"{module.replace('.', '/')}.py"
    path.write_text(path.read_text() + code)
    return import_graph(copy)


def test_a_planted_lazy_import_that_closes_a_cycle_is_found(tmp_path: Path) -> None:
    graph = planted(
        tmp_path, "spec/types", "\n\ndef _planted():\n    from runner.data.examples import Example  # noqa\n"
    )
    assert any({"runner.spec.types", "runner.data.examples"} <= set(group) for group in cycles(graph))


def test_a_planted_top_level_cycle_is_found(tmp_path: Path) -> None:
    graph = planted(tmp_path, "model/sources", "\nfrom runner.model import load  # noqa\n")
    assert ["runner.model.load", "runner.model.sources"] in cycles(graph)


def test_a_planted_lazy_import_of_a_flow_is_found(tmp_path: Path) -> None:
    graph = planted(
        tmp_path, "data/examples", "\n\ndef _planted():\n    from runner.flows.run import run_spec  # noqa\n"
    )
    assert rule_breaks(graph) == ["runner.data.examples imports the flow runner.flows.run; only the CLI may"]


def test_a_planted_model_import_in_the_report_is_found(tmp_path: Path) -> None:
    graph = planted(tmp_path, "report/html", "\nfrom runner.model.load import load_model  # noqa\n")
    assert rule_breaks(graph) == ["runner.report.html imports runner.model.load; the report reads results only"]


def long_code(package: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions (methods too) over MAX_FUNCTION_LINES."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in LONG_BY_NATURE:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


def test_modules_and_functions_are_short() -> None:
    assert long_code(RUNNER) == []


def test_a_planted_long_function_is_found(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "planted.py").write_text(f"def planted():\n{body}")
    assert long_code(tmp_path / "runner") == [f"runner.planted.planted: {MAX_FUNCTION_LINES + 1} lines"]
