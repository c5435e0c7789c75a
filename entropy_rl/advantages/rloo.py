"""RLOO advantages: A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean r), leave-one-out baseline.

Paper: Ahmadian et al. 2024, "Back to Basics" (arXiv:2402.14740); Kool et al. 2019. Matches verl
`compute_rloo_outcome_advantage` except singletons, which get 0 here (verl: A = r).

Params:
    singleton ("zero"): advantage of a group of one response: "zero" or "reward".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, group_stats, register_advantage


@dataclass(frozen=True)
class Params:
    singleton: str = "zero"  # "zero" or "reward"


@register_advantage("rloo", Params)
def rloo(x: AdvantageInputs, p: Params) -> Tensor:
    """Leave-one-out baseline advantage. rewards [N] -> [N]."""
    mean, _, count = group_stats(x.rewards, x.group_index)
    adv = count / (count - 1).clamp_min(1.0) * (x.rewards - mean)
    lone = count < 2
    return torch.where(lone, x.rewards if p.singleton == "reward" else torch.zeros_like(adv), adv)
