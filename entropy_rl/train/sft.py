"""Supervised warm start: teacher-forced cross-entropy on the task's reference answers until the policy's
*sampled* accuracy reaches a useful band (RL from ~0% accuracy gives no signal; from ~100% none either)."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.tasks.chat import format_prompt
from entropy_rl.rollout.hf import SamplingParams
from entropy_rl.tasks.base import Problem, Task
from entropy_rl.train.config import SFTConfig
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

    Returns:
        The last evaluation's metrics plus `sft/steps`.
    """
    device = next(model.parameters()).device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    eval_set = task.prompts("eval", cfg.eval_problems, seed=seed)
    last: dict[str, float] = {}
    for step in range(1, cfg.max_steps + 1):
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
            if last["sft/accuracy"] >= cfg.target_accuracy:
                break
    return last
