"""GRPO-family training loop: rollout -> reward -> pre-update pass -> advantages -> update -> log -> checkpoint.

One readable function, `train(cfg, run_dir)`. Methods and estimators are looked up by name in their
registries; nothing here special-cases a method. Entropy metrics are measured in the pre-update pass, as the
definition of `entropy/token_mean` requires (tempered, response tokens only, fp32, token mean).

Run it with `entropy-rl train CONFIG [a.b=c ...]` or `entropy-rl demo`.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from entropy_rl.core.advantage import compute_advantages
from entropy_rl.core.aggregate import Aggregation, aggregate
from entropy_rl.core.kl import kl_estimate
from entropy_rl.core.policy_loss import check_inputs, get_policy_loss, run_select, step_context
from entropy_rl.core.types import PolicyInputs, TokenWeights
from entropy_rl.metrics.dynamics import (
    cov_logp_adv,
    distinct_answers,
    entropy_stats,
    fit_entropy_performance_law,
    steer_omega_signal,
)
from entropy_rl.metrics.sinks import JsonlSink, MetricSink, MultiSink, StdoutSink, read_jsonl, truncate_jsonl
from entropy_rl.models.build import (TinyModelSpec, build_tiny_model, enable_gradient_checkpointing, load_pretrained,
                                     save_pretrained)
from entropy_rl.models.char_tokenizer import build_char_tokenizer
from entropy_rl.presets import flatten
from entropy_rl.rollout.hf import RolloutBatch, SamplingParams, generate
from entropy_rl.tasks import make_task
from entropy_rl.tasks.base import DEFAULT_SCORE_RANGE, Problem, RewardResult, validate_result
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import Config, ConfigError, check_context, save_config, to_dict
from entropy_rl.train.entropy_probe import measure_after_update, probe_before_update
from entropy_rl.train.evaluate import eval_at_step
from entropy_rl.train.forward import entropy_for_update, score_in_chunks, score_responses
from entropy_rl.train.rundir import RunLock, open_run_dir
from entropy_rl.train.samples import CompletionLog
from entropy_rl.train.guard import UpdateGuard
from entropy_rl.train.sft import warm_start


@dataclass(frozen=True)
class RunResult:
    """What `train` returns: the run directory and the last logged metrics."""

    run_dir: Path
    final_metrics: dict[str, float]


class TrainingStopped(RuntimeError):
    """The run stopped itself (e.g. too many consecutive non-finite updates); a checkpoint was written."""


def pick_device(name: str) -> torch.device:
    """cpu | cuda | auto -> torch.device (auto = cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


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

            saved, new = yaml.safe_load(cfg_path.read_text()), to_dict(cfg)
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


def weighted_update(acc: dict[str, list[float]], metrics: dict[str, torch.Tensor], weight: float) -> None:
    """Accumulate token-weighted metric sums over micro-batches: acc[key] = [sum(w * v), sum(w)]."""
    for key, value in metrics.items():
        s = acc.setdefault(key, [0.0, 0.0])
        s[0] += weight * float(value)
        s[1] += weight


def train(cfg: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Run SFT warm start (if enabled) and `cfg.train.steps` RL steps, writing everything under `run_dir`.

    The run directory is checked, marked and locked first (train/rundir.py): a second process on it fails at
    once, `overwrite` removes only what entropy-rl wrote there, and a non-run directory is never written into.
    """
    run_dir = Path(run_dir)
    with prepare_run_dir(cfg, run_dir, resume, overwrite, log=tqdm.write if progress else print):
        return train_locked(cfg, run_dir, resume, progress)


def train_locked(cfg: Config, run_dir: Path, resume: bool, progress: bool) -> RunResult:
    """The body of `train`, run while this process holds the run directory's lock."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    log = tqdm.write if progress else print

    # ---- task, model, method ----
    task = make_task(cfg.task.name, **cfg.task.params)
    method = get_policy_loss(cfg.algorithm.method)
    params = method.make_params(**cfg.algorithm.method_params)
    state = method.obj.make_state(params) if method.obj.make_state is not None else None
    all_features = method.obj.old_features + method.obj.cur_features
    sampling = rollout_sampling(cfg)
    # newest checkpoint whose checksums verify (older ones are fallbacks, each skip is logged) + its trainer state
    found = ckpt.load_latest(run_dir, warn=log) if resume else None
    latest, saved = found if found is not None else (None, None)
    if latest is not None:
        model, tokenizer = load_pretrained(latest / "model", saved["model_dtype"])
    else:
        model, tokenizer = build_policy(cfg, task, run_dir, device, log)
    model.to(device).train()
    check_context(cfg, task, tokenizer, getattr(model.config, "max_position_embeddings", None))
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    ref_model = None
    if cfg.algorithm.kl_coef > 0:  # the reference is the policy RL starts from (after SFT)
        ref_src = run_dir / "sft" / "model" if (run_dir / "sft" / ckpt.COMPLETE).is_file() else cfg.model.path
        ref_model = load_pretrained(ref_src)[0].to(device).eval() if ref_src else copy.deepcopy(model).eval()
        ref_model.requires_grad_(False)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, o.warmup_steps)))
    start_step, skipped_in_a_row, skipped_total = 0, 0, 0
    if latest is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
        start_step, skipped_total = saved["step"], saved.get("skipped_total", 0)
        if state is not None:
            state.load_state_dict(saved["method_state"])
        truncate_jsonl(run_dir / "metrics.jsonl", start_step)
        log(f"resumed from {latest} at step {start_step}")
    elif resume:
        truncate_jsonl(run_dir / "metrics.jsonl", 0)

    sinks = make_sinks(cfg, run_dir, progress)
    eval_set = task.prompts("eval", cfg.train.eval_problems, seed=cfg.train.seed) if cfg.train.eval_every else []
    P, G, T = cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens
    n_seqs = P * G
    mb_size = n_seqs // o.mini_batches
    micro = o.micro_batch_size or mb_size
    tau = cfg.rollout.temperature
    last: dict[str, float] = {}
    logged = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    # (entropy, reward) pairs of every step so far, for the running R = -a exp(H) + b fit (rebuilt on resume)
    law_points = [(r["entropy/token_mean"], r["reward/mean"]) for r in logged if r.get("step", 0) >= 1]
    if cfg.train.eval_every and start_step == 0 and not any(r.get("step") == 0 for r in logged):
        # step 0: the policy RL starts from (the warm start), before any update; its own seed, RNG restored
        last = eval_at_step(model, tokenizer, task, eval_set, cfg.train.eval_samples, sampling, cfg.train.seed, 0)
        sinks.log(0, last)
    completions = CompletionLog(run_dir, cfg.train.log_completions_every, cfg.train.log_completions_n,
                                cfg.train.steps, start_step)

    def save(step: int) -> None:
        trainer_state = {
            "step": step,
            "model_dtype": ckpt.dtype_name(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "skipped_total": skipped_total,
            "method_state": state.state_dict() if state is not None else None,
        }
        ckpt.save_checkpoint(run_dir, step, model, tokenizer, trainer_state, keep=cfg.train.keep_checkpoints,
                             min_free_bytes=int(cfg.train.min_free_gb * 2**30))

    guard = UpdateGuard(model, optimizer)  # rolls back an optimizer step that leaves anything non-finite
    score_range = getattr(task, "score_range", DEFAULT_SCORE_RANGE)
    guard_reason = ""  # why the last update was skipped or rolled back (for the stop message)
    bar = tqdm(total=cfg.train.steps, initial=start_step, desc="rl", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(start_step + 1, cfg.train.steps + 1):
        t_step = time.perf_counter()
        m: dict[str, float] = {}

        # ---- rollout ----
        problems = task.prompts("train", P, seed=cfg.train.seed * 1_000_003 + step)
        t0 = time.perf_counter()
        batch: RolloutBatch = generate(model, tokenizer, [p.prompt for p in problems for _ in range(G)], sampling)
        m["timing/generate_s"] = time.perf_counter() - t0

        # ---- reward ----
        t0 = time.perf_counter()
        results = checked_rewards(task, [problems[i // G] for i in range(n_seqs)], batch.texts, score_range, log)
        rewards = torch.tensor([r.score for r in results], dtype=torch.float32)
        correct = rewards > 0.5
        m["timing/reward_s"] = time.perf_counter() - t0

        # ---- pre-update pass: old_logp and H_old (entropy metrics are measured here) ----
        t0 = time.perf_counter()
        input_ids, attn = batch.input_ids, batch.attention_mask
        Lp = batch.prompt_ids.shape[1]
        mask = batch.response_mask  # [B, T]
        old_logp, old_entropy, old_extras = score_in_chunks(model, input_ids, attn, Lp, tau, micro, all_features, params, mask=mask)
        ref_logp = score_in_chunks(ref_model, input_ids, attn, Lp, tau, micro, mask=mask)[0] if ref_model is not None else None
        m["timing/score_s"] = time.perf_counter() - t0

        # ---- advantages ----
        group_index = torch.arange(n_seqs) // G
        adv = compute_advantages(cfg.algorithm.advantage, rewards, group_index, mask=mask, old_entropy=old_entropy,
                                 **cfg.algorithm.advantage_params)
        adv = adv.to(device)
        adv = adv.unsqueeze(-1) * mask if adv.dim() == 1 else adv * mask  # [B, T]

        # ---- metrics of the rollout batch, before the update ----
        m.update(rollout_metrics(batch, results, rewards, correct, G, old_logp, mask))
        m.update(entropy_stats(old_entropy, mask, adv, correct, high_threshold=cfg.train.high_entropy_threshold))
        m["dynamics/cov_logp_adv"] = cov_logp_adv(old_logp, adv, mask)
        if state is not None:  # first show the state this batch (anchors, histories), then take this step's values
            state.before_update(PolicyInputs(old_logp, old_logp, adv, mask, old_entropy, old_entropy, ref_logp, old_extras))
        ctx = step_context(state, params, Aggregation(cfg.algorithm.loss_agg_mode, norm_length=T))
        if step in (1, cfg.train.steps):  # per-token entropies of the first and last batch, for the report's histogram
            save_token_entropies(run_dir, step, old_entropy, mask)
        m["dynamics/steer_omega"] = steer_omega_signal(old_logp, adv, old_entropy, mask)
        law_points.append((m["entropy/token_mean"], m["reward/mean"]))
        law = fit_entropy_performance_law([h for h, _ in law_points], [r for _, r in law_points])
        if law is not None:
            m.update({f"dynamics/law_{k}": law[k] for k in ("a", "b", "r2", "ceiling")})
        valid_adv = adv[mask.bool()]
        m["adv/mean"], m["adv/std"] = float(valid_adv.mean()), float(valid_adv.std(unbiased=False)) if valid_adv.numel() > 1 else 0.0
        m["adv/zero_frac"] = float((valid_adv == 0).float().mean())

        # ---- entropy-dynamics probe: gradient of H and a parameter snapshot before the step ----
        t0 = time.perf_counter()
        probe = None
        if cfg.train.dynamics_every and step % cfg.train.dynamics_every == 0:
            probe = probe_before_update(model, optimizer, input_ids, attn, Lp, tau, mask, micro)
        m["timing/dynamics_s"] = time.perf_counter() - t0

        # ---- update: epochs x mini-batches; selection once per mini-batch; micro-batches accumulate ----
        t0 = time.perf_counter()
        acc: dict[str, list[float]] = {}
        skipped_this_step = rolled_back_this_step = 0
        for epoch in range(o.epochs):
            order = torch.randperm(n_seqs, generator=torch.Generator().manual_seed(cfg.train.seed * 7_919 + step * 31 + epoch)) \
                if o.mini_batches > 1 else torch.arange(n_seqs)
            for mb_index in range(o.mini_batches):
                rows = order[mb_index * mb_size : (mb_index + 1) * mb_size]
                mb_mask = mask[rows]
                n_tokens = mb_mask.sum()
                gen = torch.Generator().manual_seed(((cfg.train.seed * 1_000_003 + step) * 101 + epoch) * 1_009 + mb_index)
                mb_ctx = ctx.for_minibatch(num_tokens=n_tokens, num_seqs=mb_size)
                sel = TokenWeights()  # a method without `select` gets an empty selection
                if cfg.algorithm.selection_scope == "minibatch" and method.obj.select is not None:
                    first = epoch == 0 and mb_index == 0  # policy == rollout policy: the pre-update pass is exact
                    extras = {k: v[rows] for k, v in old_extras.items()}  # the pre-update pass computed every feature
                    cur_logp, cur_ent = old_logp[rows], old_entropy[rows]
                    if not first:  # later mini-batches: the current policy's values (only the update-pass features)
                        cur_logp, cur_ent, cur_extras = score_in_chunks(
                            model, input_ids[rows], attn[rows], Lp, tau, micro, method.obj.cur_features, params,
                            mask=mb_mask)
                        extras.update(cur_extras)
                    sel = run_select(method, params, PolicyInputs(cur_logp, old_logp[rows], adv[rows], mb_mask, cur_ent,
                                                                  old_entropy[rows], None if ref_logp is None else ref_logp[rows], extras),
                                     mb_ctx, gen)
                optimizer.zero_grad(set_to_none=True)
                finite, mb_loss = True, 0.0
                for start in range(0, mb_size, micro):
                    r = rows[start : start + micro]
                    logp, ent, cur = score_responses(model, input_ids[r], attn[r], Lp, tau, method.obj.cur_features, params,
                                                  want_entropy=entropy_for_update(method.obj), mask=mask[r])
                    x = PolicyInputs(logp, old_logp[r], adv[r], mask[r], ent, old_entropy[r],
                                     None if ref_logp is None else ref_logp[r], {**{k: v[r] for k, v in old_extras.items()}, **cur})
                    check_inputs(method, x)
                    micro_sel = sel.rows(slice(start, start + micro)) if cfg.algorithm.selection_scope == "minibatch" \
                        else run_select(method, params, x, mb_ctx, gen)
                    out = method.obj.loss(x, params, micro_sel, mb_ctx)
                    per_token = out.per_token
                    if ref_logp is not None:
                        kl = kl_estimate(logp, ref_logp[r], cfg.algorithm.kl_estimator)
                        per_token = per_token + cfg.algorithm.kl_coef * kl
                        out.metrics["policy/kl_ref"] = (kl.detach() * x.mask).sum() / x.mask.sum().clamp_min(1)
                    loss = aggregate(per_token, x.mask, cfg.algorithm.loss_agg_mode, num_tokens=n_tokens, num_seqs=mb_size, norm_length=T)
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    mb_loss += loss.item()  # micro losses sum to the mini-batch loss (mini-batch normalisers)
                    out.metrics.update(micro_sel.metrics)
                    weighted_update(acc, out.metrics, float(x.mask.sum()))
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
                if not finite or not torch.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)  # never let a non-finite update touch the weights
                    skipped_this_step += 1
                    guard_reason = "non-finite loss" if not finite else "non-finite gradient norm"
                    continue
                guard.snapshot()
                optimizer.step()
                bad = guard.check(input_ids[rows[:1]], attn[rows[:1]], Lp)
                if bad is not None:  # finite gradients can still give non-finite weights (huge lr, corrupted state)
                    state_ok = guard.rollback()
                    skipped_this_step += 1
                    rolled_back_this_step += 1
                    guard_reason = f"{bad}; rolled back" + ("" if state_ok else
                                   "; the optimizer state was already non-finite before the step (corrupted?)")
                    continue
                weighted_update(acc, {"policy/grad_norm": grad_norm, "policy/loss": mb_loss}, 1.0)
        scheduler.step()
        m["timing/update_s"] = time.perf_counter() - t0
        if probe is not None:  # re-score the same batch after the step: measured vs predicted entropy change
            t0 = time.perf_counter()
            m.update(measure_after_update(model, probe, input_ids, attn, Lp, tau, mask, micro))
            m["timing/dynamics_s"] += time.perf_counter() - t0
        m.update({k: s / max(w, 1e-12) for k, (s, w) in acc.items()})
        m["policy/lr"] = optimizer.param_groups[0]["lr"]
        skipped_total += skipped_this_step
        skipped_in_a_row = skipped_in_a_row + 1 if skipped_this_step else 0
        m["guard/skipped_updates"] = float(skipped_this_step)
        m["guard/rolled_back"] = float(rolled_back_this_step)
        if state is not None:
            m.update(state.metrics())  # the values used in this step
            state.after_update(m)

        # ---- eval, log, checkpoint ----
        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.steps):
            m.update(eval_at_step(model, tokenizer, task, eval_set, cfg.train.eval_samples, sampling, cfg.train.seed, step))
        completions.maybe_log(step, problems, G, batch, results, adv, old_entropy, tokenizer, sinks)
        m["timing/step_s"] = time.perf_counter() - t_step
        sinks.log(step, m)
        last = m
        bar.update(1)
        if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == cfg.train.steps:
            save(step)
        if skipped_in_a_row >= o.max_skipped_steps:
            save(step)
            sinks.close()
            bar.close()
            raise TrainingStopped(
                f"stopped at step {step}: {skipped_in_a_row} consecutive steps had non-finite updates (last: "
                f"{guard_reason}); weights were never updated with them; checkpoint saved in {ckpt.latest_checkpoint(run_dir)}"
            )
    bar.close()
    sinks.close()
    if cfg.train.steps == 0 or start_step >= cfg.train.steps:
        save(max(start_step, cfg.train.steps))
    return RunResult(run_dir, last)


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


def rollout_metrics(batch: RolloutBatch, results: list, rewards: torch.Tensor, correct: torch.Tensor, G: int,
                    old_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Reward and rollout statistics of one batch (groups are G consecutive responses)."""
    groups = correct.view(-1, G).float().mean(-1)
    lengths = mask.sum(-1)
    m = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "reward/format_error_rate": sum(r.format_error for r in results) / len(results),
        "reward/errors": sum(r.reason == "error" for r in results) / len(results),
        "reward/timeouts": sum(r.reason == "timeout" for r in results) / len(results),
        "reward/solve_all_frac": float((groups == 1).float().mean()),
        "reward/solve_none_frac": float((groups == 0).float().mean()),
        "rollout/response_len_mean": float(lengths.mean()),
        "rollout/response_len_max": float(lengths.max()),
        "rollout/truncated_frac": float(batch.truncated.float().mean()),
        "rollout/logp_mismatch": float(((batch.sampling_logp - old_logp).abs() * mask).sum() / mask.sum().clamp_min(1)),
        "train/tokens": float(mask.sum()),
    }
    m.update(distinct_answers([r.answer for r in results], correct.tolist(), G))
    return m
