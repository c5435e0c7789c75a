"""CISPO: clip the detached importance weight, keep every token's gradient (REINFORCE, truncated IS weight).

Paper: MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention"
(arXiv:2506.13585), the CISPO objective. Matched against verl 0.9.1 `compute_policy_loss_cispo`
(`verl/trainer/ppo/core_algos.py`, loss_mode "cispo", read in the PyPI wheel verl-0.9.1):

    r_t = exp(clamp(logp_t - old_logp_t, -20, 20))
    w_t = sg(clip(r_t, 1 - eps_low, 1 + eps_high))          (a constant: no gradient through r or the clip)
    l_t = -w_t A_t logp_t                                    gradient: -w_t A_t grad logp_t

Where PPO zeroes the gradient of a token whose ratio leaves [1 - eps_low, 1 + eps_high] on the side the advantage
pushes it, CISPO keeps that token's gradient and only bounds its weight. The loss *value* is -w A log pi (as
verl, NeMo-RL and Tinker write it), not PPO's -A r, so it is not comparable with PPO-family loss values; on-policy
(r = 1) the gradient equals `ppo_clip`'s. The paper normalises by the token count of the batch (`token-mean`, the
default).

Departures: none from verl 0.9.1 in the loss. Metrics: `policy/clipfrac` is verl's `pg_clipfrac` (the weight
was clipped at either bound, whatever the sign of A); `policy/clipfrac_low` / `_high` split it by bound. The
paper's generalised form with a PPO-style token mask is not implemented (verl 0.9.1 has none either).

Defaults and variants: the Params defaults are verl's (`clip_ratio_low` = `clip_ratio_high` = 0.2, which CISPO reads
from the actor config). The paper sets no lower bound (eps_low large) and tunes only eps_high without publishing
its value; the `cispo` variant uses eps_low = 1 (floor 0) and eps_high = 0.28 (Trinity-RFT's CISPO default;
other frameworks use larger caps, e.g. Tinker r <= 4, NeMo-RL r <= 6).

Neutral setting: none. The loss value is -w A log pi, never PPO's surrogate value (the gradients agree wherever no
bound binds).

Params:
    eps_low (0.2): weight floor 1 - eps_low (eps_low >= 1 removes the floor: r > 0).
    eps_high (0.2): weight cap 1 + eps_high.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # weight floor 1 - eps_low (verl clip_ratio_low; paper: no floor)
    eps_high: float = 0.2  # weight cap 1 + eps_high (verl clip_ratio_high)

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low and eps_high must be >= 0, got {self.eps_low}, {self.eps_high}")


@register_policy_loss("cispo", Params, paper="arXiv:2506.13585", neutral=None)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """-sg(clip(r)) A logp per token. In: [B, T] each. Out: loss [B, T] and policy/*, method/cispo/* metrics."""
    with torch.no_grad():
        lr = ppo.log_ratio(x.logp, x.old_logp)  # [B, T], clamped to [-20, 20]
        ratio = torch.exp(lr)
        weight = ratio.clamp(1.0 - p.eps_low, 1.0 + p.eps_high)  # [B, T], detached
    per_token = -weight * x.adv * x.logp
    with torch.no_grad():
        low, high = ratio < 1.0 - p.eps_low, ratio > 1.0 + p.eps_high
        metrics = {
            "policy/clipfrac": masked_mean((low | high).to(x.mask.dtype), x.mask),
            "policy/clipfrac_low": masked_mean(low.to(x.mask.dtype), x.mask),
            "policy/clipfrac_high": masked_mean(high.to(x.mask.dtype), x.mask),
            "policy/approx_kl": masked_mean(ratio - 1.0 - lr, x.mask),
            "policy/ratio_mean": masked_mean(ratio, x.mask),
            "method/cispo/weight_mean": masked_mean(weight, x.mask),
        }
    return LossOutput(per_token, metrics)
