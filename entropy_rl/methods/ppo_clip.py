"""PPO clipped surrogate with decoupled bounds and dual clip: the reference every method reduces to.

Paper: Schulman et al. 2017 (arXiv:1707.06347); decoupled eps_low/eps_high from DAPO (arXiv:2503.14476);
dual clip from Ye et al. 2020 (arXiv:1912.09729). Matches verl's "vanilla" policy loss.

Params:
    eps_low (0.2): ratio floor 1 - eps_low, binds when A < 0.
    eps_high (0.2): ratio ceiling 1 + eps_high, binds when A > 0 (set 0.28 for DAPO clip-higher).
    clip_ratio_c (3.0): dual-clip constant c (> 1) capping -A r at -c A when A < 0; None disables it.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low (binds when A < 0)
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high (binds when A > 0)
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0 (verl default 3; paper recipes use 10)

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


@register_policy_loss("ppo_clip", Params, paper="arXiv:1707.06347", neutral={})
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """Per-token clipped surrogate. In: [B, T] each. Out: loss [B, T] and policy/* metrics."""
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    return LossOutput(s.loss, ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask))
