"""The trainer end to end on a tiny model: determinism, exact resume, micro-batch invariance, guards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from entropy_rl.metrics.names import is_known
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.train import update
from entropy_rl.train.checkpoint import latest_checkpoint, list_checkpoints
from entropy_rl.train.loop import TrainingStopped, start_run, train


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows without wall-clock timings (the only keys that legitimately differ between runs)."""
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_same_seed_same_metrics(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config()
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert len(a) == 3 and a == b
    c = tmp_path / "c"
    train(tiny_config("train.seed=1"), c, progress=False)
    assert metrics(c) != a


def test_every_logged_key_is_documented(tiny_config, run_dir: Path) -> None:
    train(tiny_config("train.eval_every=3", "train.eval_problems=4", "train.eval_samples=4"), run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    keys = {k for r in rows for k in r}
    assert {"entropy/token_mean", "dynamics/cov_logp_adv", "reward/mean", "eval/pass@4", "policy/clipfrac"} <= keys
    undocumented = sorted(k for k in keys if not is_known(k))
    assert not undocumented, f"add these to entropy_rl/metrics/names.py: {undocumented}"


STATEFUL = {
    "ppo_clip": [],
    "entropy_bonus_adaptive": ["algorithm.method=entropy_bonus",
                               "algorithm.method_params={adaptive: true, coef: 0.01, target_entropy: 0.7}"],
    "entropy_controller": ["algorithm.method=entropy_controller", "algorithm.method_params={target: 2.0}"],
    "siren": ["algorithm.method=siren"],
    "clip_cov": ["algorithm.method=clip_cov", "algorithm.method_params={clip_ratio: 0.05, cov_lb: 0.0}"],
    "aent": ["algorithm.method=aent", "algorithm.method_params={warmup_steps: 0, coef: 0.01, coef_lr: 0.01, coef_max: 1.0, "
             "entropy_low: 5.0, entropy_high: 6.0}"],
    "entropic": ["algorithm.method=entropic", "algorithm.method_params={target_entropy: 0.5, kp: 0.1, ki: 0.05}"],
    "bfloat16": ["model.dtype=bfloat16"],  # the resumed model keeps its dtype (the old code reloaded it as float32)
}


@pytest.mark.parametrize("variant", sorted(STATEFUL))
def test_resume_reproduces_the_uninterrupted_run(tiny_config, tmp_path: Path, variant: str) -> None:
    """Interrupted at step 2 and resumed == uninterrupted, bit for bit: optimizer, LR warm-up, RNG, data order,
    method state (adaptive coefficient, controller history, SIREN anchor) and random selections."""
    cfg = tiny_config("train.steps=4", "train.save_every=2", "optim.mini_batches=2", "optim.epochs=2",
                      "optim.warmup_steps=3", "optim.lr=0.003", *STATEFUL[variant])
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, full, progress=False)
    train(cfg, cut, progress=False)
    # interrupt after step 2: drop the step-4 checkpoint; metrics.jsonl still has rows 3-4, resume must rewind
    shutil.rmtree(latest_checkpoint(cut))
    assert latest_checkpoint(cut).name == "step_000002"
    train(cfg, cut, resume=True, progress=False)
    assert metrics(cut) == metrics(full)
    rows = metrics(full)
    assert [r["policy/lr"] for r in rows] == pytest.approx([0.002, 0.003, 0.003, 0.003])  # warm-up crosses the cut
    state_keys = {"entropy_bonus_adaptive": "method/entropy_bonus/coef", "entropy_controller": "method/entropy_controller/coef",
                  "siren": "method/siren/anchor", "aent": "method/aent/coef", "entropic": "method/entropic/alpha"}
    if variant in state_keys:  # the state (or random selection) is live across the cut, not a constant
        values = [r[state_keys[variant]] for r in rows]
        assert len(set(values[1:])) > 1 or variant == "siren", (variant, values)


def test_existing_run_dir_is_protected(tiny_config, run_dir: Path) -> None:
    train(tiny_config("train.steps=1"), run_dir, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config("train.steps=1"), run_dir, progress=False)
    with pytest.raises(Exception, match="config differs"):
        train(tiny_config("train.steps=2", "optim.lr=0.5"), run_dir, resume=True, progress=False)
    train(tiny_config("train.steps=1"), run_dir, overwrite=True, progress=False)


def test_a_run_saved_before_a_new_setting_existed_resumes(tiny_config, run_dir: Path) -> None:
    import yaml

    cfg = tiny_config("train.steps=2", "train.save_every=1")
    train(cfg, run_dir, progress=False)
    shutil.rmtree(latest_checkpoint(run_dir))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["algorithm"]["rollout_correction"]  # as written by a version without that section
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    train(cfg, run_dir, resume=True, progress=False)  # the missing section is its default: the same config
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]


def test_micro_batch_size_does_not_change_training(tiny_config, tmp_path: Path) -> None:
    whole = tiny_config("train.steps=2")
    split = tiny_config("train.steps=2", "optim.micro_batch_size=4")
    train(whole, tmp_path / "whole", progress=False)
    train(split, tmp_path / "split", progress=False)
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    for key in ("entropy/token_mean", "policy/loss", "policy/grad_norm", "reward/mean"):
        for ra, rb in zip(a, b):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key


def test_off_policy_updates_run_and_clip(tiny_config, run_dir: Path) -> None:
    train(tiny_config("optim.mini_batches=4", "optim.epochs=2", "optim.lr=0.05"), run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert all(0.0 <= r["policy/clipfrac"] <= 1.0 for r in rows)
    assert any(r["policy/approx_kl"] > 0 for r in rows)  # later mini-batches see a moved policy


def test_kl_to_reference_is_logged(tiny_config, run_dir: Path) -> None:
    train(tiny_config("algorithm.kl_coef=0.1", "optim.mini_batches=2"), run_dir, progress=False)
    assert all("policy/kl_ref" in r for r in read_jsonl(run_dir / "metrics.jsonl"))


def test_the_reference_model_has_the_policy_dtype(tiny_config, run_dir: Path) -> None:
    run = start_run(tiny_config("algorithm.kl_coef=0.1", "model.dtype=bfloat16"), run_dir, progress=False, resume=False)
    run.sinks.close()
    assert run.model.dtype == torch.bfloat16
    assert run.ref_model.dtype == torch.bfloat16  # it was loaded as float32: twice the memory, other numerics


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_non_finite_losses_skip_updates_and_stop_the_run(tiny_config, run_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(update, "aggregate", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingStopped, match="3 consecutive"):
        train(tiny_config("optim.max_skipped_steps=3", "train.steps=5"), run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["guard/skipped_updates"] for r in rows] == [1.0, 1.0, 1.0]
    from safetensors.torch import load_file

    weights = load_file(list_checkpoints(run_dir)[-1] / "model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
