"""Verifiers parse model text, never evaluate it: no eval/exec/compile/__import__ in entropy_rl/tasks."""

from __future__ import annotations

import ast
from pathlib import Path

import entropy_rl.tasks

FORBIDDEN = {"eval", "exec", "compile", "__import__", "literal_eval"}
TASKS_DIR = Path(entropy_rl.tasks.__file__).parent


def _forbidden_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            # Attribute calls too: builtins.eval, ast.literal_eval, re.compile (re is not needed here).
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in FORBIDDEN:
                found.append(f"{name} at line {node.lineno}")
    return found


def test_scanner_catches_calls() -> None:
    src = "eval('1')\nimport builtins\nbuiltins.exec('x')\n__import__('os')\nast.literal_eval('1')\n"
    assert len(_forbidden_calls(ast.parse(src))) == 4


def test_no_eval_in_tasks() -> None:
    files = sorted(TASKS_DIR.glob("*.py"))
    assert {"countdown.py", "arithmetic.py", "base.py"} <= {f.name for f in files}
    bad = {f.name: calls for f in files if (calls := _forbidden_calls(ast.parse(f.read_text())))}
    assert not bad, f"forbidden calls in entropy_rl/tasks: {bad}"
