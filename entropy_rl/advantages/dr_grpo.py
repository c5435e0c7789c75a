"""Dr.GRPO advantages: A_i = r_i - mean_g r (no std scaling), broadcast over the response.

Paper: Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv:2503.20783). Pair it with
`loss_agg_mode: seq-mean-token-sum-norm` for the paper's length-unbiased objective. Singletons get 0.

Params:
    singleton ("zero"): advantage of a group of one response: "zero" or "reward".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from entropy_rl.advantages.grpo import group_centered
from entropy_rl.core.advantage import AdvantageInputs, register_advantage


@dataclass(frozen=True)
class Params:
    singleton: str = "zero"  # "zero" or "reward"


@register_advantage("dr_grpo", Params)
def dr_grpo(x: AdvantageInputs, p: Params) -> Tensor:
    """Mean-centred group advantage. rewards [N] -> [N]."""
    return group_centered(x, scale_by_std=False, eps=0.0, singleton=p.singleton)
