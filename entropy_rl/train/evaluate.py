"""Sampled evaluation on a fixed problem set: accuracy, unbiased pass@k and majority-vote maj@k; where a run's
model is.

The trainer evaluates at step 0 (the policy RL starts from: the SFT warm start or `model.path`, before any
update), every `train.eval_every` steps and at the last step. Every eval draws from its own seed and restores
the RNG states afterwards, so evaluating never changes the training trajectory (tests/train/test_evaluate.py
checks that the RL steps are bit-identical with and without evals).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.metrics.dynamics import pass_at_k
from entropy_rl.rollout.base import RolloutBatch
from entropy_rl.rollout.hf import SamplingParams, generate
from entropy_rl.tasks.base import Problem, Task
from entropy_rl.train import checkpoint as ckpt

SampleFn = Callable[[PreTrainedModel, PreTrainedTokenizerBase, list[str], SamplingParams], RolloutBatch]


def pass_k_values(k_max: int) -> list[int]:
    """k in 1, 2, 4, ... up to k_max, plus k_max itself."""
    ks = [1]
    while ks[-1] * 2 <= k_max:
        ks.append(ks[-1] * 2)
    return ks if ks[-1] == k_max else ks + [k_max]


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Whether the most frequent answer among one problem's samples is correct (maj@k for k = len(answers)).

    Votes are the verifier's normalised answers (`RewardResult.answer`): equivalent forms written differently
    ("1/2", "0.5") count as different answers. Samples without an answer (None) do not vote; a tie goes to the
    answer seen first; no answer at all is incorrect.

    Args:
        answers: [k] normalised answer of each sample, None when unparseable.
        correct: [k] whether each sample was scored correct.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = votes.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts
    return correct[answers.index(top)]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    samples: int,
    sampling: SamplingParams,
    seed: int,
    prefix: str = "eval",
    sample_fn: SampleFn | None = None,
) -> dict[str, float]:
    """Sample `samples` responses per problem at the rollout settings; the CPU RNG and the model's CUDA
    device RNG are forked and seeded, so evaluating never changes the training trajectory.

    `sample_fn(model, tokenizer, prompts, sampling)` replaces plain sampling (`generate`), e.g. Top-H decoding
    (`entropy-rl eval --top-h ALPHA`, entropy_rl/rollout/strategies/top_h.py).

    Returns:
        {prefix/accuracy: mean fraction correct, prefix/pass@k for k in 1, 2, 4, ..., samples, prefix/maj@k for
        the same k > 1: the fraction of problems whose majority answer among their first k samples is correct}.
    """
    prompts = [p.prompt for p in problems for _ in range(samples)]
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if sample_fn is None:
            batch = generate(model, tokenizer, prompts, sampling, batch_size=512)
        else:
            batch = sample_fn(model, tokenizer, prompts, sampling)
    results = [task.reward(problems[i // samples], text) for i, text in enumerate(batch.texts)]
    correct = [r.score > 0.5 for r in results]
    counts = [sum(correct[i * samples : (i + 1) * samples]) for i in range(len(problems))]
    out = {f"{prefix}/accuracy": sum(counts) / max(1, len(correct))}
    for k in pass_k_values(samples):
        out[f"{prefix}/pass@{k}"] = sum(pass_at_k(samples, c, k) for c in counts) / max(1, len(problems))
    groups = [range(i * samples, (i + 1) * samples) for i in range(len(problems))]
    for k in pass_k_values(samples)[1:]:  # maj@1 is the first sample's accuracy: pass@1 estimates it better
        wins = sum(majority_correct([results[j].answer for j in g[:k]], [correct[j] for j in g[:k]]) for g in groups)
        out[f"{prefix}/maj@{k}"] = wins / max(1, len(problems))
    return out


def eval_at_step(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    samples: int,
    sampling: SamplingParams,
    train_seed: int,
    step: int,
) -> dict[str, float]:
    """The trainer's eval at `step` (0 = the policy RL starts from): `evaluate` with the seed
    train_seed + 10_007 * step, plus timing/eval_s (seconds)."""
    t0 = time.perf_counter()
    out = evaluate(model, tokenizer, task, problems, samples, sampling, seed=train_seed + 10_007 * step)
    out["timing/eval_s"] = time.perf_counter() - t0
    return out


def find_model(path: str | Path) -> tuple[Path, Path | None]:
    """The model directory `entropy-rl eval PATH` evaluates, and the run directory it belongs to.

    A model directory (config.json + weights) is used as it is. A run directory gives its newest complete
    checkpoint's model/, or, before the first checkpoint, its SFT warm start sft/model.

    Returns:
        (model directory, run directory or None when PATH is a model directory).

    Raises:
        FileNotFoundError: PATH does not exist, or holds neither a model nor a run with a usable model.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' is not a directory (give a model directory or a run directory)")
    if (path / "config.json").is_file():
        return path, None
    latest = ckpt.latest_checkpoint(path)
    if latest is not None:
        return latest / "model", path
    if (path / "sft" / ckpt.COMPLETE).is_file():
        return path / "sft" / "model", path
    raise FileNotFoundError(
        f"'{path}' holds no model: expected a model directory (config.json) or a run directory with a complete "
        "checkpoint (checkpoints/step_*/COMPLETE) or SFT warm start (sft/COMPLETE)"
    )
