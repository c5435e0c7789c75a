"""Boundary: entropy_rl/metrics imports only torch, the standard library and entropy_rl.core (plus itself).

The optional TensorBoard / W&B libraries are allowed only as lazy imports inside sinks.py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import entropy_rl.metrics

PKG = Path(entropy_rl.metrics.__file__).parent
LAZY_EXTRAS = {"sinks.py": {"wandb", "torch.utils.tensorboard"}}


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


def test_names_runs_as_a_module_without_warnings():
    import subprocess

    r = subprocess.run(
        [sys.executable, "-W", "error", "-m", "entropy_rl.metrics.names"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Metrics")
