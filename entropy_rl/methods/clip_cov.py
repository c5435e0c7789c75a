"""Clip-Cov: detach the gradient of a few random tokens whose Cov(logp, A) lies in a window (Cui et al. 2025).

Paper: "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv:2505.22617.
Official code: PRIME-RL/Entropy-Mechanism-of-RL `core_algos.py` (compute_policy_loss_clip_cov) and its verl
port (`loss_mode=clip_cov`). Spec: methods.md section 1 item 5.

Per token over the valid tokens of the optimizer mini-batch (`select`):
    Cov_t = (logp_t - mean logp)(A_t - mean A)              logp = current policy, detached
    C     = {valid t : cov_lb < Cov_t < cov_ub and t not already clipped by PPO}     (strict)
    n     = max(1, floor(clip_ratio * N_valid))              (0 when clip_ratio == 0, see below)
    I     = min(n, |C|) tokens drawn uniformly without replacement from C (torch.randperm with the generator)
Loss (`loss`, per micro-batch): l_t = max(-A r, -A clip(r, 1-eps_low, 1+eps_high)) * 1[t not in I]. Selected
tokens contribute zero loss and zero gradient but still count in the token-mean denominator (the trainer's
aggregation uses the mini-batch token count).

Departures from the official code (deliberate):
    - Selection over the whole optimizer mini-batch, not per micro-batch (toolkit rule; verl #7818, fixed
      upstream by PR #7830), with an explicit torch.Generator (official: global RNG).
    - clip_ratio == 0 selects nothing (n = 0) instead of max(1, .) = 1 token, so that clip_ratio=0 reproduces
      ppo_clip exactly (the registered neutral setting). For clip_ratio > 0 the official max(1, .) is kept.
    - Cov uses the detached log-prob (PRIME issue #9; harmless there).
    - The log-ratio is clamped to [-20, 20] before exp (core.ppo, like verl's vanilla loss).
    - "Already clipped" means the clipped branch binds (l2 > l1), as in the official code; if a dual clip is
      switched on (clip_ratio_c, off by default as in the official code) dual-clipped tokens are excluded too.
    - `policy/clipfrac` keeps its PPO meaning; the detached fraction is `method/clip_cov/detached_frac`
      (verl reports it as pg_clipfrac).

Variants (entropy_rl/presets/methods/, `entropy-rl compare --methods NAME`):
    clip_cov        eps_low = eps_high = 1.0 (recipe/dapo/{7b,32b}_clip_cov.sh: ratio clamped to [0, 2])
    clip_cov_verl   the defaults (verl `PolicyLossConfig` / actor.yaml)

Params:
    clip_ratio (2e-4): r_clip, fraction of the mini-batch's valid tokens to detach (a fraction, not a percent).
    cov_lb (1.0): lower bound omega_low of the Cov window (strict); units nats x advantage.
    cov_ub (5.0): upper bound omega_high of the Cov window (strict).
    eps_low (0.2): ratio floor 1 - eps_low (binds when A < 0); the paper recipes use 1.0.
    eps_high (0.2): ratio ceiling 1 + eps_high (binds when A > 0); the paper recipes use 1.0.
    clip_ratio_c (None): dual-clip constant c > 1, or None; the official code has no dual clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    clip_ratio: float = 2e-4  # r_clip: fraction of valid tokens to detach (verl clip_cov_ratio; paper 2e-4)
    cov_lb: float = 1.0  # omega_low, strict lower bound of the Cov window
    cov_ub: float = 5.0  # omega_high, strict upper bound of the Cov window
    eps_low: float = 0.2  # ratio floor 1 - eps_low (verl default; paper recipes 1.0)
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high (verl default; paper recipes 1.0)
    clip_ratio_c: float | None = None  # dual clip; the official Clip-Cov has none

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio must be a fraction in [0, 1], got {self.clip_ratio}")
        if not self.cov_lb < self.cov_ub:
            raise ValueError(f"cov_lb must be < cov_ub, got {self.cov_lb}, {self.cov_ub}")
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


def n_to_detach(clip_ratio: float, n_valid: int) -> int:
    """max(1, floor(clip_ratio * N_valid)), or 0 when clip_ratio == 0 or there is no valid token."""
    if clip_ratio == 0.0 or n_valid == 0:
        return 0
    return max(1, math.floor(clip_ratio * n_valid))


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Draw the tokens to detach over the mini-batch. In: [B, T] detached. Out: {"detach": bool [B, T]}, metrics."""
    valid = x.mask.bool()
    n_valid = int(valid.sum())
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    cov = ppo.token_covariance(x.logp, x.adv, x.mask)
    candidates = valid & ~s.clipped & (cov > p.cov_lb) & (cov < p.cov_ub)
    idx = candidates.flatten().nonzero().squeeze(1)  # row-major, like torch.nonzero in the official code
    n = min(n_to_detach(p.clip_ratio, n_valid), idx.numel())
    detach = torch.zeros_like(valid).flatten()
    if n > 0:
        device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(idx.numel(), generator=generator, device=device)
        detach[idx[perm[:n].to(idx.device)]] = True
    detach = detach.view_as(valid)  # [B, T]
    metrics = {
        "method/clip_cov/n_selected": torch.tensor(float(n), dtype=x.logp.dtype, device=x.logp.device),
        "method/clip_cov/n_candidates": candidates.sum().to(x.logp.dtype),
        "method/clip_cov/cov_mean": masked_mean(cov, x.mask),
    }
    return TokenWeights({"detach": detach}, metrics)


@register_policy_loss("clip_cov", Params, select=select, paper="arXiv:2505.22617", neutral={"clip_ratio": 0.0})
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """Per-token PPO loss with the selected tokens zeroed (no gradient). In: [B, T] each. Out: [B, T], metrics."""
    detach = sel["detach"]
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    per_token = torch.where(detach, torch.zeros_like(s.loss), s.loss)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/clip_cov/detached_frac"] = masked_mean(detach.to(x.mask.dtype), x.mask)
    return LossOutput(per_token, metrics)
