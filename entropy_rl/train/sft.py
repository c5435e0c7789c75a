"""Supervised warm start: teacher-forced cross-entropy on the task's reference answers until the policy's
*sampled* accuracy reaches a useful band (RL from ~0% accuracy gives no signal; from ~100% none either).

`warm_start` makes it resumable like RL: a checkpoint (model, optimizer, RNG, step) after every evaluation,
written by the same atomic, checksummed writer (train/checkpoint.py); an interrupted SFT continues from the
newest usable one and rewinds its metrics file to it, so no step is run or logged twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.metrics.sinks import JsonlSink, truncate_jsonl
from entropy_rl.models.build import load_pretrained
from entropy_rl.tasks.chat import format_prompt
from entropy_rl.rollout.hf import SamplingParams
from entropy_rl.tasks.base import Problem, Task
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import Config, SFTConfig
from entropy_rl.train.evaluate import evaluate


def sft_batch(tokenizer: PreTrainedTokenizerBase, problems: list[Problem], device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded prompt + answer + EOS with labels only on answer + EOS (-100 elsewhere). [B, L] each."""
    rows, labels = [], []
    for p in problems:
        prompt = tokenizer(format_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"]
        answer = tokenizer(p.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
        att[i, : len(r)] = 1
    return {"input_ids": ids.to(device), "labels": lab.to(device), "attention_mask": att.to(device)}


def run_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    cfg: SFTConfig,
    sampling: SamplingParams,
    seed: int,
    log: Callable[[int, dict[str, float]], None],
    start: dict[str, Any] | None = None,
    save: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Train until sampled accuracy >= cfg.target_accuracy (checked every cfg.eval_every steps) or max_steps.

    Args:
        model: the policy, trained in place.
        tokenizer: its tokenizer.
        task: provides train prompts + reference answers and the verifier.
        cfg: SFT settings.
        sampling: rollout sampling settings (accuracy is measured the way RL will sample).
        seed: data and evaluation seed.
        log: called with (step, metrics) at every evaluation.
        start: a state passed to `save` earlier, to continue from (`model` must hold that step's weights).
        save: called with (step, state) after every evaluation; the state (step, optimizer, RNG, last metrics,
            whether SFT is done) is what `start` takes.

    Returns:
        The last evaluation's metrics plus `sft/steps`.
    """
    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    eval_set = task.prompts("eval", cfg.eval_problems, seed=seed)
    last: dict[str, float] = {}
    first = 1
    if start is not None:
        opt.load_state_dict(start["optimizer"])
        ckpt.set_rng_state(start["rng"])
        first, last = start["step"] + 1, start["last"]
        if start["done"]:
            return last
    for step in range(first, cfg.max_steps + 1):
        batch = sft_batch(tokenizer, task.prompts("train", cfg.batch_size, seed=seed * 1_000_003 + 7919 * step), device)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            last = evaluate(model, tokenizer, task, eval_set, 1, sampling, seed=seed + step, prefix="sft")
            last = {"sft/loss": float(loss.item()), "sft/accuracy": last["sft/accuracy"], "sft/steps": float(step)}
            log(step, last)
            model.train()
            done = last["sft/accuracy"] >= cfg.target_accuracy or step == cfg.max_steps
            if save is not None:
                save(step, {"step": step, "model_dtype": ckpt.dtype_name(model), "optimizer": opt.state_dict(),
                            "rng": ckpt.rng_state(), "last": last, "done": done})
            if done:
                break
    return last


def warm_start(
    cfg: Config,
    task: Task,
    sampling: SamplingParams,
    fresh: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]],
    work_dir: Path,
    metrics_path: Path,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resumable `run_sft`: checkpoints in WORK_DIR/checkpoints, metrics appended to `metrics_path`.

    Continues from the newest usable checkpoint in `work_dir` (rewinding `metrics_path` to its step), or starts
    from `fresh()` (rewinding `metrics_path` to nothing). The caller saves the returned model and marks it
    complete; the checkpoints are then no longer needed.

    Raises:
        CheckpointError: SFT checkpoints exist but none is usable.
    """
    found = ckpt.load_latest(work_dir, warn=log)
    if found is not None:
        latest, start = found
        model, tokenizer = load_pretrained(latest / "model", start["model_dtype"])
        log(f"resuming the SFT warm start from {latest} (step {start['step']})")
    else:
        (model, tokenizer), start = fresh(), None
    model.to(device)
    truncate_jsonl(metrics_path, start["step"] if start else 0)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"SFT warm start of a {n_params / 1e6:.2f}M-parameter model to sampled accuracy >= {cfg.sft.target_accuracy}")
    sink = JsonlSink(metrics_path)
    t0 = time.perf_counter()

    def log_sft(step: int, m: dict[str, float]) -> None:
        sink.log(step, m)
        log(f"sft step {step} | loss {m['sft/loss']:.3f} | sampled accuracy {m['sft/accuracy']:.3f} | "
            f"{time.perf_counter() - t0:.0f} s")

    def save(step: int, state: dict[str, Any]) -> None:
        ckpt.save_checkpoint(work_dir, step, model, tokenizer, state, keep=2,
                             min_free_bytes=int(cfg.train.min_free_gb * 2**30))

    try:
        run_sft(model, tokenizer, task, cfg.sft, sampling, cfg.train.seed, log_sft, start, save)
    finally:
        sink.close()
    return model, tokenizer
