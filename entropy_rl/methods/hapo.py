"""HAPO loss: PPO with entropy-adaptive asymmetric clip ranges and differential advantage redistribution.

Paper: Liu et al. 2025, "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature"
(HAPO, arXiv:2509.16591). Official code: `starriver030515/HAPO` @ `7671dde`, `verl/trainer/ppo/core_algos.py`
(`compute_entropy_h`, `ada_clip`, `ada_advantage`, `compute_policy_loss`) and `ppo_trainer.yaml`, read for this
module: the formulas below are that code's. The paper text itself was read only at abstract level. The
token-level group average advantage is the `hapo` advantage estimator (entropy_rl/advantages/hapo.py); adaptive
temperature sampling (rollout) is not implemented.

Entropy score (`select`, over the optimizer mini-batch; official: per micro-batch):
    e_t = log(max(H_t, 1e-8))  with H = entropy of the current policy (detached; falls back to H_old)
    m = quantile_nearest(e over masked tokens, entropy_pivot)   (index round(q (n - 1)), Python rounding)
    h = (e - m) / sqrt(mean_mask (e - m)^2)                       (RMS about the pivot, not the std)
    h_hat = h / max_{h>0} h  where h > 0;   h / min_{h<0} h  where h <= 0      (official code)
Note: in the official code the second branch divides a negative h by a negative minimum, so h_hat >= 0 for every
token (only the pivot token gets 0). The paper describes low-entropy tokens (h < 0) being treated differently
from high-entropy ones; `signed_entropy=True` keeps the sign (h / |min h|, so h_hat in [-1, 1]) to follow that
description. Default False reproduces the released code (the paper's runs); True is our reading of the paper.

Asymmetric adaptive clipping (`adaptive_clip`), per token:
    eps_low_t  = eps_low  (1 - alpha h_hat)  where h_hat <= 0, else eps_low
    eps_high_t = eps_high (1 + alpha h_hat)  where h_hat > 0,  else eps_high
Differential advantage redistribution (`adaptive_advantage`), with r the (detached) token ratio:
    inside = 1 - eps_low_t / 2 < r < 1 + eps_high_t / 2           (the "neutral" zone)
    A' = A (1 + beta h_hat) if (h_hat > 0 and not inside) or (h_hat <= 0 and inside), else A
Loss: PPO clipped surrogate with (eps_low_t, eps_high_t), A', dual clip c (`core.ppo.clipped_surrogate`).

Defaults: yaml `entropy_pivot` 0.8, `adaptive_clip` True, `clip_alpha` 1.0, `adaptive_advantage` True, `adv_beta`
1.0; recipes: clip 0.2 / 0.2, `clip_ratio_c` 10, token-mean.
Neutral setting: adaptive_clip = adaptive_advantage = False is `ppo_clip` with the same eps and c.

Params:
    eps_low (0.2): base ratio floor 1 - eps_low.
    eps_high (0.2): base ratio ceiling 1 + eps_high.
    clip_ratio_c (10.0): dual-clip constant (HAPO recipes use 10), or None.
    entropy_pivot (0.8): quantile of log-entropy used as the pivot m.
    adaptive_clip (True): entropy-adaptive asymmetric clip ranges.
    clip_alpha (1.0): strength alpha of the adaptive clip.
    adaptive_advantage (True): differential advantage redistribution.
    adv_beta (1.0): strength beta of the redistribution.
    signed_entropy (False): False = released code (h_hat >= 0); True = sign-preserving h_hat in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

EPS = 1e-8


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # base ratio floor 1 - eps_low
    eps_high: float = 0.2  # base ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 10.0  # dual clip (HAPO recipes)
    entropy_pivot: float = 0.8  # quantile of log-entropy used as pivot
    adaptive_clip: bool = True
    clip_alpha: float = 1.0
    adaptive_advantage: bool = True
    adv_beta: float = 1.0
    signed_entropy: bool = False  # False: released code (h_hat >= 0); True: sign-preserving

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if not 0.0 <= self.entropy_pivot <= 1.0:
            raise ValueError(f"entropy_pivot must be in [0, 1], got {self.entropy_pivot}")
        if self.clip_alpha < 0 or self.adv_beta < 0:
            raise ValueError(f"clip_alpha and adv_beta must be >= 0, got {self.clip_alpha}, {self.adv_beta}")


def entropy_score(entropy: Tensor, mask: Tensor, pivot: float, signed: bool) -> tuple[Tensor, Tensor]:
    """h_hat [B, T] (0 off the mask) and the pivot m (log-entropy), following `compute_entropy_h`."""
    m_bool = mask > 0
    e = torch.log(entropy.double().clamp_min(EPS))
    vals = e[m_bool]
    n = vals.numel()
    if n == 0:
        return torch.zeros_like(entropy), torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    k = round(pivot * (n - 1))  # torch_quantile(..., interpolation="nearest") uses Python round
    median = torch.kthvalue(vals, k + 1).values
    h = e - median
    var = (h.pow(2) * m_bool).sum() / m_bool.sum().clamp_min(1)
    h = h / var.clamp_min(EPS).sqrt()
    pos_max = torch.where(m_bool & (h > 0), h, torch.zeros_like(h)).max().clamp_min(EPS)
    neg_min = torch.where(m_bool & (h < 0), h, torch.zeros_like(h)).min().clamp_max(-EPS)
    low = h / neg_min.abs() if signed else h / neg_min  # the released code divides by the negative minimum
    h_hat = torch.where(h > 0, h / pos_max, low)
    return (h_hat * m_bool).to(entropy.dtype), median.to(entropy.dtype)


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Entropy score h_hat over the mini-batch from H_cur (detached), else H_old. Out: {"h_hat": [B, T]}."""
    ent = x.entropy if x.entropy is not None else x.old_entropy
    if ent is None:
        raise ValueError("hapo needs `entropy` (H_cur, preferred) or `old_entropy` to score tokens")
    h_hat, median = entropy_score(ent, x.mask, p.entropy_pivot, p.signed_entropy)
    return TokenWeights(
        {"h_hat": h_hat},
        {
            "method/hapo/log_entropy_pivot": median,
            "method/hapo/h_hat_mean": masked_mean(h_hat, x.mask),
            "method/hapo/high_frac": masked_mean((h_hat > 0).to(h_hat.dtype), x.mask),
        },
    )


def clip_ranges(h_hat: Tensor, p: Params) -> tuple[Tensor, Tensor]:
    """Per-token (eps_low_t, eps_high_t) of `ada_clip` (constant eps when adaptive_clip is off)."""
    lo = torch.full_like(h_hat, p.eps_low)
    hi = torch.full_like(h_hat, p.eps_high)
    if not p.adaptive_clip:
        return lo, hi
    lo = torch.where(h_hat <= 0, p.eps_low * (1 - h_hat * p.clip_alpha), lo)
    hi = torch.where(h_hat > 0, p.eps_high * (1 + h_hat * p.clip_alpha), hi)
    return lo, hi


def redistribute(adv: Tensor, h_hat: Tensor, ratio: Tensor, lo: Tensor, hi: Tensor, beta: float) -> Tensor:
    """`ada_advantage`: A (1 + beta h_hat) on (high entropy, outside the neutral zone) and (low, inside)."""
    inside = (ratio > 1.0 - lo / 2) & (ratio < 1.0 + hi / 2)
    scaled = adv * (1 + beta * h_hat)
    use_scaled = torch.where(h_hat > 0, ~inside, inside)
    return torch.where(use_scaled, scaled, adv)


@register_policy_loss(
    "hapo",
    Params,
    select=select,
    paper="arXiv:2509.16591",
    inputs={"old_entropy"},
    neutral={"adaptive_clip": False, "adaptive_advantage": False},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """HAPO clipped surrogate. In: [B, T] each. Out: loss [B, T], policy/* and method/hapo/* metrics."""
    h_hat = sel["h_hat"].to(x.logp.dtype)
    lo, hi = clip_ranges(h_hat, p)
    adv = x.adv
    metrics: dict[str, Tensor] = {}
    if p.adaptive_advantage:
        with torch.no_grad():
            ratio = torch.exp(ppo.log_ratio(x.logp, x.old_logp))
            adv = redistribute(x.adv, h_hat, ratio, lo, hi, p.adv_beta)
            metrics["method/hapo/adv_scaled_frac"] = masked_mean((adv != x.adv).to(adv.dtype), x.mask)
    s = ppo.clipped_surrogate(x.logp, x.old_logp, adv, lo, hi, p.clip_ratio_c)
    metrics.update(ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask))
    metrics["method/hapo/eps_low_mean"] = masked_mean(lo, x.mask)
    metrics["method/hapo/eps_high_mean"] = masked_mean(hi, x.mask)
    return LossOutput(s.loss, metrics)
