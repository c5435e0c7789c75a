"""Sampled evaluation on a fixed problem set: accuracy, unbiased pass@k and majority-vote maj@k; where a run's
model is.

The trainer evaluates at step 0 (the policy RL starts from: the SFT warm start or `model.path`, before any
update), every `train.eval_every` steps and at the last step. Every eval draws from its own seed and restores
the RNG states afterwards, so evaluating never changes the training trajectory (tests/train/test_evaluate.py
checks that the RL steps are bit-identical with and without evals).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.metrics.dynamics import pass_at_k
from entropy_rl.metrics.passk import EVAL_DIR, RESULT_FORMAT, RESULT_VERSION, load_results, result_path
from entropy_rl.rollout.base import RolloutBatch
from entropy_rl.rollout.hf import SamplingParams, generate
from entropy_rl.tasks.base import Problem, Task
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.rundir import RunDirError, read_marker

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


@dataclass(frozen=True)
class EvalSamples:
    """A problem set sampled `samples` times per problem and scored.

    Attributes:
        samples: n, responses per problem.
        correct: [problems][n] whether each response was scored correct (score > 0.5).
        answers: [problems][n] the verifier's normalised answer of each response, None when unparseable.
    """

    samples: int
    correct: list[list[bool]]
    answers: list[list[str | None]]

    @property
    def counts(self) -> list[int]:
        """[problems] correct responses per problem (the c of pass@k)."""
        return [sum(flags) for flags in self.correct]


def sample_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    samples: int,
    sampling: SamplingParams,
    seed: int,
    sample_fn: SampleFn | None = None,
) -> EvalSamples:
    """Sample `samples` responses per problem at `sampling` and score them; the CPU RNG and the model's CUDA
    device RNG are forked and seeded, so evaluating never changes the training trajectory.

    `sample_fn(model, tokenizer, prompts, sampling)` replaces plain sampling (`generate`), e.g. Top-H decoding
    (`entropy-rl eval --top-h ALPHA`, entropy_rl/rollout/strategies/top_h.py).
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
    rows = [results[i * samples : (i + 1) * samples] for i in range(len(problems))]
    return EvalSamples(samples, [[r.score > 0.5 for r in row] for row in rows], [[r.answer for r in row] for row in rows])


def eval_metrics(s: EvalSamples, ks: list[int] | None = None, prefix: str = "eval") -> dict[str, float]:
    """Accuracy, unbiased pass@k and maj@k of scored samples.

    Args:
        s: the scored samples.
        ks: the k of pass@k and maj@k (each <= s.samples); None: 1, 2, 4, ... up to s.samples, plus s.samples.
        prefix: the key namespace.

    Returns:
        {prefix/accuracy: mean fraction correct, prefix/pass@k for each k, prefix/maj@k for each k > 1: the
        fraction of problems whose majority answer among their first k samples is correct}.

    Raises:
        ValueError: a k larger than the samples per problem.
    """
    ks = pass_k_values(s.samples) if ks is None else ks
    if ks and max(ks) > s.samples:
        raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem, got {s.samples}")
    n_problems = max(1, len(s.correct))
    counts = s.counts
    out = {f"{prefix}/accuracy": sum(counts) / max(1, s.samples * len(s.correct))}
    for k in ks:
        out[f"{prefix}/pass@{k}"] = sum(pass_at_k(s.samples, c, k) for c in counts) / n_problems
    for k in ks:
        if k == 1:  # maj@1 is the first sample's accuracy: pass@1 estimates it better
            continue
        wins = sum(majority_correct(a[:k], c[:k]) for a, c in zip(s.answers, s.correct))
        out[f"{prefix}/maj@{k}"] = wins / n_problems
    return out


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
    ks: list[int] | None = None,
) -> dict[str, float]:
    """`eval_metrics` of `sample_eval`: sampled accuracy, pass@k and maj@k (k in `ks`, default 1, 2, 4, ...,
    samples) of `samples` responses per problem; the RNG state is restored afterwards."""
    return eval_metrics(sample_eval(model, tokenizer, task, problems, samples, sampling, seed, sample_fn), ks, prefix)


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


# ---------------------------------------------------------------- pass@k result files (entropy-rl eval)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the names and sha256s of the files directly in `model_dir` (weights, config, tokenizer): the
    same weights anywhere give the same fingerprint, changed weights a different one. The toolkit's bookkeeping
    beside the model (dotfiles: run marker and lock; COMPLETE) is left out."""
    files = sorted(p for p in Path(model_dir).iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name != ckpt.COMPLETE)
    listing = "\n".join(f"{p.name} {ckpt.sha256_file(p)}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def result_home(model_dir: Path, run_dir: Path | None) -> tuple[Path | None, str, int | None]:
    """Where `entropy-rl eval` keeps the result of `model_dir` by default, what the model is, and its RL step.

    Results go into the `eval/` folder of the toolkit directory the model belongs to: the run directory that was
    given, the run a model directory sits in (RUN/sft/model, RUN/checkpoints/step_N/model), or an SFT output
    directory (`entropy-rl sft --out`, e.g. compare's shared warm start). A directory the toolkit did not mark is
    never written into: then the home is None (pass --out).

    Returns:
        (eval folder or None, role "warm start" | "checkpoint" | "model", RL step of a checkpoint else None).
    """
    model_dir = Path(model_dir)
    real = model_dir.resolve()
    parent, grand, great = (list(real.parents) + [real.parent] * 3)[:3]  # the root is its own parent
    step = ckpt.step_of(parent) if real.name == "model" else None
    if run_dir is None:
        if _marked(real, "sft"):
            return model_dir / EVAL_DIR, "warm start", None
        if real.name == "model" and parent.name == "sft" and _marked(grand, "train"):
            run_dir = grand
        elif step is not None and grand.name == "checkpoints" and _marked(great, "train"):
            run_dir = great
        else:
            return None, "model", None
    home = Path(run_dir) / EVAL_DIR if _marked(Path(run_dir), "train") else None
    if step is not None:
        return home, "checkpoint", step
    return home, ("warm start" if parent.name == "sft" else "model"), None


def _marked(path: Path, kind: str) -> bool:
    """Whether `path` carries the toolkit's run marker of `kind` (an unreadable marker counts as not marked)."""
    try:
        marker = read_marker(path)
    except RunDirError:
        return False
    return marker is not None and marker["kind"] == kind


def write_result(folder: Path, settings: dict[str, Any], metrics: dict[str, float], s: EvalSamples,
                 info: dict[str, Any]) -> Path:
    """Write one pass@k result (format in `entropy_rl.metrics.passk`) atomically into `folder`; returns its path.

    Args:
        folder: the eval folder (created).
        settings: everything the result depends on; its sha256 names the file.
        metrics: `eval_metrics` output (prefix "eval").
        s: the scored samples (per-problem correct counts are kept, for CIs or other estimators later).
        info: what does not key the cache: the model's directory, role and step, the wall time.
    """
    ks = settings["ks"]
    doc = {
        "format": RESULT_FORMAT, "version": RESULT_VERSION, "settings": settings, **info,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "accuracy": metrics["eval/accuracy"],
        "pass_at_k": {str(k): metrics[f"eval/pass@{k}"] for k in ks},
        "maj_at_k": {str(k): metrics[f"eval/maj@{k}"] for k in ks if k > 1},
        "correct_per_problem": s.counts,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = result_path(folder, settings)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def cached_result(folder: Path | None, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of exactly these settings in `folder`, or None."""
    if folder is None:
        return None
    want = result_path(folder, settings)
    return next((r for r in load_results(folder) if Path(r["path"]) == want and r["settings"] == settings), None)


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """A stored result as the `eval/*` dict `evaluate` returns (same keys, same order)."""
    out = {"eval/accuracy": result["accuracy"]}
    out.update({f"eval/pass@{k}": v for k, v in result["pass_at_k"].items()})
    out.update({f"eval/maj@{k}": v for k, v in result["maj_at_k"].items()})
    return out
