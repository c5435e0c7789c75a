"""GRPO advantages: A_i = (r_i - mean_g r) / (std_g r + eps), broadcast over the response.

Paper: Shao et al. 2024, DeepSeekMath (arXiv:2402.03300), outcome supervision. Matches verl
`compute_grpo_outcome_advantage`: unbiased std (n - 1), eps = 1e-6. Pitfall kept from verl and named:
a group of size 1 has mean 0 and std 1 there, so A = r / (1 + eps) (A = r without std scaling; verl 0.9.1,
the loop and the vectorised versions alike); we give singletons A = 0 instead, because a lone response
carries no relative signal (set `singleton="reward"` for verl's behaviour, eps included).

Params:
    scale_by_std (True): divide by the group std (False gives Dr.GRPO's mean-only advantage).
    eps (1e-6): added to the std.
    singleton ("zero"): advantage of a group of one response: "zero" or "reward" (verl: r / (1 + eps)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, group_stats, register_advantage


@dataclass(frozen=True)
class Params:
    scale_by_std: bool = True  # divide by group std (GRPO); False = Dr.GRPO
    eps: float = 1e-6  # std epsilon (verl)
    singleton: str = "zero"  # "zero" or "reward" (verl: mean 0, std 1 => A = r / (1 + eps))

    def __post_init__(self) -> None:
        if self.singleton not in ("zero", "reward"):
            raise ValueError(f"singleton must be 'zero' or 'reward', got '{self.singleton}'")


def group_centered(x: AdvantageInputs, scale_by_std: bool, eps: float, singleton: str) -> Tensor:
    """(r - group mean) [/ (group std + eps)] per response, with the singleton rule. [N] -> [N].

    singleton "zero": A = 0; "reward": verl's mean 0 and std 1, i.e. r / (1 + eps) with std scaling, else r.
    """
    mean, std, count = group_stats(x.rewards, x.group_index)
    adv = x.rewards - mean
    if scale_by_std:
        adv = adv / (std + eps)
    lone = count < 2
    if singleton == "reward":
        return torch.where(lone, x.rewards / (1.0 + eps) if scale_by_std else x.rewards, adv)
    return torch.where(lone, torch.zeros_like(adv), adv)


@register_advantage("grpo", Params)
def grpo(x: AdvantageInputs, p: Params) -> Tensor:
    """GRPO group-normalised advantage. rewards [N] -> [N]."""
    return group_centered(x, p.scale_by_std, p.eps, p.singleton)
