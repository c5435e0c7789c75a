"""HAPO adaptive temperature: each token is sampled at a temperature set by its entropy relative to the last batch.

Paper: Liu et al. 2025, "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature"
(HAPO, arXiv:2509.16591). Official code: `starriver030515/HAPO` @ `7671dde`, read for this module: the patched
vLLM sampler `vllm/v1/sample/sampler.py` (`compute_entropy_based_temperature`), the statistics
`compute_entropy_h` in `verl/trainer/ppo/core_algos.py`, their plumbing in `verl/trainer/ppo/ray_trainer.py`
(`norm_entropys`), and the recipes (`adaptive_temperature=True`, `temperature_tau=0.05`, `entropy_pivot=0.8`,
rollout temperature 1.0). The HAPO loss and advantage are the `hapo` method and estimator.

Statistics (after each step, over the response tokens of that step's batch, entropies H at tau0 = the rollout
temperature; the official code takes them from the pre-update log-prob pass of the previous step):

    e = log(max(H, 1e-8));  m = nearest-rank quantile of e at `entropy_pivot`
    s = sqrt(mean (e - m)^2)                       (RMS about the pivot)
    scale_pos = 1 / max(max_{h>0} h, 1e-8),  scale_neg = 1 / min(min_{h<0} h, -1e-8),  h = (e - m) / s

Temperature of each sampled token (the first step, without statistics, samples at tau0 everywhere):

    h = (log(max(H_t, 1e-6)) - m) / (s + 1e-6)
    h_hat = clamp(h scale_pos if h > 0 else h scale_neg, -1, 1)
    tau_t = tau0 (1 + temperature_tau h_hat)

In the released code scale_neg is negative, so a token below the pivot also gets h_hat >= 0: every token away from
the pivot is sampled hotter, up to tau0 (1 + temperature_tau). `signed_entropy=True` divides by |min h| instead
(h_hat in [-1, 1]: low-entropy tokens cooler), our reading of the paper's description; the default follows the
code, as the `hapo` method does.

Log-probs: `temperature` holds tau_t per token and `sampling_logp` the exact log-prob at tau_t; the trainer scores
each token at tau_t (`score_in_chunks` with the batch's temperature), so the two agree to fp32 rounding.

Departures from the official code (named):
    - The trainer's log-probs, ratio and entropy use tau_t per token; the official actor recomputes them at tau0
      for every token (vLLM's sampling log-probs are not used), so its update treats tau_t-samples as tau0-samples.
    - H_t at sampling time is the entropy at tau0 (the statistics' temperature); the official sampler takes it from
      the raw logits (tau = 1). Identical at the recipes' tau0 = 1.
    - The statistics come from the sampler's own entropies of the batch (the same policy and tokens as the
      official pre-update pass), so no extra pass is needed; they are kept in `state_dict()` for resume.
    - Samples with the token-by-token sampler (entropy_rl/rollout/stepwise.py) on the policy model itself, whatever
      `rollout.engine` is (the per-token temperature needs a hook at every token).

Metrics: `rollout/adaptive_temperature/tau_mean`, `tau_min`, `tau_max` over the batch's response tokens.

Params:
    temperature_tau (0.05): strength; tau_t within tau0 (1 +- temperature_tau).
    entropy_pivot (0.8): quantile of log-entropy used as the pivot m (the recipes' `entropy_pivot`).
    signed_entropy (False): False = released code (h_hat >= 0); True = low-entropy tokens cooler.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.core.entropy import entropy_from_logp
from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams, contiguous_groups
from entropy_rl.rollout.stepwise import StepChoice, StepRule, sample_stepwise
from entropy_rl.rollout.strategies.base import Metrics, RewardFn, cost_metrics, register_strategy, sampled_tokens

STATS_EPS = 1e-8  # compute_entropy_h
SAMPLER_EPS = 1e-6  # compute_entropy_based_temperature


@dataclass(frozen=True)
class Params:
    temperature_tau: float = 0.05  # tau_t = tau0 (1 + temperature_tau h_hat)
    entropy_pivot: float = 0.8  # quantile of log-entropy used as the pivot
    signed_entropy: bool = False  # False: released code (h_hat >= 0); True: low-entropy tokens cooler

    def __post_init__(self) -> None:
        if not 0 <= self.temperature_tau < 1:
            raise ValueError(f"temperature_tau must be in [0, 1) so every temperature stays > 0, got {self.temperature_tau}")
        if not 0 <= self.entropy_pivot <= 1:
            raise ValueError(f"entropy_pivot must be in [0, 1], got {self.entropy_pivot}")


@dataclass(frozen=True)
class EntropyStats:
    """HAPO's `norm_entropys`: pivot m and RMS s of log-entropy, and the scales of positive and negative h."""

    median: float
    std: float
    scale_pos: float
    scale_neg: float


def entropy_stats(entropy: Tensor, mask: Tensor, pivot: float, signed: bool) -> EntropyStats | None:
    """`compute_entropy_h`'s statistics over the masked tokens (fp64), or None when there are none.

    Args:
        entropy: [B, T] token entropies (nats).
        mask: [B, T] response mask.
        pivot: quantile of log-entropy used as the pivot (nearest rank, index round(pivot (n - 1))).
        signed: scale_neg = 1 / |min h| instead of the released 1 / min h.

    Returns:
        EntropyStats, or None without masked tokens.
    """
    keep = mask > 0
    e = torch.log(entropy.double().clamp_min(STATS_EPS))[keep]  # [n]
    if e.numel() == 0:
        return None
    median = torch.kthvalue(e, round(pivot * (e.numel() - 1)) + 1).values
    h = e - median
    std = (h.pow(2).mean()).clamp_min(STATS_EPS).sqrt()
    h = h / std
    pos_max = torch.where(h > 0, h, torch.zeros_like(h)).max().clamp_min(STATS_EPS)
    neg_min = torch.where(h < 0, h, torch.zeros_like(h)).min().clamp_max(-STATS_EPS)
    return EntropyStats(float(median), float(std), float(1 / pos_max), float(1 / (neg_min.abs() if signed else neg_min)))


def adaptive_temperature(entropy: Tensor, tau0: float, stats: EntropyStats, strength: float) -> Tensor:
    """tau_t = tau0 (1 + strength h_hat) from token entropies H [n] (nats); see the module docstring. -> [n]."""
    h = (torch.log(entropy.float().clamp_min(SAMPLER_EPS)) - stats.median) / (stats.std + SAMPLER_EPS)
    h_hat = torch.where(h > 0, h * stats.scale_pos, h * stats.scale_neg).clamp(-1.0, 1.0)
    return tau0 * (1.0 + h_hat * strength)


@register_strategy("adaptive_temperature", Params)
class AdaptiveTemperature:
    """HAPO's entropy-adaptive sampling temperature (arXiv:2509.16591), statistics from the previous batch."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.stats: EntropyStats | None = None

    def rule(self, tau0: float, entropies: list[Tensor]) -> StepRule:
        """Stepwise-sampler rule: tau_t from the current statistics; records each step's H at tau0 in `entropies`."""

        def rule(logits: Tensor, t: int) -> StepChoice:
            H = entropy_from_logp(torch.log_softmax(logits.float() / tau0, dim=-1))  # [n]
            entropies.append(H)
            if self.stats is None:
                return StepChoice(torch.full_like(H, tau0))
            return StepChoice(adaptive_temperature(H, tau0, self.stats, self.p.temperature_tau))

        return rule

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
        """G samples per prompt at per-token temperatures, then the statistics for the next step are updated."""
        rows = [q for q in prompts for _ in range(group_size)]
        entropies: list[Tensor] = []
        batch = sample_stepwise(model, tokenizer, rows, sampling, self.rule(sampling.temperature, entropies))
        batch = replace(batch, group_index=contiguous_groups(len(prompts), group_size, batch.group_index.device))
        H = torch.stack(entropies, dim=1)  # [B, t_run]
        mask = batch.response_mask[:, : H.shape[1]]
        self.stats = entropy_stats(H, mask, self.p.entropy_pivot, self.p.signed_entropy) or self.stats
        taus = batch.temperature[batch.response_mask.bool()]
        metrics = cost_metrics(sampled_tokens(batch), 0)
        if taus.numel():
            metrics.update({"rollout/adaptive_temperature/tau_mean": float(taus.mean()),
                            "rollout/adaptive_temperature/tau_min": float(taus.min()),
                            "rollout/adaptive_temperature/tau_max": float(taus.max())})
        return batch, metrics

    def state_dict(self) -> dict[str, Any]:
        """The statistics the next step samples with (None before the first step)."""
        return {"stats": None if self.stats is None else vars(self.stats).copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the statistics saved by `state_dict`."""
        stats = state.get("stats")
        self.stats = None if stats is None else EntropyStats(**{k: float(v) for k, v in stats.items()})
