"""HAPO advantages: token-level group average (rewards normalised with token-weighted group statistics).

Paper: Liu et al. 2025, HAPO (arXiv:2509.16591). Official code: `starriver030515/HAPO` @ `7671dde`,
`compute_hapo_outcome_advantage` in `verl/trainer/ppo/core_algos.py` (read for this module). Per group g, with
L_i = number of response tokens of response i (every token carries its sequence reward r_i):

    mu_g    = sum_i L_i r_i / sum_i L_i                       (mean over the group's tokens)
    sigma_g = sqrt(sum_i L_i (r_i - mu_g)^2 / sum_i L_i)      (population std over tokens, `unbiased=False`)
    A_i     = (r_i - mu_g) / (sigma_g + eps)                  (`norm_by_std`; else r_i - mu_g)
    if any |A_i| >= fallback_threshold in the group: the group uses the GRPO advantage instead (smoothing).
Output is token level [N, T]: A_i on the response tokens, 0 elsewhere.

The second "advantage" component of the paper, Differential Advantage Redistribution, depends on the importance
ratio and the adaptive clip ranges of the update, so the official code applies it inside the policy loss; it lives
in the `hapo` policy-loss method (entropy_rl/methods/hapo.py), not here.

Departures from the official code (named):
    - The fallback test runs over response tokens only. The official test also sees padding positions, whose
      normalised value is (0 - mu)/sigma, so padding can trigger the GRPO fallback; that depends on batch padding.
    - The fallback is this toolkit's `grpo` (`dr_grpo` when norm_by_std is False), singletons A = 0 (verl: A = r).
      A singleton group never falls back here (sigma = 0 gives A = 0).

Params:
    norm_by_std (True): divide by the token-level group std (`norm_adv_by_std_in_grpo`).
    eps (1e-6): added to the std.
    fallback_threshold (5.0): |A| at which a group falls back to the GRPO advantage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.advantages.grpo import group_centered
from entropy_rl.core.advantage import AdvantageInputs, register_advantage


@dataclass(frozen=True)
class Params:
    norm_by_std: bool = True
    eps: float = 1e-6
    fallback_threshold: float = 5.0

    def __post_init__(self) -> None:
        if self.eps < 0 or self.fallback_threshold <= 0:
            raise ValueError(f"need eps >= 0 and fallback_threshold > 0, got {self.eps}, {self.fallback_threshold}")


@register_advantage("hapo", Params)
def hapo(x: AdvantageInputs, p: Params) -> Tensor:
    """Token-level group average advantage. rewards [N], mask [N, T] -> [N, T]."""
    if x.mask is None:
        raise ValueError("hapo needs `mask` (response lengths weight the group statistics)")
    mask = x.mask.double()
    length = mask.sum(-1)  # [N]
    r = x.rewards.double()
    _, inv = torch.unique(x.group_index, return_inverse=True)
    k = int(inv.max().item()) + 1 if inv.numel() else 0
    tok = torch.zeros(k, dtype=torch.float64, device=inv.device).index_add_(0, inv, length)
    mean = torch.zeros(k, dtype=torch.float64, device=inv.device).index_add_(0, inv, length * r) / tok.clamp_min(1.0)
    dev = r - mean[inv]
    var = torch.zeros(k, dtype=torch.float64, device=inv.device).index_add_(0, inv, length * dev**2) / tok.clamp_min(
        1.0
    )
    normed = dev / (var.sqrt()[inv] + p.eps) if p.norm_by_std else dev
    big = ((normed.abs() >= p.fallback_threshold) & (length > 0)).double()
    fallback = (torch.zeros(k, dtype=torch.float64, device=inv.device).index_add_(0, inv, big) > 0)[inv]
    grpo = group_centered(x, scale_by_std=p.norm_by_std, eps=p.eps, singleton="zero").double()
    adv = torch.where(fallback, grpo, normed)
    return (adv.unsqueeze(-1) * mask).to(x.rewards.dtype)
