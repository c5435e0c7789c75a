"""QAE advantages: GRPO with the group mean replaced by the group's K-quantile, A_i = (r_i - Q_K(r_g)) / (std_g + eps).

Paper: Wu et al. 2025, "Quantile Advantage Estimation for Entropy-Safe Reasoning" (arXiv:2509.22611). Official
code: `junkangwu/QAE` (a verl DAPO recipe). No snapshot of that repository could be read here; its README
(read through an indexed copy) quotes the whole change, in verl's `compute_grpo_outcome_advantage`
(`core_algos.py`, "lines ~315-319"): when 0 < quantile_k < 1 the group baseline `id2mean` becomes
`torch.quantile(scores, quantile_k)`; everything else is verl's GRPO (unbiased group std, eps 1e-6,
`norm_adv_by_std_in_grpo`, a singleton group gets mean 0 and std 1). We match that:

    b_g   = Q_K(r_g)                               torch.quantile, linear interpolation (the official code)
    A_i   = (r_i - b_g) / (std_g + eps)            std_g unbiased (n - 1); without std: A_i = r_i - b_g
broadcast over the response by the trainer, like GRPO's.

With binary rewards the paper's two-regime gate follows: a hard group (success rate p <= 1 - K) gets b = 0, so
only its successes are reinforced; an easy group (p > 1 - K) gets b = 1, so only its failures are penalised.

Departures and choices (named):
    - Quantile definition. The paper defines b_K = inf{x : F_hat(x) >= K} (the inverted empirical CDF: the sorted
      reward at index ceil(K n) - 1); the official code's `torch.quantile` interpolates linearly between the
      sorted rewards at floor/ceil of K (n - 1). The two differ on groups near the threshold: n = 8, K = 0.4,
      three failures gives b = 0.8 (code) vs 1 (paper), so the successes there get a small positive advantage
      under the code. Default "linear" (the code); `quantile: "inverted_cdf"` gives the paper's definition
      (K n is rounded to 1e-9 before the ceiling, so 0.7 * 10 counts as 7).
    - K outside (0, 1) is refused (the official code falls back to the mean: use `grpo` for that).
    - Singletons: A = 0 by default (toolkit rule, as `grpo`); `singleton: "reward"` gives verl's r / (1 + eps).

Params:
    k (0.4): quantile level K in (0, 1); the README's recommended start (0.6 against early entropy collapse).
    quantile ("linear"): "linear" (official code, torch.quantile) or "inverted_cdf" (the paper's definition).
    scale_by_std (True): divide by the unbiased group std plus eps (DAPO/GRPO `norm_adv_by_std_in_grpo`).
    eps (1e-6): added to the std.
    singleton ("zero"): advantage of a group of one response: "zero" or "reward" (verl: r / (1 + eps)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, group_stats, register_advantage

QUANTILES = ("linear", "inverted_cdf")
CEIL_TOLERANCE = 1e-9  # K n within this of an integer counts as that integer (inverted_cdf)


@dataclass(frozen=True)
class Params:
    k: float = 0.4  # quantile level K (official quantile_k)
    quantile: str = "linear"  # "linear" (torch.quantile, official) or "inverted_cdf" (paper)
    scale_by_std: bool = True  # divide by group std (norm_adv_by_std_in_grpo)
    eps: float = 1e-6  # std epsilon (verl)
    singleton: str = "zero"  # "zero" or "reward" (verl: mean 0, std 1 => A = r / (1 + eps))

    def __post_init__(self) -> None:
        if not 0.0 < self.k < 1.0:
            raise ValueError(f"k must be in (0, 1), got {self.k} (for the group mean use the `grpo` estimator)")
        if self.quantile not in QUANTILES:
            raise ValueError(f"quantile must be one of {', '.join(QUANTILES)}, got '{self.quantile}'")
        if self.singleton not in ("zero", "reward"):
            raise ValueError(f"singleton must be 'zero' or 'reward', got '{self.singleton}'")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")


def quantile_of(values: Tensor, k: float, quantile: str) -> Tensor:
    """K-quantile of a 1-D tensor: linear interpolation (torch.quantile) or the inverted empirical CDF. [n] -> []."""
    if quantile == "linear":
        return torch.quantile(values, k)
    index = max(math.ceil(k * values.numel() - CEIL_TOLERANCE) - 1, 0)
    return values.sort().values[index]


def group_quantile(values: Tensor, group_index: Tensor, k: float, quantile: str) -> Tensor:
    """Each response's group K-quantile of `values`, fp64. [N] values, [N] group ids -> [N]."""
    _, inverse = torch.unique(group_index, return_inverse=True)
    v = values.double()
    out = torch.empty_like(v)
    for g in range(int(inverse.max().item()) + 1 if inverse.numel() else 0):
        members = inverse == g
        out[members] = quantile_of(v[members], k, quantile)
    return out


@register_advantage("qae", Params)
def qae(x: AdvantageInputs, p: Params) -> Tensor:
    """Quantile-baseline group advantage. rewards [N] -> [N]."""
    _, std, count = group_stats(x.rewards, x.group_index)
    r = x.rewards.double()
    adv = r - group_quantile(x.rewards, x.group_index, p.k, p.quantile)
    if p.scale_by_std:
        adv = adv / (std.double() + p.eps)
    lone = count < 2
    if p.singleton == "reward":
        single = r / (1.0 + p.eps) if p.scale_by_std else r
    else:
        single = torch.zeros_like(adv)
    return torch.where(lone, single, adv).to(x.rewards.dtype)
