"""The shape of the code: thin tasks and modules small enough to read (the import contract in
pyproject.toml checks the layers themselves)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cnn", "tracking", "tasks", "flows", "app")
MAX_TASK_BODY_LINES = 25
"""A task body calls, logs and makes artifacts: about 20 lines (statements after the
docstring, first to last line)."""
MAX_MODULE_LINES = 450


def _is_task(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "task":
            return True
    return False


def _body_lines(function: ast.FunctionDef) -> int:
    body = function.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return body[-1].end_lineno - body[0].lineno + 1


def task_body_lengths() -> dict[str, int]:
    """Lines of each Prefect task's body, by `module:function`."""
    lengths = {}
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and _is_task(node):
                lengths[f"{path.stem}:{node.name}"] = _body_lines(node)
    return lengths


def test_tasks_are_found_and_thin():
    lengths = task_body_lengths()
    assert len(lengths) >= 10  # the walk finds the tasks at all
    thick = {name: lines for name, lines in lengths.items() if lines > MAX_TASK_BODY_LINES}
    assert not thick, f"task bodies over {MAX_TASK_BODY_LINES} lines: {thick}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_too_long_to_read(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules
    long = {
        path.name: lines
        for path in modules
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"{package}/ modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_layer_says_what_it_may_import(package):
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring and "import" in docstring.lower()
