"""The training step on every available device: rewards, group indices and advantages live on the policy's device.

CPU always runs; CUDA runs (marked `gpu`) when a GPU is present and skips otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train.loop import train

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu,
                                              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method, advantage", [("ppo_clip", "grpo"), ("clip_cov", "hapo"), ("entropy_bonus", "empg")])
def test_step_runs_on_the_device(tiny_config, run_dir, device: str, method: str, advantage: str) -> None:
    cfg = tiny_config(f"train.device={device}", "train.steps=2", "optim.mini_batches=2", f"algorithm.method={method}",
                      f"algorithm.advantage={advantage}")
    result = train(cfg, run_dir, progress=False)
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] >= 1]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("entropy/token_mean", "reward/mean", "policy/loss", "policy/grad_norm", "adv/std"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert result.final_metrics["guard/skipped_updates"] == 0.0
