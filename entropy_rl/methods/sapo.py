"""SAPO: a smooth sigmoid gate of the ratio, with separate temperatures for A > 0 and A <= 0, instead of a hard clip.

Paper: Qwen team 2025, "Soft Adaptive Policy Optimization" (arXiv:2511.20347). Matched against verl 0.9.1
`compute_policy_loss_sapo` (`verl/trainer/ppo/core_algos.py`, loss_mode "sapo", read in the PyPI wheel
verl-0.9.1; `tau_pos` / `tau_neg` in `ActorConfig`):

    r_t   = exp(clamp(logp_t - old_logp_t, -20, 20))
    tau_t = tau_pos if A_t > 0 else tau_neg
    f(r)  = sigmoid(tau (r - 1)) * 4 / tau                  (the soft gate; f(1) = 2 / tau)
    l_t   = -f(r_t) A_t
    gradient: -w_t A_t r_t grad logp_t with w_t = f'(r_t) = 4 s (1 - s), s = sigmoid(tau (r_t - 1))

At r = 1 the weight w is 1, so on-policy the gradient equals `ppo_clip`'s (-A grad logp); away from r = 1 it decays
smoothly (faster for larger tau) instead of dropping to zero at a bound. The paper sets tau_neg > tau_pos so that
negative-advantage updates, which raise many unsampled tokens' logits, are damped sooner.

Departures: verl 0.9.1 aggregates SAPO with `seq-mean-token-mean` whatever `loss_agg_mode` says; here the trainer's
`algorithm.loss_agg_mode` applies (a method cannot choose the aggregation), and the `sapo` variant sets
`seq-mean-token-mean`. Metrics: `policy/clipfrac` is not logged (nothing is clipped; verl logs 0);
`method/sapo/grad_weight_mean` is the token mean of w_t r_t, the factor SAPO puts on -A grad logp (1 on-policy).

Neutral setting: none. The loss value is -f(r) A, not PPO's surrogate value, and no tau makes the gate a hard clip.

Params:
    tau_pos (1.0): gate temperature for A > 0 (paper / verl default).
    tau_neg (1.05): gate temperature for A <= 0 (paper / verl default; > tau_pos damps negative updates sooner).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    tau_pos: float = 1.0  # gate temperature where A > 0
    tau_neg: float = 1.05  # gate temperature where A <= 0

    def __post_init__(self) -> None:
        if not (self.tau_pos > 0 and self.tau_neg > 0):
            raise ValueError(f"tau_pos and tau_neg must be > 0, got {self.tau_pos}, {self.tau_neg}")


def soft_gate(ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """f(r) = sigmoid(tau (r - 1)) * 4 / tau, elementwise. ratio, tau: [B, T] -> [B, T]."""
    return torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)


@register_policy_loss("sapo", Params, paper="arXiv:2511.20347", neutral=None)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """-f(r) A per token. In: [B, T] each. Out: loss [B, T] and policy/*, method/sapo/* metrics."""
    lr = ppo.log_ratio(x.logp, x.old_logp)  # [B, T], clamped to [-20, 20]
    ratio = torch.exp(lr)
    tau = torch.where(x.adv > 0, torch.full_like(x.adv, p.tau_pos), torch.full_like(x.adv, p.tau_neg))  # [B, T]
    per_token = -soft_gate(ratio, tau) * x.adv
    with torch.no_grad():
        s = torch.sigmoid(tau * (ratio - 1.0))
        metrics = {
            "policy/approx_kl": masked_mean(ratio - 1.0 - lr, x.mask),
            "policy/ratio_mean": masked_mean(ratio, x.mask),
            "method/sapo/grad_weight_mean": masked_mean(4.0 * s * (1.0 - s) * ratio, x.mask),
        }
    return LossOutput(per_token, metrics)
