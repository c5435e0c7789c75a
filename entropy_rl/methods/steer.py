"""STEER: down-weight each token's PPO loss by its estimated entropy-change magnitude |Omega| (Hao et al. 2025).

Paper: "STEER: Stabilizing Token-level Entropy-changE via Reweighting", arXiv:2510.10150. Official code:
zz-haooo/STEER `verl/trainer/ppo/core_algos.py` (compute_token_weights, entropy_control), scripts
run/run_exp.sh and run_linear.sh. Spec: methods.md section 2.

Weights (`select`, no grad, over the valid tokens of the optimizer mini-batch):
    p      = clamp(exp(logp), 1e-8, 1 - 1e-8)               current policy (detached)
    p_old  = clamp(exp(old_logp), 1e-8, 1)
    Omega  = (A / p_old) * p (1 - p) * (log p + H_old)       = r A (1 - p)(log p + H_old); non-finite -> 0
    exp map (default, run_exp.sh):  k = -ln(weight_min) / max(max |Omega|, 0.02);  w = clamp(exp(-k |Omega|), weight_min, 1)
        (the token with the largest |Omega| gets weight_min; the 0.02 floor leaves small batches near 1)
    linear map (run_linear.sh):  w = clamp(w_max - (|Omega| - min)(w_max - w_min) / (max - min), w_min, w_max),
        w = (w_min + w_max) / 2 when max == min; min/max of |Omega| over the valid tokens
    w = 0 off the mask; w is detached.
Loss (`loss`, per micro-batch): l_t = w_t * PPO clipped loss (clip-higher and dual clip, as the scripts).

omega="first_order" (our addition, not the paper's): Omega_fo = p * Omega_official
= (A / p_old) p^2 (1 - p)(log p + H_old). It is NOT the exact first-order entropy change of the sampled-token
update, dH ~ -eta r A [p (log p + H) - sum_k p_k^2 (log p_k + H)], whose sum over the vocabulary needs the full
distribution; it only restores the leading factor p that the official Omega drops. In the spec's random tests
(methods.md section 2) dH correlated 0.74 with -p*Omega vs 0.62 with -Omega (same sign agreement, 84%).

Departures from the official code (deliberate):
    - Omega min/max are over the whole optimizer mini-batch, not per micro-batch (toolkit rule).
    - Defaults are the scripts' values (exp map, weight_min 0.8, clip 0.2/0.28, c = 10), not the function
      signature's (linear, 0.8/1.2, c = 3) nor dp_actor's fallback (0.95/1.05).
    - weight_max is read by the linear map only; the exp map clamps to [weight_min, 1] as the official code.

Variants (entropy_rl/presets/methods/, `entropy-rl compare --methods NAME`):
    steer          the defaults (run/run_exp.sh)
    steer_linear   weight_map linear, weight_max 1.2 (run_linear.sh: [0.8, 1.2])

Params:
    weight_map ("exp"): "exp" (paper's lambda = exp(-k |Omega|)) or "linear".
    weight_min (0.8): lambda_min, the smallest weight (exp and linear); 1.0 makes every weight 1 (= ppo_clip).
    weight_max (1.0): largest weight of the linear map (run_linear.sh uses 1.2); unused by the exp map.
    omega ("official"): "official" (the code's Omega) or "first_order" (p * Omega, our addition).
    eps_low (0.2): ratio floor 1 - eps_low.
    eps_high (0.28): ratio ceiling 1 + eps_high (clip-higher, the scripts' value).
    clip_ratio_c (10.0): dual-clip constant c > 1 for A < 0 (the scripts' value), or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.stats import entropy_change_omega, quantiles
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean, zero_scalar

WEIGHT_MAPS = ("exp", "linear")
OMEGAS = ("official", "first_order")
OMEGA_MAX_FLOOR = 0.02  # official: k = -ln(lambda_min) / max(max|Omega|, 0.02)


@dataclass(frozen=True)
class Params:
    weight_map: str = "exp"  # exp (run_exp.sh) | linear (run_linear.sh)
    weight_min: float = 0.8  # lambda_min (token_weight_min in the scripts)
    weight_max: float = 1.0  # linear map only (run_linear.sh: 1.2); the exp map clamps at 1
    omega: str = "official"  # official | first_order (p * Omega; our addition)
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.28  # ratio ceiling 1 + eps_high (the scripts' clip-higher)
    clip_ratio_c: float | None = 10.0  # dual clip for A < 0 (the scripts' value)

    def __post_init__(self) -> None:
        if self.weight_map not in WEIGHT_MAPS:
            raise ValueError(f"weight_map must be one of {WEIGHT_MAPS}, got '{self.weight_map}'")
        if self.omega not in OMEGAS:
            raise ValueError(f"omega must be one of {OMEGAS}, got '{self.omega}'")
        if not 0.0 < self.weight_min <= self.weight_max:
            raise ValueError(f"need 0 < weight_min <= weight_max, got {self.weight_min}, {self.weight_max}")
        if self.weight_map == "exp" and self.weight_min > 1.0:
            raise ValueError(f"the exp map needs weight_min <= 1, got {self.weight_min}")
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


def steer_omega(logp: Tensor, old_logp: Tensor, adv: Tensor, old_entropy: Tensor, omega: str = "official") -> Tensor:
    """Per-token entropy-change estimate Omega (official compute_token_weights), non-finite set to 0. [B, T].

    Args:
        logp: [B, T] current log-probs (detached).
        old_logp: [B, T] rollout log-probs.
        adv: [B, T] advantages.
        old_entropy: [B, T] H_old in nats.
        omega: "official" or "first_order" (p * official).

    Returns:
        [B, T] signed Omega (not masked).
    """
    out = entropy_change_omega(logp, old_logp, adv, old_entropy)
    return torch.exp(logp).clamp(1e-8, 1.0 - 1e-8) * out if omega == "first_order" else out


def steer_weights(abs_omega: Tensor, mask: Tensor, p: Params) -> Tensor:
    """Map |Omega| [B, T] to weights [B, T] (exp or linear, statistics over the valid tokens); 0 off the mask."""
    valid = mask.bool()
    weights = torch.zeros_like(abs_omega)
    if not valid.any():
        return weights
    vals = abs_omega[valid]
    lo, hi = vals.min(), vals.max()
    if p.weight_map == "exp":
        k = -math.log(p.weight_min) / torch.clamp(hi, min=OMEGA_MAX_FLOOR)
        w = torch.exp(-k * vals).clamp(p.weight_min, 1.0)
    elif hi > lo:
        w = (p.weight_max - (vals - lo) * ((p.weight_max - p.weight_min) / (hi - lo))).clamp(p.weight_min, p.weight_max)
    else:
        w = torch.full_like(vals, (p.weight_min + p.weight_max) / 2)
    weights[valid] = w
    return weights


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Per-token weights from |Omega| over the mini-batch. In: [B, T] detached. Out: {"weight": [B, T]}, metrics."""
    if x.old_entropy is None:
        raise ValueError("steer needs old_entropy (H_old from the pre-update pass)")
    abs_omega = steer_omega(x.logp, x.old_logp, x.adv, x.old_entropy, p.omega).abs()
    weights = steer_weights(abs_omega, x.mask, p)
    valid = x.mask.bool()
    if valid.any():
        w_min, om_p99 = weights[valid].min(), quantiles(abs_omega[valid].float(), [0.99])[0].to(x.logp.dtype)
    else:
        w_min, om_p99 = zero_scalar(x.logp), zero_scalar(x.logp)
    metrics = {
        "method/steer/weight_mean": masked_mean(weights, x.mask),
        "method/steer/weight_min": w_min,
        "method/steer/omega_abs_mean": masked_mean(abs_omega, x.mask),
        "method/steer/omega_abs_p99": om_p99,
    }
    return TokenWeights({"weight": weights}, metrics)


@register_policy_loss(
    "steer", Params, select=select, paper="arXiv:2510.10150", inputs={"old_entropy"}, neutral={"weight_min": 1.0}
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """Per-token w * PPO clipped loss, w detached from `select`. In: [B, T] each. Out: [B, T], metrics."""
    w = sel["weight"].detach()
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    return LossOutput(w * s.loss, metrics)
