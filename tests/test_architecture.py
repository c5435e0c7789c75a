"""The boundaries of DESIGN.md, enforced: pure-math packages import only torch and entropy_rl.core;
no eval/exec/compile anywhere in the package; no `if method == ...` special cases in the trainer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "entropy_rl"
PURE = ["core", "methods", "advantages"]
ALLOWED_ROOTS = {"torch", "entropy_rl", "__future__", "dataclasses", "typing", "math", "warnings", "importlib",
                 "pkgutil", "sys", "difflib", "collections", "functools", "itertools", "enum", "abc"}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_import_only_torch_and_core(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        for name in imports_of(path):
            root = name.split(".")[0]
            assert root in ALLOWED_ROOTS, f"{path.relative_to(ROOT)} imports '{name}'"
            if root == "entropy_rl":
                allowed = ("entropy_rl.core",) if package == "core" else ("entropy_rl.core", "entropy_rl.methods", "entropy_rl.advantages")
                assert name.startswith(allowed), (
                    f"{path.relative_to(ROOT)} imports '{name}': pure packages may use entropy_rl.core only"
                )


def test_no_eval_exec_or_compile_in_the_package() -> None:
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec", "compile", "__import__"}, f"{path}: {node.func.id}()"


def test_trainer_does_not_special_case_methods() -> None:
    for path in (ROOT / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and isinstance(c.value, str) for c in node.comparators):
                left = ast.unparse(node.left)
                assert "method" not in left and "advantage" not in left, f"{path}: special case `{ast.unparse(node)}`"


def test_test_file_names_are_unique() -> None:
    """Test folders have no __init__.py, so two test files with one basename break collection of the whole suite."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in (Path(__file__).parent).rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
