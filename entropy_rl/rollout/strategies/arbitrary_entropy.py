"""AEPO (arbitrary entropy): correct samples drawn hotter or cooler replace part of the batch as +1 REINFORCE rows.

Paper: Wang et al. 2025, "Arbitrary Entropy Policy Optimization" (AEPO, arXiv:2510.08141). Official code:
`597358816/AEPO` @ `b353a05`, `verl/trainer/ray_trainer.py` (`fit`, branch `alg == "AEPO"`; `_select_by_advantage`),
`verl/trainer/config.py`, `examples/qwen-math-7b-AEPO.sh`, `verl/workers/actor/dp_actor.py` (the entropy estimate);
spec in shared/methods.md section 7. The paper's gradient is grad J_GRPO + alpha E_{o ~ pi^T}[grad log pi(o) R],
T = T_high when H(pi_old) < H_target else T_low; alpha is implicit in how many rows are replaced.

Per step:
1. The main batch: G samples per prompt at the run's sampling settings (the engine).
2. Entropy estimate H_est: `sample_nll` (official) = token mean of -log-prob of the sampled tokens of the main
   batch, a sample estimate of the entropy (not the full-vocabulary one); `full_vocab` = token mean of the
   full-vocabulary entropy of the main batch (an extra scoring pass).
3. T = `temperature_high` if H_est <= `target_entropy` else `temperature_low`; G samples at T for each of the first
   floor(`prompt_fraction` x prompts) prompts.
4. Their rewards (`reward_fn`) and GRPO advantages within their groups (unbiased std, eps 1e-6); the rows with
   advantage > `advantage_threshold` are kept.
5. n = min(`sample_num`, kept) when H_est <= target, else half of that (floor); the first n kept rows replace the
   first n rows of the main batch (the batch size stays the same), with `fixed_advantage` +1: the trainer gives them
   advantage +1 on every token and leaves them out of the advantage estimator.
6. They are sampled at T (`temperature`, `sampling_logp` exact at T) but trained at the run's temperature:
   `train_temperature` = the run's temperature on those rows, so the trainer's log-probs there are log pi(o), the
   paper's grad log pi(o), and differ from `sampling_logp` by design (the official trainer also recomputes them at
   the training temperature).

Departures from the official code (named):
    - H_est is measured on this step's main batch before the update; the official value is the previous step's
      `actor/entropy_loss` of the update (which also saw the injected rows), starting at 0 (T_high on step 1).
      No state to carry, no one-step lag.
    - The main rows that stay are normalised within what remains of their groups; the official advantages are
      computed before the replacement, with the dropped rows still in the group statistics.
    - A group of one response gives advantage 0 (nothing kept); the official code refuses groups of one.
    - No kept row: nothing is replaced (the official code would fail on the empty selection).

Needs `reward_fn` (the verifier): it refuses to run without one.

Metrics: `rollout/arbitrary_entropy/entropy_estimate` (H_est, nats), `temperature` (T), `kept` (rows with advantage
above the threshold), `injected` (rows replaced).

Params:
    target_entropy (0.5): H_target, `entropy_base` of the example script (the README's headline run: 0.75).
    temperature_high (1.2): T when H_est <= target.
    temperature_low (0.8): T when H_est > target.
    prompt_fraction (0.25): share of the step's prompts (the first ones) sampled at T.
    sample_num (60): most rows replaced (`reinforce_sample_num`).
    advantage_threshold (0.05): kept rows have a GRPO advantage above this.
    entropy_source ("sample_nll"): "sample_nll" (official) or "full_vocab".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.advantages.grpo import group_centered
from entropy_rl.core.advantage import AdvantageInputs
from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams
from entropy_rl.rollout.strategies.base import (
    Metrics,
    RewardFn,
    Stateless,
    concat_batches,
    cost_metrics,
    register_strategy,
    sampled_tokens,
    take_rows,
)
from entropy_rl.train.forward import score_in_chunks

SOURCES = ("sample_nll", "full_vocab")
GRPO_EPS = 1e-6  # EasyR1 compute_grpo_outcome_advantage


@dataclass(frozen=True)
class Params:
    target_entropy: float = 0.5  # H_target (entropy_base)
    temperature_high: float = 1.2  # T when the estimate is at or below the target
    temperature_low: float = 0.8  # T when it is above
    prompt_fraction: float = 0.25  # share of prompts sampled at T
    sample_num: int = 60  # most rows replaced (reinforce_sample_num)
    advantage_threshold: float = 0.05  # kept rows have a GRPO advantage above this
    entropy_source: str = "sample_nll"  # "sample_nll" (official) or "full_vocab"

    def __post_init__(self) -> None:
        if not (self.temperature_high > 0 and self.temperature_low > 0):
            raise ValueError(f"temperatures must be > 0, got {self.temperature_high}, {self.temperature_low}")
        if not 0 <= self.prompt_fraction <= 1:
            raise ValueError(f"prompt_fraction must be in [0, 1], got {self.prompt_fraction}")
        if self.sample_num < 0 or self.target_entropy < 0:
            raise ValueError(f"sample_num and target_entropy must be >= 0, got {self.sample_num}, {self.target_entropy}")
        if self.entropy_source not in SOURCES:
            raise ValueError(f"entropy_source must be one of {', '.join(SOURCES)}, got {self.entropy_source!r}")


@register_strategy("arbitrary_entropy", Params)
class ArbitraryEntropy(Stateless):
    """AEPO (arXiv:2510.08141): tempered correct samples as +1 REINFORCE rows steer entropy toward a target."""

    def __init__(self, p: Params) -> None:
        self.p = p

    def entropy_estimate(self, batch: RolloutBatch, model: PreTrainedModel, score_chunk: int) -> float:
        """H_est of the main batch (nats), by `entropy_source`."""
        mask = batch.response_mask
        if self.p.entropy_source == "sample_nll":
            return float(-(batch.sampling_logp * mask).sum() / mask.sum().clamp_min(1))
        _, H, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                  batch.temperature, score_chunk, mask=mask)
        return float((H * mask).sum() / mask.sum().clamp_min(1))

    def generate(
        self,
        engine: RolloutEngine,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Prompts,
        sampling: SamplingParams,
        *,
        group_size: int,
        step: int,
        reward_fn: RewardFn | None = None,
        score_chunk: int = 0,
    ) -> tuple[RolloutBatch, Metrics]:
        """The main batch with its first rows replaced by kept tempered samples (see the module docstring)."""
        if reward_fn is None:
            raise ValueError("rollout.strategy arbitrary_entropy reads rewards while sampling: pass reward_fn")
        main = engine.generate(prompts, sampling, group_size)
        h_est = self.entropy_estimate(main, model, score_chunk)
        low = h_est <= self.p.target_entropy
        T_adj = self.p.temperature_high if low else self.p.temperature_low
        n_prompts = int(len(prompts) * self.p.prompt_fraction)
        metrics = {"rollout/arbitrary_entropy/entropy_estimate": h_est, "rollout/arbitrary_entropy/temperature": T_adj}
        if self.p.entropy_source == "full_vocab":
            metrics["rollout/scored_tokens"] = float(main.response_mask.sum())
        if n_prompts == 0:
            metrics.update({"rollout/arbitrary_entropy/kept": 0.0, "rollout/arbitrary_entropy/injected": 0.0})
            return main, {**cost_metrics(sampled_tokens(main), 0), **metrics}

        extra = engine.generate(list(prompts[:n_prompts]), replace(sampling, temperature=T_adj), group_size)
        rewards = reward_fn(extra.group_index.tolist(), extra.texts).float().cpu()
        adv = group_centered(AdvantageInputs(rewards, extra.group_index.cpu()), True, GRPO_EPS, "zero")
        kept = (adv > self.p.advantage_threshold).nonzero().squeeze(-1)  # [k], in row order
        n = min(self.p.sample_num, kept.numel(), main.response_ids.shape[0])
        n = n if low else n // 2
        metrics.update({"rollout/arbitrary_entropy/kept": float(kept.numel()),
                        "rollout/arbitrary_entropy/injected": float(n)})
        cost = cost_metrics(sampled_tokens(main) + sampled_tokens(extra), 0)
        if n == 0:
            return main, {**cost, **metrics}
        injected = take_rows(extra, kept[:n])
        injected = replace(
            injected,
            fixed_advantage=torch.ones(n, dtype=torch.float32, device=injected.response_ids.device),
            train_temperature=torch.full_like(injected.temperature, sampling.temperature),
        )
        rest = take_rows(main, torch.arange(n, main.response_ids.shape[0]))
        return concat_batches([injected, rest], tokenizer.pad_token_id), {**cost, **metrics}
