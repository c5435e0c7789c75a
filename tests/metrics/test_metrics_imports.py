"""Boundary: entropy_rl/metrics imports only torch, the standard library and entropy_rl.core (plus itself).

The optional TensorBoard / W&B libraries are allowed only as lazy imports inside sinks.py, numpy / scipy only as
lazy imports inside dynamics.py (the law fit's curve_fit and t quantile).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import entropy_rl.metrics

PKG = Path(entropy_rl.metrics.__file__).parent
LAZY_EXTRAS = {"sinks.py": {"wandb", "torch.utils.tensorboard"},
               "dynamics.py": {"numpy", "scipy", "scipy.optimize", "scipy.stats"}}


def _imports(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(node.module or "")  # relative imports stay inside the package
    return out


def _allowed(module: str, filename: str) -> bool:
    top = module.split(".")[0]
    if module in LAZY_EXTRAS.get(filename, set()):
        return True
    if module.startswith("torch.utils.tensorboard"):
        return False
    if top == "torch" or top in sys.stdlib_module_names or module == "":
        return True
    return module.startswith(("entropy_rl.core", "entropy_rl.metrics"))


def test_metrics_imports_stay_inside_the_boundary():
    files = sorted(PKG.glob("*.py"))
    assert files
    bad = [
        f"{f.name}: {m}"
        for f in files
        for m in _imports(ast.parse(f.read_text(encoding="utf-8")))
        if not _allowed(m, f.name)
    ]
    assert not bad, f"forbidden imports in entropy_rl/metrics: {bad}"


def test_lazy_extras_are_not_imported_at_module_level():
    for name, extras in LAZY_EXTRAS.items():
        tree = ast.parse((PKG / name).read_text(encoding="utf-8"))
        top = [stmt for stmt in tree.body if isinstance(stmt, (ast.Import, ast.ImportFrom))]
        assert not set(_imports(ast.Module(body=top, type_ignores=[]))) & extras, name


def test_names_runs_as_a_module_without_warnings():
    import subprocess

    r = subprocess.run(
        [sys.executable, "-W", "error", "-m", "entropy_rl.metrics.names"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Metrics")
