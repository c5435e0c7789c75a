"""ERC: PPO whose tokens lose their gradient when the entropy ratio H_cur / H_old leaves (h_ratio_low, h_ratio_high).

Paper: Su et al. 2025, "Entropy Ratio Clipping as a Soft Global Constraint for Stable Reinforcement Learning"
(arXiv:2512.05591). Official code: `Kwai-Klear/ERC` @ f1885c5, `compute_policy_loss_grpo_erc` in
`verl/trainer/ppo/core_algos.py` (loss_mode "grpo_erc", also printed in its README) and the recipes
`recipe/dapo/perf_run_dapo_ours_math_szp_ae_{dapo,gppo}_erc_1_05.sh`:

    l_t   = PPO's max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), dual-clipped at -c A for A < 0
    rho_t = (H_cur,t + 1e-8) / (H_old,t + 1e-8)     full-vocabulary entropies of the current and the rollout policy
    l_t   = l_t                   if h_ratio_low < rho_t < h_ratio_high      (strict)
            sg(l_t)               otherwise (value kept, gradient dropped)

PPO's clip bounds the sampled token's probability change; the entropy ratio measures how much the whole
next-token distribution moved (unsampled tokens included), so ERC also silences a token whose update already
spread or sharpened its distribution. rho is a selection only: no gradient flows through H_cur.

Departures from the official code: none in the loss (the official TIS factor for rollout/trainer mismatch,
`tis_imp_ratio_cap`, is the trainer's business, not the method's; its default there is -1, off). The official
`gppo_erc` variant (ERC on GPPO's gradient-preserving clip, beta = 1) is not built here; `ce_gppo` is GPPO without ERC.
Metrics: `policy/clipfrac*` keep their PPO meaning; `method/erc/dropped_frac` is the fraction of tokens whose
gradient ERC dropped (1 minus the official `entropy_frac`); `method/erc/ratio_mean` is the token mean of rho.

Defaults: the ratio bounds are the recipes' (`entropy_mask_low` 0.95, `entropy_mask_high` 1.05); the PPO part keeps
`ppo_clip`'s defaults, so ERC reads as PPO plus the entropy-ratio mask. The `erc` variant holds the paper's DAPO
settings (eps_high 0.28, dual clip 10).

Params:
    h_ratio_low (0.95): lower bound of the entropy ratio (strict); 0 disables it.
    h_ratio_high (1.05): upper bound of the entropy ratio (strict); a huge value (e.g. 1e30) disables it (config values must be finite).
    eps_low (0.2): ratio floor 1 - eps_low.
    eps_high (0.2): ratio ceiling 1 + eps_high (the paper's DAPO runs use 0.28).
    clip_ratio_c (3.0): dual-clip constant c > 1 for A < 0, or None (the recipes use 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

ENTROPY_EPS = 1e-8  # official: (H + 1e-8) / (H_old + 1e-8)


@dataclass(frozen=True)
class Params:
    h_ratio_low: float = 0.95  # entropy_mask_low of the recipes
    h_ratio_high: float = 1.05  # entropy_mask_high of the recipes
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high (paper DAPO runs: 0.28)
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0 (recipes: 10)

    def __post_init__(self) -> None:
        if not 0.0 <= self.h_ratio_low < 1.0 < self.h_ratio_high:
            raise ValueError(f"need 0 <= h_ratio_low < 1 < h_ratio_high, got {self.h_ratio_low}, {self.h_ratio_high}")
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


@register_policy_loss(
    "erc",
    Params,
    paper="arXiv:2512.05591",
    inputs={"entropy", "old_entropy"},
    neutral={"h_ratio_low": 0.0, "h_ratio_high": 1e30},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """PPO loss, detached where the entropy ratio is out of bounds. In: [B, T] each. Out: loss [B, T], metrics."""
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    assert x.entropy is not None and x.old_entropy is not None  # declared inputs, checked by check_inputs
    with torch.no_grad():
        rho = (x.entropy + ENTROPY_EPS) / (x.old_entropy + ENTROPY_EPS)  # [B, T]
        keep = (rho > p.h_ratio_low) & (rho < p.h_ratio_high)
    per_token = torch.where(keep, s.loss, s.loss.detach())
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/erc/dropped_frac"] = masked_mean((~keep).to(x.mask.dtype), x.mask)
    metrics["method/erc/ratio_mean"] = masked_mean(rho, x.mask)
    return LossOutput(per_token, metrics)
