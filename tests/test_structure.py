"""The shape of the code: one-way imports, private names kept private, small modules and functions.

These are design rules, checked on the source so that a change that breaks one fails here with the
offending module named, rather than being found in review.
"""

from __future__ import annotations

import ast
import re
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
    expected = {"heatmap_cli", "heatmap_cli.cli.options", "heatmap_cli.convert.network"}
    assert expected <= set(_modules())


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


CORE = ("heatmap_cli.convert", "heatmap_cli.grid")
APPLICATION = (
    "heatmap_cli.pipeline",
    "heatmap_cli.cli",
    "heatmap_cli.io",
    "heatmap_cli.report",
    "heatmap_cli.api",
)
LIBRARY = (*CORE, "heatmap_cli.pipeline", "heatmap_cli.io", "heatmap_cli.render", "heatmap_cli.api")


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _imported_modules(path: Path) -> Iterator[str]:
    """Every heatmap_cli module a file imports, at any depth (lazy imports in functions too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("heatmap_cli"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("heatmap_cli"):
            yield node.module  # type: ignore[misc]
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_core_imports_nothing_from_the_application():
    leaks = sorted(
        f"{name} imports {imported}"
        for name, path in _modules().items()
        if _within(name, CORE)
        for imported in set(_imported_modules(path))
        if _within(imported, APPLICATION)
    )
    assert leaks == []


def test_conversion_imports_no_grid_method():
    leaks = sorted(
        f"{name} imports {imported}"
        for name, path in _modules().items()
        if _within(name, ("heatmap_cli.convert",))
        for imported in set(_imported_modules(path))
        if _within(imported, ("heatmap_cli.grid",))
    )
    assert leaks == []


def test_the_notebook_api_is_a_client_of_the_pipeline_not_of_the_command():
    """heatmap_cli.api reads through pipeline/, like the command; neither imports the other."""
    crossings = sorted(
        f"{name} imports {imported}"
        for name, path in _modules().items()
        for imported in set(_imported_modules(path))
        if (_within(name, ("heatmap_cli.api",)) and _within(imported, ("heatmap_cli.cli",)))
        or (_within(name, ("heatmap_cli.cli",)) and _within(imported, ("heatmap_cli.api",)))
    )
    assert crossings == []


def test_the_disk_cache_is_handed_to_the_tiling_estimate():
    """grid.tiling takes a FigureStore; only the application side imports the disk cache."""
    importers = sorted(
        name
        for name, path in _modules().items()
        if "heatmap_cli.io.figure_cache" in set(_imported_modules(path))
    )
    assert importers and all(_within(name, APPLICATION) for name in importers), importers
    memory = (PACKAGE / "grid" / "tiling" / "memory.py").read_text(encoding="utf-8")
    assert "class FigureStore(Protocol)" in memory


def _message_strings(tree: ast.AST) -> Iterator[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and id(node) not in docstrings:
            yield node


def test_the_library_names_no_command_line_flag():
    """Messages name settings through errors.setting(); only heatmap_cli.cli spells flags."""
    flag = re.compile(r"(?:^|[\s(\"'])--[a-z][a-z-]+")
    found = sorted(
        f"{name}:{node.lineno}: {node.value.strip()[:60]}"
        for name, path in _modules().items()
        if _within(name, LIBRARY)
        for node in _message_strings(ast.parse(path.read_text(encoding="utf-8")))
        if flag.search(node.value)
    )
    assert found == []


def test_no_test_file_imports_another_test_file():
    """Shared helpers live in tests/helpers/; test modules only import from there."""
    tests = Path(__file__).resolve().parent
    crossings = sorted(
        f"{path.relative_to(tests)} imports {node.module}"
        for path in tests.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("tests.")
        and not (node.module or "").startswith("tests.helpers")
    )
    assert crossings == []
