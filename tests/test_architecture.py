"""The shape of the code that docs/architecture.md promises, checked on the source itself.

The layers' import direction is checked by import-linter (``make lint``: ``lint-imports``,
contracts in pyproject.toml); these tests check what it cannot: that no function imports
prunekit's own modules (a cycle hidden from the linter) and that long functions say why.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "prunekit"
# A function longer than this says why at the top of its docstring.
LONGEST = 60
LONG_REASON = "Long because"


def functions() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((path, node))
    return found


def test_the_source_is_where_the_layers_say() -> None:
    folders = {p.name for p in SOURCE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert {"masks", "plugins", "config", "patterns", "training", "viz"} <= folders
    assert (SOURCE / "masks" / "select").is_dir()


def test_no_function_imports_prunekit() -> None:
    found = []
    for path, function in functions():
        for node in ast.walk(function):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(name.split(".")[0] == "prunekit" for name in names):
                found.append(f"{path.relative_to(SOURCE)}:{node.lineno} in {function.name}")
    assert not found, "function-level imports of prunekit's own modules: " + ", ".join(found)


def test_long_functions_say_why() -> None:
    long = [
        f"{path.relative_to(SOURCE)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path, fn in functions()
        if (fn.end_lineno or fn.lineno) - fn.lineno + 1 > LONGEST
        and LONG_REASON not in (ast.get_docstring(fn) or "")
    ]
    assert not long, "functions over 60 lines without a reason at their top: " + ", ".join(long)
