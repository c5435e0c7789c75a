"""Sampled evaluation on a fixed problem set: accuracy, unbiased pass@k and majority-vote maj@k; where a run's
model is.

The trainer evaluates at step 0 (the policy RL starts from: the SFT warm start or `model.path`, before any
update), every `train.eval_every` steps and at the last step. Every eval draws from its own seed and restores
the RNG states afterwards, so evaluating never changes the training trajectory (tests/train/test_evaluate.py
checks that the RL steps are bit-identical with and without evals).

`entropy-rl eval` (and `entropy-rl compare --k`, per run) resolves the model and settings (`plan_passk_eval`), then
reuses a stored result of the same settings or samples and writes one (`execute_passk_eval`).
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


# ---------------------------------------------------------------- one pass@k evaluation (entropy-rl eval, compare)

EVAL_DEFAULTS = {"task": "countdown", "task_params": {}, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16}
EVAL_PROBLEMS = 256  # `entropy-rl eval --problems` default
EVAL_SEED = 0  # `entropy-rl eval --seed` default; compare evaluates with it too, so both share cached results
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    """The default `log` of the pass@k evaluation: one line on stderr (stdout carries the metrics as JSON)."""
    import sys

    print(line, file=sys.stderr)


@dataclass(frozen=True)
class PasskEvalPlan:
    """One pass@k evaluation, resolved but not run (`plan_passk_eval`).

    Attributes:
        model_dir: the model directory to sample from.
        run_dir: the run directory it belongs to, None for a plain model directory.
        role: "warm start" | "checkpoint" | "model" (stored in the result).
        step: the RL step of a checkpoint, else None.
        folder: where the result file goes (None: no file is kept).
        settings: everything the result depends on (the model's weights by content included); its sha256 names
            the result file, so equal settings mean a cache hit.
        task: the task whose eval split is sampled.
        run_config: whether the run has a config.yaml (only then is a warm-start result looked up).
        model_path: the run config's `model.path` (where its warm start's results may live), else None.
        device: where the model samples: `device` given, else the run's `train.device`, else cuda when available.
    """

    model_dir: Path
    run_dir: Path | None
    role: str
    step: int | None
    folder: Path | None
    settings: dict[str, Any]
    task: Task
    run_config: bool
    model_path: str | None
    device: str = "cpu"

    @property
    def ks(self) -> list[int]:
        """The k grid, ascending."""
        return list(self.settings["ks"])


@dataclass(frozen=True)
class PasskEvalResult:
    """The outcome of one pass@k evaluation (`execute_passk_eval`).

    Attributes:
        plan: what was evaluated, and how.
        metrics: {eval/accuracy, eval/pass@k, eval/maj@k (k > 1)} as `evaluate` returns them (probabilities).
        path: the result file written or reused, None when none is kept.
        cached: True when a stored result with the same settings was reused (nothing was sampled).
        base: {k: pass@k} of a stored warm-start result evaluated the same way (`passk.matching_base`), looked up
            only for a run's checkpoint; None when there is none.
    """

    plan: PasskEvalPlan
    metrics: dict[str, float]
    path: Path | None
    cached: bool
    base: dict[int, float] | None = None

    @property
    def curve(self) -> dict[int, float]:
        """{k: pass@k}, ascending k."""
        return {k: self.metrics[f"eval/pass@{k}"] for k in self.plan.ks}

    @property
    def crossover(self) -> int | None:
        """The crossover k against `base` (`passk.crossover_k`); None without a base or without a crossover."""
        from entropy_rl.metrics.passk import crossover_k

        return crossover_k(self.base, self.curve) if self.base is not None else None


def warm_start_model(given: str | Path, run_dir: Path | None, model_path: str | None) -> tuple[Path, Path | None, str, None]:
    """The model a run started from (`entropy-rl eval RUN --warm-start`) and where its result goes.

    Args:
        given: what the user named (for the message).
        run_dir: the run directory, None when `given` is a model directory.
        model_path: the run config's `model.path`, None without a config.

    Returns:
        (model directory, eval folder or None, "warm start", None): RUN/sft/model with RUN/eval, else `model_path`
        with that directory's own eval/ when it is an SFT output directory, else RUN/eval.

    Raises:
        FileNotFoundError: not a run directory, or a run without a warm start on disk.
    """
    if run_dir is None:
        raise FileNotFoundError(f"--warm-start needs a run directory; '{given}' is a model directory")
    if (run_dir / "sft" / ckpt.COMPLETE).is_file():
        home, _, _ = result_home(run_dir / "sft" / "model", run_dir)
        return run_dir / "sft" / "model", home, "warm start", None
    if not model_path or not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"'{run_dir}' has no warm start to evaluate: no sft/COMPLETE and no model.path "
                                "with a model (a run from a fresh tiny model without SFT starts from random weights)")
    home, _, _ = result_home(Path(model_path), None)
    return Path(model_path), home or result_home(run_dir / "sft" / "model", run_dir)[0], "warm start", None


def plan_passk_eval(
    model: str | Path,
    ks: list[int] | None = None,
    problems: int = EVAL_PROBLEMS,
    samples: int | None = None,
    seed: int = EVAL_SEED,
    warm_start: bool = False,
    out: str | Path | None = None,
    task: str | None = None,
    task_params: list[str] | tuple[str, ...] = (),
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    top_h: float | None = None,
    log: Log = _stderr,
    device: str | None = None,
) -> PasskEvalPlan:
    """Resolve what `entropy-rl eval` evaluates: the model, its run, the task and sampling, the settings, the folder.

    For a run directory the task and sampling default to the run's config.yaml (else EVAL_DEFAULTS); an explicit
    `task` keeps the run's task params only when it is the run's task. Logs "evaluating MODEL_DIR" for a run.

    Args:
        model: a model directory, or a run directory (its newest complete checkpoint, else its SFT warm start).
        ks: the k grid, ascending (None: 1, 2, 4, ... up to `samples`, plus `samples`).
        problems: eval problems.
        samples: responses per problem, the n of the unbiased estimator (None: the largest k, else 8).
        seed: seed of the problem draw and of sampling.
        warm_start: evaluate the model the run started from (`warm_start_model`) instead of its final model.
        out: the result folder (None: `result_home`, the eval/ folder of the run or SFT output).
        task, task_params, temperature, top_p, max_new_tokens: override the run's (task params as `a.b=c`).
        top_h: sample with Top-H decoding at this entropy scale in (0, 1] (None: plain sampling).
        log: where the progress line goes.
        device: cpu | cuda | auto (None: the run's `train.device`, else auto). Samples drawn on another device
            differ, so a device other than the CPU is part of the settings (CPU results keep their keys).

    Raises:
        ValueError: a k above the samples per problem; a bad task parameter.
        FileNotFoundError: no model at `model`, or no warm start with `warm_start`.
        ConfigError: cuda requested without a CUDA device, or an unknown device name.
    """
    from entropy_rl.tasks import TASKS, make_task
    from entropy_rl.train.config import apply_overrides, load_config, pick_device

    if device is not None:
        pick_device(device, "--device")  # a bad device fails before any model is looked at

    if task is not None:  # an explicit task's params are checked before any model is looked at
        TASKS.get(task).parse_params(apply_overrides({}, list(task_params)), "--task-params")
    samples = samples if samples is not None else (ks[-1] if ks else 8)
    if ks and ks[-1] > samples:
        raise ValueError(f"--k {ks[-1]} needs at least {ks[-1]} samples per problem; --samples is {samples}")
    model_dir, run_dir = find_model(model)
    defaults, model_path, run_device = dict(EVAL_DEFAULTS), None, "auto"
    has_config = run_dir is not None and (run_dir / "config.yaml").is_file()
    if has_config:
        run_cfg = load_config(run_dir / "config.yaml")
        r = run_cfg.rollout
        defaults = {"task": run_cfg.task.name, "task_params": dict(run_cfg.task.params), "temperature": r.temperature,
                    "top_p": r.top_p, "top_k": r.top_k, "max_new_tokens": r.max_new_tokens}
        model_path, run_device = run_cfg.model.path, run_cfg.train.device
    where = str(pick_device(device if device is not None else run_device, "--device"))
    home, role, step = result_home(model_dir, run_dir)
    if warm_start:
        model_dir, home, role, step = warm_start_model(model, run_dir, model_path)
    if run_dir is not None:
        log(f"evaluating {model_dir}")
    flags = {"task": task, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    pick = {**defaults, **{k: v for k, v in flags.items() if v is not None}}
    same_task = pick["task"] == defaults["task"]  # the run's task params only go with the run's task
    params = apply_overrides(dict(defaults["task_params"]) if same_task else {}, list(task_params))
    sampling = SamplingParams(float(pick["temperature"]), float(pick["top_p"]), int(pick["top_k"]),
                              int(pick["max_new_tokens"]))
    settings = {"model_sha256": model_fingerprint(model_dir), "task": pick["task"],
                "task_params": json.loads(json.dumps(params, sort_keys=True, default=str)),
                "problems": problems, "samples": samples, "ks": ks or pass_k_values(samples), "seed": seed,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                "max_new_tokens": sampling.max_new_tokens, "top_h": top_h}
    if where != "cpu":
        settings["device"] = where
    return PasskEvalPlan(Path(model_dir), run_dir, role, step, Path(out) if out else home, settings,
                         make_task(pick["task"], **params), has_config, model_path, where)


def execute_passk_eval(plan: PasskEvalPlan, no_cache: bool = False, log: Log = _stderr) -> PasskEvalResult:
    """Run a planned evaluation: reuse the stored result of the same settings (unless `no_cache`), else sample,
    score and write it (`write_result`); for a run's checkpoint, look up a warm-start result evaluated the same
    way (`passk.warm_start_results`, `passk.matching_base`) and log the crossover.

    Logs "reusing PATH", "wrote PATH" or why no file is kept, then "vs the warm start: ..." when a base exists.
    """
    from functools import partial

    from entropy_rl.metrics import passk
    from entropy_rl.models import load_pretrained

    s = plan.settings
    cached = None if no_cache else cached_result(plan.folder, s)
    path = None
    if cached is not None:
        log(f"reusing {cached['path']} (same settings, same model weights)")
        metrics, path = result_metrics(cached), Path(cached["path"])
    else:
        model, tokenizer = load_pretrained(plan.model_dir)
        model.to(plan.device)
        problems = plan.task.prompts("eval", s["problems"], seed=s["seed"])
        sample_fn = None
        if s["top_h"] is not None:
            from entropy_rl.rollout.strategies.top_h import Params as TopHParams
            from entropy_rl.rollout.strategies.top_h import top_h_generate

            sample_fn = partial(top_h_generate, p=TopHParams(alpha=s["top_h"]))
        sampling = SamplingParams(s["temperature"], s["top_p"], s["top_k"], s["max_new_tokens"])
        t0 = time.perf_counter()
        scored = sample_eval(model, tokenizer, plan.task, problems, s["samples"], sampling, s["seed"], sample_fn)
        metrics = eval_metrics(scored, s["ks"])
        if plan.folder is not None:
            info = {"model_dir": str(plan.model_dir.resolve()), "role": plan.role, "step": plan.step,
                    "wall_s": round(time.perf_counter() - t0, 3)}
            path = write_result(plan.folder, s, metrics, scored, info)
            log(f"wrote {path}")
        else:
            log("no result file: the model is not in a run or SFT output directory; pass --out DIR to keep one")
    base = None
    if plan.run_dir is not None and plan.role == "checkpoint" and plan.run_config:
        found = passk.matching_base({"settings": s}, passk.warm_start_results(plan.run_dir, {"model": {"path": plan.model_path}}))
        if found is not None:
            base = passk.curve(found)
    result = PasskEvalResult(plan, metrics, path, cached is not None, base)
    if base is not None:
        log(f"vs the warm start: {passk.describe_crossover(base, result.curve)}")
    return result
