"""The shape of the code: one-way imports, private names kept private, small modules and functions.

These are design rules, checked on the source so that a change that breaks one fails here with the
offending module named, rather than being found in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "heatmap_cli"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path) -> Iterator[ast.ImportFrom]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("heatmap_cli"):
            yield node


def test_the_source_tree_is_found():
    assert {"heatmap_cli", "heatmap_cli.cli", "heatmap_cli.surgery"} <= set(_modules())


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{name} imports {node.module}.{alias.name}"
        for name, path in _modules().items()
        for node in _imports(path)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


def test_imports_between_modules_form_no_cycle():
    modules = _modules()
    edges = {
        name: {node.module for node in _imports(path) if node.module in modules}
        for name, path in modules.items()
    }
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        stack.append(name)
        for imported in sorted(edges[name]):
            if state.get(imported) == "open":
                cycles.append([*stack[stack.index(imported) :], imported])
            elif imported not in state:
                visit(imported, stack)
        stack.pop()
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}.{node.name}: {lines} lines")
    assert too_long == []
