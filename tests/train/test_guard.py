"""The update guard (issue 15 item 4): a non-finite optimizer step is rolled back (parameters and optimizer state),
non-finite weights are never checkpointed, and a non-finite or malformed reward is a counted reward error."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import load_pretrained
from entropy_rl.tasks.base import RewardResult
from entropy_rl.train import loop
from entropy_rl.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from entropy_rl.train.guard import NonFiniteWeightsError, UpdateGuard, non_finite_parameters
from entropy_rl.train.loop import TrainingStopped, train

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")


def checkpoint_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "model" / "model.safetensors")


def warm_weights(warm_model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(warm_model_dir / "model.safetensors")


# ---- UpdateGuard on its own ----
def tiny_lm() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    return model, torch.randint(0, 11, (4, 6))


def lm_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    opt.zero_grad()
    logits = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, 11), ids[:, 1:].reshape(-1)).backward()
    opt.step()


@pytest.mark.parametrize("first_step", [True, False])
def test_rollback_is_an_exact_undo(first_step: bool) -> None:
    """After snapshot -> step -> rollback, the next step gives bit-identical parameters and AdamW state to a copy
    that never took the rolled-back step (including the first step, whose AdamW state did not exist before)."""
    model, ids = tiny_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    if not first_step:
        lm_step(model, opt, ids)
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.1, weight_decay=0.01)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    guard = UpdateGuard(model, opt)
    guard.snapshot()
    lm_step(model, opt, ids.flip(0))  # a step we then undo
    assert guard.rollback()  # the restored state is finite
    assert len(opt.state) == len(twin_opt.state)
    lm_step(model, opt, ids)
    lm_step(twin, twin_opt, ids)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
        for key in twin_opt.state[q]:
            assert torch.equal(opt.state[p][key], twin_opt.state[q][key]), key


def test_rollback_reports_an_optimizer_state_that_was_already_non_finite() -> None:
    model, ids = tiny_lm()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    lm_step(model, opt, ids)
    first = next(iter(model.parameters()))
    opt.state[first]["exp_avg_sq"][0, 0] = float("nan")  # a flipped byte in Adam's second moment
    guard = UpdateGuard(model, opt)
    guard.snapshot()
    lm_step(model, opt, ids)
    assert not torch.isfinite(first).all()  # the corruption reached the weights...
    assert not guard.rollback()  # ...is undone, and the guard says the old state was already bad
    assert torch.isfinite(first).all()


def test_non_finite_parameters_names_them() -> None:
    model, _ = tiny_lm()
    assert non_finite_parameters(model) == []
    with torch.no_grad():
        model[1].bias[3] = float("inf")
    assert non_finite_parameters(model) == ["1.bias"]


def test_save_refuses_non_finite_weights(tmp_path: Path, warm_model_dir: Path) -> None:
    model, tokenizer = load_pretrained(warm_model_dir)
    save_checkpoint(tmp_path, 1, model, tokenizer, {"step": 1})
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"refusing to write checkpoint step 2: 1 parameter tensor\(s\) hold NaN"):
        save_checkpoint(tmp_path, 2, model, tokenizer, {"step": 2})
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step_000001"]  # nothing written, the earlier one kept
    assert all(torch.isfinite(w).all() for w in checkpoint_weights(latest_checkpoint(tmp_path)).values())


# ---- the guard in the trainer ----
@pytest.mark.parametrize("lr, reason", [(math.inf, "non-finite parameters"), (1e30, "non-finite logits")])
def test_huge_lr_is_rolled_back_and_stops_the_run(tiny_config, run_dir: Path, warm_model_dir: Path, lr: float,
                                                  reason: str) -> None:
    """lr=inf makes every parameter NaN; lr=1e30 makes them ~1e30 (finite) and the logits NaN. Both steps are
    rolled back, the run stops after max_skipped_steps with a one-line reason, and every checkpoint holds the
    starting weights (before the fix: NaN checkpoints, then a crash in sampling or in the law fit)."""
    cfg = tiny_config("train.steps=4", "train.save_every=1", "optim.max_skipped_steps=3", "optim.mini_batches=2")
    cfg.optim.lr = lr  # config validation may refuse such a value; the runtime guard must not depend on it
    with pytest.raises(TrainingStopped, match=f"3 consecutive steps had non-finite updates .*{reason}.*rolled back"):
        train(cfg, run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["guard/rolled_back"], r["guard/skipped_updates"]) for r in rows] == [(2.0, 2.0)] * 3
    assert all(math.isfinite(r["entropy/token_mean"]) for r in rows)
    start = warm_weights(warm_model_dir)
    for ckpt in list_checkpoints(run_dir):
        assert all(torch.equal(w, start[k]) for k, w in checkpoint_weights(ckpt).items()), ckpt.name


class CorruptingAdamW(torch.optim.AdamW):
    """AdamW whose `corrupt_on`-th step() first writes NaN into Adam's second moment (after the guard's snapshot,
    like a bit flip in memory); or, with `corrupt_on_load`, right after load_state_dict (a damaged checkpoint)."""

    corrupt_on = 0
    corrupt_on_load = False
    instances: list[torch.optim.Optimizer] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        CorruptingAdamW.instances.append(self)

    def _corrupt(self) -> None:
        p = self.param_groups[0]["params"][0]
        self.state[p]["exp_avg_sq"].view(-1)[0] = float("nan")

    def step(self, closure=None):
        self.calls += 1
        if self.calls == self.corrupt_on:
            self._corrupt()
        return super().step(closure)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if self.corrupt_on_load:
            self._corrupt()


def patch_adamw(monkeypatch, **attrs) -> None:
    monkeypatch.setattr(CorruptingAdamW, "instances", [])
    for k, v in attrs.items():
        monkeypatch.setattr(CorruptingAdamW, k, v)
    monkeypatch.setattr(loop.torch.optim, "AdamW", CorruptingAdamW)


def test_optimizer_state_corrupted_during_a_step_is_rolled_back(tiny_config, run_dir: Path, monkeypatch) -> None:
    patch_adamw(monkeypatch, corrupt_on=2)
    train(tiny_config("train.steps=3"), run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["guard/rolled_back"] for r in rows] == [0.0, 1.0, 0.0]  # step 2 undone, step 3 trains normally
    opt = CorruptingAdamW.instances[-1]
    assert opt.calls == 3
    assert all(torch.isfinite(t).all() for s in opt.state.values() for t in s.values())
    assert all(torch.isfinite(w).all() for w in checkpoint_weights(latest_checkpoint(run_dir)).values())


def test_corrupted_optimizer_state_in_a_checkpoint_stops_the_run(tiny_config, run_dir: Path, monkeypatch) -> None:
    """Resuming from a checkpoint whose Adam state holds a NaN: every step would give NaN weights; each is rolled
    back, the run stops naming the cause, and the checkpoint it writes still holds the step-1 weights."""
    cfg = tiny_config("train.steps=3", "train.save_every=1", "train.keep_checkpoints=3", "optim.max_skipped_steps=2")
    train(cfg, run_dir, progress=False)
    for later in list_checkpoints(run_dir)[1:]:  # interrupted after step 1
        shutil.rmtree(later)
    step1 = checkpoint_weights(latest_checkpoint(run_dir))
    patch_adamw(monkeypatch, corrupt_on_load=True)
    with pytest.raises(TrainingStopped, match="already non-finite before the step"):
        train(cfg, run_dir, resume=True, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["guard/rolled_back"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(torch.equal(w, step1[k]) for k, w in checkpoint_weights(latest_checkpoint(run_dir)).items())


# ---- non-finite and malformed rewards ----
class BadRewardTask:
    """Wraps a real task; every `every`-th reward call returns a result with score `score`."""

    def __init__(self, task, score, every: int = 3) -> None:
        self.task, self.score, self.every, self.calls = task, score, every, 0
        self.name, self.alphabet = task.name, task.alphabet

    def prompts(self, split, n, seed):
        return self.task.prompts(split, n, seed)

    def reward(self, problem, completion) -> RewardResult:
        self.calls += 1
        if self.calls % self.every == 0:
            return RewardResult(self.score, "ok", completion)
        return self.task.reward(problem, completion)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), 1e6, -0.5, "1", None])
def test_malformed_rewards_are_counted_errors(tiny_config, run_dir: Path, monkeypatch, capsys, score) -> None:
    """A task returning a NaN/inf/out-of-range/non-number score: that response scores 0 with reason "error"
    (reward/errors), the run finishes (before the fix: a crash in the law fit or in torch.tensor)."""
    make = loop.make_task
    monkeypatch.setattr(loop, "make_task", lambda name, **p: BadRewardTask(make(name, **p), score))
    train(tiny_config("train.steps=3"), run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    n = 16  # responses per step in the tiny setup; every 3rd reward call is bad
    assert [r["reward/errors"] * n for r in rows] == [sum(c % 3 == 0 for c in range(n * s + 1, n * s + n + 1)) for s in range(3)]
    assert all(0.0 <= r["reward/mean"] <= 1.0 and math.isfinite(r["entropy/token_mean"]) for r in rows)
    assert "dynamics/law_a" in rows[-1]  # the law fit ran on 3 finite points
    warnings = [line for line in capsys.readouterr().out.splitlines() if "were invalid" in line]
    assert len(warnings) == 3 and "scored 0 as reason 'error'" in warnings[0], warnings
