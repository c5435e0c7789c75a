"""CE-GPPO: PPO whose clipped tokens keep a bounded gradient, beta1 (1 - eps_low) A or beta2 (1 + eps_high) A.

Paper: Su et al. 2025, "CE-GPPO: Coordinating Entropy via Gradient-Preserving Clipping Policy Optimization in
Reinforcement Learning" (arXiv:2509.20712). Official code: `Kwai-Klear/CE-GPPO` @ 10558fe,
`compute_gppo_loss_general_beta` in `verl/trainer/ppo/core_algos.py` (also printed in its README), recipes
`recipe/dapo/*_perf_run_gppo_v1_beta1_*`. With r = exp(logp - old_logp) and g = exp(logp - sg(logp)) (value 1,
gradient grad logp, i.e. the official r / sg(r)):

    clipped low  (A < 0, r < 1 - eps_low):  l = -A (1 - eps_low) [1 + beta1 (g - 1)]
                                            grad: -beta1 (1 - eps_low) A grad logp
    clipped high (A > 0, r > 1 + eps_high): l = -A (1 + eps_high) [1 + beta2 (g - 1)]
                                            grad: -beta2 (1 + eps_high) A grad logp
    otherwise:                              l = PPO's max(-A r, -A clip(r)) = -A r, dual-clipped at -c A for A < 0

So the clipped tokens PPO silences (A > 0 above the ceiling, A < 0 below the floor; in the authors' analysis mostly
low-probability tokens, PA&LP and NA&LP) contribute a gradient of fixed, bounded size: beta1 scales the
negative-advantage side (NA&LP, whose gradient lowers entropy), beta2 the positive side (PA&LP, whose gradient
raises it).
beta1 = beta2 = 0 is PPO; beta = 1 is the first GPPO (Klear-Reasoner, arXiv:2508.07629).

Departures from the official code:
    - Loss value: on clipped tokens the official value is -beta (1 -/+ eps) A; here it is PPO's -(1 -/+ eps) A for
      every beta (the beta term has value 0). The gradients are the official ones; only the logged loss differs
      (when beta != 1). This is what makes beta1 = beta2 = 0 reproduce `ppo_clip` exactly (the neutral setting).
    - The log-ratio is clamped to [-20, 20] before exp (core.ppo, as verl's vanilla loss; the official function
      does not clamp). The gradient carrier g does not go through the clamp, so restored gradients never vanish.
Metrics: `policy/clipfrac*` keep their PPO meaning (the official pg_clipfrac counts the two clipped regions only,
not the dual clip);
`method/ce_gppo/restored_frac` is the fraction of tokens whose gradient was restored (beta > 0 on their side).

Defaults: beta1 = 0.75, beta2 = 1 (the README's function and the 7B recipe; the 1.5B recipe uses beta1 = 0.5, the
repo's trainer yaml 0.25); eps 0.2 / 0.2 as both beta recipes (the `general_gppo` DAPO script uses 0.2 / 0.28);
dual clip c = 3 (the function's default; the recipes pass 10, as the `ce_gppo` variant does).

Params:
    beta1 (0.75): gradient scale restored to clipped tokens with A < 0 (ratio below 1 - eps_low); >= 0.
    beta2 (1.0): gradient scale restored to clipped tokens with A > 0 (ratio above 1 + eps_high); >= 0.
    eps_low (0.2): ratio floor 1 - eps_low.
    eps_high (0.2): ratio ceiling 1 + eps_high.
    clip_ratio_c (3.0): dual-clip constant c > 1 for A < 0, or None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    beta1: float = 0.75  # restored gradient scale, clipped tokens with A < 0 (7B recipe)
    beta2: float = 1.0  # restored gradient scale, clipped tokens with A > 0
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0 (official function default; recipes 10)

    def __post_init__(self) -> None:
        if self.beta1 < 0 or self.beta2 < 0:
            raise ValueError(f"beta1 and beta2 must be >= 0, got {self.beta1}, {self.beta2}")
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


@register_policy_loss("ce_gppo", Params, paper="arXiv:2509.20712", neutral={"beta1": 0.0, "beta2": 0.0})
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """PPO surrogate plus bounded gradients on clipped tokens. In: [B, T] each. Out: loss [B, T], metrics."""
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    carrier = torch.exp(x.logp - x.logp.detach()) - 1.0  # value exactly 0, gradient grad logp
    low = s.clipped_low.to(x.logp.dtype) * (p.beta1 * (1.0 - p.eps_low))  # [B, T]
    high = s.clipped_high.to(x.logp.dtype) * (p.beta2 * (1.0 + p.eps_high))  # [B, T]
    per_token = s.loss - x.adv * (low + high) * carrier
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    with torch.no_grad():
        restored = (s.clipped_low & (p.beta1 > 0)) | (s.clipped_high & (p.beta2 > 0))
        metrics["method/ce_gppo/restored_frac"] = masked_mean(restored.to(x.mask.dtype), x.mask)
    return LossOutput(per_token, metrics)
