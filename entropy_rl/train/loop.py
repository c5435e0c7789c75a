"""GRPO-family training loop: rollout -> reward -> pre-update pass -> advantages -> update -> log -> checkpoint.

One readable function, `train(cfg, run_dir)`. Methods and estimators are looked up by name in their
registries; nothing here special-cases a method. Entropy metrics are measured in the pre-update pass, as the
definition of `entropy/token_mean` requires (tempered, response tokens only, fp32, token mean).

Run it with `entropy-rl train CONFIG [a.b=c ...]` or `entropy-rl demo`.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from entropy_rl.core.advantage import group_stats
from entropy_rl.core.aggregate import Aggregation
from entropy_rl.core.policy_loss import MethodState, PolicyLossMethod, get_policy_loss, step_context
from entropy_rl.core.registry import Entry
from entropy_rl.core.rollout_correction import CorrectionSpec, rollout_correction
from entropy_rl.metrics.dynamics import (
    cov_logp_adv,
    distinct_answers_by_group,
    entropy_stats,
    fit_entropy_performance_law,
    steer_omega_signal,
)
from entropy_rl.metrics.diversity import group_diversity
from entropy_rl.metrics.sinks import (JsonlSink, MetricSink, MultiSink, StdoutSink, append_jsonl, read_jsonl,
                                      truncate_jsonl)
from entropy_rl.models.build import (TinyModelSpec, build_tiny_model, enable_gradient_checkpointing, load_pretrained,
                                     save_pretrained)
from entropy_rl.models.char_tokenizer import build_char_tokenizer
from entropy_rl.presets import flatten
from entropy_rl.rollout.base import RolloutBatch, RolloutEngine, SamplingParams, logp_diff_metrics, make_engine
from entropy_rl.rollout.strategies import RolloutStrategy, make_strategy
from entropy_rl.tasks import make_task
from entropy_rl.tasks.base import DEFAULT_SCORE_RANGE, Problem, RewardResult, validate_result
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import (Config, ConfigError, check_context, correction_spec, from_dict, pick_device, save_config,
                                     to_dict)
from entropy_rl.train.attention_probe import ATTENTION_FILE, attention_entropy, attention_metrics, attention_modules
from entropy_rl.train.entropy_probe import Sampler, measure_after_update
from entropy_rl.train.batch import ScoredBatch, batch_advantages, score_batch, scoring_temperature, seed_for
from entropy_rl.train.evaluate import eval_at_step
from entropy_rl.train.guard import UpdateGuard
from entropy_rl.train.rundir import RunLock, open_run_dir
from entropy_rl.train.samples import CompletionLog
from entropy_rl.train.sft import warm_start
from entropy_rl.train.update import update_policy


@dataclass(frozen=True)
class RunResult:
    """What `train` returns: the run directory and the last logged metrics."""

    run_dir: Path
    final_metrics: dict[str, float]


class TrainingStopped(RuntimeError):
    """The run stopped itself (e.g. too many consecutive non-finite updates); a checkpoint was written."""


def with_defaults(saved: Any) -> Any:
    """A saved config dict with every key a newer version added filled with its default (`to_dict(from_dict(...))`),
    so resuming a run saved before a new setting existed compares equal; a dict that no longer validates is
    returned as it is (the comparison then names what differs)."""
    if not isinstance(saved, dict):
        return saved
    try:
        return to_dict(from_dict(Config, saved))
    except ConfigError:
        return saved


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, kind: str = "train",
                    log: Callable[[str], None] = print) -> RunLock:
    """Check, lock and mark the run directory (train/rundir.py), refuse a different config on resume, save it.

    Returns the run directory's lock, held until the caller releases it (use it as a context manager).
    """
    lock = open_run_dir(run_dir, kind, resume, overwrite, log)
    try:
        cfg_path = run_dir / "config.yaml"
        if resume and cfg_path.exists():
            import yaml

            saved, new = with_defaults(yaml.safe_load(cfg_path.read_text())), to_dict(cfg)
            if saved != new:
                a, b = flatten(saved if isinstance(saved, dict) else {}), flatten(new)
                keys = ", ".join(sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))[:5])
                raise ConfigError(f"--resume: the config differs from the one saved in '{cfg_path}' ({keys})" if kind == "train"
                                  else f"the config differs from the one saved in '{cfg_path}' ({keys}); pass --overwrite "
                                       "to replace that output")
        save_config(cfg, cfg_path)
    except BaseException:
        lock.release()
        raise
    return lock


class TqdmStream:
    """A text stream that prints whole lines above the progress bar (tqdm.write) instead of through it."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                tqdm.write(line)
        return len(text)

    def flush(self) -> None:
        pass


def make_sinks(cfg: Config, run_dir: Path, progress: bool) -> MetricSink:
    """The configured metric sinks (JSONL is what tests, reports and resume read)."""
    sinks: list[MetricSink] = []
    for name in cfg.train.sinks:
        if name == "jsonl":
            sinks.append(JsonlSink(run_dir / "metrics.jsonl"))
        elif name == "stdout":
            sinks.append(StdoutSink(total_steps=cfg.train.steps, stream=TqdmStream() if progress else sys.stdout))
        elif name == "tensorboard":
            from entropy_rl.metrics.sinks import TensorBoardSink

            sinks.append(TensorBoardSink(run_dir / "tb"))
        elif name == "wandb":
            from entropy_rl.metrics.sinks import WandbSink

            sinks.append(WandbSink(config=to_dict(cfg), dir=run_dir))
    return MultiSink(sinks)


def initial_model(cfg: Config, task: Any):
    """(model, tokenizer) before any training: a local checkpoint (`model.path`) or a fresh tiny Qwen2 model."""
    if cfg.model.path:
        return load_pretrained(cfg.model.path, cfg.model.dtype)
    tokenizer = build_char_tokenizer(task.alphabet)
    spec = TinyModelSpec(**{k: getattr(cfg.model, k) for k in TinyModelSpec.__dataclass_fields__})
    return build_tiny_model(spec, tokenizer, seed=cfg.train.seed), tokenizer


def build_policy(cfg: Config, task: Any, run_dir: Path, device: torch.device, log: Callable[[str], None]):
    """The initial policy: a local checkpoint, a cached SFT result, or a fresh tiny model warm-started by SFT.

    The SFT warm start checkpoints into RUN_DIR/sft/checkpoints and continues from there after an interruption
    (sft_metrics.jsonl is rewound to that checkpoint); those checkpoints are removed once sft/model is complete.
    """
    sft_dir = run_dir / "sft"
    if (sft_dir / ckpt.COMPLETE).is_file():
        log(f"reusing the SFT warm start in {sft_dir}")
        shutil.rmtree(ckpt.checkpoint_dir(sft_dir), ignore_errors=True)  # left by a kill after COMPLETE
        return load_pretrained(sft_dir / "model", "saved")
    if not cfg.sft.enabled:
        model, tokenizer = initial_model(cfg, task)
        return model.to(device), tokenizer
    model, tokenizer = warm_start(cfg, task, rollout_sampling(cfg), lambda: initial_model(cfg, task), sft_dir,
                                  run_dir / "sft_metrics.jsonl", device, log)
    save_pretrained(model, tokenizer, sft_dir / "model")
    (sft_dir / ckpt.COMPLETE).write_text("ok")
    shutil.rmtree(ckpt.checkpoint_dir(sft_dir), ignore_errors=True)
    return model, tokenizer


def rollout_sampling(cfg: Config) -> SamplingParams:
    """SamplingParams from the rollout section."""
    r = cfg.rollout
    return SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Run SFT warm start (if enabled) and `cfg.train.steps` RL steps, writing everything under `run_dir`.

    The run directory is checked, marked and locked first (train/rundir.py): a second process on it fails at
    once, `overwrite` removes only what entropy-rl wrote there, and a non-run directory is never written into.
    """
    run_dir = Path(run_dir)
    with prepare_run_dir(cfg, run_dir, resume, overwrite, log=tqdm.write if progress else print):
        return train_locked(cfg, run_dir, resume, progress)


@contextmanager
def timed(m: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in the block to m[key]."""
    t0 = time.perf_counter()
    yield
    m[key] = m.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class Run:
    """Everything a run holds across steps (built once by `start_run`, restored from a checkpoint on resume)."""

    cfg: Config
    run_dir: Path
    log: Callable[[str], None]
    task: Any
    method: Entry[PolicyLossMethod]
    params: Any
    state: MethodState | None
    model: Any
    tokenizer: Any
    ref_model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: RolloutEngine
    strategy: RolloutStrategy
    sinks: MetricSink
    eval_set: list
    guard: UpdateGuard
    start_step: int = 0
    skipped_total: int = 0
    skipped_in_a_row: int = 0
    law_points: list[tuple[float, float]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)  # the newest logged metrics (the step-0 eval before step 1)
    guard_reason: str = ""  # why the last update was skipped or rolled back (for the stop message)
    correction: CorrectionSpec = field(default_factory=CorrectionSpec)  # algorithm.rollout_correction, parsed

    def save(self, step: int) -> None:
        """Checkpoint the model, optimizer, scheduler, RNG and method state at `step`."""
        trainer_state = {
            "step": step,
            "model_dtype": ckpt.dtype_name(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "skipped_total": self.skipped_total,
            "method_state": self.state.state_dict() if self.state is not None else None,
            "strategy_state": self.strategy.state_dict(),
        }
        ckpt.save_checkpoint(self.run_dir, step, self.model, self.tokenizer, trainer_state,
                             keep=self.cfg.train.keep_checkpoints, min_free_bytes=int(self.cfg.train.min_free_gb * 2**30))


def start_run(cfg: Config, run_dir: Path, progress: bool, resume: bool) -> Run:
    """Build (or restore from the newest verified checkpoint) task, method, policy, reference, optimizer, engine."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    log = tqdm.write if progress else print
    task = make_task(cfg.task.name, **cfg.task.params)
    method = get_policy_loss(cfg.algorithm.method)
    params = method.make_params(**cfg.algorithm.method_params)
    state = method.obj.make_state(params) if method.obj.make_state is not None else None
    # newest checkpoint whose checksums verify (older ones are fallbacks, each skip is logged) + its trainer state
    found = ckpt.load_latest(run_dir, warn=log) if resume else None
    latest, saved = found if found is not None else (None, None)
    model, tokenizer = load_pretrained(latest / "model", saved["model_dtype"]) if latest is not None \
        else build_policy(cfg, task, run_dir, device, log)
    model.to(device).train()
    check_context(cfg, task, tokenizer, getattr(model.config, "max_position_embeddings", None))
    if cfg.train.attention_entropy_every:
        attention_modules(model)  # a model the monitor cannot read fails now, not at its first monitored step
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    ref_model = None
    if cfg.algorithm.kl_coef > 0:  # the reference is the policy RL starts from (after SFT)
        ref_src = run_dir / "sft" / "model" if (run_dir / "sft" / ckpt.COMPLETE).is_file() else cfg.model.path
        ref_model = load_pretrained(ref_src, cfg.model.dtype)[0].to(device).eval() if ref_src else copy.deepcopy(model).eval()
        ref_model.requires_grad_(False)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, o.warmup_steps)))
    run = Run(cfg, run_dir, log, task, method, params, state, model, tokenizer, ref_model, optimizer, scheduler,
              make_engine(cfg.rollout.engine, model, tokenizer, cfg.rollout.engine_params), make_strategy(cfg.rollout.strategy, cfg.rollout.strategy_params),
              MultiSink([]),
              task.prompts("eval", cfg.train.eval_problems, seed=cfg.train.seed) if cfg.train.eval_every else [],
              UpdateGuard(model, optimizer))  # the guard rolls back an optimizer step that leaves anything non-finite
    if latest is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
        run.start_step, run.skipped_total = saved["step"], saved.get("skipped_total", 0)
        if state is not None:
            state.load_state_dict(saved["method_state"])
        run.strategy.load_state_dict(saved.get("strategy_state") or {})
        truncate_jsonl(run_dir / "metrics.jsonl", run.start_step)
        truncate_jsonl(run_dir / ATTENTION_FILE, run.start_step)
        log(f"resumed from {latest} at step {run.start_step}")
    elif resume:
        truncate_jsonl(run_dir / "metrics.jsonl", 0)
        truncate_jsonl(run_dir / ATTENTION_FILE, 0)
    run.correction = correction_spec(cfg)
    if structural_mismatch(cfg):
        log(f"warning: rollout.top_p={cfg.rollout.top_p:g} / top_k={cfg.rollout.top_k} truncate the sampling distribution and "
            "the trainer does not replay it, so sampling and trainer log-probs differ by construction (rollout_corr/* "
            "measures it; algorithm.rollout_correction corrects for it)")
    run.sinks = make_sinks(cfg, run_dir, progress)
    logged = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    # (entropy, reward) pairs of every step so far, for the running R = -a exp(H) + b fit (rebuilt on resume)
    run.law_points = [(r["entropy/token_mean"], r["reward/mean"]) for r in logged if r.get("step", 0) >= 1]
    if cfg.train.eval_every and run.start_step == 0 and not any(r.get("step") == 0 for r in logged):
        # step 0: the policy RL starts from (the warm start), before any update; its own seed, RNG restored
        run.last = eval_at_step(model, tokenizer, task, run.eval_set, cfg.train.eval_samples, rollout_sampling(cfg),
                                cfg.train.seed, 0)
        run.sinks.log(0, run.last)
    return run


def train_locked(cfg: Config, run_dir: Path, resume: bool, progress: bool) -> RunResult:
    """The body of `train`, run while this process holds the run directory's lock: the step loop."""
    run = start_run(cfg, run_dir, progress, resume)
    model, method, params, state, o, t = run.model, run.method, run.params, run.state, cfg.optim, cfg.train
    P, G, T = cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens
    micro, sampling = o.micro_batch_size or P * G // o.mini_batches, rollout_sampling(cfg)
    features = method.obj.old_features + method.obj.cur_features
    completions = CompletionLog(run.run_dir, t.log_completions_every, t.log_completions_n, t.steps, run.start_step)
    last = run.last
    bar = tqdm(total=t.steps, initial=run.start_step, desc="rl", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(run.start_step + 1, t.steps + 1):
        m: dict[str, float] = {}
        with timed(m, "timing/step_s"):
            # ---- rollout and reward ----
            problems = run.task.prompts("train", P, seed=seed_for("prompts", t.seed, step))
            score_range = getattr(run.task, "score_range", DEFAULT_SCORE_RANGE)

            def verify(rows: Sequence[int], texts: Sequence[str]) -> list[RewardResult]:
                return checked_rewards(run.task, [problems[i] for i in rows], list(texts), score_range, run.log)

            def reward_fn(rows: Sequence[int], texts: Sequence[str]) -> torch.Tensor:  # for strategies that read rewards
                return torch.tensor([r.score for r in verify(rows, texts)], dtype=torch.float32)

            with timed(m, "timing/generate_s"):
                batch, strategy_metrics = run.strategy.generate(run.engine, model, run.tokenizer, [p.prompt for p in problems],
                                                                sampling, group_size=G, step=step, reward_fn=reward_fn,
                                                                score_chunk=micro)
            m.update(strategy_metrics)
            run.engine.release()  # e.g. vLLM sleeps on GPU through scoring and the update; sync_weights wakes it
            with timed(m, "timing/reward_s"):
                results = verify(batch.group_index.tolist(), batch.texts)
                rewards = torch.tensor([r.score for r in results], dtype=torch.float32, device=batch.response_mask.device)

            # ---- pre-update pass (entropy metrics are measured here; on probed steps it also takes the gradient of
            # H for the entropy-change probe, timed as timing/score_s), advantages ----
            mask = batch.loss_mask  # [B, T] the trained tokens (a branch's copied prefix is trained once, in its source)
            probing = bool(t.dynamics_every) and step % t.dynamics_every == 0
            with timed(m, "timing/score_s"):
                old_logp, old_entropy, extras, ref_logp, probe = score_batch(
                    model, run.ref_model, batch, micro, features, params, probe_with=run.optimizer if probing else None)
            if probe is not None:  # the probe also reports the sampler's entropy and its change (H_rollout, ...)
                probe = replace(probe, sampler=Sampler(batch.temperature, sampling))
            # rollout correction (engine vs trainer log-probs): IS weights, rejected tokens, rollout_corr/* metrics
            corr = rollout_correction(old_logp, batch.sampling_logp, batch.response_mask, run.correction)
            train_mask = mask if corr.keep is None else mask * corr.keep  # rejection leaves the loss (as verl)
            adv = batch_advantages(cfg.algorithm.advantage, cfg.algorithm.advantage_params, rewards, batch, train_mask,
                                   old_entropy)
            scored = ScoredBatch(batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], scoring_temperature(batch),
                                 train_mask, old_logp, old_entropy, adv, ref_logp, extras, corr.weights)

            # ---- metrics of the rollout batch, before the update ----
            m.update(batch_metrics(batch, results, rewards, scored, t.high_entropy_threshold, entropy_mask=mask))
            m.update(correction_metrics(corr.metrics, structural_mismatch(cfg)))
            if t.attention_entropy_every and step % t.attention_entropy_every == 0:
                with timed(m, "timing/attention_s"):
                    per_head = attention_entropy(model, scored.input_ids, scored.attention_mask, scored.prompt_len, mask, micro)
                m.update(attention_metrics(per_head))
                append_jsonl(run.run_dir / ATTENTION_FILE, [{"step": step, "entropy": per_head.tolist()}])
            run.law_points.append((m["entropy/token_mean"], m["reward/mean"]))
            m.update(law_metrics(run.law_points))
            if state is not None:  # first show the state this batch (anchors, histories), then take this step's values
                state.before_update(scored.rows(slice(None)))
            ctx = step_context(state, params, Aggregation(cfg.algorithm.loss_agg_mode, norm_length=T))
            if step in (1, t.steps):  # per-token entropies of the first and last batch, for the report's histogram
                save_token_entropies(run.run_dir, step, old_entropy, mask)

            # ---- update, bracketed by the entropy-change probe; then the engine gets the new weights ----
            with timed(m, "timing/update_s"):
                update = update_policy(model, run.optimizer, method, params, ctx, scored, cfg, step, run.guard)
                run.scheduler.step()
            run.engine.sync_weights(model)
            if probe is not None:  # re-score the same batch after the step: measured vs predicted entropy change
                with timed(m, "timing/dynamics_s"):
                    m.update(measure_after_update(model, probe, scored.input_ids, scored.attention_mask, scored.prompt_len,
                                                  scored.temperature, mask, micro))
            m.update(update.metrics)
            m["policy/lr"] = run.optimizer.param_groups[0]["lr"]
            run.skipped_total += update.skipped
            run.skipped_in_a_row = run.skipped_in_a_row + 1 if update.skipped else 0
            run.guard_reason = update.reason or run.guard_reason
            m["guard/skipped_updates"], m["guard/rolled_back"] = float(update.skipped), float(update.rolled_back)
            if state is not None:
                m.update(state.metrics())  # the values used in this step
                state.after_update(m)

            # ---- eval, completions ----
            if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                m.update(eval_at_step(model, run.tokenizer, run.task, run.eval_set, t.eval_samples, sampling, t.seed, step))
            completions.maybe_log(step, problems, G, batch, results, scored.adv, old_entropy, run.tokenizer, run.sinks)

        # ---- log, checkpoint ----
        run.sinks.log(step, m)
        last = m
        bar.update(1)
        if (t.save_every and step % t.save_every == 0) or step == t.steps:
            run.save(step)
        if run.skipped_in_a_row >= o.max_skipped_steps:
            stop_run(run, bar, step)
    bar.close()
    run.sinks.close()
    if t.steps == 0 or run.start_step >= t.steps:
        run.save(max(run.start_step, t.steps))
    return RunResult(run.run_dir, last)


def stop_run(run: Run, bar: Any, step: int) -> None:
    """Checkpoint and stop after `optim.max_skipped_steps` steps in a row whose updates were all skipped.

    Raises:
        TrainingStopped: always, naming the step and the checkpoint.
    """
    run.save(step)
    run.sinks.close()
    bar.close()
    raise TrainingStopped(
        f"stopped at step {step}: {run.skipped_in_a_row} consecutive steps had non-finite updates (last: "
        f"{run.guard_reason}); weights were never updated with them; checkpoint saved in {ckpt.latest_checkpoint(run.run_dir)}"
    )


def law_metrics(points: list[tuple[float, float]]) -> dict[str, float]:
    """dynamics/law_{a,b,r2,ceiling}: the running fit of R = -a exp(H) + b over every step so far ({} if undetermined)."""
    law = fit_entropy_performance_law([h for h, _ in points], [r for _, r in points])
    return {} if law is None else {f"dynamics/law_{k}": law[k] for k in ("a", "b", "r2", "ceiling")}


def structural_mismatch(cfg: Config) -> bool:
    """Whether the sampler truncates (rollout.top_p < 1 or top_k > 0), which the trainer's softmax(z / T) does not."""
    return cfg.rollout.top_p < 1.0 or cfg.rollout.top_k > 0


def correction_metrics(metrics: dict[str, torch.Tensor], structural: bool) -> dict[str, float]:
    """The rollout correction's rollout_corr/* scalars as floats (one device sync), with the structural flag."""
    keys = list(metrics)
    values = torch.stack([metrics[k].detach().double().reshape(()) for k in keys]).cpu().tolist() if keys else []
    return {**dict(zip(keys, values)), "rollout_corr/structural_mismatch": float(structural)}


def batch_metrics(batch: RolloutBatch, results: list, rewards: torch.Tensor, scored: ScoredBatch,
                  high_threshold: float, entropy_mask: torch.Tensor | None = None) -> dict[str, float]:
    """Everything logged about the rollout batch before the update: rollout, reward, entropy, dynamics, adv.

    Entropy statistics are over `entropy_mask` (default `scored.mask`): the trainer passes the tokens before the
    rollout correction's rejection, so `entropy/*` keeps its definition (response tokens) whatever is rejected;
    the update's statistics (cov_logp_adv, steer_omega, adv/*) are over the trained tokens `scored.mask`.
    """
    mask, adv, correct = scored.mask, scored.adv, rewards > 0.5
    m = rollout_metrics(batch, results, rewards, correct, scored.old_logp)
    m.update(entropy_stats(scored.old_entropy, mask if entropy_mask is None else entropy_mask, adv, correct,
                           high_threshold=high_threshold))
    m["dynamics/cov_logp_adv"] = cov_logp_adv(scored.old_logp, adv, mask)
    m["dynamics/steer_omega"] = steer_omega_signal(scored.old_logp, adv, scored.old_entropy, mask)
    valid_adv = adv[mask.bool()]
    m["adv/mean"], m["adv/std"] = float(valid_adv.mean()), float(valid_adv.std(unbiased=False)) if valid_adv.numel() > 1 else 0.0
    m["adv/zero_frac"] = float((valid_adv == 0).float().mean())
    return m


def save_token_entropies(run_dir: Path, step: int, entropy: torch.Tensor, mask: torch.Tensor) -> None:
    """Write the response-token entropies (nats, pre-update pass) of a step to token_entropy/step_NNNNNN.json."""
    out = run_dir / "token_entropy"
    out.mkdir(exist_ok=True)
    values = entropy[mask.bool()].float().cpu().tolist()
    (out / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "entropy": [round(v, 6) for v in values]}))


def checked_rewards(task: Any, problems: list[Problem], texts: list[str], score_range: tuple[float, float],
                    log: Callable[[str], None]) -> list[RewardResult]:
    """`task.reward` of each response, each result checked: a malformed one (score NaN/inf, outside the task's
    `score_range`, not a number, ...) becomes score 0 with reason "error" (counted in reward/errors) and a
    warning line, never a crash.

    Args:
        task: the task; problems[i] is the problem that texts[i] answers.
        problems: one per response.
        texts: the responses (EOS removed).
        score_range: (low, high) inclusive range of valid scores.
        log: where the warning goes (one line per batch that had malformed results).
    """
    results, bad = [], []
    for problem, text in zip(problems, texts):
        result = task.reward(problem, text)
        try:
            results.append(validate_result(result, score_range))
        except (TypeError, ValueError) as e:
            results.append(RewardResult(0.0, "error", None))
            bad.append(str(e))
    if bad:
        log(f"warning: {len(bad)} of {len(texts)} rewards from task '{getattr(task, 'name', '?')}' were invalid "
            f"and scored 0 as reason 'error' (first: {bad[0]})")
    return results


def rollout_metrics(batch: RolloutBatch, results: list, rewards: torch.Tensor, correct: torch.Tensor,
                    old_logp: torch.Tensor) -> dict[str, float]:
    """Reward and rollout statistics of one batch (groups by `batch.group_index`)."""
    mask = batch.response_mask
    solved, _, count = group_stats(correct.double(), batch.group_index)  # [B]: the group's solve rate, per row
    weight = 1.0 / count  # each group counts once however many rows it has
    lengths = mask.sum(-1)
    m = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "reward/format_error_rate": sum(r.format_error for r in results) / len(results),
        "reward/errors": sum(r.reason == "error" for r in results) / len(results),
        "reward/timeouts": sum(r.reason == "timeout" for r in results) / len(results),
        "reward/solve_all_frac": float(((solved == 1) * weight).sum() / weight.sum()),
        "reward/solve_none_frac": float(((solved == 0) * weight).sum() / weight.sum()),
        "rollout/response_len_mean": float(lengths.mean()),
        "rollout/response_len_max": float(lengths.max()),
        "rollout/truncated_frac": float(batch.truncated.float().mean()),
        "train/tokens": float(mask.sum()),
    }
    m.update(distinct_answers_by_group([r.answer for r in results], correct.tolist(), batch.group_index.tolist()))
    m.update(group_diversity(batch.texts, [r.answer for r in results], batch.group_index.tolist()))
    diff = logp_diff_metrics(batch.sampling_logp, old_logp, mask)  # engine vs trainer log-probs, computed once
    m.update(diff)
    m["rollout/logp_mismatch"] = diff["rollout/logp_diff_mean"]  # the older name of the same quantity
    return m
