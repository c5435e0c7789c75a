"""Sampled evaluation on a fixed problem set: accuracy and unbiased pass@k."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.metrics.dynamics import pass_at_k
from entropy_rl.rollout.hf import SamplingParams, generate
from entropy_rl.tasks.base import Problem, Task


def pass_k_values(k_max: int) -> list[int]:
    """k in 1, 2, 4, ... up to k_max, plus k_max itself."""
    ks = [1]
    while ks[-1] * 2 <= k_max:
        ks.append(ks[-1] * 2)
    return ks if ks[-1] == k_max else ks + [k_max]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    samples: int,
    sampling: SamplingParams,
    seed: int,
    prefix: str = "eval",
) -> dict[str, float]:
    """Sample `samples` responses per problem at the rollout settings; RNG forked and seeded, so evaluating
    never changes the training trajectory.

    Returns:
        {prefix/accuracy: mean fraction correct, prefix/pass@k for k in 1, 2, 4, ..., samples}.
    """
    prompts = [p.prompt for p in problems for _ in range(samples)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = generate(model, tokenizer, prompts, sampling, batch_size=512)
    correct = [task.reward(problems[i // samples], text).score > 0.5 for i, text in enumerate(batch.texts)]
    counts = [sum(correct[i * samples : (i + 1) * samples]) for i in range(len(problems))]
    out = {f"{prefix}/accuracy": sum(counts) / max(1, len(correct))}
    for k in pass_k_values(samples):
        out[f"{prefix}/pass@{k}"] = sum(pass_at_k(samples, c, k) for c in counts) / max(1, len(problems))
    return out
